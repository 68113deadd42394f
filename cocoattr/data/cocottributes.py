"""COCO Attributes (Patterson & Hays, ECCV 2016): object patches with 204 attribute votes.

The data ships only as a pickle, and unpickling runs whatever the file says, so it is read
through `RestrictedUnpickler`, which rebuilds plain containers and numpy arrays and refuses
every other global before it is looked up (nothing in a hostile file gets to run).

The pickle is a dict: `ann_vecs` {patch_id: float array (204,) of soft votes in [0, 1]},
`patch_id_to_ann_id` {patch_id: COCO-2014 annotation id}, `split` {patch_id: 'train2014' |
'val2014'}, `attributes` [{'id', 'name'}] in column order, names sometimes '/'-separated
alternatives ("fur/furry"). Patches are COCO-2014 object instances, so the 2014 instances file
gives each patch's image and box.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import importlib
import pickle
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cocoattr.data.coco import Box, SkipReport, boxes_by_ann_id, load_coco
from cocoattr.errors import UserError
from cocoattr.vocab import Vocabulary

POSITIVE_VOTE = 0.5

# Globals a pickle of dicts/lists/strings/numpy arrays needs, and nothing more. Old pickles say
# numpy.core, new ones numpy._core; both are resolved to the real objects without importing the
# numpy.core shim (deprecated in numpy 2). `_codecs.encode` is how Python 3 writes `bytes` (the
# raw array buffer) at protocol 2; it only converts a str to bytes.
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
_CODECS_ENCODE = ("_codecs", "encode")


def _resolve(module: str, name: str):
    if module == "numpy":
        return getattr(np, name)
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 2
        multiarray = importlib.import_module("numpy.core.multiarray")
    return getattr(multiarray, name)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler for data only: any global outside `_ALLOWED` raises UserError unresolved."""

    def __init__(self, file, *, source: str | Path = "<pickle>", **kwargs) -> None:
        super().__init__(file, **kwargs)
        self.source = str(source)

    def find_class(self, module: str, name: str):
        # Python 2 names ("__builtin__", "commands.Popen") as the stock Unpickler maps them.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) == _CODECS_ENCODE:
            return codecs.encode
        if (module, name) not in _NUMPY_GLOBALS:
            raise UserError(
                f"refusing to unpickle {module}.{name} from {self.source}: the file asks to run code, "
                "which a COCO Attributes pickle never needs — it may be tampered with"
            )
        return _resolve(module, name)

    def persistent_load(self, pid):
        raise UserError(f"refusing to unpickle a persistent id from {self.source}")


def safe_load_pickle(path: Path) -> object:
    """Load a data-only pickle (Python 2 or 3) from `path` through `RestrictedUnpickler`."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, source=path, encoding="latin1").load()
    except FileNotFoundError:
        raise UserError(
            f"{path}: file not found (python -m cocoattr data download coco-attributes)"
        ) from None
    except UserError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise UserError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None


@dataclass
class CocoAttributes:
    """The pickle's content as arrays: row i is patch `patch_ids[i]`."""

    patch_ids: np.ndarray  # (P,) int64
    ann_ids: np.ndarray  # (P,) int64, COCO-2014 annotation ids
    splits: list[str]  # (P,) 'train2014' | 'val2014'
    votes: np.ndarray  # (P, C) float32 in [0, 1]
    columns: list[str]  # (C,) attribute names as in the file


def load_cocottributes(path: Path) -> CocoAttributes:
    """Read and check cocottributes_eccv_version.pkl; a UserError says what is wrong with it."""
    path = Path(path)
    data = safe_load_pickle(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a dict at the top level, found {type(data).__name__}")
    missing = [k for k in ("ann_vecs", "patch_id_to_ann_id", "split", "attributes") if k not in data]
    if missing:
        raise UserError(f"{path}: not a COCO Attributes pickle (missing keys {missing})")
    attrs = data["attributes"]
    try:
        attrs = sorted(attrs, key=lambda a: a["id"]) if all("id" in a for a in attrs) else list(attrs)
        columns = [str(a["name"]) for a in attrs]
    except (TypeError, KeyError) as e:
        raise UserError(f"{path}: 'attributes' must be a list of {{'id', 'name'}} dicts ({e})") from None
    vecs, to_ann, split = data["ann_vecs"], data["patch_id_to_ann_id"], data["split"]
    patch_ids = sorted(vecs)
    lost = [p for p in patch_ids if p not in to_ann or p not in split]
    if lost:
        raise UserError(
            f"{path}: {len(lost)} patches have votes but no annotation id or split (e.g. {lost[:3]})"
        )
    votes = np.zeros((len(patch_ids), len(columns)), dtype=np.float32)
    for i, p in enumerate(patch_ids):
        row = np.asarray(vecs[p], dtype=np.float32).reshape(-1)
        if row.shape[0] != len(columns):
            raise UserError(
                f"{path}: patch {p} has {row.shape[0]} votes but the file lists {len(columns)} attributes"
            )
        votes[i] = row
    if votes.size and (np.nanmin(votes) < 0 or np.nanmax(votes) > 1 or np.isnan(votes).any()):
        raise UserError(f"{path}: votes must lie in [0, 1]")
    return CocoAttributes(
        patch_ids=np.asarray(patch_ids, dtype=np.int64),
        ann_ids=np.asarray([int(to_ann[p]) for p in patch_ids], dtype=np.int64),
        splits=[_text(split[p]) for p in patch_ids],
        votes=votes,
        columns=columns,
    )


def _text(value) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def votes_to_labels(votes: np.ndarray) -> np.ndarray:
    """Soft votes -> int8 labels: >= 0.5 positive, exactly 0 negative, anything between unknown.

    A vote is the fraction of annotators who ticked the attribute (the paper had several workers
    per patch). A majority is a positive; nobody ticking it is a judged negative, because workers
    saw the whole attribute list for the patch; a minority tick means the workers disagreed, and
    training on a guess either way would teach noise, so it stays unknown (-1).
    """
    votes = np.asarray(votes, dtype=np.float32)
    labels = np.full(votes.shape, -1, dtype=np.int8)
    labels[votes >= POSITIVE_VOTE] = 1
    labels[votes == 0] = 0
    return labels


@dataclass
class ColumnMapping:
    """Which file columns feed which vocabulary attributes, and what was left unmatched."""

    columns: dict[str, list[int]]  # vocabulary name -> column indices
    unmatched_columns: list[str] = field(default_factory=list)
    unmapped_attributes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"COCO Attributes: {len(self.columns)} vocabulary attributes matched "
            f"({sum(map(len, self.columns.values()))} columns); "
            f"{len(self.unmatched_columns)} columns unused: {', '.join(self.unmatched_columns) or '-'}"
        )


def map_columns(columns: Iterable[str], vocab: Vocabulary) -> ColumnMapping:
    """Match file columns to vocabulary attributes through each attribute's `coco_attributes`.

    Case-insensitive; a column "fur/furry" matches if any '/'-alternative matches a name.
    """
    columns = list(columns)
    alternatives = [{s.strip().lower() for s in c.split("/") if s.strip()} for c in columns]
    mapping: dict[str, list[int]] = {}
    used: set[int] = set()
    for attr in vocab:
        wanted = {n.strip().lower() for n in attr.coco_attributes}
        hits = [i for i, alts in enumerate(alternatives) if alts & wanted]
        if hits:
            mapping[attr.name] = hits
            used.update(hits)
    return ColumnMapping(
        columns=mapping,
        unmatched_columns=[c for i, c in enumerate(columns) if i not in used],
        unmapped_attributes=[a.name for a in vocab if a.name not in mapping],
    )


def vocab_labels(data: CocoAttributes, vocab: Vocabulary, mapping: ColumnMapping | None = None) -> np.ndarray:
    """(P, A) int8 labels in vocabulary order; attributes with no column are unknown (-1).

    Several columns for one attribute ("gray", "grey") are merged by their highest vote: the
    attribute is present if annotators ticked any of its names.
    """
    mapping = mapping or map_columns(data.columns, vocab)
    labels = np.full((len(data.patch_ids), len(vocab)), -1, dtype=np.int8)
    for name, cols in mapping.columns.items():
        labels[:, vocab.index(name)] = votes_to_labels(data.votes[:, cols].max(axis=1))
    return labels


@dataclass(frozen=True)
class Patch:
    patch_id: int
    image_id: int
    image_path: Path
    box: Box
    split: str


def join_instances(
    data: CocoAttributes, instances: dict[str, Path], image_dirs: dict[str, Path], *, check_files: bool = True
) -> tuple[list[Patch | None], SkipReport]:
    """Each patch's image file and box from the COCO-2014 instances files (None where missing).

    `instances` and `image_dirs` are keyed by split ('train2014', 'val2014'); the result keeps
    the row order of `data` so it lines up with `vocab_labels`.
    """
    report = SkipReport("COCO Attributes")
    out: list[Patch | None] = [None] * len(data.patch_ids)
    for split in sorted(set(data.splits)):
        rows = [i for i, s in enumerate(data.splits) if s == split]
        if split not in instances:
            for i in rows:
                report.add(f"patches in split {split} (no instances file given)", int(data.patch_ids[i]))
            continue
        coco = load_coco(instances[split], "instances")
        boxes, missing = boxes_by_ann_id(coco, (data.ann_ids[i] for i in rows), source=str(instances[split]))
        for reason, items in missing.skipped.items():
            report.skipped[f"{reason} {Path(instances[split]).name}"].extend(items)
        for i in rows:
            box = boxes.get(int(data.ann_ids[i]))
            if box is None:
                continue
            path = Path(image_dirs[split]) / coco.imgs[box.image_id]["file_name"]
            if check_files and not path.is_file():
                report.add("missing image files", path)
                continue
            out[i] = Patch(int(data.patch_ids[i]), box.image_id, path, box, split)
    if data.patch_ids.size and not any(out):
        raise UserError(f"COCO Attributes: no patch could be joined with COCO images; {report.summary()}")
    return out, report


def context_box(
    bbox: tuple[float, float, float, float], width: int, height: int, context: float = 0.2
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a COCO box grown by `context` of its size on every side.

    Attributes such as "flying", "parked" or "wet" are partly judged from the surroundings, so a
    tight crop hides evidence; the enlarged box is clipped to the image.
    """
    x, y, w, h = bbox
    dx, dy = w * context, h * context
    left, top = max(0, int(round(x - dx))), max(0, int(round(y - dy)))
    right, bottom = min(width, int(round(x + w + dx))), min(height, int(round(y + h + dy)))
    if right <= left or bottom <= top:  # degenerate box: keep at least one pixel
        right, bottom = min(width, left + 1), min(height, top + 1)
    return left, top, right, bottom


def relative_box(
    bbox: tuple[float, float, float, float], width: int, height: int
) -> tuple[float, float, float, float]:
    """A COCO box (x, y, w, h) in pixels as (x1, y1, x2, y2) fractions of the image, clipped to
    it: what `inference.region_cells` reads for a box."""
    x, y, w, h = bbox
    return (max(0.0, x / width), max(0.0, y / height), min(1.0, (x + w) / width), min(1.0, (y + h) / height))


def crop_with_context(
    image: Image.Image, bbox: tuple[float, float, float, float], context: float = 0.2
) -> Image.Image:
    """The object in `bbox` (COCO x, y, w, h) with surrounding context, as a new PIL image."""
    return image.crop(context_box(bbox, image.width, image.height, context))
