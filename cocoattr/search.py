"""Query + index -> ranked `Hit`s: attribute queries, free text and query by image.

`find` is the one entry the CLI (`cocoattr search`), the app's Search tab and its /search
API share, so they rank the same images with the same scores; `Hit` is the one result type
(`to_json` is the CLI's --json row, `to_api` the /search row and the Search tab's export).
The scoring rule and the query language are `cocoattr.query`; storage and builds are
`cocoattr.index`.

A photo and typed terms combine: the terms decide which images satisfy the query and add
their log-probability, the photo adds its cosine / temperature (as free text does), so
"this photo, but -indoor" ranks outdoor look-alikes first. An image satisfies an attribute
query when every term holds, P(a) >= 0.5 for `a` and P(not a) >= 0.5 for `-a`; a free-text
query, whose words are mapped to terms only loosely, when at least one of them holds.
`Results` says how many images of the index satisfy the query and counts the attributes
most frequent among them (facets); `cutoff=True` ranks only those.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Collection, Sequence
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


CUTOFF = 0.5  # a term holds for an image when its probability (P(a), or P(not a) for -a) is at least this
FACETS = 8  # attributes counted over a query's results
NEIGHBOURS_NOTE = "nearest neighbours of the query photo (embedding cosine)"


def term_label(key: str) -> str:
    """What a term's probability is of: 'red' -> P(red), '-indoor' -> P(not indoor)."""
    return f"P(not {key[1:]})" if key.startswith("-") else f"P({key})"


@dataclass
class Hit:
    """One ranked image and why it ranked there."""

    image: str  # path relative to the index root (what the API shows; no server paths)
    path: Path | None  # the file on this machine; None when the index was given no folder (a Hub index)
    score: float
    attributes: dict[str, float]  # matched term -> p (or 1 - p for "-term"), in query order
    text_similarity: float | None = None  # cosine to the free text or the query photo
    caption: str = ""  # the first caption (the gallery's, or a COCO index's); other image sets have none
    coco_id: int | None = None  # a COCO index's image id, URL, captions and ground-truth categories
    coco_url: str = ""
    captions: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    thumbnail: bytes | None = field(default=None, repr=False)  # JPEG, when the index stores them
    row: int = -1  # the image's row in the index
    from_terms: bool = True  # `attributes` are the query's terms (else the image's own top attributes)
    terms_log_p: float | None = None  # sum of w * log P(term): the attribute part of `score`
    photo_similarity: float | None = None  # cosine to the query photo, when terms were combined with one
    satisfied: bool | None = None  # whether it meets the query's cut-off (None: no terms to judge by)

    @property
    def terms_matched(self) -> int:
        return sum(p >= CUTOFF for p in self.attributes.values()) if self.from_terms else 0

    def explanation(self) -> str:
        """The score in words: each term's own probability, how many hold, their joint probability."""
        parts = []
        if self.from_terms and self.attributes:
            each = " × ".join(f"{term_label(a)} {p:.2f}" for a, p in self.attributes.items())
            joint = (
                math.exp(self.terms_log_p)
                if self.terms_log_p is not None
                else math.prod(self.attributes.values())
            )
            parts.append(f"matches {self.terms_matched}/{len(self.attributes)} terms: {each} = {joint:.2f}")
        if self.photo_similarity is not None:
            parts.append(f"photo similarity {self.photo_similarity:.2f}")
        elif self.text_similarity is not None:
            parts.append(f"{'text' if self.from_terms else 'similarity'} {self.text_similarity:.2f}")
        return "; ".join(parts)

    def coco(self) -> dict:
        """The COCO fields of a row, when the hit comes from a COCO index."""
        if self.coco_id is None:
            return {}
        return {"coco_id": self.coco_id, "coco_url": self.coco_url, "captions": self.captions,
                "categories": self.categories}  # fmt: skip

    def to_json(self) -> dict:
        """The CLI's `search --json` row."""
        image = str(self.path or self.image)  # the stored relative path when no folder was named
        out = {"image": image, "score": round(self.score, 5), "attributes": self.attributes}
        if self.text_similarity is not None:
            out["text_similarity"] = round(self.text_similarity, 5)
        return out | self.coco()

    def to_api(self, rank: int) -> dict:
        """The app's /search row: rank, image, score, matched, caption (the original keys), then why."""
        label = term_label if self.from_terms else (lambda a: f"P({a})")
        out = {
            "rank": rank,
            "image": self.image,
            "score": round(self.score, 4),
            "matched": [
                {"attribute": a, "probability": round(p, 4), "label": label(a)}
                | ({"satisfied": p >= CUTOFF} if self.from_terms else {})
                for a, p in self.attributes.items()
            ],
            "caption": self.caption,
            "satisfies": self.satisfied,
            "terms_matched": self.terms_matched,
            "terms": len(self.attributes) if self.from_terms else 0,
            "explanation": self.explanation(),
        }
        if self.terms_log_p is not None:
            out["terms_probability"] = round(math.exp(self.terms_log_p), 4)
        if self.photo_similarity is not None:
            out["photo_similarity"] = round(self.photo_similarity, 4)
        return out | self.coco()


@dataclass
class Results:
    hits: list[Hit]
    query: Query | None = None  # None for a query by image alone
    notes: list[str] = field(default_factory=list)  # how the query was read: "'kitty' -> cat (synonym)"
    matching: int | None = None  # images in the index that satisfy the query (None: no terms, no cut-off)
    total: int = 0  # images in the index
    facets: list[tuple[str, int]] = field(default_factory=list)  # (attribute, how many results have it)

    @property
    def hidden(self) -> int:
        """Images of the index that do not satisfy the query (0 when no cut-off applies)."""
        return 0 if self.matching is None else self.total - self.matching


@lru_cache(maxsize=4)
def captions(root_spec: str) -> dict[str, list[str]]:
    """The gallery's captions per image (by file name); other image sets have none."""
    if root_spec != GALLERY:
        return {}
    g = load_gallery()
    return {p.name: [str(x) for x in c] for p, c in zip(g.paths, g.captions, strict=True)}


def _hit(index: Index, i: int, score: float, attributes: dict[str, float], sim: float | None) -> Hit:
    thumb = index.thumbnails[i] if index.thumbnails is not None else None
    rec = index.records[i] if index.records is not None else {}
    caps = [str(c) for c in rec.get("captions") or []] or captions(index.root_spec).get(
        Path(index.paths[i]).name, []
    )
    coco_id = rec.get("coco_id")
    return Hit(index.paths[i], index.path(i), score, attributes, sim, caps[0] if caps else "",
               coco_id=None if coco_id is None else int(coco_id), coco_url=str(rec.get("coco_url") or ""),
               captions=caps, categories=[str(c) for c in rec.get("categories") or []],
               thumbnail=thumb or None, row=int(i))  # fmt: skip


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


def _terms(index: Index, query: Query, use_encoder: bool) -> tuple[list[Term], np.ndarray | None]:
    """The query's terms this index predicts and its free-text vector (warnings for what is dropped)."""
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
    return terms, text_vec


def satisfied(shown: np.ndarray, free_text: bool) -> np.ndarray | None:
    """(N,) whether each image satisfies the query, from its (N, T) term probabilities (None: no terms).

    Every term must hold for an attribute query; one is enough for free text, whose words are
    only loosely mapped to terms.
    """
    if shown.shape[1] == 0:
        return None
    holds = shown >= CUTOFF
    return holds.any(axis=1) if free_text else holds.all(axis=1)


def _search(index: Index, query: Query, k: int, backend: str, use_encoder: bool,
            photo: np.ndarray | None, cutoff: bool, count: bool) -> tuple[list[Hit], np.ndarray | None]:  # fmt: skip
    """The best `k` hits and, when `cutoff` or `count`, the (N,) satisfied mask (None: no terms)."""
    terms, text_vec = _terms(index, query, use_encoder)
    if not terms and text_vec is None and photo is None:
        raise UserError("nothing in the query can be scored against this index")
    if len(index) == 0:
        return [], None
    engine = index.backend(backend)
    term_scores, shown = score_terms(terms, index.probs_by_column, index.attributes)
    free = text_vec is not None
    ok = satisfied(shown, free) if cutoff or count else None  # over every row only when asked (1M rows)
    scores, sims, photo_sims = term_scores, None, None
    if text_vec is not None and not terms and photo is None:  # free text alone: the backend's own top-k
        top, top_sims = engine.top_k(text_vec, k)
        sims = np.zeros(len(index), np.float32)
        sims[top] = top_sims
        scores = sims / index.temperature
    else:
        if text_vec is not None:
            sims = engine.scores(text_vec)
            scores = scores + sims / index.temperature
        if photo is not None:
            photo_sims = engine.scores(photo)
            scores = scores + photo_sims / index.temperature
        if cutoff and ok is not None:
            rows = np.flatnonzero(ok)
            top = rows[top_indices(scores[rows], k)]
        else:
            top = top_indices(scores, k)
    hits = []
    for i in top:
        attrs = {t.key: round(float(shown[i, j]), 4) for j, t in enumerate(terms)}
        hit = _hit(index, i, float(scores[i]), attrs or _top_attributes(index, i),
                   None if sims is None else float(sims[i]))  # fmt: skip
        hit.from_terms = bool(terms)
        hit.terms_log_p = float(term_scores[i]) if terms else None
        hit.photo_similarity = None if photo_sims is None else float(photo_sims[i])
        holds = satisfied(shown[i : i + 1], free)
        hit.satisfied = None if holds is None else bool(holds[0])
        hits.append(hit)
    return hits, ok


def search(
    index: Index,
    query: Query | str,
    k: int = 10,
    backend: str = "auto",
    use_encoder: bool = True,
    *,
    photo: np.ndarray | None = None,
    cutoff: bool = False,
) -> list[Hit]:
    """Best `k` images for an attribute query (see cocoattr.query for the scoring rule), optionally
    combined with a query photo's embedding; `cutoff` ranks only the images that satisfy it."""
    if isinstance(query, str):
        query = parse_query(query, attributes=index.attributes, attribute_embeddings=index.attribute_text,
                            use_encoder=use_encoder)  # fmt: skip
    return _search(index, query, k, backend, use_encoder, photo, cutoff, False)[0]


@dataclass(frozen=True)
class Photo:
    """A query photo as the index sees it: its embedding and its attribute probabilities."""

    embedding: np.ndarray  # (D,)
    probs: np.ndarray  # (A,) in the index's attribute order

    @classmethod
    def of(cls, index: Index, image: ImageInput, predictor: Predictor | None = None) -> Photo:
        """Run the model on a photo; the checkpoint must be the one the index was built with."""
        if predictor is None:
            # Lazy: the predictor imports torch (seconds); text queries never load the image model.
            from cocoattr.predictor import Predictor

            predictor = Predictor.from_checkpoint(index.checkpoint.get("source"))
        check_checkpoint(index, predictor)
        pred = predictor.predict_one(image)
        return cls(pred.embedding, pred.probs)

    @classmethod
    def row(cls, index: Index, image: str) -> Photo:
        """An image of the index itself ("more like this"), by its relative path: no model run."""
        try:
            i = index.paths.index(image)
        except ValueError:
            raise UserError(f"{image!r} is not an image of this index") from None
        return cls(index.embeddings[i], index.probs[i].astype(np.float32))


def check_checkpoint(index: Index, predictor: Predictor) -> None:
    """Refuse to compare a photo embedded by one checkpoint with an index built by another."""
    if checkpoint_identity(predictor.model)["sha256"] != index.checkpoint.get("sha256"):
        raise UserError(
            "the index was built with a different checkpoint than the one loaded for the query image"
        )


def _neighbours(index: Index, photo: Photo, k: int, backend: str) -> list[Hit]:
    """Nearest neighbours (cosine) of a photo, each with the attributes it shares with it (those
    both probably show: the product of the two probabilities >= 0.25)."""
    idx, sims = index.backend(backend).top_k(photo.embedding, k)
    q = np.asarray(photo.probs, np.float32)
    hits = []
    for i, s in zip(idx, sims, strict=True):
        both = q * index.probs[i].astype(np.float32)
        shared = {
            index.attributes[j]: round(float(index.probs[i, j]), 4)
            for j in np.argsort(-both)[:5]
            if both[j] >= 0.25
        }
        hit = _hit(index, i, float(s), shared, float(s))
        hit.from_terms = False
        hits.append(hit)
    return hits


def search_by_image(
    index: Index, image: ImageInput, k: int = 10, predictor: Predictor | None = None, backend: str = "auto"
) -> list[Hit]:
    """Nearest neighbours (cosine) of an image's embedding; the checkpoint must be the index's."""
    return _neighbours(index, Photo.of(index, image, predictor), k, backend)


def facets(index: Index, rows: Sequence[int] | np.ndarray, skip: Collection[str] = (),
           n: int = FACETS) -> list[tuple[str, int]]:  # fmt: skip
    """The `n` attributes most results show (P >= 0.5), with how many do; `skip` (the query's own)
    left out; ties go to the higher mean probability."""
    rows = np.asarray(rows, np.int64)
    if rows.size == 0:
        return []
    p = index.probs[rows].astype(np.float32)
    counts, means = (p >= CUTOFF).sum(axis=0), p.mean(axis=0)
    order = np.lexsort((-means, -counts))
    out = [
        (index.attributes[j], int(counts[j])) for j in order if counts[j] and index.attributes[j] not in skip
    ]
    return out[:n]


def find(
    index: Index,
    text: str = "",
    *,
    image: ImageInput | None = None,
    photo: Photo | None = None,
    k: int = 10,
    predictor: Predictor | None = None,
    backend: str = "auto",
    cutoff: bool = False,
) -> Results:
    """Ranked hits for query text, a query photo (`image` to embed, or a ready `photo`), or both
    combined, with how the query was read, how many images satisfy it and its facets."""
    if image is not None and photo is None:
        photo = Photo.of(index, image, predictor)
    text = (text or "").strip()
    if photo is not None and not text:
        hits = _neighbours(index, photo, k, backend)
        return Results(
            hits, None, [NEIGHBOURS_NOTE], total=len(index), facets=facets(index, [h.row for h in hits])
        )
    query = parse_query(text, attributes=index.attributes, attribute_embeddings=index.attribute_text)
    hits, ok = _search(
        index, query, k, backend, True, None if photo is None else photo.embedding, cutoff, True
    )
    notes = [str(m) for m in query.mappings if m.how != "attribute"] + list(query.warnings)
    if photo is not None:
        notes.append("combined with the query photo: log P(terms) + photo cosine / temperature")
    rows = np.flatnonzero(ok) if ok is not None else [h.row for h in hits]
    skip = {t.attribute for t in query.terms}
    return Results(hits, query, notes, matching=None if ok is None else int(ok.sum()), total=len(index),
                   facets=facets(index, rows, skip))  # fmt: skip


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
