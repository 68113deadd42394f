"""cocoattr.query at its edges: the cases mutation testing (tests/mutation.py query) showed
test_query.py let through -- exact weights and clamping, the words of each mapping, phrase
rules, free-text detection, and the scorer's clipping for exclusions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cocoattr.errors import UserError
from cocoattr.query import MAX_QUERY_CHARS, P_CLIP, Mapping, Query, Term, parse_query, score_terms


def parsed(text: str) -> Query:
    return parse_query(text, use_encoder=False)


def keys(text: str) -> list[tuple[str, float]]:
    return [(t.key, t.weight) for t in parsed(text).terms]


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


def test_float16_probabilities_are_clipped_in_float64():
    """An index stores float16, where 1 - 1e-4 rounds to 1: clipping there would give log(0)."""
    probs = np.array([[1.0], [0.0]], np.float16)
    scores, _ = score_terms([Term("a", 1.0, negate=True)], probs, ["a"])
    assert scores[0] == pytest.approx(math.log(P_CLIP)) and scores[1] == pytest.approx(math.log(1 - P_CLIP))


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize(
    ("text", "weight", "warning"),
    [
        ("red^10", 10.0, None),
        ("red^0.1", 0.1, None),
        ("red^2.5", 2.5, None),
        ("red^10.5", 10.0, "'red^10.5': weight clamped to 10 (allowed 0.1..10)"),
        ("red^0.05", 0.1, "'red^0.05': weight clamped to 0.1 (allowed 0.1..10)"),
        ("red^-1", 0.1, "'red^-1': weight clamped to 0.1 (allowed 0.1..10)"),
        ("red^nan", 1.0, "'red^nan': weight clamped to 1 (allowed 0.1..10)"),
        ("red^abc", 1.0, "'red^abc': weight is not a number, using 1"),
    ],
)
def test_each_weight_and_its_warning(text, weight, warning):
    q = parsed(text)
    assert [(t.attribute, t.weight) for t in q.terms] == [("red", weight)]
    assert q.warnings == ([warning] if warning else [])


def test_a_repeated_attribute_keeps_its_largest_weight():
    assert keys("red^2 red") == [("red", 2.0)]
    assert keys("red, red^3, red^0.5") == [("red", 3.0)]


# --------------------------------------------------------------------------- tokens and phrases


def test_punctuation_around_words_and_bang_negation():
    assert keys("red!") == [("red", 1.0)]
    assert keys("(furry)") == [("furry", 1.0)]
    assert keys("!red, dog") == [("-red", 1.0), ("dog", 1.0)]


def test_a_phrase_is_negated_on_its_first_word_and_weighted_on_its_last_only():
    assert keys("-big cat") == [("-big cat", 1.0)]
    assert keys("big cat^2") == [("big cat", 2.0)]
    assert keys("big^2 cat") == [("large", 2.0), ("cat", 1.0)]  # a weight inside breaks the phrase
    assert keys("big -cat") == [("large", 1.0), ("-cat", 1.0)]  # so does a negation inside


def test_free_text_needs_six_words_or_a_stopword():
    assert parsed("red furry dog cat wooden").free_text is None
    assert parsed("red furry dog cat wooden beach").free_text == "red furry dog cat wooden beach"
    assert parsed("dog on grass").free_text == "dog on grass"
    assert parsed("red furry dog cat wooden, beach").free_text is None  # a comma is query syntax


def test_truncation_warning_says_how_much_was_kept():
    q = parsed("red dog " * 100)
    assert len(q.text) <= MAX_QUERY_CHARS
    assert q.warnings == [f"query truncated to its first {len(q.text)} characters"]


def test_unusable_queries_say_why():
    with pytest.raises(UserError, match=r"^empty query: type attributes such as 'red, furry, -indoor'"):
        parsed(" , ; ")
    with pytest.raises(UserError, match=r"^query both asks for and excludes \['red'\]$"):
        parsed("red, dog, -red")
    with pytest.raises(
        UserError, match=r"^nothing in the query matches an attribute \('xqzzkv' -> \(unknown\)\); try"
    ):
        parsed("xqzzkv")


# --------------------------------------------------------------------------- what the UI shows


def test_mapping_text():
    assert str(Mapping("red", ("red",), "attribute")) == "'red'"
    assert (
        str(Mapping("kitten", ("young", "pet", "cat"), "synonym")) == "'kitten' -> young, pet, cat (synonym)"
    )
    assert str(Mapping("xq", (), "unknown")) == "'xq' -> (unknown)"


def test_describe_lines():
    assert parsed("striped^2, -indoor, red").describe() == "query: striped^2 -indoor red"
    assert parsed("fluffy").describe() == "query: furry  ['fluffy' -> furry (synonym)]"
    assert parsed("-indoor").describe() == "query: -indoor  (exclusions only: ranking by absence)"
    assert Query(text="", terms=[]).describe() == "query: (nothing)"
    assert parsed("dog on grass").describe() == 'query: dog grass text "dog on grass"'  # stopwords unshown
