"""Fit the embedded default's calibration (Platt scaling per attribute type), with 2-fold CV.

The zero-shot construction fixes *what* each attribute's evidence is (class posteriors
mixed by P(attribute | class), or colour fractions); it cannot know how evidence of
different kinds maps to probabilities. Per attribute type, a logistic regression on two
features, the attention-pooled and the mean-pooled evidence, gives 3 numbers (24 in
all), fitted on the gallery's known hand labels. mAP barely depends on them (it ranks each
attribute across images); per-image AUC and the meaning of a probability do. The 2-fold
score (fit on half of the images, score the other half) shows how much of it is real.
The numbers in `cocoattr/zeroshot.py` KNOBS["type_calibration"] come from the all-images fit.

    .venv/bin/python train/calibrate_default.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, as train/train.py

from cocoattr import metrics  # noqa: E402
from cocoattr.evaluation import load_eval_set  # noqa: E402
from cocoattr.images import load_image  # noqa: E402
from cocoattr.predictor import Predictor  # noqa: E402
from cocoattr.vocab import TYPES  # noqa: E402
from cocoattr.zeroshot import KNOBS, build_model  # noqa: E402


def raw_evidence(paths: list) -> tuple[np.ndarray, np.ndarray]:
    """(attention-pooled, mean-pooled) evidence per image and attribute, read through the model."""
    images = [load_image(p) for p in paths]
    out = []
    for feature in ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)):
        predictor = Predictor(
            build_model(knobs=dict(KNOBS, type_calibration=dict.fromkeys(TYPES, list(feature))))
        )
        with torch.inference_mode():
            logits = [predictor.forward(images[i : i + 12]).logits.numpy() for i in range(0, len(images), 12)]
        out.append(np.concatenate(logits))
    return out[0], out[1]


def fit(attn: np.ndarray, mean: np.ndarray, labels: np.ndarray, types: np.ndarray) -> dict[str, list[float]]:
    calibration = {}
    for t in TYPES:
        cols = types == t
        known = labels[:, cols] >= 0
        x = np.stack([attn[:, cols][known], mean[:, cols][known]], axis=1)
        y = labels[:, cols][known] == 1
        if y.all() or not y.any():
            calibration[t] = [1.0, 1.0, -3.0]
            continue
        lr = LogisticRegression(C=10.0).fit(x, y)
        calibration[t] = [
            round(float(lr.coef_[0, 0]), 3),
            round(float(lr.coef_[0, 1]), 3),
            round(float(lr.intercept_[0]), 3),
        ]
    return calibration


def logits(calibration: dict, attn: np.ndarray, mean: np.ndarray, types: np.ndarray) -> np.ndarray:
    w = np.array([calibration[t] for t in types])
    return attn * w[:, 0] + mean * w[:, 1] + w[:, 2]


def scores(calibration: dict, attn, mean, labels, types) -> dict[str, float]:
    z = logits(calibration, attn, mean, types)
    p = 1 / (1 + np.exp(-z))
    known = labels >= 0
    y = labels[known] == 1
    log_loss = -np.mean(np.where(y, np.log(p[known] + 1e-9), np.log(1 - p[known] + 1e-9)))
    return {
        "per_image_auc": metrics.mean_per_image_auc(z, labels),
        "mAP": metrics.mean_average_precision(z, labels),
        "log_loss": float(log_loss),
    }


def main() -> None:
    paths, labels, vocab = load_eval_set("gallery", "all")
    types = np.array([a.type for a in vocab])
    attn, mean = raw_evidence(paths)
    idx = np.arange(len(paths))
    a, b = idx[::2], idx[1::2]
    fa = fit(attn[a], mean[a], labels[a], types)
    fb = fit(attn[b], mean[b], labels[b], types)
    full = fit(attn, mean, labels, types)
    held = [scores(fa, attn[b], mean[b], labels[b], types), scores(fb, attn[a], mean[a], labels[a], types)]
    rows = {
        "shipped KNOBS, all images": scores(KNOBS["type_calibration"], attn, mean, labels, types),
        "fitted on all images": scores(full, attn, mean, labels, types),
        "2-fold (held-out halves)": {k: (held[0][k] + held[1][k]) / 2 for k in held[0]},
    }
    for name, row in rows.items():
        print(f"{name:<28}" + "  ".join(f"{k} {v:.4f}" for k, v in row.items()))
    print('"type_calibration":', full)


if __name__ == "__main__":
    main()
