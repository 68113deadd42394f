"""COCO captions and instances, read through pycocotools, as plain records.

The rest of cocoattr wants "which image file, which captions, which boxes" and not the COCO
object; these loaders give exactly that for both the 2014 layout
(`train2014/COCO_train2014_000000000009.jpg`) and the 2017 one (`train2017/000000000009.jpg`),
since `file_name` in the JSON already carries the difference. Problems a user can fix (broken
JSON, a wrong file, missing images) become a `UserError` naming the file, and missing images
are skipped with a summary instead of stopping at the first one.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pycocotools.coco import COCO

from cocoattr.errors import UserError
from cocoattr.images import path_inside


@dataclass(frozen=True)
class ImageRecord:
    id: int
    path: Path
    width: int
    height: int


@dataclass(frozen=True)
class Box:
    """One object instance; `bbox` is COCO's (x, y, width, height) in pixels."""

    ann_id: int
    image_id: int
    category: str
    bbox: tuple[float, float, float, float]


@dataclass
class SkipReport:
    """What a loader left out and why, so a user sees one summary rather than a crash."""

    source: str
    skipped: dict[str, list] = field(default_factory=lambda: defaultdict(list))

    def add(self, reason: str, item) -> None:
        self.skipped[reason].append(item)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def summary(self, examples: int = 3) -> str:
        if not self.count:
            return f"{self.source}: nothing skipped"
        parts = [
            f"{len(items)} {reason} (e.g. {', '.join(str(i) for i in items[:examples])})"
            for reason, items in self.skipped.items()
        ]
        return f"{self.source}: skipped " + "; ".join(parts)


def coco_paths(root: Path, kind: str, split: str) -> tuple[Path, Path]:
    """(annotation json, image folder) in the layout `download` creates: root/coco/annotations/..."""
    base = Path(root) / "coco" if (Path(root) / "coco").is_dir() else Path(root)
    return base / "annotations" / f"{kind}_{split}.json", base / split


def read_json(path: Path) -> dict:
    """A JSON object from `path`, with a UserError that says what is wrong with the file."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object at the top level, found {type(data).__name__}")
    return data


def load_coco(path: Path, kind: str | None = None) -> COCO:
    """A pycocotools COCO index of `path`; `kind` ('captions' or 'instances') checks the content."""
    path = Path(path)
    data = read_json(path)
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise UserError(f"{path}: not a COCO annotation file (no {key!r} list)")
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise UserError(f"{path}: images[{i}] lacks 'id' or 'file_name'")
    needed = {"captions": ("image_id", "caption"), "instances": ("image_id", "bbox", "category_id")}
    if kind is not None:
        if kind not in needed:
            raise ValueError(f"kind must be 'captions' or 'instances', not {kind!r}")
        for i, ann in enumerate(data["annotations"]):
            missing = [k for k in (*needed[kind], "id") if not isinstance(ann, dict) or k not in ann]
            if missing:
                hint = " (is this a captions file?)" if kind == "instances" and "caption" in ann else ""
                raise UserError(f"{path}: annotations[{i}] lacks {missing} for COCO {kind}{hint}")
        if kind == "instances" and not isinstance(data.get("categories"), list):
            raise UserError(f"{path}: COCO instances file has no 'categories' list")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        try:
            coco.createIndex()
        except (KeyError, TypeError) as e:
            raise UserError(f"{path}: inconsistent COCO annotations ({type(e).__name__}: {e})") from None
    unknown = sorted({a["image_id"] for a in data["annotations"]} - set(coco.imgs))
    if unknown:
        raise UserError(
            f"{path}: {len(unknown)} annotations refer to image ids that are not in 'images' "
            f"(e.g. {unknown[:3]})"
        )
    return coco


def image_records(
    coco: COCO, image_dir: Path, *, check_files: bool = True, source: str = "COCO"
) -> tuple[list[ImageRecord], SkipReport]:
    """Every image with its file path; missing files are skipped and listed in the report."""
    image_dir = Path(image_dir)
    report = SkipReport(source)
    records = []
    for img_id in sorted(coco.imgs):
        img = coco.imgs[img_id]
        path = path_inside(image_dir, img["file_name"], source, "image file_name")
        if check_files and not path.is_file():
            report.add("missing image files", path)
            continue
        records.append(ImageRecord(int(img_id), path, int(img.get("width", 0)), int(img.get("height", 0))))
    if check_files and coco.imgs and not records:
        raise UserError(
            f"{image_dir}: none of the {len(coco.imgs)} images listed in the annotations are there "
            f"(looked for e.g. {report.skipped['missing image files'][0]}); download them or fix --root"
        )
    return records, report


def captions_by_image(coco: COCO) -> dict[int, list[str]]:
    """The (usually five) captions of every image, in annotation-id order."""
    out: dict[int, list[str]] = {int(i): [] for i in coco.imgs}
    for ann_id in sorted(coco.anns):
        ann = coco.anns[ann_id]
        out[int(ann["image_id"])].append(str(ann["caption"]).strip())
    return out


def boxes_by_image(coco: COCO, *, include_crowd: bool = False) -> dict[int, list[Box]]:
    """Object boxes per image; crowd regions are left out unless asked for."""
    out: dict[int, list[Box]] = {int(i): [] for i in coco.imgs}
    for ann_id in sorted(coco.anns):
        ann = coco.anns[ann_id]
        if ann.get("iscrowd", 0) and not include_crowd:
            continue
        out[int(ann["image_id"])].append(_box(coco, ann))
    return out


def boxes_by_ann_id(coco: COCO, ann_ids, *, source: str = "COCO") -> tuple[dict[int, Box], SkipReport]:
    """Boxes for the given annotation ids; ids not in `coco` are reported, not fatal."""
    report = SkipReport(source)
    out = {}
    for ann_id in ann_ids:
        ann = coco.anns.get(int(ann_id))
        if ann is None:
            report.add("annotation ids not in the instances file", int(ann_id))
            continue
        out[int(ann_id)] = _box(coco, ann)
    return out, report


def _box(coco: COCO, ann: dict) -> Box:
    cat = coco.cats.get(ann["category_id"], {}).get("name", str(ann["category_id"]))
    x, y, w, h = (float(v) for v in ann["bbox"])
    return Box(int(ann["id"]), int(ann["image_id"]), cat, (x, y, w, h))
