"""The search query language: parsing, mapping of words to attributes, and the scoring rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cocoattr.errors import UserError
from cocoattr.query import MAX_QUERY_CHARS, MAX_WEIGHT, MIN_WEIGHT, Term, parse_query, score_terms


def terms(text: str, **kw) -> dict[str, float]:
    return {t.key: t.weight for t in parse_query(text, use_encoder=False, **kw).terms}


def test_comma_and_space_separated_with_exclusion():
    assert terms("red, furry, -indoor") == {"red": 1.0, "furry": 1.0, "-indoor": 1.0}
    assert terms("red furry -indoor") == {"red": 1.0, "furry": 1.0, "-indoor": 1.0}


def test_weights_and_clamping():
    assert terms("striped^2 animal") == {"striped": 2.0, "animal": 1.0}
    q = parse_query("striped^1000 animal^0.0001 red^abc", use_encoder=False)
    got = {t.attribute: t.weight for t in q.terms}
    assert got == {"striped": MAX_WEIGHT, "animal": MIN_WEIGHT, "red": 1.0}
    assert len(q.warnings) == 3 and any("clamped" in w for w in q.warnings)


def test_multi_word_names_longest_first():
    assert terms("living room, big cat, wearing hat") == {"living room": 1, "big cat": 1, "wearing hat": 1}
    # negation on the first word and a weight on the last word apply to the whole phrase
    assert terms("-living room, big cat^3") == {"-living room": 1, "big cat": 3}
    # "big" alone is a synonym of large; "cat" alone is cat
    assert set(terms("big, cat")) == {"large", "cat"}


def test_synonyms_are_recorded():
    q = parse_query("fluffy, kitten", use_encoder=False)
    assert {t.attribute for t in q.terms} == {"furry", "young", "pet", "cat"}
    shown = {m.word: (m.attributes, m.how) for m in q.mappings}
    assert shown["fluffy"] == (("furry",), "synonym")
    assert shown["kitten"][1] == "synonym" and "cat" in shown["kitten"][0]
    assert "'fluffy' -> furry (synonym)" in q.describe()
    # a synonym shared by k attributes contributes a geometric mean (weight split k ways)
    assert sum(t.weight for t in q.terms if t.attribute in {"young", "pet", "cat"}) == pytest.approx(1.0)


def test_plurals_and_typos():
    assert terms("zebras") == {"zebra": 1.0}
    q = parse_query("furyy", use_encoder=False)
    assert [t.attribute for t in q.terms] == ["furry"] and q.mappings[0].how == "typo"


def test_unknown_word_maps_to_nearest_attribute_with_minilm():
    q = parse_query("pooch")
    assert q.mappings[0].how == "nearest" and q.terms[0].attribute == "dog"


def test_unknown_word_falls_back_to_spelling_without_encoder(monkeypatch):
    import cocoattr.text

    def broken(texts):
        raise UserError("the MiniLM text encoder is not installed")

    monkeypatch.setattr(cocoattr.text, "encode", broken)
    q = parse_query("greenish")
    assert [t.attribute for t in q.terms] == ["green"]
    q = parse_query("zzzz, purplish")
    assert [t.attribute for t in q.terms] == ["purple"]
    assert any("text encoder unavailable" in w for w in q.warnings)


@pytest.mark.parametrize("text", ["", "   ", " , ; ", "xqzzkv", "the of a"])
def test_nothing_usable_is_a_user_error(text):
    with pytest.raises(UserError):
        parse_query(text, use_encoder=False)


def test_contradiction_is_a_user_error():
    with pytest.raises(UserError, match="excludes"):
        parse_query("red, -red", use_encoder=False)


def test_only_negations_rank_by_absence():
    q = parse_query("-person, -indoor", use_encoder=False)
    assert not q.includes and len(q.excludes) == 2
    assert "absence" in q.describe()


def test_free_text_keeps_known_words_and_the_text():
    q = parse_query("a fluffy pet on a sofa", use_encoder=False)
    assert q.free_text == "a fluffy pet on a sofa"
    assert {"furry", "pet"} <= {t.attribute for t in q.terms}
    # attribute syntax (commas, -, ^) means "not free text"
    assert parse_query("fluffy, pet", use_encoder=False).free_text is None


def test_very_long_text_is_truncated():
    q = parse_query("red dog " * 2000, use_encoder=False)
    assert len(q.free_text or "") <= MAX_QUERY_CHARS
    assert any("truncated" in w for w in q.warnings)


def test_restricted_to_index_attributes():
    q = parse_query("red, dog", attributes=["red", "blue"], use_encoder=False)
    assert [t.attribute for t in q.terms] == ["red"]


def test_score_is_a_sum_of_weighted_log_probabilities():
    attrs = ["a", "b"]
    probs = np.array([[0.9, 0.1], [0.9, 0.9], [0.2, 0.1]])
    ts = [Term("a", 2.0), Term("b", 1.0, negate=True)]
    scores, shown = score_terms(ts, probs, attrs)
    assert scores[0] == pytest.approx(2 * math.log(0.9) + math.log(0.9))
    assert np.argmax(scores) == 0 and np.argmin(scores) == 2
    np.testing.assert_allclose(shown[1], [0.9, 0.1])  # exclusions show the probability of absence
    # p = 0 or 1 never gives -inf
    s, _ = score_terms([Term("a")], np.array([[0.0, 0.0]]), attrs)
    assert np.isfinite(s).all()
