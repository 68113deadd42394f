"""COCONut (Deng et al., CVPR 2024): human-verified panoptic masks of COCO images, turned into
attribute labels (dense, with real negatives) and per-attribute regions.

Panoptic labels are exhaustive: every pixel belongs to a segment of one of COCO panoptic's 133
categories, or to the unlabelled void. So besides "this image shows sky" they also say "this
image has no sky", which caption mining can never say. `vocab/coconut133.json` maps the
categories onto the vocabulary; the rules are:

- positive: the segments of categories that `implies` (or give as `context`) an attribute cover
  at least `MIN_AREA` (1 %) of the image; the vocabulary's own `implies` spreads positives
  further (sky -> outdoor), except to an exhaustive attribute, which only its own segments decide;
- negative: an attribute listed under `exhaustive` with no segment of its categories and none of
  the categories in its `unless` list (which may hide it), in an image whose void is at most
  `MAX_VOID` (20 %) of its pixels; its `also` attributes are ruled out with it (no person: no man);
- per object (`coconut_objects`, the thing segments): the same rules on the segment's own pixels
  (`object_labels`);
- unknown (-1, masked out of the loss like every unknown in `cocoattr.data.datasets`): the rest,
  including an attribute whose segments are there but smaller than `MIN_AREA`.

The Hub repos (checked against their dataset cards, 2026-12): `xdeng77/relabeled_coco_val`
(5,000 COCO val2017 images, one shard), `xdeng77/coconut_s` (118k train2017, two shards),
`xdeng77/coconut_b` (242k train2017 + unlabeled2017, four shards), each `data/train-*.parquet`
with one row per image:

    mask           struct{bytes: binary (PNG), path: string}   (the `datasets` Image feature)
    segments_info  struct{file_name, image_id, segments_info: list<struct{area, category_id,
                   id, iscrowd, isthing}>}                       (area int64, float64 in coconut_b)
    image_info     struct{coco_url, date_captured, file_name, height, id, license, width}

A PNG pixel's segment id is R + 256 G + 256^2 B (0 = void), as in COCO panoptic. The images
themselves are COCO's (`data download coco-images-val` ...), found as
`IMAGES/<split named in coco_url>/<file_name>`.
"""

from __future__ import annotations

import io
import json
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from cocoattr.data.captions import CaptionMiner
from cocoattr.data.coco import SkipReport
from cocoattr.data.datasets import Sample
from cocoattr.errors import UserError
from cocoattr.images import exif_rotated, path_inside
from cocoattr.vocab import Vocabulary, load_vocabulary

MIN_AREA = 0.01  # fraction of the image a positive's segments must cover
MAX_VOID = 0.2  # an image with more unlabelled pixels than this gives no negatives
MAPPING_FILE = "vocab/coconut133.json"
COLUMNS = ("mask", "segments_info", "image_info")
LABEL_COLUMNS = ("segments_info", "image_info")  # labels need no PNG: the areas are in segments_info


# ----------------------------------------------------------------------------- the mapping


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    isthing: bool
    implies: tuple[str, ...]  # what the segment's pixels are: labels and masks
    context: tuple[str, ...]  # what the segment says about the whole picture: labels only


@dataclass(frozen=True)
class Exhaustive:
    unless: frozenset[int]  # category ids that may hide the attribute: no negative when present
    also: tuple[str, ...]  # attributes ruled out together with it


@dataclass(frozen=True)
class CoconutMapping:
    categories: dict[int, Category]
    exhaustive: dict[str, Exhaustive]

    def direct(self, attribute: str) -> list[Category]:
        """The categories whose segments are `attribute` (its region)."""
        return [c for c in self.categories.values() if attribute in c.implies]


def load_mapping(vocab: Vocabulary | None = None, path: str | Path | None = None) -> CoconutMapping:
    """`vocab/coconut133.json` (or `path`), checked against `vocab`: a name it does not know is an error."""
    vocab = vocab or load_vocabulary()
    where = str(path or MAPPING_FILE)
    try:
        text = (
            Path(path).read_text("utf-8")
            if path
            else resources.files("cocoattr").joinpath(MAPPING_FILE).read_text("utf-8")
        )
        raw = json.loads(text)
        cats = {
            int(c["id"]): Category(
                int(c["id"]),
                str(c["name"]),
                bool(c["isthing"]),
                tuple(c.get("implies", ())),
                tuple(c.get("context", ())),
            )
            for c in raw["categories"]
        }
        by_name = {c.name: c.id for c in cats.values()}
        exhaustive = {
            str(a): Exhaustive(frozenset(by_name[n] for n in e.get("unless", ())), tuple(e.get("also", ())))
            for a, e in raw["exhaustive"].items()
        }
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{where}: not a COCONut category mapping ({type(e).__name__}: {e})") from None
    named = {a for c in cats.values() for a in c.implies + c.context} | set(exhaustive)
    named |= {a for e in exhaustive.values() for a in e.also}
    unknown = sorted(named - set(vocab.names))
    if unknown:
        raise UserError(f"{where}: names attributes the vocabulary does not have: {unknown}")
    undecided = sorted(a for a in exhaustive if not any(a in c.implies for c in cats.values()))
    if undecided:
        raise UserError(f"{where}: exhaustive attributes no category implies: {undecided}")
    return CoconutMapping(cats, exhaustive)


# ----------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Segment:
    id: int
    category_id: int
    area: float  # pixels
    iscrowd: bool


@dataclass(frozen=True)
class CoconutImage:
    """One parquet row without its mask: what labels need."""

    image_id: int
    file_name: str
    coco_url: str
    width: int
    height: int
    segments: tuple[Segment, ...]


def parse_row(row: Mapping) -> CoconutImage:
    """A row as `pyarrow` gives it (`Table.to_pylist()`); KeyError/TypeError/ValueError if malformed."""
    info, pan = row["image_info"], row["segments_info"]
    segments = tuple(
        Segment(int(s["id"]), int(s["category_id"]), float(s["area"]), bool(s.get("iscrowd") or 0))
        for s in pan["segments_info"] or ()
    )
    return CoconutImage(int(info["id"]), str(info["file_name"]), str(info.get("coco_url") or ""),
                        int(info["width"]), int(info["height"]), segments)  # fmt: skip


def shards(folder: Path) -> list[Path]:
    """The parquet shards of a downloaded COCONut repo (`folder/data/*.parquet`), or a UserError."""
    folder = Path(folder)
    found = sorted((folder / "data").glob("*.parquet")) if (folder / "data").is_dir() else []
    if not found:
        raise UserError(
            f"{folder}: no COCONut parquet shards under data/ "
            "(python -m cocoattr data download coconut-val --root ROOT)"
        )
    return found


def iter_rows(folder: Path, columns: Iterable[str] = COLUMNS, batch_size: int = 256) -> Iterator[dict]:
    """Every row of every shard as a dict of `columns`, one record batch in memory at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in shards(folder):
        try:
            file = pq.ParquetFile(path)
            missing = [c for c in columns if c not in file.schema_arrow.names]
            if missing:
                raise UserError(f"{path}: not a COCONut shard (no column {missing[0]!r})")
            for batch in file.iter_batches(batch_size=batch_size, columns=list(columns)):
                yield from batch.to_pylist()
        except (OSError, pa.ArrowException) as e:
            raise UserError(f"{path}: unreadable parquet shard ({type(e).__name__}: {e})") from None


def read_images(folder: Path) -> tuple[list[CoconutImage], SkipReport]:
    """Every image's segments (masks not decoded); malformed rows are skipped and reported."""
    report = SkipReport(str(folder))
    out = []
    for k, row in enumerate(iter_rows(folder, LABEL_COLUMNS)):
        try:
            out.append(parse_row(row))
        except (KeyError, TypeError, ValueError) as e:
            report.add("malformed rows", f"row {k} ({type(e).__name__}: {e})")
    return out, report


# ----------------------------------------------------------------------------- masks


def segment_ids(png: bytes) -> np.ndarray:
    """(H, W) int32 segment ids of a panoptic PNG: R + 256 G + 256^2 B (0 = void)."""
    try:
        with Image.open(io.BytesIO(png)) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.int32)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"unreadable panoptic PNG ({type(e).__name__}: {e})") from None
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def coconut_masks(
    row: Mapping, mapping: CoconutMapping | None = None, vocab: Vocabulary | None = None
) -> dict[str, np.ndarray]:
    """{attribute: (H, W) bool} for every attribute a segment of this row `implies`: the union of
    those segments' pixels (a heatmap's ground truth region). `row` is a parquet row dict."""
    mapping = mapping or load_mapping(vocab)
    ids = _mask_ids(row)
    out: dict[str, np.ndarray] = {}
    for seg in parse_row(row).segments:
        category = mapping.categories.get(seg.category_id)
        if category is None or not category.implies:
            continue
        pixels = ids == seg.id
        for name in category.implies:
            out[name] = out[name] | pixels if name in out else pixels
    return out


def photo_rows(
    folder: Path, images: Path, left_out: dict[str, int], malformed: SkipReport | None = None
) -> Iterator[tuple[dict, CoconutImage, Path]]:
    """(row, image, its photo) for each row of `folder` whose photo is under `images`, one row in
    memory at a time (the PNG still encoded): what heatmap scoring, object scoring and object
    training walk. Rows whose photo is missing, or EXIF-rotated (`load_image` turns the photo,
    the masks stay in the stored frame), are counted in `left_out` (images_not_on_disk,
    images_exif_rotated). A malformed row is a UserError, or skipped into `malformed` if given."""
    for key in ("images_not_on_disk", "images_exif_rotated"):
        left_out.setdefault(key, 0)
    for k, row in enumerate(iter_rows(folder)):
        try:
            image = parse_row(row)
        except (KeyError, TypeError, ValueError) as e:
            if malformed is None:
                raise UserError(f"{folder}: a malformed COCONut row ({type(e).__name__}: {e})") from None
            malformed.add("malformed rows", f"row {k} ({type(e).__name__}: {e})")
            continue
        path = image_path(images, image, str(folder))
        reason = (
            "images_not_on_disk"
            if not path.is_file()
            else "images_exif_rotated"
            if exif_rotated(path)
            else None
        )
        if reason:
            left_out[reason] += 1
            continue
        yield row, image, path


def _mask_ids(row: Mapping) -> np.ndarray:
    mask = row["mask"]
    return segment_ids(mask["bytes"] if isinstance(mask, Mapping) else mask)


@dataclass(frozen=True)
class CoconutObject:
    """One thing segment of a row: an object with its own pixels and labels (`object_labels`)."""

    segment: Segment
    category: Category
    mask: np.ndarray  # (H, W) bool, in the panoptic PNG's (= the photo's) frame
    labels: np.ndarray  # (A,) int8

    @property
    def box(self) -> tuple[float, float, float, float]:
        """COCO (x, y, w, h) in pixels: the mask's bounding box."""
        ys, xs = np.nonzero(self.mask)
        return (
            float(xs.min()),
            float(ys.min()),
            float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1),
        )


def object_labels(category: Category, vocab: Vocabulary, mapping: CoconutMapping) -> np.ndarray:
    """(A,) int8 labels of one object of `category`, by `image_labels`' rules on its own pixels:
    a segment is one category, so what the category `implies` (spread by the vocabulary, except
    to exhaustive attributes) is positive, and an exhaustive attribute it does not imply is
    ruled out (with its `also`) unless the category is in that attribute's `unless` list
    (a car may be a truck). `context` says nothing about the object: it is left out."""
    labels = np.full(len(vocab), -1, dtype=np.int8)
    own = set(category.implies)
    for name in vocab.closure(own) - set(mapping.exhaustive):
        labels[vocab.index(name)] = 1
    for name, rule in mapping.exhaustive.items():
        if name in own:
            labels[vocab.index(name)] = 1
        elif category.id not in rule.unless:
            labels[vocab.index(name)] = 0
            for other in rule.also:
                labels[vocab.index(other)] = 0
    return labels


def coconut_objects(
    row: Mapping, vocab: Vocabulary, mapping: CoconutMapping | None = None
) -> list[CoconutObject]:
    """The objects of a parquet row: its thing segments (stuff is scene, not an object; crowd
    segments are several objects at once) that have pixels in the PNG."""
    mapping = mapping or load_mapping(vocab)
    ids = _mask_ids(row)
    out = []
    for seg in parse_row(row).segments:
        category = mapping.categories.get(seg.category_id)
        if category is None or not category.isthing or seg.iscrowd:
            continue
        pixels = ids == seg.id
        if pixels.any():
            out.append(CoconutObject(seg, category, pixels, object_labels(category, vocab, mapping)))
    return out


# ----------------------------------------------------------------------------- labels


def image_labels(image: CoconutImage, vocab: Vocabulary, mapping: CoconutMapping) -> np.ndarray:
    """(A,) int8 labels of one image: 1 positive, 0 negative, -1 unknown (rules in the module doc)."""
    total = float(image.width * image.height)
    labels = np.full(len(vocab), -1, dtype=np.int8)
    if total <= 0:
        return labels
    region: dict[str, float] = {}  # attribute -> pixels of the segments that are it
    evidence: dict[str, float] = {}  # the same, counting `context` too
    present: set[int] = set()
    for seg in image.segments:
        category = mapping.categories.get(seg.category_id)
        if category is None:
            continue
        present.add(category.id)
        for name in category.implies:
            region[name] = region.get(name, 0.0) + seg.area
        for name in (*category.implies, *category.context):
            evidence[name] = evidence.get(name, 0.0) + seg.area
    direct = {a for a, px in evidence.items() if px / total >= MIN_AREA}
    for name in vocab.closure(direct) - set(mapping.exhaustive):
        labels[vocab.index(name)] = 1
    void = 1.0 - sum(s.area for s in image.segments) / total
    for name, rule in mapping.exhaustive.items():
        pixels = region.get(name, 0.0)
        if pixels / total >= MIN_AREA:
            labels[vocab.index(name)] = 1
        elif pixels == 0 and void <= MAX_VOID and not (rule.unless & present):
            labels[vocab.index(name)] = 0
            for other in rule.also:
                labels[vocab.index(other)] = 0
    return labels


def merge_labels(dense: np.ndarray, mined: np.ndarray) -> np.ndarray:
    """COCONut's labels where it decides, the caption-mined ones where it says unknown."""
    return np.where(dense != -1, dense, mined).astype(np.int8)


def image_path(images: Path, image: CoconutImage, source: str) -> Path:
    """`images/<split>/<file_name>`, the split read from coco_url (val2017, train2017, unlabeled2017)."""
    split = PurePosixPath(urllib.parse.urlsplit(image.coco_url).path).parent.name
    folder = path_inside(images, split, source, "coco_url split") if split else Path(images)
    return path_inside(folder, image.file_name, source, "image file_name")


def coconut_samples(
    folder: Path,
    images: Path,
    vocab: Vocabulary | None = None,
    *,
    captions: Mapping[int, list[str]] | None = None,
    miner: CaptionMiner | None = None,
    check_files: bool = True,
) -> tuple[list[Sample], list[Sample] | None, SkipReport]:
    """(samples with COCONut labels, the same merged with caption-mined labels when `captions` is
    given else None, what was skipped). Images missing from `images` are skipped and reported."""
    vocab = vocab or load_vocabulary()
    mapping = load_mapping(vocab)
    records, report = read_images(folder)
    miner = miner or (CaptionMiner(vocab) if captions is not None else None)
    dense, merged = [], [] if captions is not None else None
    for image in records:
        path = image_path(images, image, str(folder))
        if check_files and not path.is_file():
            report.add("missing image files", path)
            continue
        labels = image_labels(image, vocab, mapping)
        dense.append(Sample(image.image_id, path, labels, None, "coconut"))
        if merged is not None and miner is not None:
            mined = miner.labels(captions.get(image.image_id, []))
            merged.append(Sample(image.image_id, path, merge_labels(labels, mined), None, "coconut+captions"))
    if check_files and records and not dense:
        raise UserError(
            f"{images}: none of the {len(records)} COCONut images are there "
            f"(looked for e.g. {report.skipped['missing image files'][0]}); download them or fix the path"
        )
    return dense, merged, report


def coconut_object_samples(
    folder: Path, images: Path, vocab: Vocabulary | None = None
) -> tuple[list[Sample], SkipReport]:
    """One sample per thing segment (`coconut_objects`): its labels, its box and its mask as COCO
    RLE, for per-object training (`data.objects: region` reads the mask, `crop` crops the box).
    Rows whose photo is missing, or EXIF-rotated (the masks are in the stored frame), are skipped
    and reported; masks are decoded one row at a time."""
    from pycocotools import mask as rle

    vocab = vocab or load_vocabulary()
    mapping = load_mapping(vocab)
    report, left_out = SkipReport(str(folder)), {}
    out = []
    for row, image, path in photo_rows(folder, images, left_out, malformed=report):
        for obj in coconut_objects(row, vocab, mapping):
            encoded = rle.encode(np.asfortranarray(obj.mask, dtype=np.uint8))
            out.append(Sample(image.image_id, path, obj.labels, obj.box, "coconut-objects", encoded))
    for reason, n in left_out.items():
        if n:
            report.add(reason.replace("_", " "), f"{n} rows")
    return out, report


# ----------------------------------------------------------------------------- coverage


def coverage(vocab: Vocabulary | None = None, mapping: CoconutMapping | None = None) -> str:
    """Markdown: which of the 133 categories map to which attributes, and which vocabulary
    attributes gain dense labels (positives, and negatives for the exhaustive ones)."""
    vocab = vocab or load_vocabulary()
    mapping = mapping or load_mapping(vocab)
    cats = sorted(mapping.categories.values(), key=lambda c: c.id)
    names = {c.id: c.name for c in cats}
    mapped = [c for c in cats if c.implies or c.context]
    lines = [
        f"{len(mapped)} of the {len(cats)} categories ({sum(c.isthing for c in mapped)} of "
        f"{sum(c.isthing for c in cats)} things, {sum(not c.isthing for c in mapped)} of "
        f"{sum(not c.isthing for c in cats)} stuff) map onto the vocabulary.",
        "",
        "| id | category | kind | implies (region) | context | + through the vocabulary |",
        "|---|---|---|---|---|---|",
    ]
    for c in cats:
        own = set(c.implies + c.context)
        spread = sorted(vocab.closure(own) - own - set(mapping.exhaustive))  # as `image_labels` spreads
        lines.append(f"| {c.id} | {c.name} | {'thing' if c.isthing else 'stuff'} | {', '.join(c.implies)} | "
                     f"{', '.join(c.context)} | {', '.join(spread)} |")  # fmt: skip
    exhaustive = set(mapping.exhaustive)
    targets = {a for c in cats for a in c.implies + c.context}
    positive = (vocab.closure(targets) - exhaustive) | exhaustive
    negative = exhaustive | {a for e in mapping.exhaustive.values() for a in e.also}
    both = positive & negative
    lines += [
        "",
        f"{len(positive | negative)} of the {len(vocab)} vocabulary attributes gain dense labels: "
        f"{len(both)} positives and negatives, {len(positive - negative)} positives only, "
        f"{len(negative - positive)} negatives only (ruled out with an exhaustive one).",
        "",
        "| attribute | type | labels | from categories | negative unless |",
        "|---|---|---|---|---|",
    ]
    for attr in vocab:
        name = attr.name
        if name not in positive | negative:
            continue
        kind = "positive + negative" if name in both else "positive" if name in positive else "negative"
        source = ", ".join(c.name for c in cats if name in c.implies + c.context)
        if not source:
            parents = [a for a, e in mapping.exhaustive.items() if name in e.also]
            via = sorted(a for a in targets if a != name and name in vocab.closure({a}))
            source = f"(no {', '.join(parents)})" if parents else f"(via {', '.join(via)})"
        rule = mapping.exhaustive.get(name)
        unless = ", ".join(sorted(names[i] for i in rule.unless)) if rule else ""
        lines.append(f"| {name} | {attr.type} | {kind} | {source} | {unless} |")
    missing = [a.name for a in vocab if a.name not in positive | negative]
    lines += ["", f"No COCONut labels ({len(missing)}): {', '.join(missing)}."]
    return "\n".join(lines) + "\n"
