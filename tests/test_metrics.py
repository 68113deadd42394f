import json
import math

import numpy as np
import pytest

from cocoattr import metrics as m

# --------------------------------------------------------------------------- fixtures


def _random_problem(seed: int, n: int = 60, a: int = 12, unknown_frac: float = 0.2):
    """Scores rounded to one decimal (many ties) and labels with some unknowns."""
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random((n, a)), 1)
    labels = (rng.random((n, a)) < 0.3).astype(int)
    labels[rng.random((n, a)) < unknown_frac] = -1
    return scores, labels


# --------------------------------------------------------------------------- AP / mAP, by hand


def test_average_precision_hand_example():
    # positives at ranks 1 and 3: (1/1 + 2/3) / 2
    assert m.average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(5 / 6)


def test_average_precision_ties_form_one_threshold():
    # thresholds 0.9 -> (P=1, R=.5); 0.5 -> (P=2/3, R=1): AP = .5*1 + .5*2/3
    assert m.average_precision([0.9, 0.5, 0.5], [1, 1, 0]) == pytest.approx(5 / 6)
    # order of tied items must not matter
    assert m.average_precision([0.9, 0.5, 0.5], [1, 0, 1]) == pytest.approx(5 / 6)


def test_average_precision_perfect_and_reversed():
    assert m.average_precision([4, 3, 2, 1], [1, 1, 0, 0]) == 1.0
    # positives at ranks 3 and 4: (1/3 + 2/4) / 2, the minimum for 2 positives among 4
    assert m.average_precision([1, 2, 3, 4], [1, 1, 0, 0]) == pytest.approx(5 / 12)


def test_average_precision_masked_and_no_positive():
    # the unknown entry has the top score; dropping it gives a perfect ranking
    assert m.average_precision([0.99, 0.9, 0.1], [-1, 1, 0]) == 1.0
    assert math.isnan(m.average_precision([0.9, 0.1], [0, 0]))
    assert math.isnan(m.average_precision([0.9, 0.1], [-1, 0]))


def test_per_attribute_ap_and_map():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4], [0.1, 0.7, 0.3]])
    labels = np.array([[1, 0, 0], [0, 1, -1], [-1, 0, 0]])
    ap = m.per_attribute_ap(scores, labels)
    # attr 0: pos 0.9 vs neg 0.2 -> 1; attr 1: pos 0.8 vs negs 0.1, 0.7 -> 1; attr 2: no positive
    np.testing.assert_allclose(ap[:2], [1.0, 1.0])
    assert math.isnan(ap[2])
    assert m.mean_average_precision(scores, labels) == 1.0
    assert m.count_scored_attributes(labels) == 2


def test_map_all_nan_is_nan_without_warning():
    with np.testing.assert_no_warnings():
        assert math.isnan(m.mean_average_precision(np.zeros((2, 2)), np.zeros((2, 2), int)))


# --------------------------------------------------------------------------- AUC, by hand


def test_roc_auc_hand_examples():
    assert m.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert m.roc_auc([0.5, 0.5], [1, 0]) == 0.5  # tie counts 0.5
    assert m.roc_auc([3, 2, 1], [1, 0, 0]) == 1.0
    assert m.roc_auc([1, 2, 3], [1, 0, 0]) == 0.0
    assert math.isnan(m.roc_auc([1, 2], [1, 1]))
    assert math.isnan(m.roc_auc([1, 2], [0, -1]))
    assert m.roc_auc([0.0, 0.9, 0.5], [1, -1, 0]) == 0.0  # masked top score ignored


def test_mean_per_image_auc_hand_example():
    scores = np.array(
        [
            [0.9, 0.2, 0.1, 0.5],  # pos 0.9 beats negs 0.2, 0.1 -> 1 (0.5 unknown)
            [0.3, 0.3, 0.6, 0.0],  # pos 0.3 vs negs 0.3 (tie), 0.6, 0.0 -> (0.5 + 0 + 1)/3 = 0.5
            [0.1, 0.2, 0.3, 0.4],  # no negative -> skipped
        ]
    )
    labels = np.array([[1, 0, 0, -1], [1, 0, 0, 0], [1, 1, -1, -1]])
    assert m.mean_per_image_auc(scores, labels) == pytest.approx(0.75)


# --------------------------------------------------------------------------- thresholds / F1


def test_auc_shortfall_hand_example():
    # image 0: positives a (0.9) and b (0.2), negatives c (0.5) and d (0.2): b loses to c (1) and
    # ties d (0.5) -> AUC 1 - 1.5 / 4; image 1 has no negative (not counted); e is unknown
    scores = [[0.9, 0.2, 0.5, 0.2, 0.99], [0.1, 0.2, 0.3, 0.4, 0.5]]
    labels = [[1, 1, 0, 0, -1], [1, 1, -1, -1, -1]]
    as_pos, as_neg = m.auc_shortfall(scores, labels)
    assert as_pos == pytest.approx([0.0, 1.5 / 4, 0.0, 0.0, 0.0])
    assert as_neg == pytest.approx([0.0, 0.0, 1 / 4, 0.5 / 4, 0.0])
    assert 1 - m.mean_per_image_auc(scores, labels) == pytest.approx(1.5 / 4)


def test_auc_shortfall_sums_to_the_shortfall():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 6, (30, 12)).astype(float)  # many ties
    labels = rng.choice([-1, 0, 1], (30, 12), p=[0.2, 0.6, 0.2])
    labels[0] = 1  # an image without negatives counts nowhere
    as_pos, as_neg = m.auc_shortfall(scores, labels)
    gap = 1 - m.mean_per_image_auc(scores, labels)
    assert as_pos.sum() == pytest.approx(gap) and as_neg.sum() == pytest.approx(gap)
    assert (as_pos[labels.max(0) < 1] == 0).all()  # never a positive: no share as one


def test_f1_hand_example():
    scores = np.array([[0.9, 0.6], [0.4, 0.2], [0.7, 0.8], [0.1, 0.3]])
    labels = np.array([[1, 0], [1, 0], [0, -1], [0, 0]])
    out = m.f1_scores(scores, labels, 0.5)
    # attr 0: TP=1 (0.9), FP=1 (0.7), FN=1 (0.4) -> 2/4; attr 1: no positive -> nan, but FP=1 (0.6)
    assert out["per_attribute"][0] == pytest.approx(0.5)
    assert math.isnan(out["per_attribute"][1])
    assert out["macro_f1"] == pytest.approx(0.5)
    # micro: TP=1, FP=2, FN=1 -> 2/5 (the unknown 0.8 is not an FP)
    assert out["micro_f1"] == pytest.approx(0.4)


def test_all_negative_predictions_get_zero_f1():
    scores, labels = _random_problem(0)
    out = m.f1_scores(scores, labels, 2.0)  # nothing reaches the threshold
    scored = (labels == 1).any(axis=0)
    np.testing.assert_array_equal(out["per_attribute"][scored], 0.0)
    assert out["macro_f1"] == 0.0
    assert out["micro_f1"] == 0.0


def test_f1_threshold_shape_checked():
    with pytest.raises(ValueError, match="thresholds"):
        m.f1_scores(np.zeros((2, 3)), np.zeros((2, 3), int), [0.5, 0.5])


@pytest.mark.parametrize("seed", range(5))
def test_tune_thresholds_beats_half(seed):
    scores, labels = _random_problem(seed)
    t = m.tune_thresholds(scores, labels)
    tuned = m.f1_scores(scores, labels, t)["per_attribute"]
    half = m.f1_scores(scores, labels, 0.5)["per_attribute"]
    scored = (labels == 1).any(axis=0)
    assert np.all(tuned[scored] >= half[scored] - 1e-12)
    # and it is the best any cut can do: try every candidate threshold
    for a in np.flatnonzero(scored):
        best = max(
            m.f1_scores(scores[:, [a]], labels[:, [a]], c)["per_attribute"][0]
            for c in np.r_[scores[:, a], np.inf]
        )
        assert tuned[a] == pytest.approx(best)


def test_tune_thresholds_hand_example_and_fallback():
    scores = np.array([[0.9, 0.3], [0.7, 0.2], [0.4, 0.1], [0.2, 0.0]])
    labels = np.array([[1, 0], [1, 0], [0, 0], [1, -1]])
    t = m.tune_thresholds(scores, labels)
    # attr 0: cut after 0.7 gives F1 = 4/5, after 0.2 gives 6/7 (best) -> predict all; no lower score
    assert t[0] == pytest.approx(0.2)
    assert t[1] == 0.5  # no positive, scores in [0, 1] -> probability fallback
    logits = scores * 10 - 5
    assert m.tune_thresholds(logits, labels)[1] == 0.0  # logit fallback


def test_tune_thresholds_midpoint():
    t = m.tune_thresholds(np.array([[0.9], [0.8], [0.3], [0.1]]), np.array([[1], [1], [0], [0]]))
    assert t[0] == pytest.approx(0.55)


# --------------------------------------------------------------------------- top-k


def test_topk_hand_example():
    scores = np.array(
        [
            [0.9, 0.8, 0.1, 0.95],  # attr 3 unknown: top-2 among known = {0, 1}
            [0.2, 0.7, 0.6, 0.1],  # top-2 = {1, 2}
        ]
    )
    labels = np.array([[1, 0, 0, -1], [0, 1, 0, 1]])
    out = m.topk_precision_recall(scores, labels, k=2)
    # per attr: Nc = [1, 1, 0, 0], Np = [1, 2, 1, 0], Ng = [1, 1, 0, 1]
    # scored attrs {0, 1, 3}: CP = (1 + 1/2 + 0)/3, CR = (1 + 1 + 0)/3
    assert out["CP"] == pytest.approx(0.5)
    assert out["CR"] == pytest.approx(2 / 3)
    assert out["CF1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    # overall: Nc = 2, Np = 4, Ng = 3
    assert out["OP"] == pytest.approx(0.5)
    assert out["OR"] == pytest.approx(2 / 3)
    assert out["OF1"] == pytest.approx(4 / 7)


def test_topk_perfect():
    labels = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    out = m.topk_precision_recall(labels.astype(float), labels, k=1)
    assert all(out[key] == 1.0 for key in ("CP", "CR", "CF1", "OP", "OR", "OF1"))


def test_topk_rejects_bad_k():
    with pytest.raises(ValueError, match="k"):
        m.topk_precision_recall(np.zeros((1, 2)), np.zeros((1, 2), int), k=0)


# --------------------------------------------------------------------------- masking invariance


def test_masked_scores_do_not_matter():
    scores, labels = _random_problem(7, unknown_frac=0.3)
    other = scores.copy()
    masked = labels == -1
    other[masked] = np.random.default_rng(1).normal(size=masked.sum()) * 100
    assert m.mean_average_precision(scores, labels) == m.mean_average_precision(other, labels)
    assert m.mean_per_image_auc(scores, labels) == m.mean_per_image_auc(other, labels)
    assert m.topk_precision_recall(scores, labels) == m.topk_precision_recall(other, labels)
    scored = (labels == 1).any(axis=0)
    np.testing.assert_array_equal(
        m.tune_thresholds(scores, labels)[scored], m.tune_thresholds(other, labels)[scored]
    )
    f_a = m.f1_scores(scores, labels, 0.5)
    f_b = m.f1_scores(other, labels, 0.5)
    assert (f_a["macro_f1"], f_a["micro_f1"]) == (f_b["macro_f1"], f_b["micro_f1"])


# --------------------------------------------------------------------------- by type / retrieval


def test_metrics_by_type():
    scores = np.array([[0.9, 0.1, 0.8], [0.1, 0.9, 0.7]])
    labels = np.array([[1, 1, 0], [0, 0, 1]])
    # AP: attr0 = 1, attr1 = 1/2 (pos ranked 2nd), attr2 = 1/2
    out = m.metrics_by_type(scores, labels, ["color", "color", "scene"])
    assert out == pytest.approx({"color": 0.75, "scene": 0.5})
    with pytest.raises(ValueError, match="types"):
        m.metrics_by_type(scores, labels, ["color"])


def test_recall_at_k_hand_example():
    ranked = [[3, 1, 2, 0, 4], [0, 1, 2, 3, 4], [5, 6]]
    relevant = [{1, 4}, {9}, set()]  # third query has nothing relevant: skipped
    out = m.recall_at_k(ranked, relevant, ks=(1, 2, 5))
    assert out == pytest.approx(
        {"R@1": 0.0, "hit@1": 0.0, "R@2": 0.25, "hit@2": 0.5, "R@5": 0.5, "hit@5": 0.5}
    )
    out_arr = m.recall_at_k(np.array([[3, 1, 2, 0, 4], [0, 1, 2, 3, 4]]), relevant[:2], ks=(2,))
    assert out_arr == pytest.approx({"R@2": 0.25, "hit@2": 0.5})
    assert math.isnan(m.recall_at_k([[1]], [set()], ks=(1,))["R@1"])
    with pytest.raises(ValueError, match="queries"):
        m.recall_at_k([[1]], [{1}, {2}])


# --------------------------------------------------------------------------- evaluate / validation


def test_evaluate_is_json_serialisable_with_nans():
    scores = np.array([[0.9, 0.2, 0.4], [0.3, 0.8, 0.6]])
    labels = np.array([[1, 0, 0], [0, -1, -1]])  # attrs 1, 2 have no positive -> nan AP/F1
    report = m.evaluate(scores, labels, ["red", "wooden", "beach"], ["color", "material", "scene"])
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text) == report
    assert report["mAP"] == 1.0
    assert report["n_attributes_scored"] == 1
    assert report["per_attribute"]["wooden"] == {"ap": None, "f1": None, "n_pos": 0, "n_neg": 1}
    assert report["per_attribute"]["red"]["n_neg"] == 1
    assert report["mAP_by_type"] == {"color": 1.0, "material": None, "scene": None}
    expected_keys = {
        "mAP",
        "mean_per_image_auc",
        "macro_f1",
        "micro_f1",
        "CP",
        "CR",
        "CF1",
        "OP",
        "OR",
        "OF1",
    }
    assert expected_keys <= report.keys()


def test_evaluate_with_thresholds():
    scores, labels = _random_problem(3)
    names = [f"a{i}" for i in range(scores.shape[1])]
    types = ["color"] * scores.shape[1]
    t = m.tune_thresholds(scores, labels)
    report = m.evaluate(scores, labels, names, types, thresholds=t)
    assert report["macro_f1"] == pytest.approx(m.f1_scores(scores, labels, t)["macro_f1"])
    json.dumps(report, allow_nan=False)


@pytest.mark.parametrize(
    "fn",
    [
        m.per_attribute_ap,
        m.mean_average_precision,
        m.mean_per_image_auc,
        m.tune_thresholds,
        m.topk_precision_recall,
    ],
)
def test_shape_mismatch_raises(fn):
    with pytest.raises(ValueError, match="same shape"):
        fn(np.zeros((3, 4)), np.zeros((3, 5), int))


def test_validation_errors():
    with pytest.raises(ValueError, match="same shape"):
        m.average_precision([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="same shape"):
        m.roc_auc([0.1, 0.2], [1, 0, 1])
    with pytest.raises(ValueError, match="1-D"):
        m.average_precision(np.zeros((2, 2)), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="labels must only contain"):
        m.per_attribute_ap(np.zeros((2, 2)), np.array([[2, 0], [0, 1]]))
    with pytest.raises(ValueError, match="NaN"):
        m.roc_auc([np.nan, 0.2], [1, 0])
    with pytest.raises(ValueError, match="names"):
        m.evaluate(np.zeros((2, 2)), np.zeros((2, 2), int), ["a"], ["color", "color"])
    with pytest.raises(ValueError, match="unique"):
        m.evaluate(np.zeros((2, 2)), np.zeros((2, 2), int), ["a", "a"], ["color", "color"])


# --------------------------------------------------------------------------- sklearn cross-checks


@pytest.mark.parametrize("seed", range(10))
def test_ap_and_auc_match_sklearn(seed):
    sk = pytest.importorskip("sklearn.metrics")
    scores, labels = _random_problem(seed)
    ap = m.per_attribute_ap(scores, labels)
    for a in range(scores.shape[1]):
        known = labels[:, a] != -1
        y, s = labels[known, a], scores[known, a]
        if y.sum() == 0:
            assert math.isnan(ap[a])
            continue
        assert ap[a] == pytest.approx(sk.average_precision_score(y, s))
        assert m.average_precision(scores[:, a], labels[:, a]) == pytest.approx(ap[a])
        if 0 < y.sum() < y.size:
            assert m.roc_auc(scores[:, a], labels[:, a]) == pytest.approx(sk.roc_auc_score(y, s))


def test_mean_per_image_auc_matches_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    scores, labels = _random_problem(11, n=30, a=20)
    aucs = []
    for i in range(scores.shape[0]):
        known = labels[i] != -1
        y = labels[i, known]
        if 0 < y.sum() < y.size:
            aucs.append(sk.roc_auc_score(y, scores[i, known]))
    assert m.mean_per_image_auc(scores, labels) == pytest.approx(np.mean(aucs))


def test_f1_matches_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    scores, labels = _random_problem(5)
    t = m.tune_thresholds(scores, labels)
    out = m.f1_scores(scores, labels, t)
    for a in range(scores.shape[1]):
        known = labels[:, a] != -1
        y = labels[known, a]
        if y.sum():
            expected = sk.f1_score(y, scores[known, a] >= t[a])
            assert out["per_attribute"][a] == pytest.approx(expected)
    # micro F1: pool all known entries
    known = labels != -1
    pred = scores >= t[None, :]
    assert out["micro_f1"] == pytest.approx(sk.f1_score(labels[known], pred[known]))


def test_precision_at_k_ranks_known_labels_only():
    from cocoattr.metrics import precision_at_k, precision_at_k_report

    scores = np.array([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4]])
    labels = np.array([[1, -1, 0, 1], [0, 0, 1, 1]])
    # image 0: known are 0, 2, 3 -> top 2 = [0 (pos), 2 (neg)]; image 1: top 2 = [3 (pos), 2 (pos)]
    assert precision_at_k(scores, labels, k=2) == pytest.approx((0.5 + 1.0) / 2)
    assert precision_at_k(scores, np.full_like(labels, -1), k=2) != precision_at_k(scores, labels, k=2)
    report = precision_at_k_report(scores, labels, ["color", "shape", "shape", "scene"], k=2)
    # non-colour columns 1..3: image 0 known 2 (neg), 3 (pos) -> 0.5; image 1: 3, 2 pos -> 1.0
    assert report["precision_at_2_non_colour"] == pytest.approx(0.75)
    assert report["colours_in_top_2"] == pytest.approx(0.5)  # image 0's top two include the colour
    assert report["precision_at_2_by_type"]["scene"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        precision_at_k(scores, labels, k=0)
