"""A search index over a COCO split: `cocoattr index build --coco ROOT --split val2017`.

Reads the split's captions and instances JSON through `cocoattr.data.coco` in the layout
`cocoattr data download coco-captions coco-instances coco-images-val` creates
(ROOT/coco/annotations/{captions,instances}_SPLIT.json, ROOT/coco/SPLIT/*.jpg; ROOT may also
be the `coco` folder itself), and builds an ordinary `cocoattr.index` over the split's image
folder that also stores, per image, its COCO record (id, file name, coco_url, width, height,
captions, ground-truth categories) and a 256 px JPEG thumbnail, so hits can be shown from
the index alone (a Space that has the index but not the 20 GB of images). Builds stay
incremental and resumable: this only adds the records and thumbnails to `build_index`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cocoattr.data.coco import boxes_by_image, captions_by_image, coco_paths, image_records, load_coco
from cocoattr.errors import UserError
from cocoattr.index import SAVE_EVERY, BuildReport, build_index

if TYPE_CHECKING:
    from cocoattr.predictor import Predictor

SPLITS = ("val2017", "train2017", "val2014", "train2014")


def split_files(root: str | os.PathLike, split: str) -> tuple[Path, Path, Path]:
    """(captions json, instances json, image folder) of `split` under `root`, or one UserError
    line saying what is missing and how to get it."""
    if split not in SPLITS:
        raise UserError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"--coco {root}: no such folder (the --root given to `cocoattr data download`)")
    captions, images = coco_paths(root, "captions", split)
    instances, _ = coco_paths(root, "instances", split)
    missing = [p for p in (captions, instances) if not p.is_file()]
    if missing or not images.is_dir():
        what = ", ".join(str(p) for p in missing) or f"the image folder {images}"
        raise UserError(
            f"--coco {root}: not a COCO root for {split} (no {what}); run `cocoattr data download "
            f"coco-captions coco-instances coco-images-{_images_resource(split)} --root {root}`"
        )
    return captions, instances, images


def _images_resource(split: str) -> str:
    """The `data download` name of a split's images (cocoattr.data.resources)."""
    return {"val2017": "val", "train2017": "train", "val2014": "val2014", "train2014": "train2014"}[split]


def coco_url(split: str, file_name: str) -> str:
    return f"http://images.cocodataset.org/{split}/{file_name}"


def coco_records(
    captions_json: Path, instances_json: Path, image_dir: Path, split: str
) -> tuple[dict[str, dict], int]:
    """(relative path -> the record an index stores, for every image of the split that is on
    disk; how many annotated images are not on disk)."""
    caps = load_coco(captions_json, "captions")
    inst = load_coco(instances_json, "instances")
    captions, boxes = captions_by_image(caps), boxes_by_image(inst)
    records, skipped = image_records(caps, image_dir, source=str(captions_json))
    out = {}
    for rec in records:
        img = caps.imgs[rec.id]
        rel = rec.path.relative_to(image_dir).as_posix()
        categories = sorted({b.category for b in boxes.get(rec.id, [])})
        out[rel] = {
            "coco_id": rec.id, "file_name": str(img["file_name"]),
            "coco_url": str(img.get("coco_url") or coco_url(split, str(img["file_name"]))),
            "width": rec.width, "height": rec.height,
            "captions": captions.get(rec.id, []), "categories": categories,
        }  # fmt: skip
    return out, skipped.count


def build_coco_index(
    root: str | os.PathLike,
    split: str,
    out: str | os.PathLike,
    predictor: Predictor | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    batch_size: int = 16,
    save_every: int = SAVE_EVERY,
    progress: bool = True,
    on_error: Callable[[str, str], None] | None = None,
    device: str = "cpu",
    select: Callable[[str], bool] | None = None,
    extra_info: dict | None = None,
) -> tuple[BuildReport, int]:
    """Create or update the index at `out` over COCO `split` under `root`; returns the build
    report and how many annotated images are not on disk (left out). `select` and `extra_info`:
    one shard of the split (`cocoattr.index_shards`)."""
    captions_json, instances_json, image_dir = split_files(root, split)
    records, missing = coco_records(captions_json, instances_json, image_dir, split)
    info = {"kind": "coco", "split": split, "images": len(records),
            "annotations": [captions_json.name, instances_json.name], **(extra_info or {})}  # fmt: skip
    report = build_index(image_dir, out, predictor, checkpoint=checkpoint, batch_size=batch_size,
                         save_every=save_every, progress=progress, on_error=on_error,
                         records=records, thumbnails=True, info=info, device=device, select=select)  # fmt: skip
    return report, missing
