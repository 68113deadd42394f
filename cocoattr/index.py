"""The search index: predictions for a set of images, stored in one file, built incrementally.

One `.npz` file (loaded with allow_pickle=False) holds, per image, its path relative to the
indexed root, size + mtime (to spot changes), attribute probabilities (float16) and its
contrastive embedding (float32), plus JSON metadata naming the checkpoint (sha256 of its
model.safetensors + attribute names) and the few checkpoint tensors free-text search needs
(attribute prompt embeddings, text projection), so searching never loads the image model.
The file records its root, but hits are read from a folder the caller names (`serve_from`).
Optional per image: a JSON record and a JPEG thumbnail (a COCO index, `cocoattr.coco_index`).

Builds are incremental (only new or changed images are run; deleted ones are dropped; a
different checkpoint or vocabulary means a full rebuild) and crash-safe (partial progress is
saved every `save_every` images and on Ctrl-C; every write goes through `atomic_write`).
`open_or_build` is what a server calls: where an image set's index lives, whether it is
stale for the loaded checkpoint, and the rebuild when it is. Searching is `cocoattr.search`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from cocoattr.atomic import atomic_write
from cocoattr.backends import SearchBackend, choose_backend, make_backend
from cocoattr.columns import pack_bytes, unpack_bytes
from cocoattr.data.gallery import gallery_root
from cocoattr.errors import UserError, notice
from cocoattr.images import list_images, path_inside, thumbnail_jpeg

if TYPE_CHECKING:
    from cocoattr.predictor import Predictor

FORMAT = "cocoattr-index"
VERSION = 1
SAVE_EVERY = 500  # images between partial saves during a build (the CLI: cli.arguments.save_every_from_env)
GALLERY = "gallery"
INDEX_DIR = Path(__file__).resolve().parent.parent / "checkpoints"  # where servers keep their indexes
GALLERY_INDEX = INDEX_DIR / "gallery-index.npz"  # the Makefile's `make index` target


# ----------------------------------------------------------------------------- the index


def safe_relative(root: Path, rel: str) -> Path:
    """`root / rel` for an index entry, refusing entries that point outside the indexed folder."""
    return path_inside(root, rel, "index", "entry", "the indexed folder")


def image_set(images: str | os.PathLike) -> str:
    """What an index records as its root: 'gallery', or the folder as an absolute path."""
    return GALLERY if str(images) == GALLERY else str(Path(images).expanduser().resolve())


def root_of(spec: str) -> Path:
    """The folder behind an image set ('gallery' is the bundled gallery's images)."""
    return gallery_root() / "images" if spec == GALLERY else Path(spec)


@dataclass
class Index:
    """Row i of every array describes image `paths[i]` (relative to `root`)."""

    root_spec: str  # what the build recorded, "gallery" or an absolute folder; never where files are read
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
    records: list[dict] | None = None  # per image: a COCO index's id, file_name, coco_url, captions, ...
    thumbnails: list[bytes] | None = None  # per image: a small JPEG, so hits draw without the files
    info: dict = field(default_factory=dict)  # what the image set is: {"kind": "coco", "split": ...}
    folder: Path | None = None  # where hits are read: a folder the caller named (`serve_from`), else none
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
    def root(self) -> Path | None:
        return self.folder

    def path(self, i: int) -> Path | None:
        """Image i's file on this machine; None when no folder was named (a Hub index: thumbnails)."""
        return None if self.folder is None else safe_relative(self.folder, self.paths[i])

    def serve_from(self, images: str | os.PathLike | None) -> Index:
        """This index with its hits read from `images` (a folder, or 'gallery'), never from the
        root the file records: a crafted index saying `/` must not make `etc/passwd` a hit. None:
        the bundled gallery for a gallery index ('gallery' names a folder of this package), else no
        local files."""
        images = GALLERY if images is None and self.root_spec == GALLERY else images
        self.folder = None if images is None else root_of(image_set(images))
        return self

    def backend(self, kind: str = "auto") -> SearchBackend:
        kind = choose_backend(kind, len(self))
        if kind not in self._backends:
            self._backends[kind] = make_backend(self.embeddings, kind)
        return self._backends[kind]

    def incompatible(self, identity: dict, attributes: Sequence[str], spec: str) -> str | None:
        """Why this index cannot be reused for (checkpoint identity, vocabulary, image set), or None."""
        if self.checkpoint.get("sha256") != identity["sha256"]:
            return "the checkpoint changed"
        if self.attributes != list(attributes):
            return "the attribute vocabulary changed"
        if self.root_spec != spec:
            return f"the indexed folder changed (was {self.root_spec})"
        return None

    def meta(self) -> dict:
        return {
            "format": FORMAT, "version": VERSION, "root": self.root_spec, "attributes": self.attributes,
            "checkpoint": self.checkpoint, "temperature": self.temperature, "complete": self.complete,
            "info": self.info,
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
        if self.records is not None:
            blobs = [json.dumps(r, ensure_ascii=False).encode("utf-8") for r in self.records]
            arrays["records"], arrays["record_offsets"] = pack_bytes(blobs)
        if self.thumbnails is not None:
            arrays["thumbnails"], arrays["thumbnail_offsets"] = pack_bytes(self.thumbnails)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
                np.savez(f, **arrays)

        atomic_write(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike, images: str | os.PathLike | None = None) -> Index:
        """The index file at `path`, its hits read from `images` (`serve_from`)."""
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
            index, ok = cls._from_arrays(meta, data)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UserError(f"{path}: malformed cocoattr index ({type(e).__name__}: {e})") from None
        if not ok:
            raise UserError(f"{path}: malformed cocoattr index (array shapes disagree)")
        return index.checked(str(path)).serve_from(images)

    def checked(self, where: str) -> Index:
        """This index, after the checks every loader makes (unique paths, none outside the root)."""
        if len(set(self.paths)) != len(self):
            raise UserError(f"{where}: malformed cocoattr index (duplicate paths)")
        for rel in self.paths:  # lexical: the same check whichever folder is named later
            safe_relative(self.folder or Path(), rel)
        return self

    @classmethod
    def _from_arrays(cls, meta: dict, data: dict[str, np.ndarray]) -> tuple[Index, bool]:
        """(the index, whether its array shapes agree) from a loaded file's metadata and arrays."""
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
        records = thumbs = None
        if "records" in data:
            records = [json.loads(b) for b in unpack_bytes(data["records"], data["record_offsets"])]
            ok = ok and len(records) == n and all(isinstance(r, dict) for r in records)
        if "thumbnails" in data:
            thumbs = unpack_bytes(data["thumbnails"], data["thumbnail_offsets"])
            ok = ok and len(thumbs) == n
        index = cls(
            root_spec=str(meta["root"]), paths=paths, sizes=data["sizes"], mtimes=data["mtimes"],
            probs=probs, embeddings=emb.astype(np.float32, copy=False), attributes=attrs,
            checkpoint=dict(meta["checkpoint"]), attribute_text=attr_text, text_proj=proj,
            temperature=float(meta.get("temperature", 0.1)), complete=bool(meta.get("complete", True)),
            records=records, thumbnails=thumbs, info=dict(meta.get("info") or {}),
        )  # fmt: skip
        return index, ok


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


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks: the one content key (weights, uploads)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_identity(model) -> dict:  # noqa: ANN001 - an AttributeModel (or a test stand-in)
    """sha256 of the checkpoint's weights + where they came from (what an index records).

    `load_model` records the hash of the bytes it loaded; a stand-in without it is hashed on disk."""
    source = getattr(model, "source", None)
    if getattr(model, "weights_sha256", None) and source:
        return {"sha256": model.weights_sha256, "source": str(source)}
    # Lazy: cocoattr.hub imports torch and safetensors (seconds); searching an index needs neither.
    from cocoattr.hub import WEIGHTS_NAME

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


def _scan(root: Path, only: Collection[str] | None = None) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every image under `root`, or of just the `only` ones that exist there."""
    out = {}
    for p in list_images(root) if only is None else (safe_relative(root, rel) for rel in only):
        try:
            st = p.stat()
        except OSError:
            continue  # a listed file that is not there: `coco_index` reports those
        out[p.relative_to(root).as_posix()] = (int(st.st_size), int(st.st_mtime_ns))
    return out


Entry = tuple[int, int, np.ndarray, np.ndarray, bytes | None]  # size, mtime, probs, embedding, thumbnail


class _Builder:
    """One build's state: the reusable entries of the old index, the new ones, and snapshots."""

    def __init__(self, spec: str, predictor: Predictor, old: Index | None,
                 records: dict[str, dict] | None = None, thumbnails: bool = False,
                 info: dict | None = None) -> None:  # fmt: skip
        self.spec, self.old = spec, old
        self.identity = checkpoint_identity(predictor.model)
        self.attributes = list(predictor.attributes)
        self.extras = _model_extras(predictor.model)
        self.records, self.thumbnails, self.info = records, thumbnails, dict(info or {})
        self.kept: dict[str, Entry] = {}
        self.new: dict[str, Entry] = {}

    def reuse(self, files: dict[str, tuple[int, int]], report: BuildReport) -> list[str]:
        """Keep the old index's unchanged entries; returns the images still to compute."""
        old = self.old
        if old is not None:
            for i, rel in enumerate(old.paths):
                if rel not in files:
                    report.removed.append(rel)
                elif files[rel] == (int(old.sizes[i]), int(old.mtimes[i])):
                    thumb = old.thumbnails[i] if old.thumbnails is not None else self.thumb(rel)
                    size, mtime = int(old.sizes[i]), int(old.mtimes[i])
                    self.kept[rel] = (size, mtime, old.probs[i], old.embeddings[i], thumb)
        report.reused = len(self.kept)
        return [rel for rel in files if rel not in self.kept]

    def thumb(self, rel: str) -> bytes | None:
        """The image's thumbnail when this build stores them (None for an unreadable image)."""
        try:
            return thumbnail_jpeg(safe_relative(root_of(self.spec), rel)) if self.thumbnails else None
        except UserError:
            return None

    def add(self, rel: str, size_mtime: tuple[int, int], result) -> None:  # noqa: ANN001 - a Prediction
        probs, emb = result.probs.astype(np.float16), result.embedding.astype(np.float32)
        self.new[rel] = (*size_mtime, probs, emb, self.thumb(rel))

    def snapshot(self, complete: bool) -> Index:
        entries = {**self.kept, **self.new}
        order = sorted(entries)
        if order:
            probs = np.stack([entries[r][2] for r in order]).astype(np.float16)
            emb = np.stack([entries[r][3] for r in order]).astype(np.float32)
        else:
            d = self.old.embeddings.shape[1] if self.old is not None else 0
            probs, emb = np.zeros((0, len(self.attributes)), np.float16), np.zeros((0, d), np.float32)
        return Index(
            root_spec=self.spec, paths=order,
            sizes=np.array([entries[r][0] for r in order], np.int64),
            mtimes=np.array([entries[r][1] for r in order], np.int64),
            probs=probs, embeddings=emb, attributes=self.attributes, checkpoint=self.identity,
            attribute_text=self.extras.get("attribute_text"), text_proj=self.extras.get("text_proj"),
            temperature=self.extras["temperature"], complete=complete,
            records=None if self.records is None else [self.records[r] for r in order],
            thumbnails=[entries[r][4] or b"" for r in order] if self.thumbnails else None, info=self.info,
            folder=root_of(self.spec),
        )  # fmt: skip


def _predictor(
    predictor: Predictor | None, checkpoint: str | os.PathLike | None, batch_size: int, device: str = "cpu"
) -> Predictor:
    if predictor is not None:
        return predictor
    # Lazy: the predictor imports torch (seconds); loading or searching an index needs neither.
    from cocoattr.predictor import Predictor

    return Predictor.from_checkpoint(checkpoint, batch_size=batch_size, device=device)


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
    records: dict[str, dict] | None = None,
    thumbnails: bool = False,
    info: dict | None = None,
    device: str = "cpu",
    select: Callable[[str], bool] | None = None,
) -> BuildReport:
    """Create or update the index at `out` for the images under `images` (a folder or 'gallery').

    `records` (relative path -> JSON-able metadata): index exactly those images (the ones that
    exist) and store each one's record; `thumbnails`: store a 256 px JPEG per image; `select`
    (relative path -> bool): index only the images it keeps (one shard, `cocoattr.index_shards`)."""
    spec = image_set(images)
    root = root_of(spec)
    if not root.is_dir():
        raise UserError(f"{images}: not a folder of images")
    out = Path(out)
    predictor = _predictor(predictor, checkpoint, batch_size, device)
    old = (
        Index.load(out) if out.exists() else None
    )  # a file that is not an index is an error, never overwritten
    builder = _Builder(spec, predictor, old, records, thumbnails, info)
    reason = "new index" if old is None else old.incompatible(builder.identity, builder.attributes, spec)
    if reason is not None:
        builder.old = None
    report = BuildReport(index=None, full_rebuild=reason is not None, reason=reason or "")  # type: ignore[arg-type]
    files = _scan(root, None if records is None else list(records))
    if select is not None:
        files = {rel: v for rel, v in files.items() if select(rel)}
    todo = builder.reuse(files, report)
    _run(builder, predictor, root, todo, files, out, report, save_every, progress, on_error)
    report.index = builder.snapshot(complete=True)
    report.index.save(out)
    return report


def _run(builder: _Builder, predictor: Predictor, root: Path, todo: list[str],
         files: dict[str, tuple[int, int]], out: Path, report: BuildReport, save_every: int,
         progress: bool, on_error: Callable[[str, str], None] | None) -> None:  # fmt: skip
    """Run the model over `todo`, saving partial progress every `save_every` images and on the way out."""
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
            builder.add(rel, files[rel], result)
            report.computed.append(rel)
            since_save += 1
            if since_save >= save_every:
                builder.snapshot(complete=False).save(out)
                since_save = 0
    except BaseException:
        if builder.new:  # Ctrl-C or a crash: keep what was computed, the next build resumes from it
            builder.snapshot(complete=False).save(out)
        raise
    finally:
        bar.close()


# ----------------------------------------------------------------------------- serving


def default_index_path(spec: str) -> Path:
    """Where a server keeps an image set's index: the gallery's `make index` file, else one file
    per folder under checkpoints/ (named for the folder, plus a digest of its full path)."""
    if spec == GALLERY:
        return GALLERY_INDEX
    digest = hashlib.sha1(spec.encode()).hexdigest()[:8]
    return INDEX_DIR / f"index-{Path(spec).name}-{digest}.npz"


def open_or_build(
    predictor: Predictor,
    images: str | os.PathLike = GALLERY,
    path: str | os.PathLike | None = None,
    *,
    say: Callable[[str], None] = notice,
) -> Index:
    """The index of `images` for `predictor`'s checkpoint, built (progress on stderr) when missing,
    stale or incomplete; `path` defaults to `default_index_path`.

    An up-to-date index is loaded as is (no folder scan, no write: a Space's disk may be
    read-only); otherwise `build_index` updates it incrementally, reusing unchanged images.
    """
    spec = image_set(images)
    path = Path(path).expanduser() if path else default_index_path(spec)
    if path.is_file():
        index = Index.load(path)
        why = index.incompatible(checkpoint_identity(predictor.model), predictor.attributes, spec)
        why = why or (None if index.complete else "an interrupted build")
        if why is None:
            return index.serve_from(spec)  # the configured folder (the file's root agrees with it)
        say(f"index {path} is stale ({why}); updating it")
    else:
        say(f"no index at {path}: building it over {images} (first start only)")
    report = build_index(spec, path, predictor, progress=True)
    if report.failed:
        say(f"{len(report.failed)} images could not be read and are not searchable")
    return report.index
