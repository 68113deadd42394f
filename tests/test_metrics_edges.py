"""cocoattr.metrics at its edges: the cases mutation testing (tests/mutation.py metrics) showed
test_metrics.py let through -- boundaries (one positive, one prediction, a denominator of 1),
defaults, error messages, dtypes, and 0/0 paths that must say nan without a RuntimeWarning."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from cocoattr import metrics as m


@pytest.fixture
def no_warnings():
    """Any numpy RuntimeWarning (0/0, mean of nothing) fails the test: nan is decided, not stumbled on."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# --------------------------------------------------------------------------- validation messages


def test_validation_messages_name_the_problem():
    with pytest.raises(ValueError, match=r"expected 1-D \(one attribute or one image\) scores"):
        m.roc_auc(np.zeros((2, 2)), np.zeros((2, 2), int))
    with pytest.raises(
        ValueError, match=r"expected 2-D \(images x attributes\) scores and labels, got shape \(3,\)"
    ):
        m.per_attribute_ap(np.zeros(3), np.zeros(3, int))
    with pytest.raises(ValueError, match="^scores contain NaN$"):
        m.per_attribute_ap(np.full((1, 1), np.nan), np.zeros((1, 1), int))
    with pytest.raises(
        ValueError, match=r"^labels must only contain 1 \(positive\), 0 \(negative\) or -1 \(unknown\)$"
    ):
        m.average_precision([0.1], [3])
    with pytest.raises(ValueError, match=r"expected 2-D labels \(images x attributes\), got shape \(2,\)"):
        m.count_scored_attributes([1, 0])
    with pytest.raises(ValueError, match="^names has 1 entries but scores have 2 attributes$"):
        m.evaluate(np.zeros((1, 2)), np.zeros((1, 2), int), ["a"], ["color", "color"])
    with pytest.raises(ValueError, match="^types has 1 entries but scores have 2 attributes$"):
        m.evaluate(np.zeros((1, 2)), np.zeros((1, 2), int), ["a", "b"], ["color"])
    with pytest.raises(ValueError, match="^types has 3 entries but scores have 2 attributes$"):
        m.metrics_by_type(np.zeros((1, 2)), np.zeros((1, 2), int), ["color"] * 3)
    with pytest.raises(ValueError, match="^names must be unique$"):
        m.evaluate(np.zeros((1, 2)), np.zeros((1, 2), int), ["a", "a"], ["color", "color"])
    with pytest.raises(ValueError, match="^k must be >= 1, got 0$"):
        m.precision_at_k(np.zeros((1, 2)), np.zeros((1, 2), int), k=0)
    with pytest.raises(ValueError, match=r"^every K must be >= 1, got \(1, 0\)$"):
        m.recall_at_k([[1]], [{1}], ks=(1, 0))


def test_integer_and_boolean_scores_are_ranked_as_numbers():
    # uint8 scores negated without a float conversion wrap around (-0 = 0 ranks first); bools cannot be negated
    assert m.average_precision(np.array([0, 5], np.uint8), [0, 1]) == 1.0
    assert m.average_precision(np.array([True, False]), [1, 0]) == 1.0
    assert m.roc_auc(np.array([0, 5, 3], np.uint8), [0, 1, 0]) == 1.0


def test_count_scored_attributes_counts_columns_not_rows():
    labels = np.array([[1, 1, 0], [0, 0, 0], [0, 0, -1], [0, 0, 0]])  # 2 scored attributes, 1 image with one
    assert m.count_scored_attributes(labels) == 2


# --------------------------------------------------------------------------- AUC and F1 without warnings


def test_auc_without_a_negative_is_nan_without_dividing(no_warnings):
    assert math.isnan(m.roc_auc([0.3, 0.2], [1, 1]))
    assert math.isnan(m.roc_auc([0.3, 0.2], [0, 0]))


def test_f1_of_an_attribute_with_one_positive_is_counted():
    out = m.f1_scores(np.array([[0.9], [0.1]]), np.array([[1], [0]]), 0.5)
    assert out["per_attribute"][0] == 1.0 and out["macro_f1"] == 1.0


def test_f1_without_positives_or_predictions_is_nan_without_warnings(no_warnings):
    out = m.f1_scores(np.zeros((2, 2)), np.zeros((2, 2), int), 0.5)  # nothing positive, nothing predicted
    assert np.isnan(out["per_attribute"]).all() and math.isnan(out["micro_f1"])
    assert math.isnan(out["macro_f1"])


def test_micro_f1_with_a_single_false_positive_is_zero():
    out = m.f1_scores(np.array([[0.9], [0.1]]), np.array([[0], [0]]), 0.5)  # TP 0, FP 1, FN 0: denominator 1
    assert out["micro_f1"] == 0.0


# --------------------------------------------------------------------------- thresholds


def test_equally_good_cuts_keep_the_highest():
    # positives at ranks 1 and 4: cutting after 1 (F1 2/3) ties cutting after 4 (F1 2/3); keep the first
    t = m.tune_thresholds(np.array([[0.9], [0.8], [0.7], [0.6]]), np.array([[1], [0], [0], [1]]))
    assert t[0] == pytest.approx(0.85)


def test_a_cut_before_the_last_score_gets_a_midpoint():
    t = m.tune_thresholds(np.array([[0.9], [0.8], [0.2]]), np.array([[1], [1], [0]]))
    assert t[0] == pytest.approx(0.5)


def test_an_untunable_attribute_does_not_stop_the_others():
    t = m.tune_thresholds(np.array([[0.9, 0.9], [0.1, 0.2]]), np.array([[0, 1], [0, 0]]))
    assert t[0] == 0.5 and t[1] == pytest.approx(0.55)


def test_adjacent_floats_keep_the_threshold_on_the_positive():
    lo = 0.5
    hi = float(np.nextafter(lo, 1.0))  # the midpoint rounds down to lo: it must not become the cut
    t = m.tune_thresholds(np.array([[hi], [lo]]), np.array([[1], [0]]))
    assert t[0] == hi
    assert m.f1_scores(np.array([[hi], [lo]]), np.array([[1], [0]]), t)["per_attribute"][0] == 1.0


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ([[1.0], [0.0]], 0.5),  # 1.0 exactly is still a probability
        ([[1.5], [0.2]], 0.0),  # anything above 1 means logits
        ([[5.0]], 0.0),  # a single score is judged like any other
        ([[-0.5], [0.5]], 0.0),
    ],
)
def test_fallback_threshold_tells_probabilities_from_logits(scores, expected):
    labels = np.zeros((len(scores), 1), int)
    assert m.tune_thresholds(np.array(scores), labels)[0] == expected


# --------------------------------------------------------------------------- top-k


def test_topk_f1_is_zero_when_every_prediction_is_wrong(no_warnings):
    out = m.topk_precision_recall(np.array([[0.9, 0.1]]), np.array([[0, 1]]), k=1)
    assert out["CP"] == 0.0 and out["CR"] == 0.0 and out["CF1"] == 0.0
    assert out["OP"] == 0.0 and out["OR"] == 0.0 and out["OF1"] == 0.0


def test_topk_small_precision_and_recall_give_their_harmonic_mean():
    # top 1 of each image: attr 0, 1, 0, 0: Nc = [0, 1], Np = [3, 1], Ng = [0, 2]
    scores = np.array([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.9, 0.1]])
    labels = np.array([[0, 1], [0, 1], [0, 0], [0, 0]])
    out = m.topk_precision_recall(scores, labels, k=1)
    # OP = 1/4 (one right of four predictions), OR = 1/2: OF1 = 1/3 (P + R below 1)
    assert out["OP"] == pytest.approx(0.25) and out["OR"] == pytest.approx(0.5)
    assert out["OF1"] == pytest.approx(1 / 3)
    # per class, over the one scored attribute (1): 1 of its 2 positives found, 1 of 1 prediction right
    assert out["CR"] == pytest.approx(0.5) and out["CP"] == 1.0
    assert out["CF1"] == pytest.approx(2 / 3)


def test_topk_default_k_is_three():
    scores = np.array([[0.9, 0.8, 0.7, 0.6]])
    labels = np.array([[1, 1, 1, 1]])
    assert m.topk_precision_recall(scores, labels)["OR"] == pytest.approx(0.75)


def test_topk_one_prediction_and_one_positive_are_enough():
    out = m.topk_precision_recall(np.array([[0.9, 0.1]]), np.array([[1, -1]]), k=1)
    assert out["OP"] == 1.0 and out["OR"] == 1.0


def test_topk_without_positives_or_known_entries_is_nan_without_warnings(no_warnings):
    out = m.topk_precision_recall(np.array([[0.9, 0.1]]), np.array([[0, 0]]), k=1)
    assert (
        math.isnan(out["CP"]) and math.isnan(out["CR"]) and math.isnan(out["CF1"]) and math.isnan(out["OR"])
    )
    assert out["OP"] == 0.0
    out = m.topk_precision_recall(np.array([[0.9, 0.1]]), np.array([[-1, -1]]), k=1)
    assert all(math.isnan(v) for v in out.values())


# --------------------------------------------------------------------------- precision@k


def test_precision_at_k_default_k_and_k_one():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
    labels = np.array([[1, 1, 1, 1, 1, 0]])
    assert m.precision_at_k(scores, labels) == 1.0  # the top 5; a top 6 would be 5/6
    assert m.precision_at_k(scores, labels, k=1) == 1.0


def test_precision_at_k_skips_images_without_known_attributes(no_warnings):
    scores = np.array([[0.9, 0.1], [0.9, 0.1]])
    assert m.precision_at_k(scores, np.array([[1, 0], [-1, -1]]), k=1) == 1.0
    assert math.isnan(m.precision_at_k(scores, np.full((2, 2), -1), k=1))


def test_precision_at_k_report_separates_colours():
    types = ["color", "color", "shape", "scene"]
    scores = np.array([[0.9, 0.8, 0.3, 0.2], [0.2, 0.1, 0.9, 0.8], [0.9, 0.1, 0.8, 0.2]])
    labels = np.array([[0, 0, 1, -1], [0, 0, 0, 1], [1, 0, -1, 0]])
    report = m.precision_at_k_report(scores, labels, types, k=2)
    assert report["precision_at_2"] == pytest.approx(m.precision_at_k(scores, labels, k=2))
    # non-colour columns 2, 3: image 0 knows only 2 (pos) -> 1; image 1: 3 pos, 2 neg -> 1/2; image 2: 3 neg -> 0
    assert report["precision_at_2_non_colour"] == pytest.approx(0.5)
    # top 2 with unknowns last: image 0 {0, 1} both colours; image 1 {2, 3}; image 2 {0, 3}: 1 colour
    assert report["colours_in_top_2"] == pytest.approx(1.0)
    by_type = report["precision_at_2_by_type"]
    assert list(by_type) == ["color", "shape", "scene"]
    assert by_type["color"] == pytest.approx(m.precision_at_k(scores[:, :2], labels[:, :2], k=2))
    assert by_type["color"] == pytest.approx(1 / 6)  # image 2 has its colour positive; top 2 of 2: 1/2


def test_precision_at_k_report_default_k_is_five():
    scores = np.arange(12, dtype=float).reshape(2, 6)
    labels = np.ones((2, 6), int)
    assert set(m.precision_at_k_report(scores, labels, ["shape"] * 6)) >= {
        "precision_at_5",
        "colours_in_top_5",
    }


# --------------------------------------------------------------------------- recall@k and the report


def test_recall_at_k_goes_on_after_a_query_without_relevant_items(no_warnings):
    out = m.recall_at_k([[5], [1, 2]], [set(), {1}], ks=(1,))
    assert out == {"R@1": 1.0, "hit@1": 1.0}
    out = m.recall_at_k([[5]], [set()], ks=(1,))
    assert math.isnan(out["R@1"]) and math.isnan(out["hit@1"])


def test_json_safe_keeps_lists_and_bools():
    assert m._json_safe(
        {"a": np.array([1.0, np.nan]), "b": (np.int64(2),), "c": np.bool_(True), "d": False}
    ) == {
        "a": [1.0, None],
        "b": [2],
        "c": True,
        "d": False,
    }


def test_evaluate_report_counts_and_defaults():
    scores = np.array([[0.6, 0.2, 0.9, 0.1], [0.4, 0.7, 0.3, 0.8], [0.55, 0.45, 0.35, 0.25]])
    labels = np.array([[1, 0, 1, -1], [0, 1, 0, 1], [1, 0, -1, 0]])
    names, types = ["red", "furry", "beach", "wooden"], ["color", "texture", "scene", "material"]
    report = m.evaluate(scores, labels, names, types)
    assert report["n_images"] == 3 and report["n_attributes"] == 4
    assert [report["per_attribute"][n]["n_neg"] for n in names] == [1, 2, 1, 1]
    # thresholds None means 0.5, not "no threshold"
    f1 = m.f1_scores(scores, labels, 0.5)
    assert report["macro_f1"] == pytest.approx(f1["macro_f1"]) and report["micro_f1"] == pytest.approx(
        f1["micro_f1"]
    )
    assert m.f1_scores(scores, labels, 1.5)["micro_f1"] != pytest.approx(f1["micro_f1"])
    top3 = m.topk_precision_recall(scores, labels, k=3)
    assert top3 != m.topk_precision_recall(scores, labels, k=4)
    assert {key: report[key] for key in top3} == pytest.approx(top3)
    p5 = m.precision_at_k_report(scores, labels, types, k=5)
    assert report["precision_at_5"] == pytest.approx(p5["precision_at_5"])
    assert "precision_at_6" not in report


def test_precision_at_k_report_by_type_uses_the_given_k():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
    labels = np.array([[1, 1, 0, 0, 0, 0]])
    report = m.precision_at_k_report(scores, labels, ["shape"] * 6, k=2)
    assert report["precision_at_2_by_type"]["shape"] == 1.0  # top 2 of 6; a top 5 would be 2/5
