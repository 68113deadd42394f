"""Per-object attributes scored against ground-truth objects (`evaluate --objects`).

Each object is scored three ways, so a reader sees what a region buys: the whole image's
probabilities (what a user gets without objects), the head restricted to the object's box, and,
where the data has one, restricted to its mask (`inference.region_cells`: one rule for both).
Two sources:

- COCO Attributes (`--coco-attributes PKL --coco ROOT`): the annotated COCO-2014 boxes, labels
  the per-object votes mapped onto the vocabulary (`data.cocottributes.vocab_labels`: unknowns
  masked). Boxes only.
- COCONut (`--coconut FOLDER --coco ROOT`): the thing segments, masks from the panoptic PNG, boxes
  their bounding boxes, labels from the category (`data.coconut.object_labels`).

The metrics treat objects as `metrics.evaluate` treats images: masked mAP over attributes, mean
per-object AUC, precision@k of each object's top-k known attributes. EXIF-rotated photos are
left out, as in `evaluate --heatmaps` (the annotations are in the stored pixels' frame).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cocoattr import metrics
from cocoattr.data.coco import coco_paths
from cocoattr.data.coconut import CoconutMapping, coconut_objects, load_mapping, photo_rows
from cocoattr.data.cocottributes import relative_box
from cocoattr.data.datasets import Sample, cocottributes_samples
from cocoattr.errors import UserError
from cocoattr.images import exif_rotated, load_image
from cocoattr.predictor import Predictor
from cocoattr.vocab import Vocabulary, load_vocabulary

REGIONS = ("image", "box", "mask")  # the columns of the table, in this order
TOP_K = (1, 5)
COCO_ATTRIBUTE_SPLITS = ("train2014", "val2014")


@dataclass(frozen=True)
class GroundTruthObject:
    category: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in [0, 1] of the image
    mask: np.ndarray | None  # (H, W) bool in the photo's frame, or None (boxes only)
    labels: np.ndarray  # (A,) int8 in vocabulary order: 1, 0, -1 unknown


@dataclass(frozen=True)
class ObjectTarget:
    """One photo and its objects, built on demand (a COCONut PNG stays encoded until scored)."""

    path: Path
    objects: Callable[[], list[GroundTruthObject]]


# ----------------------------------------------------------------------------- sources


def _images_root(images: str | os.PathLike | None, flag: str) -> Path:
    if images is None:
        raise UserError(f"{flag} takes its photos from --coco ROOT")
    root = Path(images).expanduser()
    if not root.is_dir():
        raise UserError(f"--coco {images}: no such folder (the COCO root holding the photos)")
    return root


def coconut_object_targets(folder: str | os.PathLike, images: str | os.PathLike | None, vocab: Vocabulary,
                           limit: int | None = None) -> tuple[list[ObjectTarget], dict[str, int]]:  # fmt: skip
    """One target per row of a downloaded COCONut repo whose photo is under `images` and which has
    a thing segment; also how many rows were left out and why."""
    root, folder = _images_root(images, "--coconut FOLDER"), Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"--coconut {folder}: no such folder (a `cocoattr data download coconut-val` folder)")
    mapping = load_mapping(vocab)
    things = {c.id for c in mapping.categories.values() if c.isthing}
    targets, left_out = [], {"images_not_on_disk": 0, "images_exif_rotated": 0, "images_without_objects": 0}
    for row, image, path in photo_rows(folder, root, left_out):
        if not any(s.category_id in things and not s.iscrowd for s in image.segments):
            left_out["images_without_objects"] += 1
            continue
        targets.append(ObjectTarget(path, partial(_coconut_objects, row, vocab, mapping)))
        if limit is not None and len(targets) >= limit:
            break
    return targets, left_out


def _coconut_objects(row: dict, vocab: Vocabulary, mapping: CoconutMapping) -> list[GroundTruthObject]:
    out = []
    for o in coconut_objects(row, vocab, mapping):
        h, w = o.mask.shape
        out.append(GroundTruthObject(o.category.name, relative_box(o.box, w, h), o.mask, o.labels))
    return out


def cocottributes_object_targets(pickle_path: str | os.PathLike, coco: str | os.PathLike | None, vocab: Vocabulary,
                                 limit: int | None = None) -> tuple[list[ObjectTarget], dict[str, int]]:  # fmt: skip
    """One target per COCO-2014 photo with a COCO Attributes patch that has a known label; the
    boxes from the 2014 instances files under `coco` (`coco_paths` layout)."""
    root = _images_root(coco, "--coco-attributes PKL")
    pickle_path = Path(pickle_path).expanduser()
    if not pickle_path.is_file():
        raise UserError(f"--coco-attributes {pickle_path}: no such file "
                        "(python -m cocoattr data download coco-attributes)")  # fmt: skip
    instances, image_dirs = {}, {}
    for split in COCO_ATTRIBUTE_SPLITS:
        ann, folder = coco_paths(root, "instances", split)
        if ann.is_file():
            instances[split], image_dirs[split] = ann, folder
    if not instances:
        raise UserError(f"--coco {root}: no instances_train2014.json or instances_val2014.json under "
                        "annotations/ (the COCO-2014 boxes the patches are; `cocoattr data download coco-instances`)")  # fmt: skip
    samples, report, _ = cocottributes_samples(pickle_path, instances, image_dirs, vocab)
    by_path: dict[Path, list[Sample]] = {}
    unlabelled = 0
    for s in samples:
        if (s.labels != metrics.UNKNOWN).any():
            by_path.setdefault(Path(s.path), []).append(s)
        else:
            unlabelled += 1
    targets, rotated = [], 0
    for path, patches in by_path.items():
        if exif_rotated(path):
            rotated += 1
            continue
        targets.append(ObjectTarget(path, partial(_patch_objects, path, patches)))
        if limit is not None and len(targets) >= limit:
            break
    return targets, {"patches_not_joined": report.count, "patches_without_known_labels": unlabelled,
                     "images_exif_rotated": rotated}  # fmt: skip


def _patch_objects(path: Path, patches: list[Sample]) -> list[GroundTruthObject]:
    with Image.open(path) as im:
        w, h = im.size
    out = []
    for s in patches:
        out.append(GroundTruthObject("", relative_box(s.box, w, h), None, s.labels))
    return out


# ----------------------------------------------------------------------------- scoring


def score_objects(predictor: Predictor, targets: list[ObjectTarget], vocab: Vocabulary) -> dict:
    """Every target's objects through the checkpoint: {'labels': (N, A'), 'image' / 'box' /
    'mask': (N, A') probabilities (mask only when every object has one), 'n_images',
    'failed_images', 'categories'}, A' the attributes the checkpoint and vocabulary share."""
    names = predictor.attributes
    shared = [vocab.index(n) for n in names if n in vocab]
    if len(shared) != len(names):
        raise UserError("--objects needs a checkpoint whose attributes are in the bundled vocabulary")
    rows: dict[str, list[np.ndarray]] = {k: [] for k in (*REGIONS, "labels")}
    failed, images, categories, masks = [], 0, [], True
    for target in targets:
        try:
            image = load_image(target.path)
        except UserError as e:
            failed.append(str(e))
            continue
        objects = target.objects()
        if not objects:
            continue
        images += 1
        masks = masks and all(o.mask is not None for o in objects)
        regions = [o.box for o in objects] + [o.mask for o in objects if o.mask is not None]
        out, found = predictor.engine.with_regions(predictor.pixels([image]), [regions])
        probs = torch.sigmoid(found[0]).numpy()
        k = len(objects)
        rows["image"].append(np.repeat(out.probs.numpy(), k, axis=0))
        rows["box"].append(probs[:k])
        rows["mask"].append(probs[k:])
        rows["labels"].append(np.stack([o.labels for o in objects])[:, shared])
        categories += [o.category for o in objects]
    result = {k: np.concatenate(v) if v else None for k, v in rows.items()}
    if not masks:
        result["mask"] = None
    return {**result, "n_images": images, "failed_images": failed, "categories": categories}


def object_metrics(scores: np.ndarray, labels: np.ndarray, names: list[str], types: list[str]) -> dict:
    """The per-object figures of one column (objects as rows)."""
    m = metrics.evaluate(scores, labels, names, types)
    out = {"mAP": m["mAP"], "mean_per_object_auc": m["mean_per_image_auc"]}
    for k in TOP_K:
        out[f"precision_at_{k}"] = metrics._json_safe(metrics.precision_at_k(scores, labels, k))
    return out | {"n_attributes_scored": m["n_attributes_scored"], "mAP_by_type": m["mAP_by_type"]}


def evaluate_objects(checkpoint: str | os.PathLike | None, coco: str | os.PathLike | None = None, *,
                     coconut: str | os.PathLike | None = None, coco_attributes: str | os.PathLike | None = None,
                     limit: int | None = None, device: str = "cpu") -> dict:  # fmt: skip
    """Per-object scores of a checkpoint on COCONut objects or COCO Attributes patches (exactly
    one of `coconut` / `coco_attributes`, photos under `coco`)."""
    if (coconut is None) == (coco_attributes is None):
        raise UserError(
            "--objects scores either --coconut FOLDER or --coco-attributes PKL (with --coco ROOT)"
        )
    vocab = load_vocabulary()  # the objects are read (and checked) before the model loads
    if coconut is not None:
        targets, left_out = coconut_object_targets(coconut, coco, vocab, limit)
        source = {"data": str(coconut), "format": "coconut"}
    else:
        targets, left_out = cocottributes_object_targets(coco_attributes, coco, vocab, limit)
        source = {"data": str(coco_attributes), "format": "coco-attributes"}
    if not targets:
        raise UserError(
            f"{source['data']}: no object to score (photos looked for under --coco {coco}; {left_out})"
        )
    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    scored = score_objects(predictor, targets, vocab)
    if scored["labels"] is None:
        raise UserError(
            f"{source['data']}: no object to score ({len(scored['failed_images'])} photos failed)"
        )
    names, types = predictor.attributes, predictor.attribute_types
    labels = scored["labels"]
    return {
        "checkpoint": str(getattr(predictor.model, "source", checkpoint)),
        "kind": predictor.model.kind,
        **source,
        "images": str(coco),
        "n_images": scored["n_images"],
        "n_objects": int(len(labels)),
        "n_positive_labels": int((labels == metrics.POSITIVE).sum()),
        "n_negative_labels": int((labels == metrics.NEGATIVE).sum()),
        "left_out": left_out,
        "failed_images": scored["failed_images"],
        "regions": {
            r: object_metrics(scored[r], labels, names, types) for r in REGIONS if scored[r] is not None
        },
    }


def format_objects_table(result: dict) -> str:
    """The `evaluate --objects` table: one column per region kind."""
    cols = list(result["regions"])
    lines = [
        f"{result['n_objects']} objects in {result['n_images']} images ({result['format']} {result['data']}), "
        f"checkpoint {result['checkpoint']}; {result['n_positive_labels']} positive and "
        f"{result['n_negative_labels']} negative labels",
        f"{'metric':<24}" + "".join(f"{'whole ' + c if c == 'image' else c:>13}" for c in cols),
    ]
    keys = ("mAP", "mean_per_object_auc", *(f"precision_at_{k}" for k in TOP_K), "n_attributes_scored")
    for key in keys:
        row = [result["regions"][c][key] for c in cols]
        lines.append(
            f"{key:<24}" + "".join(f"{v:>13.4f}" if isinstance(v, float) else f"{v!s:>13}" for v in row)
        )
    left = {k: v for k, v in result["left_out"].items() if v}
    if left:
        lines.append("left out: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in left.items()))
    if result["failed_images"]:
        lines.append(f"failed: {len(result['failed_images'])} photos ({result['failed_images'][0]})")
    return "\n".join(lines)
