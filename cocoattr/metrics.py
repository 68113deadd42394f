"""Evaluation metrics for multi-label attribute prediction: the project's one place for them.

Conventions shared by every function here:

* ``labels`` is an int matrix of shape (N, A) (images x attributes): 1 = positive,
  0 = negative, -1 = unknown. Unknown entries are *excluded*, never treated as negatives:
  per attribute they are dropped before ranking, per image they are dropped before ranking,
  so changing the score of an unknown entry never changes any metric.
* ``scores`` is a float matrix of the same shape, probabilities or logits; only the order of
  scores matters except where a threshold is applied (F1).

Accuracy is deliberately NOT reported. Attribute labels are sparse: a typical image has a
handful of positives among ~200 attributes, so predicting "negative" everywhere already scores
~95% accuracy while being useless. The metrics here are all insensitive to that trivial
solution: ranking metrics (AP / mAP, per-image AUC, top-k precision/recall, retrieval
Recall@K) and F1, which ignores true negatives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "average_precision",
    "auc_shortfall",
    "count_scored_attributes",
    "evaluate",
    "f1_scores",
    "mean_average_precision",
    "mean_per_image_auc",
    "metrics_by_type",
    "per_attribute_ap",
    "recall_at_k",
    "roc_auc",
    "topk_precision_recall",
    "tune_thresholds",
]

POSITIVE, NEGATIVE, UNKNOWN = 1, 0, -1


# --------------------------------------------------------------------------- validation


def _as_arrays(scores: Any, labels: Any, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert inputs, so every metric fails loudly on the same mistakes."""
    s = np.asarray(scores, dtype=np.float64)
    y_raw = np.asarray(labels)
    if s.shape != y_raw.shape:
        raise ValueError(f"scores and labels must have the same shape, got {s.shape} and {y_raw.shape}")
    if s.ndim != ndim:
        what = "1-D (one attribute or one image)" if ndim == 1 else "2-D (images x attributes)"
        raise ValueError(f"expected {what} scores and labels, got shape {s.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if y_raw.size and not np.isin(y_raw, (POSITIVE, NEGATIVE, UNKNOWN)).all():
        raise ValueError("labels must only contain 1 (positive), 0 (negative) or -1 (unknown)")
    return s, y_raw.astype(np.int8)


def _check_length(name: str, seq: Sequence[Any], n_attributes: int) -> None:
    if len(seq) != n_attributes:
        raise ValueError(f"{name} has {len(seq)} entries but scores have {n_attributes} attributes")


# --------------------------------------------------------------------------- ranking


def _average_precision(s: np.ndarray, pos: np.ndarray) -> float:
    """AP of known entries only (``s`` scores, ``pos`` bool), sklearn's step-wise definition."""
    n_pos = int(pos.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-s, kind="stable")
    s_sorted, pos_sorted = s[order], pos[order]
    # One threshold per distinct score: the last index of each group of tied scores.
    last_of_group = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s_sorted.size - 1]
    tp = np.cumsum(pos_sorted)[last_of_group]
    precision = tp / (last_of_group + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def average_precision(scores_1d: Any, labels_1d: Any) -> float:
    """Non-interpolated AP (area under the PR curve as sklearn computes it).

    AP = sum_n (R_n - R_{n-1}) P_n over distinct score thresholds, so tied scores form one
    threshold and the result does not depend on the order of tied items. Entries labelled
    -1 are dropped. Returns nan when no positive remains (AP is undefined, not 0).
    """
    s, y = _as_arrays(scores_1d, labels_1d, ndim=1)
    known = y != UNKNOWN
    return _average_precision(s[known], y[known] == POSITIVE)


def per_attribute_ap(scores: Any, labels: Any) -> np.ndarray:
    """AP of each attribute (column) over the images where it is known; nan if no known positive."""
    s, y = _as_arrays(scores, labels, ndim=2)
    ap = np.full(s.shape[1], np.nan)
    for a in range(s.shape[1]):
        known = y[:, a] != UNKNOWN
        ap[a] = _average_precision(s[known, a], y[known, a] == POSITIVE)
    return ap


def _nanmean(values: np.ndarray) -> float:
    """Mean ignoring nan, nan (without a RuntimeWarning) when nothing is left."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def mean_average_precision(scores: Any, labels: Any) -> float:
    """mAP: mean AP over attributes with at least one known positive (see count_scored_attributes)."""
    return _nanmean(per_attribute_ap(scores, labels))


def count_scored_attributes(labels: Any) -> int:
    """How many attributes mAP averages over: those with at least one known positive.

    Report it next to mAP, because an mAP over 150 attributes is not comparable to one over 212.
    """
    y = np.asarray(labels)
    if y.ndim != 2:
        raise ValueError(f"expected 2-D labels (images x attributes), got shape {y.shape}")
    return int((y == POSITIVE).any(axis=0).sum())


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (what Mann-Whitney needs)."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(xs[1:] != xs[:-1]) + 1]
    ends = np.r_[starts[1:], x.size]
    ranks = np.empty(x.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def _roc_auc(s: np.ndarray, pos: np.ndarray) -> float:
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum = _average_ranks(s)[pos].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc(scores_1d: Any, labels_1d: Any) -> float:
    """ROC AUC as the Mann-Whitney statistic: P(score_pos > score_neg), ties counting 0.5.

    Entries labelled -1 are dropped; nan when there is no positive or no negative left.
    """
    s, y = _as_arrays(scores_1d, labels_1d, ndim=1)
    known = y != UNKNOWN
    return _roc_auc(s[known], y[known] == POSITIVE)


def mean_per_image_auc(scores: Any, labels: Any) -> float:
    """Mean over images of the AUC of ranking that image's attributes (known ones only).

    Answers "for a given photo, are its attributes ranked above the ones it lacks?", which mAP
    (a per-attribute, across-images view) does not. Images without both a known positive and a
    known negative are skipped; nan if no image qualifies.
    """
    s, y = _as_arrays(scores, labels, ndim=2)
    aucs = np.full(s.shape[0], np.nan)
    for i in range(s.shape[0]):
        known = y[i] != UNKNOWN
        aucs[i] = _roc_auc(s[i, known], y[i, known] == POSITIVE)
    return _nanmean(aucs)


def auc_shortfall(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Where mean per-image AUC loses, per attribute: (as_positive, as_negative), each (A,).

    as_positive[a] is attribute a's share of 1 - mean_per_image_auc from its positives ranked
    at or below negatives (ties count half), as_negative[a] from its negatives ranked at or above
    positives; each sums to the shortfall over the images mean_per_image_auc counts. Says whether
    a gain can come from a few attributes or only from many.
    """
    s, y = _as_arrays(scores, labels, ndim=2)
    as_pos, as_neg = np.zeros(s.shape[1]), np.zeros(s.shape[1])
    counted = 0
    for i in range(s.shape[0]):
        pos, neg = np.flatnonzero(y[i] == POSITIVE), np.flatnonzero(y[i] == NEGATIVE)
        if not pos.size or not neg.size:
            continue
        d = s[i, neg][None, :] - s[i, pos][:, None]  # (positives, negatives): > 0 is a wrong order
        wrong = ((d > 0) + 0.5 * (d == 0)) / (pos.size * neg.size)
        as_pos[pos] += wrong.sum(1)
        as_neg[neg] += wrong.sum(0)
        counted += 1
    return as_pos / max(counted, 1), as_neg / max(counted, 1)


# --------------------------------------------------------------------------- thresholds / F1


def _fallback_threshold(s: np.ndarray) -> float:
    """0.5 if every score lies in [0, 1] (probabilities), else 0.0 (logits: sigmoid(0) = 0.5)."""
    return 0.5 if s.size == 0 or bool(((s >= 0.0) & (s <= 1.0)).all()) else 0.0


def tune_thresholds(scores: Any, labels: Any) -> np.ndarray:
    """Per-attribute thresholds maximising F1 on (validation) data; predict positive if score >= t.

    One global threshold is badly miscalibrated for rare vs. common attributes, hence one per
    attribute. Every distinct known score is tried as a cut; among equally good cuts the highest
    is kept (fewest positive predictions). The returned threshold lies midway between the lowest
    score predicted positive and the next lower known score, so the tuning data gets exactly the
    best predictions while new data gets some margin.

    Attributes with no known positive cannot be tuned and get a fallback: 0.5 if the whole score
    matrix lies in [0, 1] (probabilities), otherwise 0.0 (logits, i.e. probability 0.5).
    Tune on validation data, never on the test split you report.
    """
    s, y = _as_arrays(scores, labels, ndim=2)
    thresholds = np.full(s.shape[1], _fallback_threshold(s))
    for a in range(s.shape[1]):
        known = y[:, a] != UNKNOWN
        pos = y[known, a] == POSITIVE
        n_pos = int(pos.sum())
        if n_pos == 0:
            continue
        col = s[known, a]
        order = np.argsort(-col, kind="stable")
        col_sorted, pos_sorted = col[order], pos[order]
        last_of_group = np.r_[np.flatnonzero(col_sorted[1:] != col_sorted[:-1]), col_sorted.size - 1]
        tp = np.cumsum(pos_sorted)[last_of_group]
        fp = last_of_group + 1 - tp
        f1 = 2 * tp / (2 * tp + fp + (n_pos - tp))
        best = int(np.argmax(f1))
        cut = last_of_group[best]
        hi = col_sorted[cut]
        t = hi
        if cut + 1 < col_sorted.size:
            lo = col_sorted[cut + 1]
            mid = lo + (hi - lo) / 2.0
            if lo < mid <= hi:  # guards against inf and adjacent floats
                t = mid
        thresholds[a] = t
    return thresholds


def _confusion(
    s: np.ndarray, y: np.ndarray, thresholds: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-attribute TP, FP, FN and known-positive counts at ``score >= threshold``."""
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim == 0:
        t = np.full(s.shape[1], float(t))
    if t.shape != (s.shape[1],):
        raise ValueError(f"thresholds must be a scalar or shape ({s.shape[1]},), got {t.shape}")
    pred = s >= t[None, :]
    pos, neg = y == POSITIVE, y == NEGATIVE
    tp = (pred & pos).sum(axis=0)
    fp = (pred & neg).sum(axis=0)
    n_pos = pos.sum(axis=0)
    return tp, fp, n_pos - tp, n_pos


def f1_scores(scores: Any, labels: Any, thresholds: Any) -> dict[str, Any]:
    """F1 at given thresholds (scalar or one per attribute), predicting positive if score >= t.

    Returns ``per_attribute`` (A,) array (nan where an attribute has no known positive),
    ``macro_f1`` (mean over attributes with a known positive: rare attributes weigh as much as
    common ones) and ``micro_f1`` (pooled TP/FP/FN over all known entries, including false
    positives on attributes without positives; dominated by common attributes). Unknown entries
    are neither false positives nor false negatives.
    """
    s, y = _as_arrays(scores, labels, ndim=2)
    tp, fp, fn, n_pos = _confusion(s, y, thresholds)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_attr = np.where(n_pos > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    denom = 2 * tp.sum() + fp.sum() + fn.sum()
    micro = float(2 * tp.sum() / denom) if denom > 0 else math.nan
    return {"per_attribute": per_attr, "macro_f1": _nanmean(per_attr), "micro_f1": micro}


def _f1_from(p: float, r: float) -> float:
    if math.isnan(p) or math.isnan(r):
        return math.nan
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def topk_precision_recall(scores: Any, labels: Any, k: int = 3) -> dict[str, float]:
    """CP/CR/CF1 and OP/OR/OF1 with the top-k attributes of each image predicted positive.

    The protocol of the multi-label literature (ML-GCN, Query2Label): per attribute c, Nc = correct
    predictions, Np = predictions, Ng = known positives. CP = mean_c Nc/Np (0 where Np = 0, as in
    ML-GCN), CR = mean_c Nc/Ng, both over attributes with a known positive; OP = sum Nc / sum Np,
    OR = sum Nc / sum Ng; the F1s are harmonic means of the P/R pairs.

    Masking: the top k are taken among each image's *known* attributes (ties broken by attribute
    index), so an unknown entry is never a false positive and never pushes a known one out of the
    top k. Images with fewer than k known attributes predict all of them.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    s, y = _as_arrays(scores, labels, ndim=2)
    known = y != UNKNOWN
    pos = y == POSITIVE
    kk = min(k, s.shape[1])
    # Sort each row: known before unknown, then by descending score; lexsort is stable.
    order = np.lexsort((-s, ~known), axis=-1)[:, :kk]
    pred = np.zeros_like(known)
    np.put_along_axis(pred, order, True, axis=1)
    pred &= known
    n_correct = (pred & pos).sum(axis=0).astype(np.float64)
    n_pred = pred.sum(axis=0).astype(np.float64)
    n_gt = pos.sum(axis=0).astype(np.float64)
    scored = n_gt > 0
    if scored.any():
        cp = float(np.mean(np.divide(n_correct, n_pred, out=np.zeros_like(n_pred), where=n_pred > 0)[scored]))
        cr = float(np.mean(n_correct[scored] / n_gt[scored]))
    else:
        cp = cr = math.nan
    op = float(n_correct.sum() / n_pred.sum()) if n_pred.sum() > 0 else math.nan
    orec = float(n_correct.sum() / n_gt.sum()) if n_gt.sum() > 0 else math.nan
    return {"CP": cp, "CR": cr, "CF1": _f1_from(cp, cr), "OP": op, "OR": orec, "OF1": _f1_from(op, orec)}


def precision_at_k(scores: Any, labels: Any, k: int = 5) -> float:
    """Mean over images of the share of positives among its top-k *known* attributes (what a
    user reads first: the top of the page). Unknown entries are left out of the ranking, as in
    `topk_precision_recall`; images with no known attribute are skipped."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    s, y = _as_arrays(scores, labels, ndim=2)
    known = y != UNKNOWN
    order = np.lexsort((-s, ~known), axis=-1)[:, : min(k, s.shape[1])]
    top_known = np.take_along_axis(known, order, axis=1)
    top_pos = np.take_along_axis(y == POSITIVE, order, axis=1) & top_known
    n = top_known.sum(axis=1)
    keep = n > 0
    return float(np.mean(top_pos.sum(axis=1)[keep] / n[keep])) if keep.any() else math.nan


def precision_at_k_report(scores: Any, labels: Any, types: Sequence[str], k: int = 5) -> dict[str, Any]:
    """precision@k over the whole vocabulary, over the non-colour attributes (colour words are
    easy and crowd the top), and within each type; plus how many of each image's top k are colours."""
    s, y = _as_arrays(scores, labels, ndim=2)
    t = np.asarray(types)
    non_colour = t != "color"
    order = np.lexsort((-s, y == UNKNOWN), axis=-1)[:, :k]
    return {
        f"precision_at_{k}": precision_at_k(s, y, k),
        f"precision_at_{k}_non_colour": precision_at_k(s[:, non_colour], y[:, non_colour], k),
        f"colours_in_top_{k}": float(np.mean((t[order] == "color").sum(axis=1))),
        f"precision_at_{k}_by_type": {
            name: precision_at_k(s[:, t == name], y[:, t == name], k) for name in dict.fromkeys(types)
        },
    }


# --------------------------------------------------------------------------- groupings / retrieval


def _map_by_type(ap: np.ndarray, types: Sequence[str]) -> dict[str, float]:
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(types):
        groups.setdefault(t, []).append(i)
    return {t: _nanmean(ap[idx]) for t, idx in groups.items()}


def metrics_by_type(scores: Any, labels: Any, types: Sequence[str]) -> dict[str, float]:
    """mAP per attribute type (types[i] is attribute i's type), in order of first appearance.

    Colours and scenes behave very differently; one overall mAP hides which type regressed.
    A type whose attributes all lack known positives maps to nan.
    """
    s, y = _as_arrays(scores, labels, ndim=2)
    _check_length("types", types, s.shape[1])
    return _map_by_type(per_attribute_ap(s, y), types)


def recall_at_k(
    ranked_ids: list[list[int]] | np.ndarray,
    relevant: Sequence[set[int]],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Retrieval Recall@K for attribute queries, averaged over queries with a relevant item.

    ``ranked_ids[q]`` is the ranked list of item ids returned for query q, ``relevant[q]`` the set
    of ids that truly have the attribute. Keys: ``R@K`` = |top K ∩ relevant| / |relevant| (below 1
    whenever |relevant| > K) and ``hit@K`` = 1 if at least one relevant item is in the top K.
    Queries with no relevant item are skipped (nan everywhere if none is left).
    """
    if len(ranked_ids) != len(relevant):
        raise ValueError(f"ranked_ids has {len(ranked_ids)} queries but relevant has {len(relevant)}")
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"every K must be >= 1, got {ks}")
    recalls = {k: [] for k in ks}
    hits = {k: [] for k in ks}
    for ranked, rel in zip(ranked_ids, relevant, strict=True):
        if not rel:
            continue
        ranked_list = [int(i) for i in ranked]
        for k in ks:
            found = len(set(ranked_list[:k]) & rel)
            recalls[k].append(found / len(rel))
            hits[k].append(1.0 if found else 0.0)
    out: dict[str, float] = {}
    for k in ks:
        out[f"R@{k}"] = float(np.mean(recalls[k])) if recalls[k] else math.nan
        out[f"hit@{k}"] = float(np.mean(hits[k])) if hits[k] else math.nan
    return out


# --------------------------------------------------------------------------- one-call report


def _json_safe(value: Any) -> Any:
    """Recursively turn numpy scalars into Python ones and nan/inf into None for json.dumps."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def evaluate(
    scores: Any,
    labels: Any,
    names: Sequence[str],
    types: Sequence[str],
    thresholds: Any = None,
) -> dict[str, Any]:
    """Every metric in one JSON-serialisable dict (nan -> None), for eval scripts and model cards.

    F1 uses ``thresholds`` (scalar or per attribute, e.g. from tune_thresholds on the validation
    split) or 0.5 when None -- pass thresholds explicitly if ``scores`` are logits. Top-k metrics
    use k = 3.
    """
    s, y = _as_arrays(scores, labels, ndim=2)
    n_attr = s.shape[1]
    _check_length("names", names, n_attr)
    _check_length("types", types, n_attr)
    if len(set(names)) != len(names):
        raise ValueError("names must be unique")
    ap = per_attribute_ap(s, y)
    f1 = f1_scores(s, y, 0.5 if thresholds is None else thresholds)
    n_pos = (y == POSITIVE).sum(axis=0)
    n_neg = (y == NEGATIVE).sum(axis=0)
    report: dict[str, Any] = {
        "n_images": s.shape[0],
        "n_attributes": n_attr,
        "mAP": _nanmean(ap),
        "n_attributes_scored": int((n_pos > 0).sum()),
        "mean_per_image_auc": mean_per_image_auc(s, y),
        "macro_f1": f1["macro_f1"],
        "micro_f1": f1["micro_f1"],
        **topk_precision_recall(s, y, k=3),
        **precision_at_k_report(s, y, types, k=5),
        "mAP_by_type": _map_by_type(ap, types),
        "per_attribute": {
            name: {"ap": ap[a], "f1": f1["per_attribute"][a], "n_pos": n_pos[a], "n_neg": n_neg[a]}
            for a, name in enumerate(names)
        },
    }
    return _json_safe(report)
