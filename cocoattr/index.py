"""Attribute-to-image search index: predictions for a folder of images, saved once, searched fast.

One `.npz` file (loaded with allow_pickle=False) holds, per image, its path relative to the
indexed root, size + mtime (to spot changes), attribute probabilities (float16) and its
contrastive embedding (float32), plus JSON metadata naming the checkpoint (sha256 of its
model.safetensors + attribute names) and the few checkpoint tensors free-text search needs
(attribute prompt embeddings, text projection), so searching never loads the image model.

Builds are incremental (only new or changed images are run; deleted ones are dropped; a
different checkpoint or vocabulary means a full rebuild) and crash-safe (partial progress is
saved every `save_every` images and on Ctrl-C; every write is temp file + os.replace).
Nearest-neighbour search goes through one small backend interface: exact numpy, or FAISS
(`IndexFlatIP` over unit vectors, same results) for large collections.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from cocoattr.errors import UserError, notice
from cocoattr.images import path_inside
from cocoattr.query import Query, Term, parse_query, score_terms

if TYPE_CHECKING:
    from cocoattr.images import ImageInput
    from cocoattr.predictor import Predictor

FORMAT = "cocoattr-index"
VERSION = 1
SAVE_EVERY = 500  # images between partial saves during a build
# Override for `cocoattr index build` (a positive integer): save partial progress more often, e.g. on
# a machine that may be killed at any time, or in tests that SIGKILL a build.
ENV_SAVE_EVERY = "COCOATTR_INDEX_SAVE_EVERY"
# "auto" uses FAISS above this many images. Exact FAISS (IndexFlatIP) measured 2.5-4x slower
# than numpy's BLAS product at 100k-1M on a 2-core CPU (bench/README.md), so the switch only
# pays on bigger machines or sets; `search(..., backend="faiss")` chooses it explicitly.
FAISS_MIN_ITEMS = 5_000_000
GALLERY = "gallery"


# ----------------------------------------------------------------------------- the index


def safe_relative(root: Path, rel: str) -> Path:
    """`root / rel` for an index entry, refusing entries that point outside the indexed folder."""
    return path_inside(root, rel, "index", "entry", "the indexed folder")


def _root_for(spec: str) -> Path:
    if spec == GALLERY:
        from cocoattr.data.gallery import gallery_root

        return gallery_root() / "images"
    return Path(spec)


@dataclass
class Index:
    """Row i of every array describes image `paths[i]` (relative to `root`)."""

    root_spec: str  # "gallery" or an absolute folder
    paths: list[str]
    sizes: np.ndarray  # (N,) int64 bytes
    mtimes: np.ndarray  # (N,) int64 ns
    probs: np.ndarray  # (N, A) float16
    embeddings: np.ndarray  # (N, D) float32, unit rows
    attributes: list[str]
    checkpoint: dict  # {"sha256", "source"}
    attribute_text: np.ndarray | None = None  # (A, 384) MiniLM prompt embeddings of the checkpoint
    text_proj: tuple[np.ndarray, np.ndarray] | None = None  # (D, 384) weight, (D,) bias
    temperature: float = 0.1
    complete: bool = True
    _backends: dict = field(default_factory=dict, repr=False, compare=False)
    _columns: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def probs_by_column(self) -> np.ndarray:
        """`probs` as column-major float32, made once: a query reads a few whole attribute
        columns, which are then contiguous (~50x faster at 100k images than strided float16)."""
        if self._columns is None or self._columns.shape != self.probs.shape:
            self._columns = np.asfortranarray(self.probs, dtype=np.float32)
        return self._columns

    @property
    def root(self) -> Path:
        return _root_for(self.root_spec)

    def path(self, i: int) -> Path:
        return safe_relative(self.root, self.paths[i])

    def backend(self, kind: str = "auto") -> SearchBackend:
        kind = "faiss" if kind == "auto" and len(self) > FAISS_MIN_ITEMS and _has_faiss() else kind
        kind = "numpy" if kind == "auto" else kind
        if kind not in self._backends:
            self._backends[kind] = make_backend(self.embeddings, kind)
        return self._backends[kind]

    def meta(self) -> dict:
        return {
            "format": FORMAT, "version": VERSION, "root": self.root_spec, "attributes": self.attributes,
            "checkpoint": self.checkpoint, "temperature": self.temperature, "complete": self.complete,
        }  # fmt: skip

    def save(self, path: str | os.PathLike) -> None:
        """Atomically replace `path`: readers see the old index or the new one, never half of one."""
        arrays = {
            "meta": np.frombuffer(json.dumps(self.meta()).encode("utf-8"), np.uint8),
            "paths": np.array(self.paths, dtype=np.str_) if self.paths else np.zeros(0, "<U1"),
            "sizes": np.asarray(self.sizes, np.int64),
            "mtimes": np.asarray(self.mtimes, np.int64),
            "probs": np.asarray(self.probs, np.float16),
            "embeddings": np.asarray(self.embeddings, np.float32),
        }
        if self.attribute_text is not None:
            arrays["attribute_text"] = np.asarray(self.attribute_text, np.float32)
        if self.text_proj is not None:
            arrays["text_proj_weight"] = np.asarray(self.text_proj[0], np.float32)
            arrays["text_proj_bias"] = np.asarray(self.text_proj[1], np.float32)
        _atomic_savez(Path(path), arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Index:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such index file (build one with `cocoattr index build`)")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
            meta = json.loads(bytes(data["meta"]).decode("utf-8"))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
            raise UserError(f"{path}: not a readable cocoattr index ({type(e).__name__}: {e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise UserError(f"{path}: not a cocoattr index")
        if meta.get("version") != VERSION:
            raise UserError(
                f"{path}: index format version {meta.get('version')} (this cocoattr reads {VERSION}); "
                "rebuild it"
            )
        try:
            paths = [str(p) for p in data["paths"].tolist()]
            n, attrs = len(paths), [str(a) for a in meta["attributes"]]
            probs, emb = data["probs"], data["embeddings"]
            ok = (
                probs.shape == (n, len(attrs)) and emb.ndim == 2 and emb.shape[0] == n
                and data["sizes"].shape == (n,) and data["mtimes"].shape == (n,)
            )  # fmt: skip
            proj = None
            if "text_proj_weight" in data:
                proj = (data["text_proj_weight"], data["text_proj_bias"])
                ok = ok and proj[0].shape[0] == emb.shape[1] and proj[1].shape == (emb.shape[1],)
            attr_text = data.get("attribute_text")
            ok = ok and (attr_text is None or attr_text.shape[0] == len(attrs))
            index = cls(
                root_spec=str(meta["root"]), paths=paths, sizes=data["sizes"], mtimes=data["mtimes"],
                probs=probs, embeddings=emb.astype(np.float32, copy=False), attributes=attrs,
                checkpoint=dict(meta["checkpoint"]), attribute_text=attr_text, text_proj=proj,
                temperature=float(meta.get("temperature", 0.1)), complete=bool(meta.get("complete", True)),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UserError(f"{path}: malformed cocoattr index ({type(e).__name__}: {e})") from None
        if not ok:
            raise UserError(f"{path}: malformed cocoattr index (array shapes disagree)")
        if len(set(paths)) != n:
            raise UserError(f"{path}: malformed cocoattr index (duplicate paths)")
        for rel in paths:
            safe_relative(index.root, rel)
        return index


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ----------------------------------------------------------------------------- search backends


class SearchBackend(Protocol):
    """Inner-product search over the index's unit embeddings (= cosine similarity)."""

    name: str

    def scores(self, query: np.ndarray) -> np.ndarray:
        """(N,) similarity of every item to `query` (D,): used when combining with attribute scores."""
        ...

    def top_k(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, similarities) of the k most similar items, best first."""
        ...


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first; ties broken by position (deterministic)."""
    n = len(scores)
    k = max(0, min(k, n))
    if k == 0:
        return np.zeros(0, np.int64)
    cand = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
    return cand[np.lexsort((cand, -scores[cand]))]


class NumpyBackend:
    name = "numpy"

    def __init__(self, embeddings: np.ndarray) -> None:
        self.embeddings = _unit(embeddings)

    def scores(self, query: np.ndarray) -> np.ndarray:
        return self.embeddings @ _unit(query)

    def top_k(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.scores(query)
        idx = top_indices(s, k)
        return idx, s[idx]


class FaissBackend:
    """Exact FAISS inner-product search: faster top-k on large sets; the dense `scores` is numpy's."""

    name = "faiss"

    def __init__(self, embeddings: np.ndarray) -> None:
        import faiss

        self.embeddings = np.ascontiguousarray(_unit(embeddings))
        self.index = faiss.IndexFlatIP(self.embeddings.shape[1])
        if len(self.embeddings):
            self.index.add(self.embeddings)

    def scores(self, query: np.ndarray) -> np.ndarray:
        return self.embeddings @ _unit(query)

    def top_k(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = max(0, min(k, self.index.ntotal))
        if k == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        sims, idx = self.index.search(np.ascontiguousarray(_unit(query)[None]), k)
        return idx[0].astype(np.int64), sims[0]


def _has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def make_backend(embeddings: np.ndarray, kind: str = "numpy") -> SearchBackend:
    if kind == "numpy":
        return NumpyBackend(embeddings)
    if kind == "faiss":
        if not _has_faiss():
            raise UserError("the FAISS backend needs faiss-cpu (pip install faiss-cpu)")
        return FaissBackend(embeddings)
    raise UserError(f"unknown search backend {kind!r} (numpy, faiss or auto)")


# ----------------------------------------------------------------------------- building


@dataclass
class BuildReport:
    """What a build did: `computed` lists exactly the images the model was run on."""

    index: Index
    computed: list[str] = field(default_factory=list)
    reused: int = 0
    removed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    full_rebuild: bool = False
    reason: str = ""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_identity(model) -> dict:  # noqa: ANN001 - an AttributeModel (or a test stand-in)
    """sha256 of the checkpoint's weights + where they came from (what an index records).

    `load_model` records the hash of the bytes it loaded; a stand-in without it is hashed on disk."""
    from cocoattr.hub import WEIGHTS_NAME

    source = getattr(model, "source", None)
    if getattr(model, "weights_sha256", None) and source:
        return {"sha256": model.weights_sha256, "source": str(source)}
    weights = Path(source) / WEIGHTS_NAME if source else None
    if weights is None or not weights.is_file():
        raise UserError("cannot identify the checkpoint (no model.safetensors behind the loaded model)")
    return {"sha256": file_sha256(weights), "source": str(source)}


def _model_extras(model) -> dict:  # noqa: ANN001
    """Checkpoint tensors that free-text search and query parsing need, as numpy."""
    out: dict = {"temperature": float(getattr(model, "temperature", 0.1))}
    text = getattr(model, "text_embeddings", None)
    proj = getattr(model, "text_proj", None)
    if text is not None:
        out["attribute_text"] = text.detach().cpu().numpy().astype(np.float32)
    if proj is not None:
        out["text_proj"] = (proj.weight.detach().cpu().numpy(), proj.bias.detach().cpu().numpy())
    return out


def _scan(root: Path) -> dict[str, tuple[int, int]]:
    from cocoattr.images import list_images

    out = {}
    for p in list_images(root):
        st = p.stat()
        out[p.relative_to(root).as_posix()] = (int(st.st_size), int(st.st_mtime_ns))
    return out


def build_index(
    images: str | os.PathLike,
    out: str | os.PathLike,
    predictor: Predictor | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    batch_size: int = 16,
    save_every: int = SAVE_EVERY,
    progress: bool = True,
    on_error: Callable[[str, str], None] | None = None,
) -> BuildReport:
    """Create or update the index at `out` for the images under `images` (a folder or 'gallery')."""
    from tqdm import tqdm

    spec = GALLERY if str(images) == GALLERY else str(Path(images).expanduser().resolve())
    root = _root_for(spec)
    if not root.is_dir():
        raise UserError(f"{images}: not a folder of images")
    out = Path(out)
    if predictor is None:
        from cocoattr.predictor import Predictor

        predictor = Predictor.from_checkpoint(checkpoint, batch_size=batch_size)
    identity = checkpoint_identity(predictor.model)
    attributes = list(predictor.attributes)
    extras = _model_extras(predictor.model)

    old, reason = None, "new index"
    if out.exists():
        old = Index.load(out)  # a file that is not an index is an error, never overwritten
        if old.checkpoint.get("sha256") != identity["sha256"]:
            old, reason = None, "the checkpoint changed"
        elif old.attributes != attributes:
            old, reason = None, "the attribute vocabulary changed"
        elif old.root_spec != spec:
            old, reason = None, f"the indexed folder changed (was {old.root_spec})"
    files = _scan(root)
    report = BuildReport(index=None)  # type: ignore[arg-type]
    report.full_rebuild = old is None
    report.reason = reason
    kept: dict[str, tuple[int, int, np.ndarray, np.ndarray]] = {}
    if old is not None:
        for i, rel in enumerate(old.paths):
            if rel not in files:
                report.removed.append(rel)
            elif files[rel] == (int(old.sizes[i]), int(old.mtimes[i])):
                kept[rel] = (int(old.sizes[i]), int(old.mtimes[i]), old.probs[i], old.embeddings[i])
    report.reused = len(kept)
    todo = [rel for rel in files if rel not in kept]
    new: dict[str, tuple[int, int, np.ndarray, np.ndarray]] = {}

    def snapshot(complete: bool) -> Index:
        entries = {**kept, **new}
        order = sorted(entries)
        if order:
            probs = np.stack([entries[r][2] for r in order]).astype(np.float16)
            emb = np.stack([entries[r][3] for r in order]).astype(np.float32)
        else:
            d = old.embeddings.shape[1] if old is not None else 0
            probs, emb = np.zeros((0, len(attributes)), np.float16), np.zeros((0, d), np.float32)
        return Index(
            root_spec=spec, paths=order,
            sizes=np.array([entries[r][0] for r in order], np.int64),
            mtimes=np.array([entries[r][1] for r in order], np.int64),
            probs=probs, embeddings=emb,
            attributes=attributes, checkpoint=identity, attribute_text=extras.get("attribute_text"),
            text_proj=extras.get("text_proj"), temperature=extras["temperature"], complete=complete,
        )  # fmt: skip

    since_save = 0
    bar = tqdm(
        total=len(todo), unit="img", desc="indexing", disable=not progress or not todo, file=sys.stderr
    )
    try:
        for path, result in predictor.predict_files([root / rel for rel in todo]):
            rel = Path(path).relative_to(root).as_posix()
            bar.update(1)
            if isinstance(result, UserError):
                report.failed.append((rel, str(result)))
                (on_error or (lambda r, m: bar.write(f"cocoattr: skipped {m}", file=sys.stderr)))(
                    rel, str(result)
                )
                continue
            size, mtime = files[rel]
            new[rel] = (size, mtime, result.probs.astype(np.float16), result.embedding.astype(np.float32))
            report.computed.append(rel)
            since_save += 1
            if since_save >= save_every:
                snapshot(complete=False).save(out)
                since_save = 0
    except BaseException:
        if new:  # Ctrl-C or a crash: keep what was computed, the next build resumes from it
            snapshot(complete=False).save(out)
        raise
    finally:
        bar.close()
    report.index = snapshot(complete=True)
    report.index.save(out)
    return report


# ----------------------------------------------------------------------------- searching


@dataclass
class Hit:
    image: str  # path relative to the index root
    path: Path
    score: float
    attributes: dict[str, float]  # term -> p (or 1 - p for "-term"): why it ranked here
    text_similarity: float | None = None

    def to_json(self) -> dict:
        out = {"image": str(self.path), "score": round(self.score, 5), "attributes": self.attributes}
        if self.text_similarity is not None:
            out["text_similarity"] = round(self.text_similarity, 5)
        return out


def embed_free_text(index: Index, text: str) -> np.ndarray:
    """Free text -> (D,) unit vector in the index's contrastive space (MiniLM, then the checkpoint's
    text_proj), so free-text search needs no image model."""
    if index.text_proj is None:
        raise UserError("this index has no text projection; rebuild it to search by free text")
    from cocoattr.text import encode

    weight, bias = index.text_proj
    return _unit(encode([text])[0] @ weight.T + bias)


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
        hits.append(Hit(index.paths[i], index.path(i), float(scores[i]), attrs,
                        None if sims is None else float(sims[i])))  # fmt: skip
    return hits


def search_by_image(
    index: Index, image: ImageInput, k: int = 10, predictor: Predictor | None = None, backend: str = "auto"
) -> list[Hit]:
    """Nearest neighbours (cosine) of an image's embedding; the checkpoint must be the index's."""
    if predictor is None:
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
        hits.append(Hit(index.paths[i], index.path(i), float(s), shared, float(s)))
    return hits


# ----------------------------------------------------------------------------- CLI handlers


def save_every_from_env() -> int:
    """COCOATTR_INDEX_SAVE_EVERY (images between partial saves), else SAVE_EVERY."""
    raw = os.environ.get(ENV_SAVE_EVERY, "").strip()
    if not raw:
        return SAVE_EVERY
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{ENV_SAVE_EVERY}={raw!r}: expected a positive whole number of images")
    return value


def run_index_build(args: argparse.Namespace) -> int:
    """`cocoattr index build`: exit 0, or 1 if some images could not be read (the index is still written)."""
    report = build_index(args.images, args.out, checkpoint=args.checkpoint, batch_size=args.batch_size,
                         save_every=save_every_from_env())  # fmt: skip
    if report.full_rebuild and report.reason != "new index":
        notice(f"full rebuild: {report.reason}")
    notice(
        f"indexed {len(report.index)} images into {args.out}: {len(report.computed)} computed, "
        f"{report.reused} unchanged, {len(report.removed)} removed, {len(report.failed)} failed"
    )
    if report.failed:
        notice(f"{len(report.failed)} images could not be read and are not in the index")
        return 1
    return 0


def _is_image_file(text: str) -> bool:
    from cocoattr.images import IMAGE_SUFFIXES

    p = Path(text).expanduser()
    return p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()


def _quiet_transformers() -> None:
    """The MiniLM load bar would interleave with the query interpretation on stderr."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def run_search(args: argparse.Namespace) -> int:
    """`cocoattr search`: a table (or --json list) of hits best first; the interpretation goes to stderr."""
    _quiet_transformers()
    index = Index.load(args.index)
    if not index.complete:
        notice("this index is incomplete (an interrupted build); run `index build` again to finish it")
    text = " ".join(args.query)
    if len(args.query) == 1 and _is_image_file(text):
        notice(f"query by image: nearest neighbours of {text}")
        hits = search_by_image(index, Path(text).expanduser(), k=args.top_k)
    else:
        query = parse_query(text, attributes=index.attributes, attribute_embeddings=index.attribute_text)
        hits = search(index, query, k=args.top_k)
        notice(query.describe())
        for w in query.warnings:
            notice(f"warning: {w}")
    if args.json:
        json.dump([h.to_json() for h in hits], sys.stdout, indent=1)
        print()
        return 0
    if not hits:
        print("(the index is empty)" if len(index) == 0 else "(no results)")
    for rank, h in enumerate(hits, 1):
        why = "  ".join(f"{name} {p:.2f}" for name, p in h.attributes.items())
        print(f"{rank:>3}  {h.score:9.3f}  {h.image}  {why}")
    return 0


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
    from cocoattr.data.gallery import load_gallery
    from cocoattr.metrics import recall_at_k

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cocoattr.index", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--recall-gallery", action="store_true", help="Recall@K of attribute search on the gallery"
    )
    parser.add_argument(
        "--checkpoint", default="default", help="checkpoint to index the gallery with (default: 'default')"
    )
    parser.add_argument(
        "--index", default=None, help="use this gallery index instead of building a temporary one"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not args.recall_gallery:
        parser.print_help()
        return 0
    try:
        result = gallery_recall(args.checkpoint, args.index)
    except UserError as e:
        print(f"cocoattr: error: {e}", file=sys.stderr)
        return e.exit_code
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    source = result["checkpoint"]["source"]
    print(f"gallery attribute-search Recall@K ({result['n_images']} images, checkpoint {source})")
    print(f"{'query':<22} {'rel':>4} {'R@1':>6} {'R@5':>6} {'R@10':>6}")
    for row in result["queries"]:
        print(
            f"{row['query']:<22} {row['relevant']:>4} {row['R@1']:6.3f} {row['R@5']:6.3f} {row['R@10']:6.3f}"
        )
    r = result
    print(f"{'mean':<22} {'':>4} {r['R@1']:6.3f} {r['R@5']:6.3f} {r['R@10']:6.3f}")
    print(f"hit@1 {r['hit@1']:.3f}  hit@5 {r['hit@5']:.3f}  hit@10 {r['hit@10']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
