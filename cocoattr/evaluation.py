"""Score a checkpoint (and optionally the plain baseline) on a hand-labelled image set.

The baseline is the one the project measures itself against: average the ImageNet class
posteriors over the classes whose names/glosses match an attribute. The zero-shot default
must beat it clearly; a trained checkpoint must beat the zero-shot default.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np
import torch

from cocoattr import metrics
from cocoattr.data.coco import coco_paths, image_records, load_coco
from cocoattr.data.gallery import gallery_root, load_gallery
from cocoattr.errors import UserError
from cocoattr.faithfulness import (
    HeatmapTarget,
    RegionScore,
    box_mask,
    category_attributes,
    instance_mask,
    read_boxes,
    score_region,
    summarise,
)
from cocoattr.features import FeatureGrid
from cocoattr.images import exif_rotated, load_image
from cocoattr.model import AttributeModel
from cocoattr.predictor import Predictor
from cocoattr.vocab import Vocabulary, load_vocabulary
from cocoattr.zeroshot import class_attribute_matrix

SUMMARY_KEYS = ("mAP", "mean_per_image_auc", "precision_at_5", "precision_at_5_non_colour", "colours_in_top_5",
                "macro_f1", "micro_f1", "CF1", "OF1", "n_attributes_scored")  # fmt: skip


class PosteriorBaseline:
    """score_a(x) = mean (or sum) of p(c | x) over ImageNet classes text-matched to attribute a."""

    def __init__(self, predictor: Predictor, match_threshold: float = 0.5, reduce: str = "mean") -> None:
        self.predictor = predictor
        vocab = load_vocabulary()
        if vocab.names != predictor.attributes:
            raise UserError("the baseline needs a checkpoint with the bundled vocabulary")
        matched = class_attribute_matrix(vocab) >= match_threshold  # (1000, A)
        norm = np.maximum(matched.sum(0, keepdims=True), 1) if reduce == "mean" else 1
        self.weights = torch.from_numpy(matched / norm).float()
        self.grid = FeatureGrid(predictor.model.backbone.name, concepts=True).eval()
        self.grid.load_imagenet()

    @torch.inference_mode()
    def scores(self, images: list) -> np.ndarray:
        x = self.predictor.preprocess(images)
        feats = self.grid.body(x).mean((2, 3))
        posterior = torch.softmax(self.grid.classifier(feats), dim=-1)
        return (posterior @ self.weights).numpy()


def load_eval_set(data: str, split: str):
    gallery = load_gallery(None if data == "gallery" else Path(data))
    which = gallery.splits()  # the same split the training configs use
    keep = [i for i, image_id in enumerate(gallery.image_ids) if split == "all" or which[image_id] == split]
    if not keep:
        raise UserError(f"no images in split {split!r} of {data}")
    return [gallery.paths[i] for i in keep], gallery.labels[keep], gallery.vocab


def score_images(predictor: Predictor, paths: list, batch_size: int = 16) -> np.ndarray:
    out = []
    for start in range(0, len(paths), batch_size):
        images = [load_image(p) for p in paths[start : start + batch_size]]
        out.append(predictor.forward(images).probs.numpy())
    return np.concatenate(out)


def evaluate_checkpoint(checkpoint: str | os.PathLike | None, data: str = "gallery", split: str = "all",
                        baseline: bool = False, device: str = "cpu") -> dict:  # fmt: skip
    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    paths, labels, vocab = load_eval_set(data, split)
    if predictor.attributes != vocab.names:
        # A checkpoint with another vocabulary is scored on the attributes both share.
        shared = [n for n in predictor.attributes if n in vocab]
        cols = [vocab.index(n) for n in shared]
        labels = labels[:, cols]
    names = predictor.attributes
    types = predictor.attribute_types
    scores = score_images(predictor, paths)
    result = {
        "checkpoint": str(getattr(predictor.model, "source", checkpoint)),
        "kind": predictor.model.kind,
        "data": data,
        "split": split,
        "n_images": len(paths),
        "model": metrics.evaluate(scores, labels, names, types),
    }
    if baseline:
        for reduce in ("mean", "sum"):
            base = PosteriorBaseline(predictor, reduce=reduce)
            bscores = np.concatenate(
                [base.scores([load_image(p) for p in paths[s : s + 16]]) for s in range(0, len(paths), 16)]
            )
            result[f"baseline_{reduce}"] = metrics.evaluate(bscores, labels, names, types)
    return result


def format_table(result: dict) -> str:
    cols = [k for k in ("model", "baseline_mean", "baseline_sum") if k in result]
    lines = [
        f"{result['n_images']} images ({result['data']}, split {result['split']}), checkpoint {result['checkpoint']}",
        f"{'metric':<28}" + "".join(f"{c:>15}" for c in cols),
    ]
    for key in SUMMARY_KEYS:
        row = [result[c].get(key) for c in cols]
        lines.append(
            f"{key:<28}" + "".join(f"{v:>15.4f}" if isinstance(v, float) else f"{v!s:>15}" for v in row)
        )
    for t in result["model"].get("mAP_by_type", {}):
        row = [result[c]["mAP_by_type"].get(t) for c in cols]
        lines.append(
            f"{'mAP ' + t:<28}" + "".join(f"{x:>15.4f}" if x is not None else f"{'-':>15}" for x in row)
        )
    return "\n".join(lines)


def gallery_metrics(model: AttributeModel) -> dict[str, float]:
    """Summary metrics on the bundled gallery's hand labels, for the default's model card and the app.

    The gallery also fitted the default's calibration (train/calibrate_default.py), so these are
    in-sample for it; the card gives the k-fold held-out figures beside them."""
    paths, labels, _ = load_eval_set("gallery", "all")
    result = metrics.evaluate(
        score_images(Predictor(model), paths), labels, model.attributes, model.attribute_types
    )
    keys = ("mAP", "mean_per_image_auc", "precision_at_5", "precision_at_5_non_colour", "micro_f1", "macro_f1",
            "n_attributes_scored")  # fmt: skip
    return {f"gallery_{k}": result[k] for k in keys} | {"gallery_images": len(paths)}


# ------------------------------------------------------------------ heatmap faithfulness (#16)
# Where the model's attribute maps point against where the attribute is: the arithmetic is in
# `cocoattr.faithfulness`; these read the regions (COCO instances, the gallery's hand-drawn
# boxes) and run the checkpoint. Any other region source (COCONut's panoptic segments) only has
# to yield `HeatmapTarget`s.

GALLERY_BOXES = "boxes.json"


def coco_heatmap_targets(root: str | os.PathLike, split: str, vocab: Vocabulary, limit: int | None = None
                         ) -> tuple[list[HeatmapTarget], dict[str, int]]:  # fmt: skip
    """One target per image of COCO `split` on disk with at least one instance whose category is
    a vocabulary attribute (`faithfulness.category_attributes`); masks from the polygons (or RLE,
    or the box when there is no segmentation). Also returns how many images were left out: not
    on disk, or stored with an EXIF rotation (COCO's annotations are in the stored pixels' frame,
    the model sees the photo upright, so their masks would not line up)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"--coco {root}: no such folder (the --root given to `cocoattr data download`)")
    instances, image_dir = coco_paths(root, "instances", split)
    if not instances.is_file() or not image_dir.is_dir():
        what = instances if not instances.is_file() else f"the image folder {image_dir}"
        images = {"val2017": "val", "train2017": "train"}.get(split, split)
        raise UserError(f"--coco {root}: not a COCO root for {split} (no {what}); for COCO itself run "
                        f"`cocoattr data download coco-instances coco-images-{images} --root {root}`")  # fmt: skip
    coco = load_coco(instances, "instances")
    records, skipped = image_records(coco, image_dir, source=str(instances))
    to_attrs = category_attributes(vocab)
    targets, rotated = [], 0
    for rec in records:
        anns = [a for a in coco.imgToAnns.get(rec.id, []) if not a.get("iscrowd", 0)]
        img = coco.imgs[rec.id]
        size = (int(img.get("width") or 0), int(img.get("height") or 0))
        by_attr: dict[str, list[dict]] = {}
        for ann in anns:
            for attr in to_attrs.get(coco.cats.get(ann["category_id"], {}).get("name", ""), []):
                by_attr.setdefault(attr, []).append(ann)
        if not by_attr or min(size) <= 0:
            continue
        if exif_rotated(rec.path):
            rotated += 1
            continue
        targets.append(HeatmapTarget(rec.path, size, partial(_union_of_instances, by_attr, size)))
        if limit is not None and len(targets) >= limit:
            break
    return targets, {"images_not_on_disk": skipped.count, "images_exif_rotated": rotated}


def _union_of_instances(by_attr: dict[str, list[dict]], size: tuple[int, int]) -> dict[str, np.ndarray]:
    out = {}
    for attr, anns in by_attr.items():
        mask = np.zeros((size[1], size[0]), dtype=bool)
        for ann in anns:
            mask |= instance_mask(ann, size)
        out[attr] = mask
    return out


def coconut_heatmap_targets(folder: str | os.PathLike, images: str | os.PathLike, vocab: Vocabulary,
                            limit: int | None = None) -> tuple[list[HeatmapTarget], dict[str, int]]:  # fmt: skip
    """One target per row of a downloaded COCONut repo (`data download coconut-val`) whose photo
    is under `images` (a COCO root: val2017/, train2017/): the regions are the panoptic segments'
    pixels, things and stuff (sky, grass, water ...), as the mapping's `implies` names them. The
    PNG stays encoded until its image is scored. EXIF-rotated photos are left out as for COCO."""
    from cocoattr.data.coconut import coconut_masks, load_mapping, photo_rows

    folder, images = Path(folder).expanduser(), Path(images).expanduser()
    if not images.is_dir():
        raise UserError(f"--coco {images}: no such folder (the COCO root holding val2017/ for --coconut)")
    mapping = load_mapping(vocab)
    targets, left_out = [], {}
    for row, image, path in photo_rows(folder, images, left_out):
        targets.append(HeatmapTarget(path, (image.width, image.height), partial(coconut_masks, row, mapping)))
        if limit is not None and len(targets) >= limit:
            break
    return targets, left_out


def gallery_heatmap_targets(vocab: Vocabulary, data: str = "gallery") -> list[HeatmapTarget]:
    """The hand-drawn boxes of the bundled gallery (`gallery/boxes.json`) or of a folder in the
    gallery layout with its own boxes.json, one target per boxed photo."""
    root = gallery_root() if data == "gallery" else Path(data)
    paths = {p.name: p for p in load_gallery(root).paths}
    sizes = {name: load_image(p).size for name, p in paths.items()}
    boxes = read_boxes(root / GALLERY_BOXES, vocab, sizes)
    return [
        HeatmapTarget(paths[name], sizes[name], partial(_boxes_as_masks, attrs, sizes[name]))
        for name, attrs in sorted(boxes.items())
    ]


def _boxes_as_masks(boxes: dict[str, list], size: tuple[int, int]) -> dict[str, np.ndarray]:
    return {attr: box_mask(b, size) for attr, b in boxes.items()}


def score_heatmaps(predictor: Predictor, targets: list[HeatmapTarget]) -> tuple[list[RegionScore], dict]:
    """Every target's regions scored against the checkpoint's maps; also what was left out
    (images that failed to decode, attributes the checkpoint does not have)."""
    names, types = predictor.attributes, predictor.attribute_types
    index = {n: i for i, n in enumerate(names)}
    by_path = {str(t.path): t for t in targets}
    scores, failed, unknown = [], [], set()
    for path, pred in predictor.predict_files([t.path for t in targets]):
        if isinstance(pred, UserError):
            failed.append(str(pred))
            continue
        target = by_path[path]
        for attr, mask in target.regions().items():
            if attr not in index:
                unknown.add(attr)
                continue
            if mask.any():
                i = index[attr]
                scores.append(score_region(pred.maps[i], mask, image=target.path.name, attribute=attr,
                                           type_=types[i]))  # fmt: skip
    return scores, {"failed_images": failed, "attributes_not_in_checkpoint": sorted(unknown)}


def evaluate_heatmaps(checkpoint: str | os.PathLike | None, coco: str | os.PathLike | None = None,
                      split: str = "val2017", limit: int | None = None, device: str = "cpu",
                      data: str = "gallery", coconut: str | os.PathLike | None = None) -> dict:  # fmt: skip
    """Heatmap faithfulness of a checkpoint on a COCO root's instances, on COCONut's panoptic
    segments (`coconut` = the downloaded repo, photos under `coco`), or (neither) on the
    hand-drawn boxes of `data` (the gallery or a folder in its layout): `faithfulness.summarise`
    plus where it came from."""
    vocab = load_vocabulary()  # the regions are read (and checked) before the model loads
    if coconut is not None:
        targets, left_out = coconut_heatmap_targets(coconut, coco, vocab, limit)
        source = {"data": str(coconut), "images": str(coco), **left_out}
    elif coco is not None:
        targets, left_out = coco_heatmap_targets(coco, split, vocab, limit)
        source = {"data": str(coco), "split": split, **left_out}
    else:
        targets = gallery_heatmap_targets(vocab, data)[:limit]
        source = {"data": f"{data} ({GALLERY_BOXES}, boxes drawn by hand)"}
    if not targets:
        raise UserError(f"{source['data']}: no image has a region for a vocabulary attribute")
    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    scores, left_out = score_heatmaps(predictor, targets)
    return {
        "checkpoint": str(getattr(predictor.model, "source", checkpoint)),
        "kind": predictor.model.kind,
        **source,
        **summarise(scores),
        **left_out,
    }


# ----------------------------------------------------------------------------- COCO ground truth

COCO_K = 10


def coco_category_retrieval(probs: np.ndarray, attributes: list[str], categories: list[list[str]],
                            k: int = COCO_K) -> dict:  # fmt: skip
    """Retrieval quality of each attribute that names a COCO-80 category, with no hand labels:
    rank every image by the attribute's probability; the relevant images are those whose COCO
    instance annotations contain the category. precision@k (k capped at the number of images)
    and AP per category, their means over the categories with at least one relevant image."""
    from cocoattr.detector import COCO80  # a tuple of names; the module is loaded by the predictor anyway

    probs = np.asarray(probs, np.float32)
    n = probs.shape[0]
    if len(categories) != n:
        raise ValueError(f"{len(categories)} category lists for {n} images")
    named = [c for c in COCO80 if c in attributes]
    rows = []
    for c in named:
        scores = probs[:, attributes.index(c)]
        relevant = np.array([c in cats for cats in categories], bool)
        if not relevant.any():
            continue  # no image of this category in the split: nothing to retrieve
        order = np.argsort(-scores, kind="stable")[:k]  # all of them when fewer than k
        labels = np.where(relevant, metrics.POSITIVE, metrics.NEGATIVE)
        rows.append({"category": c, "relevant": int(relevant.sum()),
                     f"precision_at_{k}": float(relevant[order].mean()),
                     "AP": metrics.average_precision(scores, labels)})  # fmt: skip
    return {"n_images": n, "k": k, "categories_named_by_the_vocabulary": len(named),
            "categories_scored": len(rows), f"precision_at_{k}": _mean(rows, f"precision_at_{k}"),
            "mAP": _mean(rows, "AP"), "per_category": rows}  # fmt: skip


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows])) if rows else float("nan")


def format_coco_table(result: dict) -> str:
    """The `evaluate --coco` table: one row per scored category, then the means."""
    k = result["k"]
    lines = [
        f"COCO {result['split']}: {result['n_images']} images, checkpoint {result['checkpoint']}; "
        f"{result['categories_scored']} of the {result['categories_named_by_the_vocabulary']} COCO-80 "
        "categories the vocabulary names have instances here",
        f"{'category':<16} {'relevant':>8} {f'P@{k}':>7} {'AP':>7}",
    ]
    for r in result["per_category"]:
        lines.append(f"{r['category']:<16} {r['relevant']:>8} {r[f'precision_at_{k}']:7.3f} {r['AP']:7.3f}")
    lines.append(f"{'mean':<16} {'':>8} {result[f'precision_at_{k}']:7.3f} {result['mAP']:7.3f}")
    return "\n".join(lines)
