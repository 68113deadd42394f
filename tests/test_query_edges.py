"""cocoattr.query at its edges: the cases mutation testing (tests/mutation.py query) showed
test_query.py let through -- exact weights and clamping, the words of each mapping, phrase
rules, free-text detection, and the scorer's clipping for exclusions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cocoattr.query import P_CLIP, Term, score_terms


def test_an_excluded_attribute_with_probability_one_stays_finite():
    """log(1 - p) unclipped is -inf at p = 1: one certain image would sink every other score."""
    attrs = ["a", "b"]
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    scores, shown = score_terms([Term("a", 1.0, negate=True)], probs, attrs)
    assert np.isfinite(scores).all()
    assert scores[0] == pytest.approx(math.log(P_CLIP))
    assert scores[1] == pytest.approx(math.log(1 - P_CLIP))
    assert scores[2] == pytest.approx(math.log(0.5))
    np.testing.assert_allclose(shown[:, 0], [0.0, 1.0, 0.5])  # shown unclipped: P(not a)


def test_an_included_attribute_is_clipped_at_both_ends():
    probs = np.array([[0.0], [1.0]])
    scores, _ = score_terms([Term("a", 2.0)], probs, ["a"])
    assert scores[0] == pytest.approx(2 * math.log(P_CLIP))
    assert scores[1] == pytest.approx(2 * math.log(1 - P_CLIP))
