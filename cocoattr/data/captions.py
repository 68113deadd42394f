"""Weak attribute labels mined from captions: COCO's 5 captions per image name what is there.

Captions say what a person noticed, not everything that is true, so an attribute nobody
mentions is *unknown*, never negative. Negatives come only from evidence: an explicit negation
("a man without a hat", "there are no cars"), or a small set of mutually exclusive scene pairs
(indoor/outdoor, night/daytime) when the other side is clearly stated.

Matching works on tokens: every vocabulary name and synonym is a term; at each position the
longest term wins ("polar bear" is one mention of bear, "hot dog" of bread and not of dog,
"living room" does not also fire indoor's synonym "room"); the exact surface form is tried
before a rule-based lemma (plural -s/-es/-ies and a few irregulars), so "glasses" stays
"wearing glasses" and does not collapse into the material "glass".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from cocoattr.errors import UserError
from cocoattr.vocab import Vocabulary, lemma, load_vocabulary, tokenize

# Phrases whose words would otherwise fire the wrong attributes; they override the vocabulary.
PHRASES: dict[str, tuple[str, ...]] = {
    "teddy bear": ("toy",),
    "stuffed bear": ("toy",),
    "hot dog": ("bread", "food"),
    "fire hydrant": (),
    "fire truck": ("truck", "vehicle", "red"),
    "fire engine": ("truck", "vehicle", "red"),
    "stop sign": ("road sign",),
    "parking meter": (),
    "no parking sign": ("road sign",),  # the sign, not an absence (plain "no parking" negates)
    "home plate": ("sports",),
    "hot air balloon": ("toy",),
    "tennis court": ("sports", "outdoor"),
    "baseball bat": ("sports",),
    "baseball field": ("sports", "field", "outdoor"),
    "cell phone": ("electronics",),
    "computer mouse": ("electronics",),
    "remote control": ("electronics",),
    "at the camera": ("looking",),  # not a camera in the picture
    "toward the camera": ("looking",),
    "towards the camera": ("looking",),
    "into the camera": ("looking",),
    "shorts": ("clothing",),  # not the plural of "short"
    "blood vessel": (),
    "black and white": (),  # a photo style, not two colours
    "black and white photo": (),
    "black and white picture": (),
    "black and white image": (),
}

# X implies Y: a dog is an animal, a kitchen is indoors. Positives are closed upwards; by the
# contrapositive, a negated Y makes every X negative too ("no animals" -> no dog). The
# vocabulary's own `implies` field is used when it has one; this table is the fallback.

# Pairs that cannot both hold for one photo; one side stated in >= EXCLUSIVE_VOTES captions
# (and never the other) makes the other a negative.
EXCLUSIVE: tuple[tuple[str, str], ...] = (("indoor", "outdoor"), ("night", "daytime"))
EXCLUSIVE_VOTES = 2

NEGATION_CUES = frozenset({"no", "not", "without", "never", "none", "nothing", "nobody", "neither", "nor"})
NEGATED_PERSON = frozenset({"nobody", "noone"})
NEGATION_WINDOW = 5  # non-mention tokens a negation reaches over
MODIFIER_TYPES = frozenset({"color", "material", "texture", "shape", "size"})
# Words that end a negation's scope: "no people on the beach" does not negate the beach.
SCOPE_BREAKERS = frozenset(
    {
        ".",
        ",",
        ";",
        ":",
        "!",
        "?",
        "but",
        "with",
        "while",
        "which",
        "that",
        "who",
        "where",
        "whose",
        "is",
        "are",
        "was",
        "were",
        "has",
        "have",
        "sits",
        "stands",
        "looks",
    }
)
PREPOSITIONS = frozenset(
    {
        "on",
        "in",
        "at",
        "near",
        "by",
        "under",
        "behind",
        "beside",
        "next",
        "along",
        "across",
        "inside",
        "outside",
        "above",
        "below",
        "over",
        "from",
        "into",
        "onto",
        "beneath",
        "around",
        "through",
        "between",
        "against",
        "during",
        "for",
    }
)
DETERMINERS = frozenset(
    {
        "a",
        "an",
        "the",
        "this",
        "that",
        "these",
        "those",
        "some",
        "his",
        "her",
        "their",
        "its",
        "one",
        "two",
        "three",
        "four",
        "five",
        "several",
        "many",
        "another",
    }
)


@dataclass(frozen=True)
class Mention:
    start: int
    end: int
    attributes: tuple[str, ...]
    negated: bool


class CaptionMiner:
    """Finds vocabulary attributes mentioned (or negated) in captions."""

    def __init__(self, vocab: Vocabulary | None = None, *, min_votes: int = 1, implications: bool = True):
        self.vocab = vocab or load_vocabulary()
        self.min_votes = min_votes
        self.implications = implications
        surface: dict[tuple[str, ...], set[str]] = {}
        for attr in self.vocab:
            for term in (attr.name, *attr.synonyms):
                key = tuple(tokenize(term))
                if key:
                    surface.setdefault(key, set()).add(attr.name)
        for phrase, attrs in PHRASES.items():
            surface[tuple(tokenize(phrase))] = {a for a in attrs if a in self.vocab}
        # Lemma keys come from base-form terms first, so "glass" (material) is not merged with
        # "glasses" (eyewear); inflected terms fill only keys no base form claims.
        base: dict[tuple[str, ...], set[str]] = {}
        inflected: dict[tuple[str, ...], set[str]] = {}
        for key, attrs in surface.items():
            lemmas = tuple(lemma(t) for t in key)
            (base if lemmas == key else inflected).setdefault(lemmas, set()).update(attrs)
        self._surface = {k: frozenset(v) for k, v in surface.items()}
        self._lemma = {k: frozenset(v) for k, v in {**inflected, **base}.items()}
        self._max_len = max(len(k) for k in surface)
        self._implied = {a: self.vocab.closure({a}) - {a} for a in self.vocab.names}
        self._implied_by: dict[str, set[str]] = {a: set() for a in self.vocab.names}
        for a, ups in self._implied.items():
            for u in ups:
                self._implied_by[u].add(a)

    def mentions(self, caption: str) -> list[Mention]:
        """Every term found in `caption`, longest match first, with its negation status."""
        tokens = tokenize(caption)
        lemmas = [lemma(t) for t in tokens]
        spans: list[tuple[int, int, tuple[str, ...]]] = []
        i = 0
        while i < len(tokens):
            if tokens[i] in NEGATED_PERSON:
                spans.append((i, i + 1, ("person",)))
                i += 1
                continue
            for n in range(min(self._max_len, len(tokens) - i), 0, -1):
                attrs = self._surface.get(tuple(tokens[i : i + n]))
                if attrs is None:
                    attrs = self._lemma.get(tuple(lemmas[i : i + n]))
                if attrs is not None:
                    spans.append((i, i + n, tuple(sorted(attrs))))
                    i += n
                    break
            else:
                i += 1
        negated = self._negated_spans(tokens, spans)
        return [Mention(a, b, attrs, k in negated) for k, (a, b, attrs) in enumerate(spans)]

    def _is_head(self, attrs: tuple[str, ...]) -> bool:
        """A noun-like mention (a thing, scene or state) closes a negation's scope; a modifier
        (colour, material, size...) does not: in "no red cars" both words are negated."""
        return not attrs or any(self.vocab[a].type not in MODIFIER_TYPES for a in attrs)

    def _negated_spans(self, tokens: list[str], spans: list[tuple[int, int, tuple[str, ...]]]) -> set[int]:
        """Indices of spans inside a negation's scope (NegEx-style, forward from each cue).

        The scope runs from a cue over determiners and modifiers to the first head mention,
        continues through "or"/"nor"/"and" lists ("without a hat or glasses"), and ends at
        punctuation, a clause word, a later preposition ("no people on the beach"), or after
        NEGATION_WINDOW other tokens.
        """
        at = {a: k for k, (a, _, _) in enumerate(spans)}
        out: set[int] = set()
        for c, tok in enumerate(tokens):
            if tok not in NEGATION_CUES or tok in NEGATED_PERSON:
                if tok in NEGATED_PERSON:
                    out.add(at[c])
                continue
            j, skipped = c + 1, 0
            while j < len(tokens) and skipped <= NEGATION_WINDOW:
                if j in at:
                    k = at[j]
                    out.add(k)
                    j = spans[k][1]
                    if not self._is_head(spans[k][2]):
                        continue
                    nxt = tokens[j] if j < len(tokens) else ""
                    after = tokens[j + 1] if j + 1 < len(tokens) else ""
                    if nxt in ("or", "nor") or (nxt in ("and", ",") and after not in DETERMINERS):
                        j += 1
                        continue
                    break
                t = tokens[j]
                if t in SCOPE_BREAKERS or (t in PREPOSITIONS and j > c + 1):
                    break
                if t == "and" and j + 1 < len(tokens) and tokens[j + 1] in DETERMINERS:
                    break
                j += 1
                skipped += 1
        return out

    def mine(self, caption: str) -> tuple[set[str], set[str]]:
        """(positives, negatives) of one caption; a thing both present and negated counts as present."""
        positives, negatives = set(), set()
        for m in self.mentions(caption):
            (negatives if m.negated else positives).update(m.attributes)
        if self.implications:
            positives |= {u for a in positives for u in self._implied[a]}
            negatives |= {d for a in negatives for d in self._implied_by[a]}
        return positives, negatives - positives

    def votes(self, captions: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per attribute, how many captions mention it (positive) and how many negate it."""
        pos = np.zeros(len(self.vocab), dtype=np.int32)
        neg = np.zeros(len(self.vocab), dtype=np.int32)
        for caption in captions:
            p, n = self.mine(caption)
            pos[[self.vocab.index(a) for a in p]] += 1
            neg[[self.vocab.index(a) for a in n]] += 1
        return pos, neg

    def labels(self, captions: Iterable[str]) -> np.ndarray:
        """(A,) int8 labels for an image from all its captions.

        1 if mentioned in >= min_votes captions; 0 if never mentioned but negated in one, or if
        its exclusive partner is stated in >= EXCLUSIVE_VOTES captions; otherwise -1 (unknown).
        """
        pos, neg = self.votes(captions)
        out = np.full(len(self.vocab), -1, dtype=np.int8)
        out[(pos == 0) & (neg > 0)] = 0
        for a, b in EXCLUSIVE:
            if a in self.vocab and b in self.vocab:
                ia, ib = self.vocab.index(a), self.vocab.index(b)
                if pos[ia] >= EXCLUSIVE_VOTES and pos[ib] == 0:
                    out[ib] = 0
                if pos[ib] >= EXCLUSIVE_VOTES and pos[ia] == 0:
                    out[ia] = 0
        out[pos >= self.min_votes] = 1
        return out


# --- evaluation ------------------------------------------------------------------------------


def _pr(tp: int, fp: int, fn: int) -> dict:
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "recall": round(tp / (tp + fn), 4) if tp + fn else None,
    }


def compare(mined: np.ndarray, hand: np.ndarray) -> dict:
    """Precision/recall of mined positives and negatives against hand labels, cells where both known.

    Positives: precision = share of mined 1s that the hand labels call 1; recall = share of hand
    1s that were mined as 1 (an unknown counts as a miss). Negatives likewise for 0s.
    """
    mined, hand = np.asarray(mined), np.asarray(hand)
    known = hand != -1
    out = {}
    for value, key in ((1, "positive"), (0, "negative")):
        tp = int(((mined == value) & (hand == value)).sum())
        fp = int(((mined == value) & known & (hand != value)).sum())
        fn = int(((mined != value) & (hand == value)).sum())
        out[key] = _pr(tp, fp, fn)
    out["coverage"] = round(float(((mined != -1) & known).sum() / max(known.sum(), 1)), 4)
    return out


def miner_report(
    captions: Mapping[int, list[str]],
    hand_labels: Mapping[int, np.ndarray] | None = None,
    *,
    miner: CaptionMiner | None = None,
) -> dict:
    """Label counts per attribute over `captions` (image id -> captions), and, given hand labels,
    precision/recall overall and per attribute (only images present in both are compared)."""
    miner = miner or CaptionMiner()
    names = miner.vocab.names
    ids = sorted(captions)
    mined = np.stack([miner.labels(captions[i]) for i in ids]) if ids else np.zeros((0, len(names)), np.int8)
    report: dict = {
        "images": len(ids),
        "min_votes": miner.min_votes,
        "counts": {
            n: {"positive": int((mined[:, j] == 1).sum()), "negative": int((mined[:, j] == 0).sum())}
            for j, n in enumerate(names)
        },
        "labels": {int(i): _label_lists(mined[k], names) for k, i in enumerate(ids)},
    }
    if hand_labels is not None:
        both = [k for k, i in enumerate(ids) if i in hand_labels]
        if not both:
            raise UserError("hand labels and captions share no image ids; are they from the same gallery?")
        m = mined[both]
        h = np.stack([np.asarray(hand_labels[ids[k]], dtype=np.int8) for k in both])
        report["vs_hand"] = {"images": len(both), **compare(m, h)}
        report["vs_hand"]["per_attribute"] = {
            n: compare(m[:, j], h[:, j]) for j, n in enumerate(names) if (h[:, j] != -1).any()
        }
    return report


def _label_lists(row: np.ndarray, names: list[str]) -> dict:
    return {
        "positive": [n for n, v in zip(names, row, strict=True) if v == 1],
        "negative": [n for n, v in zip(names, row, strict=True) if v == 0],
    }


def format_report(report: dict, top: int = 12) -> str:
    """A readable summary of `miner_report` for the terminal."""
    lines = [f"{report['images']} images, min_votes={report['min_votes']}"]
    counts = report["counts"]
    n_pos = sum(c["positive"] for c in counts.values())
    n_neg = sum(c["negative"] for c in counts.values())
    lines.append(f"mined {n_pos} positive and {n_neg} negative labels (everything else unknown)")
    busiest = sorted(counts.items(), key=lambda kv: -kv[1]["positive"])[:top]
    lines.append("most frequent: " + ", ".join(f"{n} {c['positive']}" for n, c in busiest if c["positive"]))
    silent = [n for n, c in counts.items() if not c["positive"]]
    lines.append(f"{len(silent)} attributes never mined positive")
    vs = report.get("vs_hand")
    if vs:
        lines.append(f"against hand labels ({vs['images']} images, coverage {vs['coverage']:.1%}):")
        for key in ("positive", "negative"):
            s = vs[key]
            p = "n/a" if s["precision"] is None else f"{s['precision']:.3f}"
            r = "n/a" if s["recall"] is None else f"{s['recall']:.3f}"
            lines.append(f"  {key:8s} precision {p}  recall {r}  (tp {s['tp']}, fp {s['fp']}, fn {s['fn']})")
        worst = sorted(vs["per_attribute"].items(), key=lambda kv: -kv[1]["positive"]["fp"])[:top]
        worst = [(n, s) for n, s in worst if s["positive"]["fp"]]
        if worst:
            lines.append(
                "  most false positives: " + ", ".join(f"{n} {s['positive']['fp']}" for n, s in worst)
            )
    return "\n".join(lines)
