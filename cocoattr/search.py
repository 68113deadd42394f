"""Query + index -> ranked `Hit`s: attribute queries, free text and query by image.

`find` is the one entry the CLI (`cocoattr search`), the app's Search tab and its /search
API share, so they rank the same images with the same scores; `Hit` is the one result type
(`to_json` is the CLI's --json row, `to_api` the /search row). The scoring rule and the query
language are `cocoattr.query`; storage and builds are `cocoattr.index`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cocoattr.backends import top_indices, unit
from cocoattr.data.gallery import load_gallery
from cocoattr.errors import UserError
from cocoattr.index import GALLERY, Index, build_index, checkpoint_identity
from cocoattr.metrics import recall_at_k
from cocoattr.query import Query, Term, parse_query, score_terms

if TYPE_CHECKING:
    from cocoattr.images import ImageInput
    from cocoattr.predictor import Predictor


@dataclass
class Hit:
    """One ranked image and why it ranked there."""

    image: str  # path relative to the index root (what the API shows; no server paths)
    path: Path  # the file on this machine
    score: float
    attributes: dict[str, float]  # matched term -> p (or 1 - p for "-term"), in query order
    text_similarity: float | None = None  # cosine to the free text or the query photo
    caption: str = ""  # the first caption (the gallery's, or a COCO index's); other image sets have none
    coco_id: int | None = None  # a COCO index's image id, URL, captions and ground-truth categories
    coco_url: str = ""
    captions: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    thumbnail: bytes | None = field(default=None, repr=False)  # JPEG, when the index stores them

    def coco(self) -> dict:
        """The COCO fields of a row, when the hit comes from a COCO index."""
        if self.coco_id is None:
            return {}
        return {"coco_id": self.coco_id, "coco_url": self.coco_url, "captions": self.captions,
                "categories": self.categories}  # fmt: skip

    def to_json(self) -> dict:
        """The CLI's `search --json` row."""
        out = {"image": str(self.path), "score": round(self.score, 5), "attributes": self.attributes}
        if self.text_similarity is not None:
            out["text_similarity"] = round(self.text_similarity, 5)
        return out | self.coco()

    def to_api(self, rank: int) -> dict:
        """The app's /search row."""
        return {
            "rank": rank,
            "image": self.image,
            "score": round(self.score, 4),
            "matched": [{"attribute": a, "probability": round(p, 4)} for a, p in self.attributes.items()],
            "caption": self.caption,
        } | self.coco()


@dataclass
class Results:
    hits: list[Hit]
    query: Query | None = None  # None for a query by image
    notes: list[str] = field(default_factory=list)  # how the query was read: "'kitty' -> cat (synonym)"


@lru_cache(maxsize=4)
def captions(root_spec: str) -> dict[str, str]:
    """First caption per gallery image (by file name); other image sets have none."""
    if root_spec != GALLERY:
        return {}
    g = load_gallery()
    return {p.name: (c[0] if c else "") for p, c in zip(g.paths, g.captions, strict=True)}


def _hit(index: Index, i: int, score: float, attributes: dict[str, float], sim: float | None) -> Hit:
    thumb = index.thumbnails[i] if index.thumbnails is not None else None
    rec = index.records[i] if index.records is not None else {}
    caps = [str(c) for c in rec.get("captions") or []]
    caption = caps[0] if caps else captions(index.root_spec).get(Path(index.paths[i]).name, "")
    coco_id = rec.get("coco_id")
    return Hit(index.paths[i], index.path(i), score, attributes, sim, caption,
               coco_id=None if coco_id is None else int(coco_id), coco_url=str(rec.get("coco_url") or ""),
               captions=caps, categories=[str(c) for c in rec.get("categories") or []],
               thumbnail=thumb or None)  # fmt: skip


def embed_free_text(index: Index, text: str) -> np.ndarray:
    """Free text -> (D,) unit vector in the index's contrastive space (MiniLM, then the checkpoint's
    text_proj), so free-text search needs no image model."""
    if index.text_proj is None:
        raise UserError("this index has no text projection; rebuild it to search by free text")
    # Lazy: the text encoder imports torch + transformers (seconds); attribute queries need neither.
    from cocoattr.text import encode

    weight, bias = index.text_proj
    return unit(encode([text])[0] @ weight.T + bias)


def _top_attributes(index: Index, i: int, n: int = 3) -> dict[str, float]:
    p = index.probs[i].astype(np.float32)
    return {index.attributes[j]: round(float(p[j]), 4) for j in np.argsort(-p)[:n]}


def search(
    index: Index, query: Query | str, k: int = 10, backend: str = "auto", use_encoder: bool = True
) -> list[Hit]:
    """Best `k` images for an attribute query (see cocoattr.query for the scoring rule)."""
    if isinstance(query, str):
        query = parse_query(query, attributes=index.attributes, attribute_embeddings=index.attribute_text,
                            use_encoder=use_encoder)  # fmt: skip
    terms: list[Term] = []
    for t in query.terms:
        if t.attribute in index.attributes:
            terms.append(t)
        else:
            query.warnings.append(f"'{t.attribute}' is not predicted by this index's checkpoint; ignored")
    text_vec = None
    if query.free_text and use_encoder:
        try:
            text_vec = embed_free_text(index, query.free_text)
        except UserError as e:
            query.warnings.append(f"free-text part ignored: {e}")
    if not terms and text_vec is None:
        raise UserError("nothing in the query can be scored against this index")
    if len(index) == 0:
        return []
    engine = index.backend(backend)
    scores, shown = score_terms(terms, index.probs_by_column, index.attributes)
    sims = None
    if text_vec is not None:
        if terms:
            sims = engine.scores(text_vec)
            scores = scores + sims / index.temperature
            top = top_indices(scores, k)
        else:
            top, top_sims = engine.top_k(text_vec, k)
            sims = np.zeros(len(index), np.float32)
            sims[top] = top_sims
            scores = sims / index.temperature
    else:
        top = top_indices(scores, k)
    hits = []
    for i in top:
        attrs = {t.key: round(float(shown[i, j]), 4) for j, t in enumerate(terms)} or _top_attributes(
            index, i
        )
        hits.append(_hit(index, i, float(scores[i]), attrs, None if sims is None else float(sims[i])))
    return hits


def search_by_image(
    index: Index, image: ImageInput, k: int = 10, predictor: Predictor | None = None, backend: str = "auto"
) -> list[Hit]:
    """Nearest neighbours (cosine) of an image's embedding; the checkpoint must be the index's."""
    if predictor is None:
        # Lazy: the predictor imports torch (seconds); text queries never load the image model.
        from cocoattr.predictor import Predictor

        predictor = Predictor.from_checkpoint(index.checkpoint.get("source"))
    if checkpoint_identity(predictor.model)["sha256"] != index.checkpoint.get("sha256"):
        raise UserError(
            "the index was built with a different checkpoint than the one loaded for the query image"
        )
    pred = predictor.predict_one(image)
    idx, sims = index.backend(backend).top_k(pred.embedding, k)
    q = pred.probs.astype(np.float32)
    hits = []
    for i, s in zip(idx, sims, strict=True):
        both = q * index.probs[i].astype(np.float32)
        shared = {
            index.attributes[j]: round(float(index.probs[i, j]), 4)
            for j in np.argsort(-both)[:5]
            if both[j] >= 0.25
        }
        hits.append(_hit(index, i, float(s), shared, float(s)))
    return hits


def find(
    index: Index,
    text: str = "",
    *,
    image: ImageInput | None = None,
    k: int = 10,
    predictor: Predictor | None = None,
    backend: str = "auto",
) -> Results:
    """Ranked hits for query text, or for a query image when one is given, with how it was read."""
    if image is not None:
        hits = search_by_image(index, image, k=k, predictor=predictor, backend=backend)
        return Results(hits, None, ["nearest neighbours of the query photo (embedding cosine)"])
    query = parse_query(text, attributes=index.attributes, attribute_embeddings=index.attribute_text)
    hits = search(index, query, k=k, backend=backend)
    notes = [str(m) for m in query.mappings if m.how != "attribute"] + list(query.warnings)
    return Results(hits, query, notes)


# ----------------------------------------------------------------------------- gallery Recall@K

# Attribute queries over the bundled gallery. Relevant images: hand labels positive for every
# included attribute and not positive for any excluded one.
GALLERY_QUERIES = [
    "furry animal", "outdoor, -person", "red", "vehicle", "bird", "food", "building, sky", "animal",
    "person", "sky", "plant, green", "striped", "spotted", "metal", "wooden", "indoor", "big cat",
    "feathered", "animal, -furry", "trees",
]  # fmt: skip


def gallery_recall(
    checkpoint: str | os.PathLike | None = "default",
    index_path: str | os.PathLike | None = None,
    queries: Sequence[str] = GALLERY_QUERIES,
    ks: Sequence[int] = (1, 5, 10),
    backend: str = "auto",
) -> dict:
    """Recall@K of attribute search on the hand-labelled gallery (builds a temporary index if none given)."""
    gallery = load_gallery()
    with tempfile.TemporaryDirectory() as tmp:
        if index_path is None:
            index_path = Path(tmp) / "gallery.npz"
            build_index(GALLERY, index_path, checkpoint=checkpoint, progress=False)
        index = Index.load(index_path)
    by_name = {p.name: image_id for p, image_id in zip(gallery.paths, gallery.image_ids, strict=True)}
    labels = {image_id: gallery.labels[i] for i, image_id in enumerate(gallery.image_ids)}
    vocab_index = {n: i for i, n in enumerate(gallery.vocab.names)}
    ranked, relevant, rows = [], [], []
    for text in queries:
        q = parse_query(text, gallery.vocab, attributes=index.attributes, use_encoder=False)
        hits = search(index, q, k=len(index), backend=backend, use_encoder=False)
        ids = [by_name[Path(h.image).name] for h in hits]
        rel = {
            i for i, row in labels.items()
            if all(row[vocab_index[t.attribute]] == 1 for t in q.includes)
            and not any(row[vocab_index[t.attribute]] == 1 for t in q.excludes)
        }  # fmt: skip
        ranked.append(ids)
        relevant.append(rel)
        rows.append({"query": text, "relevant": len(rel), **recall_at_k([ids], [rel], ks)})
    return {
        "queries": rows,
        "checkpoint": index.checkpoint,
        "n_images": len(index),
        **recall_at_k(ranked, relevant, ks),
    }
