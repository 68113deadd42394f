"""Reliability, property-based: the query parser and the caption miner on generated input.

Hypothesis deadlines are off (first calls build lookup tables) and example counts modest, so
the module runs in seconds. The parser runs with use_encoder=False: the MiniLM fallback only
changes which attribute an unknown word maps to, not the invariants checked here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cocoattr.data.captions import NEGATED_PERSON, NEGATION_CUES, CaptionMiner
from cocoattr.errors import UserError
from cocoattr.query import MAX_QUERY_CHARS, MAX_WEIGHT, MIN_WEIGHT, parse_query
from cocoattr.vocab import load_vocabulary

VOCAB = load_vocabulary()
NAMES = VOCAB.names
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MINER = CaptionMiner(VOCAB)

# The most attributes one synonym maps to: its weight is split between them (a geometric mean), so
# one term's weight can be as low as MIN_WEIGHT / MAX_FANOUT, while each typed phrase stays in the range.
_SYN_FANOUT: dict[str, int] = {}
for _a in VOCAB:
    for _s in _a.synonyms:
        _SYN_FANOUT[_s.lower()] = _SYN_FANOUT.get(_s.lower(), 0) + 1
MAX_FANOUT = max(_SYN_FANOUT.values(), default=1)

words = st.sampled_from(sorted({*NAMES, *_SYN_FANOUT, "a", "the", "on", "no", "not", "xqzzkv", "red"}))
operators = st.sampled_from(["", "-", "!", "^2", "^0", "^1e9", "^-3", "^nan", "^inf", "^abc", ",", ";", "^"])
query_like = st.lists(st.tuples(st.sampled_from(["", "-"]), words, operators), max_size=12).map(
    lambda parts: " ".join(f"{neg}{w}{op}" for neg, w, op in parts)
)
any_text = st.one_of(st.text(max_size=300), query_like)


def _parse(text: str):
    try:
        return parse_query(text, use_encoder=False)
    except UserError:
        return None


@SETTINGS
@given(any_text)
def test_parser_raises_only_user_error(text):
    """Arbitrary text (unicode, control characters, operator soup) parses or raises UserError."""
    _parse(text)  # anything other than UserError propagates and fails the test


@SETTINGS
@given(any_text)
def test_parser_weights_are_in_range_and_exclusions_disjoint(text):
    q = _parse(text)
    if q is None:
        return
    for t in q.terms:
        assert math.isfinite(t.weight) and 0 < t.weight <= MAX_WEIGHT, t
        assert t.weight >= MIN_WEIGHT / MAX_FANOUT - 1e-12, t
        assert t.attribute in NAMES
    included = {t.attribute for t in q.includes}
    excluded = {t.attribute for t in q.excludes}
    assert not included & excluded
    assert len(q.text) <= MAX_QUERY_CHARS
    assert q.free_text is None or len(q.free_text) <= MAX_QUERY_CHARS


# Long texts that are valid queries (vocabulary names, spaces or commas, some stopwords), so
# every example reaches the truncation instead of most being refused as unusable.
long_queries = (
    st.lists(
        st.tuples(st.sampled_from(NAMES), st.sampled_from([", ", " ", " the ", "; "])),
        min_size=1,
        max_size=40,
    )
    .map(lambda parts: "".join(w + sep for w, sep in parts))
    .map(lambda chunk: chunk * (MAX_QUERY_CHARS // len(chunk) + 2))
)


@SETTINGS
@given(long_queries)
def test_parser_long_text_is_bounded(text):
    assert len(text) > MAX_QUERY_CHARS
    q = parse_query(text, use_encoder=False)  # a valid query: it must parse, never be refused
    assert len(q.text) <= MAX_QUERY_CHARS
    assert any("truncated" in w for w in q.warnings)
    assert text.startswith(q.text) and text[len(q.text)] == " "  # cut at a word boundary
    assert q.terms or q.free_text


weights = st.sampled_from([1.0, 0.1, 0.5, 2.0, 2.5, 7.0, 10.0])


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(NAMES), st.booleans(), weights), min_size=1, max_size=8,
                unique_by=lambda t: t[0]))  # fmt: skip
def test_parser_round_trips_generated_queries(terms):
    """'name^w, -name2, ...' built from vocabulary names parses back to exactly those terms."""
    text = ", ".join(("-" if neg else "") + name + ("" if w == 1.0 else f"^{w:g}") for name, neg, w in terms)
    q = parse_query(text, use_encoder=False)
    assert {t.key: t.weight for t in q.terms} == {("-" if n else "") + a: w for a, n, w in terms}, text
    assert not q.warnings and q.free_text is None


@SETTINGS
@given(st.sampled_from(NAMES), st.floats(allow_nan=True, allow_infinity=True))
def test_parser_any_weight_is_clamped(name, w):
    q = parse_query(f"{name}^{w!r}", use_encoder=False)
    (term,) = q.terms
    assert MIN_WEIGHT <= term.weight <= MAX_WEIGHT
    assert (term.weight == w) or q.warnings


# ----------------------------------------------------------------------------- caption miner

TERMS = sorted({*NAMES, *_SYN_FANOUT})
filler = st.sampled_from(["a", "the", "on", "in", "with", "and", "or", "is", "near", ".", ",", "two", "big",
                          "no", "not", "without", "nobody", "there", "are", "of", "but"])  # fmt: skip
caption = st.lists(st.one_of(st.sampled_from(TERMS), filler), max_size=20).map(" ".join)
captions = st.lists(st.one_of(caption, st.text(max_size=80)), max_size=6)


@SETTINGS
@given(st.one_of(caption, st.text(max_size=200)))
def test_miner_positives_and_negatives_are_disjoint_vocabulary_names(text):
    pos, neg = MINER.mine(text)
    assert not pos & neg
    assert pos <= set(NAMES) and neg <= set(NAMES)


@SETTINGS
@given(
    caption,
    st.sampled_from(TERMS),
    st.sampled_from(sorted(NEGATION_CUES - NEGATED_PERSON - {"nor", "neither"})),
)
def test_negating_a_phrase_never_makes_it_positive(prefix, term, cue):
    """A new sentence '<cue> <term>' adds no positives to what `prefix` already had. ("nobody" is
    itself a negated mention of person, not a cue for the next word, so it is left out.)"""
    before, _ = MINER.mine(prefix + " .")
    after, _ = MINER.mine(f"{prefix} . {cue} {term}")
    assert after == before, (prefix, cue, term, after - before)


@SETTINGS
@given(st.sampled_from(TERMS))
def test_no_phrase_alone_has_no_positives(term):
    """'no X': nothing positive, and X's own attributes negative (not X's parents: no car is not no vehicle)."""
    pos, neg = MINER.mine(f"no {term}")
    assert not pos, (term, pos)
    named = {a for m in MINER.mentions(term) for a in m.attributes}
    assert neg >= named, (term, named - neg)


@SETTINGS
@given(captions, st.randoms(use_true_random=False), st.integers(1, 3))
def test_labels_are_ternary_and_order_invariant(caps, rnd, min_votes):
    miner = CaptionMiner(VOCAB, min_votes=min_votes) if min_votes != 1 else MINER
    labels = miner.labels(caps)
    assert labels.dtype == np.int8 and labels.shape == (len(NAMES),)
    assert set(np.unique(labels).tolist()) <= {-1, 0, 1}
    shuffled = list(caps)
    rnd.shuffle(shuffled)
    np.testing.assert_array_equal(miner.labels(shuffled), labels)


@pytest.mark.parametrize("caps", [[], [""], ["   "], ["."]])
def test_labels_of_nothing_are_all_unknown(caps):
    assert (MINER.labels(caps) == -1).all()
