"""The search query language: what a user types -> weighted attribute terms (+ free text).

    red, furry, -indoor        comma or space separated; `-term` excludes
    striped^2 animal           weights, clamped to [0.1, 10] (with a warning)
    living room, big cat       multi-word attribute names and synonyms, matched longest-first
    fluffy kitten              synonyms -> attributes ('fluffy' -> furry, 'kitten' -> young, pet, cat)
    furyy / puppyish           unknown words -> nearest attribute (difflib for typos, then MiniLM)
    a fluffy pet on a sofa     free text: known words become terms, the whole text is also embedded

Scoring is a log-likelihood, so an image must satisfy *every* term to rank high:

    score = sum_inc w * log p_a  +  sum_exc w * log(1 - p_a)  [+ cos(image, text) / temperature]

(probabilities clipped to [1e-4, 1 - 1e-4]). The free-text part is the contrastive head's
logit; up to a constant it is that head's log-probability that the text matches the image,
so both parts are log-probabilities and simply add. A query made only of exclusions is
allowed and ranks images by the absence of those attributes (`-person` = "no people").
Every mapping decision is recorded in `Query.mappings` so a UI can say "'fluffy' -> furry".
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cocoattr.errors import UserError
from cocoattr.vocab import Vocabulary, lemma, load_vocabulary

MIN_WEIGHT, MAX_WEIGHT = 0.1, 10.0
MAX_QUERY_CHARS = 500  # longer text is cut (MiniLM sees at most 128 tokens anyway)
MAX_PHRASE_WORDS = 4
P_CLIP = 1e-4
NEAREST_MIN_SIMILARITY = 0.35  # MiniLM cosine below this: the word is not recognised
TYPO_CUTOFF = 0.8  # difflib ratio for "close enough to be a typo"
FALLBACK_CUTOFF = 0.7  # difflib ratio when MiniLM is unavailable
FREE_TEXT_MIN_WORDS = 6
STOPWORDS = frozenset(
    "a an the of on in at to with and or by for from into onto near under over next its his her their "
    "some this that these those is are was were be being it there here very photo picture image".split()
)
_TOKEN = re.compile(r"^(?P<neg>[-!]?)(?P<word>[^\s^]*?)(?:\^(?P<weight>[^\s]*))?$")


@dataclass(frozen=True)
class Term:
    """One attribute the query asks for (or, negated, asks to be absent), with its weight."""

    attribute: str
    weight: float = 1.0
    negate: bool = False

    @property
    def key(self) -> str:
        return f"-{self.attribute}" if self.negate else self.attribute


@dataclass(frozen=True)
class Mapping:
    """How one typed word or phrase was understood, for the UI/CLI to show."""

    word: str
    attributes: tuple[str, ...]
    how: str  # attribute | synonym | typo | nearest | free text | unknown

    def __str__(self) -> str:
        if not self.attributes:
            return f"'{self.word}' -> ({self.how})"
        if self.how == "attribute":
            return f"'{self.word}'"
        return f"'{self.word}' -> {', '.join(self.attributes)} ({self.how})"


@dataclass
class Query:
    text: str
    terms: list[Term]
    free_text: str | None = None  # embedded with MiniLM and matched in the contrastive space
    mappings: list[Mapping] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def includes(self) -> list[Term]:
        return [t for t in self.terms if not t.negate]

    @property
    def excludes(self) -> list[Term]:
        return [t for t in self.terms if t.negate]

    def describe(self) -> str:
        """One line: the terms as the scorer sees them, then how words were mapped."""
        parts = [t.key + (f"^{t.weight:g}" if t.weight != 1 else "") for t in self.terms]
        if self.free_text:
            parts.append(f'text "{self.free_text}"')
        line = "query: " + (" ".join(parts) or "(nothing)")
        notes = [str(m) for m in self.mappings if m.how != "attribute"]
        if notes:
            line += "  [" + "; ".join(notes) + "]"
        if self.terms and not self.includes and not self.free_text:
            line += "  (exclusions only: ranking by absence)"
        return line


def _lookup_table(vocab: Vocabulary, allowed: set[str]) -> dict[str, tuple[tuple[str, ...], str]]:
    """phrase -> (attributes, how). Attribute names win over synonyms; a synonym claimed by
    several attributes ('kitten': young, pet, cat) maps to all of them."""
    table: dict[str, tuple[tuple[str, ...], str]] = {}
    synonyms: dict[str, list[str]] = {}
    for a in vocab:
        if a.name not in allowed:
            continue
        for s in a.synonyms:
            synonyms.setdefault(s.lower(), []).append(a.name)
    for s, names in synonyms.items():
        table[s] = (tuple(dict.fromkeys(names)), "synonym")
        table.setdefault(s.replace("-", " "), table[s])
    for a in vocab:
        if a.name in allowed:
            table[a.name.lower()] = ((a.name,), "attribute")
            table.setdefault(a.name.lower().replace("-", " "), ((a.name,), "attribute"))
    return table


def _parse_weight(raw: str | None, word: str, warnings: list[str]) -> float | None:
    if raw is None:
        return None
    try:
        w = float(raw)
    except ValueError:
        warnings.append(f"'{word}^{raw}': weight is not a number, using 1")
        return 1.0
    if not math.isfinite(w) or w < MIN_WEIGHT or w > MAX_WEIGHT:
        # inf is as large as allowed, -inf as small; nan says nothing, so it weighs as 1
        clamped = 1.0 if math.isnan(w) else MAX_WEIGHT if w > MAX_WEIGHT else MIN_WEIGHT
        warnings.append(
            f"'{word}^{raw}': weight clamped to {clamped:g} (allowed {MIN_WEIGHT:g}..{MAX_WEIGHT:g})"
        )
        return clamped
    return w


@dataclass
class _Token:
    word: str
    negate: bool
    weight: float | None


def _tokenise(chunk: str, warnings: list[str]) -> list[_Token]:
    out = []
    for raw in chunk.split():
        m = _TOKEN.match(raw)
        word = (m.group("word") if m else raw).strip(".!?;:'\"()[]{}")
        if not word:
            continue
        weight = _parse_weight(m.group("weight"), word, warnings) if m else None
        out.append(_Token(word, bool(m and m.group("neg")), weight))
    return out


class _Nearest:
    """Unknown word -> nearest attributes: difflib for typos, MiniLM for meaning, difflib fallback."""

    def __init__(self, vocab: Vocabulary, allowed: list[str], table: dict, embeddings: np.ndarray | None,
                 use_encoder: bool) -> None:  # fmt: skip
        self.vocab, self.allowed, self.table = vocab, allowed, table
        self.embeddings = embeddings
        self.use_encoder = use_encoder
        self.encoder_error: str | None = None

    def _encode(self, texts: list[str]) -> np.ndarray | None:
        if not self.use_encoder or self.encoder_error:
            return None
        try:
            from cocoattr.text import encode

            if self.embeddings is None:
                self.embeddings = encode(
                    [self.vocab[n].prompt if n in self.vocab else n for n in self.allowed]
                )
            return encode(texts)
        except (UserError, ImportError, OSError, RuntimeError) as e:
            self.encoder_error = str(e).splitlines()[0] if str(e) else type(e).__name__
            return None

    def __call__(self, word: str) -> tuple[tuple[str, ...], str, list[tuple[str, float]]]:
        close = difflib.get_close_matches(word, list(self.table), n=1, cutoff=TYPO_CUTOFF)
        if close:
            return self.table[close[0]][0], "typo", []
        q = self._encode([word])
        if q is not None:
            emb = self.embeddings / np.linalg.norm(self.embeddings, axis=1, keepdims=True).clip(1e-9)
            sims = emb @ (q[0] / max(float(np.linalg.norm(q[0])), 1e-9))
            order = np.argsort(-sims)[:3]
            ranked = [(self.allowed[i], float(sims[i])) for i in order]
            if ranked[0][1] >= NEAREST_MIN_SIMILARITY:
                return (ranked[0][0],), "nearest", ranked
            return (), "unknown", ranked
        close = difflib.get_close_matches(word, list(self.table), n=1, cutoff=FALLBACK_CUTOFF)
        if close:
            return self.table[close[0]][0], "nearest", []
        return (), "unknown", []


def _add(terms: dict[tuple[str, bool], float], names: tuple[str, ...], weight: float, negate: bool) -> None:
    share = weight / len(names)  # a synonym of k attributes: geometric mean of their probabilities
    for n in names:
        terms[(n, negate)] = max(terms.get((n, negate), 0.0), share)


def _phrase_at(tokens: list[_Token], i: int, table: dict) -> tuple[int, str, tuple[str, ...], str] | None:
    """The longest known phrase starting at token i: (its length, text, attributes, how), or None."""
    for n in range(min(MAX_PHRASE_WORDS, len(tokens) - i), 0, -1):
        group = tokens[i : i + n]
        # a phrase may be negated on its first word and weighted on its last only
        if any(t.negate for t in group[1:]) or any(t.weight is not None for t in group[:-1]):
            continue
        phrase = " ".join(t.word for t in group)
        hit = table.get(phrase)
        if hit is None and n == 1:
            hit = table.get(lemma(phrase))
        if hit is not None:
            return n, phrase, hit[0], hit[1]
    return None


def _read_chunk(tokens: list[_Token], table: dict, nearest: _Nearest, free: bool,
                terms: dict[tuple[str, bool], float], mappings: list[Mapping]) -> None:  # fmt: skip
    """Map one comma-separated chunk's tokens to terms (longest known phrase first), recording how."""
    i = 0
    while i < len(tokens):
        found = _phrase_at(tokens, i, table)
        if found is not None:
            n, phrase, names, how = found
            _add(terms, names, tokens[i + n - 1].weight or 1.0, tokens[i].negate)
            mappings.append(Mapping(phrase, names, how))
            i += n
            continue
        tok = tokens[i]
        i += 1
        if tok.word in STOPWORDS or not re.search(r"[a-z0-9]", tok.word):
            continue
        if free:
            mappings.append(Mapping(tok.word, (), "free text"))
            continue
        names, how, ranked = nearest(tok.word)
        if names:
            _add(terms, names, tok.weight or 1.0, tok.negate)
        elif ranked:
            how = "unknown; closest: " + ", ".join(f"{n} {s:.2f}" for n, s in ranked)
        mappings.append(Mapping(tok.word, names, how))


def parse_query(
    text: str,
    vocab: Vocabulary | None = None,
    *,
    attributes: Sequence[str] | None = None,
    attribute_embeddings: np.ndarray | None = None,
    use_encoder: bool = True,
) -> Query:
    """Parse `text` into weighted attribute terms (+ free text); raises UserError if nothing usable.

    `attributes` restricts terms to what an index/checkpoint predicts (default: the vocabulary);
    `attribute_embeddings` (len(attributes), 384) are MiniLM embeddings of their prompts (a
    checkpoint's `text_embeddings`), saving the encoder a pass over the vocabulary.
    """
    vocab = vocab or load_vocabulary()
    allowed = list(attributes) if attributes is not None else vocab.names
    text = " ".join(str(text or "").split())
    warnings: list[str] = []
    if len(text) > MAX_QUERY_CHARS:
        text = text[:MAX_QUERY_CHARS].rsplit(" ", 1)[0]
        warnings.append(f"query truncated to its first {len(text)} characters")
    if not text.strip(" ,;"):
        raise UserError("empty query: type attributes such as 'red, furry, -indoor' or a description")
    lowered = text.lower()
    chunks = [c for c in re.split(r"[,;]", lowered) if c.strip()]
    tokens_per_chunk = [_tokenise(c, warnings) for c in chunks]
    n_words = sum(len(t) for t in tokens_per_chunk)
    has_ops = len(chunks) > 1 or any(t.negate or t.weight is not None for ts in tokens_per_chunk for t in ts)
    free = not has_ops and (
        n_words >= FREE_TEXT_MIN_WORDS or any(t.word in STOPWORDS for ts in tokens_per_chunk for t in ts)
    )

    table = _lookup_table(vocab, set(allowed))
    nearest = _Nearest(vocab, allowed, table, attribute_embeddings, use_encoder)
    terms: dict[tuple[str, bool], float] = {}
    mappings: list[Mapping] = []
    for tokens in tokens_per_chunk:
        _read_chunk(tokens, table, nearest, free, terms, mappings)

    both = sorted({n for n, neg in terms if not neg} & {n for n, neg in terms if neg})
    if both:
        raise UserError(f"query both asks for and excludes {both}")
    query = Query(
        text=text,
        terms=[Term(n, w, neg) for (n, neg), w in terms.items()],
        free_text=text
        if free and any(t.word not in STOPWORDS for ts in tokens_per_chunk for t in ts)
        else None,
        mappings=mappings,
        warnings=warnings,
    )
    if nearest.encoder_error:
        warnings.append(
            f"text encoder unavailable ({nearest.encoder_error}); matched unknown words by spelling"
        )
    if not query.terms and not query.free_text:
        unknown = "; ".join(str(m) for m in mappings if not m.attributes) or repr(text)
        raise UserError(
            f"nothing in the query matches an attribute ({unknown}); "
            "try words like 'red', 'furry', 'outdoor', 'dog'"
        )
    return query


def _clipped(p: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(p, np.float64), P_CLIP, 1 - P_CLIP)


def score_terms(
    terms: Sequence[Term], probs: np.ndarray, attributes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(N,) log-likelihood scores and the (N, T) per-term probabilities (p, or 1 - p for exclusions)."""
    index = {a: i for i, a in enumerate(attributes)}
    n = probs.shape[0]
    scores = np.zeros(n, np.float64)
    shown = np.zeros((n, len(terms)), np.float64)
    for j, t in enumerate(terms):
        raw = probs[:, index[t.attribute]]  # contiguous when `probs` is column-major float32
        scores += t.weight * np.log(1 - _clipped(raw) if t.negate else _clipped(raw))
        shown[:, j] = 1 - raw if t.negate else raw
    return scores, shown
