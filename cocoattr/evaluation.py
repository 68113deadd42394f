"""Score a checkpoint (and optionally the plain baseline) on a hand-labelled image set.

The baseline is the one the project measures itself against: average the ImageNet class
posteriors over the classes whose names/glosses match an attribute. The zero-shot default
must beat it clearly; a trained checkpoint must beat the zero-shot default.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from cocoattr import metrics
from cocoattr.data.gallery import load_gallery
from cocoattr.errors import UserError
from cocoattr.features import FeatureGrid
from cocoattr.images import load_image
from cocoattr.model import AttributeModel
from cocoattr.predictor import Predictor
from cocoattr.vocab import load_vocabulary
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

    The gallery also fitted the default's 24 calibration numbers (train/calibrate_default.py),
    which mAP does not depend on; the card says so."""
    paths, labels, _ = load_eval_set("gallery", "all")
    result = metrics.evaluate(
        score_images(Predictor(model), paths), labels, model.attributes, model.attribute_types
    )
    keys = ("mAP", "mean_per_image_auc", "precision_at_5", "precision_at_5_non_colour", "micro_f1", "macro_f1",
            "n_attributes_scored")  # fmt: skip
    return {f"gallery_{k}": result[k] for k in keys} | {"gallery_images": len(paths)}


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
