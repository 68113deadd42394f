"""cocoattr.query at its edges: the cases mutation testing (tests/mutation.py query) showed
test_query.py let through -- exact weights and clamping, the words of each mapping, phrase
rules, free-text detection, and the scorer's clipping for exclusions."""

from __future__ import annotations

import math
import warnings

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
        ("red^inf", 10.0, "'red^inf': weight clamped to 10 (allowed 0.1..10)"),
        ("red^-inf", 0.1, "'red^-inf': weight clamped to 0.1 (allowed 0.1..10)"),
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
    assert parsed("big -cat").mappings[0] == Mapping(
        "big", ("large",), "synonym"
    )  # the shorter phrase, not a typo


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


# --------------------------------------------------------------------------- lookup, lemmas, tokens


def test_hyphenated_names_and_synonyms_are_found_with_a_space():
    from cocoattr.vocab import Attribute, Vocabulary

    vocab = Vocabulary((Attribute("low-rise", "shape", ("ball-shaped",)), Attribute("red", "color")))
    q = parse_query("low rise, ball shaped, red", vocab, use_encoder=False)
    assert [(m.word, m.attributes, m.how) for m in q.mappings] == [
        ("low rise", ("low-rise",), "attribute"),
        ("ball shaped", ("low-rise",), "synonym"),
        ("red", ("red",), "attribute"),
    ]
    assert parsed("see through").mappings == [Mapping("see through", ("transparent",), "synonym")]


def test_synonyms_of_an_allowed_attribute_after_a_disallowed_one():
    q = parse_query("fluffy", attributes=["furry"], use_encoder=False)  # 'red' (first) is not allowed
    assert q.mappings == [Mapping("fluffy", ("furry",), "synonym")]


def test_plurals_by_lemma_and_listed_synonyms_keep_how_they_matched():
    assert parsed("reds").mappings == [Mapping("reds", ("red",), "attribute")]  # by rule, not a typo
    assert parsed("dogs").mappings == [Mapping("dogs", ("dog",), "synonym")]  # listed: kept as listed
    assert keys("big cats") == [("large", 1.0), ("cat", 1.0)]  # a lemma is for one word only


def test_tokens_that_are_only_punctuation_are_skipped():
    assert parsed("red ... dog").mappings == [
        Mapping("red", ("red",), "attribute"),
        Mapping("dog", ("dog",), "attribute"),
    ]
    assert parsed("red!").mappings == [Mapping("red", ("red",), "attribute")]


def test_typos_keep_negation_weight_and_how():
    assert keys("-furyy, dog") == [("-furry", 1.0), ("dog", 1.0)]
    assert keys("furyy") == [("furry", 1.0)]
    assert (
        parsed("fluffy, furyy").describe()
        == "query: furry  ['fluffy' -> furry (synonym); 'furyy' -> furry (typo)]"
    )


def test_free_text_words_are_recorded_and_the_rest_still_read():
    q = parsed("dog on xqzzkv grass")
    assert [(m.word, m.how) for m in q.mappings] == [
        ("dog", "attribute"),
        ("xqzzkv", "free text"),
        ("grass", "attribute"),
    ]
    assert q.mappings[1].attributes == ()


def test_an_operator_means_attribute_syntax_even_in_six_words():
    assert parsed("-red dog cat wooden beach furry").free_text is None
    assert parsed("red^2 dog cat wooden beach furry").free_text is None


def test_exactly_the_limit_is_not_truncated_and_longer_is_cut_at_a_word():
    text = ("wooden " * 100).strip()
    q = parsed(text)
    assert q.text == " ".join(["wooden"] * 71)  # the first 500 characters end inside a word
    exact = text[:MAX_QUERY_CHARS].rsplit(" ", 1)[0]
    exact = exact + " " + "x" * (MAX_QUERY_CHARS - len(exact) - 1)
    assert len(exact) == MAX_QUERY_CHARS
    q = parsed(exact)
    assert q.text == exact and not any("truncated" in w for w in q.warnings)


def test_empty_and_unknown_messages():
    for text in ("", None):
        with pytest.raises(UserError, match="^empty query"):
            parse_query(text, use_encoder=False)
    with pytest.raises(UserError, match="nothing in the query matches an attribute"):
        parsed("XX")
    with pytest.raises(UserError, match=r"\('xqzzkv' -> \(unknown\); 'qqxzvv' -> \(unknown\)\)"):
        parsed("xqzzkv, qqxzvv")
    with pytest.raises(UserError, match=r"\('the of a'\); try"):
        parsed("the of a")


# --------------------------------------------------------------------------- the encoder fallback, with a fake encoder

# Four attributes with embeddings of other norms than 1 (the matcher must normalise them).
ATTRS = ["red", "dog", "cat", "blue"]
EMB = np.array([[0.5, 0, 0, 0], [0, 0.2, 0, 0], [0, 0, 3.0, 0], [-0.5, 0, 0, 0]])


@pytest.fixture
def fake_encoder(monkeypatch):
    """`cocoattr.text.encode` answering from a table, recording what it was asked."""
    import cocoattr.text

    table: dict[str, np.ndarray] = {}
    calls: list[list[str]] = []

    def encode(texts):
        calls.append(list(texts))
        return np.stack([table[t] for t in texts])  # a KeyError: asked for something unexpected

    monkeypatch.setattr(cocoattr.text, "encode", encode)
    return table, calls


def test_nearest_by_meaning_uses_the_given_embeddings(fake_encoder):
    table, calls = fake_encoder
    table["pooch"] = np.array([0.01, 0.09, 0.03, 0.0])  # cosines: dog 0.95, cat 0.32, red 0.11, blue -0.11
    q = parse_query("pooch", attributes=ATTRS, attribute_embeddings=EMB)
    assert q.mappings == [Mapping("pooch", ("dog",), "nearest")] and keys_of(q) == [("dog", 1.0)]
    assert calls == [["pooch"]]  # the index's embeddings are used, the vocabulary is not encoded


def test_doggo_is_not_a_typo_of_dog_but_a_neighbour(fake_encoder):
    table, _ = fake_encoder
    table["doggo"] = np.array([0.0, 1.0, 0.0, 0.0])  # difflib ratio 0.75 to 'dog': below the typo cut-off
    q = parse_query("doggo", attributes=ATTRS, attribute_embeddings=EMB)
    assert q.mappings == [Mapping("doggo", ("dog",), "nearest")]


def test_unknown_by_meaning_lists_the_three_closest(fake_encoder):
    table, _ = fake_encoder
    table["qwzx"] = np.array([0.01, 0.02, 0.03, 0.1])  # cosines: cat 0.28, dog 0.19, red 0.09, blue -0.09
    with pytest.raises(UserError, match=r"'qwzx' -> \(unknown; closest: cat 0\.28, dog 0\.19, red 0\.09\)"):
        parse_query("qwzx", attributes=ATTRS, attribute_embeddings=EMB)
    q = parse_query("qwzx dog", attributes=ATTRS, attribute_embeddings=EMB)
    assert q.mappings[0] == Mapping("qwzx", (), "unknown; closest: cat 0.28, dog 0.19, red 0.09")


def test_without_embeddings_the_prompts_are_encoded_once(fake_encoder):
    from cocoattr.vocab import load_vocabulary

    vocab = load_vocabulary()
    table, calls = fake_encoder
    for name, row in zip(ATTRS, EMB, strict=True):
        table[vocab[name].prompt] = row
    table["zz-custom"] = np.array([0.0, 0.0, 0.0, 0.1])  # an index's own attribute: its name is its prompt
    table["pooch"] = np.array([0.01, 0.09, 0.03, 0.0])
    table["mutt"] = np.array([0.0, 0.5, 0.0, 0.0])
    q = parse_query("pooch, mutt", attributes=[*ATTRS, "zz-custom"])
    assert [m.attributes for m in q.mappings] == [("dog",), ("dog",)]
    assert calls == [[vocab[n].prompt for n in ATTRS] + ["zz-custom"], ["pooch"], ["mutt"]]


def test_each_attribute_embedding_is_normalised_by_its_own_norm(fake_encoder):
    """Rows of other norms, one all zero (cosine 0, no 0/0), one sharing columns with another."""
    table, _ = fake_encoder
    emb = np.array(
        [[0.5, 0, 0, 0, 0], [0, 0.2, 0, 0, 0], [0, 0, 3.0, 0, 0], [-0.3, 0, 0, 0, 0.4], [0, 0, 0, 0, 0]]
    )
    table["qwzx"] = np.array(
        [0.01, 0.02, 0.03, 0.1, 0.0]
    )  # cosines: cat 0.28, dog 0.19, red 0.09, blue -0.06
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = parse_query("qwzx dog", attributes=[*ATTRS, "wooden"], attribute_embeddings=emb)
    assert q.mappings[0] == Mapping("qwzx", (), "unknown; closest: cat 0.28, dog 0.19, red 0.09")


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (UserError("MiniLM is not installed\nsee the README"), "MiniLM is not installed"),
        (OSError(), "OSError"),
    ],
)
def test_a_broken_encoder_is_said_once_and_spelling_takes_over(monkeypatch, error, said):
    import cocoattr.text

    def broken(texts):
        raise error

    monkeypatch.setattr(cocoattr.text, "encode", broken)
    q = parse_query(
        "purplish, reddd, furrry"
    )  # spelling ratios 0.71, 0.75 (below the typo cut-off 0.8), 0.91
    assert q.mappings == [
        Mapping("purplish", ("purple",), "nearest"),
        Mapping("reddd", ("red",), "nearest"),
        Mapping("furrry", ("furry",), "typo"),
    ]
    assert q.warnings == [f"text encoder unavailable ({said}); matched unknown words by spelling"]
    with pytest.raises(UserError, match="nothing in the query matches"):
        parse_query("redzzz")  # a spelling ratio of 0.67 (below 0.7) is no match


def keys_of(q: Query) -> list[tuple[str, float]]:
    return [(t.key, t.weight) for t in q.terms]
