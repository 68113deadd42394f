"""What the Search tab writes on the page, without gradio: the note above the results, the results
table, the selected hit's card, facet and autocomplete choices, and the query held in the URL.

Every probability is labelled with what it is of (`P(red)`, `P(not indoor)` for `-indoor`), and a
hit's score is shown as the product of its terms' probabilities (the score is that product's log,
plus the similarity to a photo or free text over the index temperature).
"""

from __future__ import annotations

import difflib
import html
import math
from collections.abc import Mapping, Sequence
from urllib.parse import urlencode

from cocoattr.search import CUTOFF, Hit, Results, term_label

PAGE = 12  # results per "load more"
MAX_SHOWN = 240  # the most a page shows (and a shared URL may ask for)
SUGGESTIONS = 8


def complete(text: str, names: Sequence[str], n: int = SUGGESTIONS) -> list[str]:
    """Attribute names for what is typed, best first: exact, prefix (shorter first), a later word's
    prefix ('cat' -> 'big cat'), substring, then close spellings ('furyy' -> 'furry')."""
    typed = " ".join(text.lower().lstrip("-!").split())
    if not typed:
        return []
    lowered = {a: a.lower() for a in names}

    def rank(a: str) -> tuple[int, int, str] | None:
        low = lowered[a]
        if low == typed:
            return 0, 0, a
        if low.startswith(typed):
            return 1, len(low), a
        if any(w.startswith(typed) for w in low.replace("-", " ").split()[1:]):
            return 2, len(low), a
        if typed in low:
            return 3, len(low), a
        return None

    ranked = sorted(r for r in map(rank, names) if r is not None)
    out = [a for _, _, a in ranked[:n]]
    if len(out) < n:
        by_low = {low: a for a, low in lowered.items()}
        close = difflib.get_close_matches(typed, list(by_low), n=n, cutoff=0.75)
        out += [by_low[c] for c in close if by_low[c] not in out][: n - len(out)]
    return out


def add_term(query: str, term: str, exclude: bool = False) -> str:
    """The query with one more term appended ('-term' when excluded; a typed '-x' stays excluded)."""
    term = term.strip()
    negate = exclude or term.startswith("-")
    term = ("-" if negate else "") + term.lstrip("-!")
    query = (query or "").strip().rstrip(",").strip()
    return f"{query}, {term}" if query else term


def _what(query: str, like: str | None, photo: bool) -> str:
    text = f"`{query}`" if query else ""
    source = f"images like `{like}`" if like else ("the query photo" if photo else "")
    return " with ".join(x for x in (text, source) if x)


def results_note(results: Results, query: str, like: str | None, photo: bool) -> str:
    """How many images satisfy the query, how many are shown and hidden, and how it was read."""
    shown, what = len(results.hits), _what(query, like, photo)
    if results.matching is None:
        by = "similarity to the photo" if (photo or like) else "similarity to the text"
        line = (
            f"**Showing {shown} of {results.total} images** for {what}, ranked by {by} "
            "(nothing to cut off on: no attribute terms)."
        )
    elif results.matching == 0:
        line = (
            f"**No image satisfies** {what}: all {results.total} are hidden "
            f"(each term needs a probability ≥ {CUTOFF:g})."
        )
    else:
        line = (
            f"**{results.matching} of {results.total} images satisfy** {what}; showing {shown}. "
            f"{results.hidden} that do not are hidden (a term holds when its probability is ≥ {CUTOFF:g})."
        )
    if (photo or like) and results.matching is not None:
        line += " Photo and terms combine: the terms decide which images qualify, the photo ranks them."
    if results.notes:
        line += "  \nRead as: " + "; ".join(results.notes)
    return line


def no_results_note(query: str, why: str, like: str | None = None, photo: bool = False) -> str:
    """The note for a query nothing can be scored for (it replaces the previous query's note)."""
    return f"**No results for {_what(query, like, photo)}**: {why}"


def closest_note(hit: Hit) -> str:
    return f"  \nClosest (hidden): `{hit.image}`, {hit.explanation()}."


def facet_choices(results: Results) -> list[tuple[str, str]]:
    """(label, attribute) radio choices: 'furry · 9/11' = 9 of the 11 results show furry."""
    of = results.matching if results.matching is not None else len(results.hits)
    return [(f"{a} · {c}/{of}", a) for a, c in results.facets]


def _td(label: str, text: str, cls: str = "") -> str:
    """A cell; its label (hidden beside a header, shown when a phone turns rows into cards)."""
    attrs = f' class="{cls}"' if cls else ""
    tag = f'<span class="label">{html.escape(label)} </span>' if label else ""
    return f"<td{attrs}>{tag}{text}</td>"


def table_html(hits: Sequence[Hit]) -> str:
    """Every shown hit as a table row: each term's own probability, how many hold, their product,
    the caption; wide tables scroll sideways on a phone rather than being cut off."""
    if not hits:
        return ""
    terms = hits[0].from_terms
    keys = list(hits[0].attributes) if terms else []
    labels = [term_label(k) for k in keys]
    sims = any(_similarity(h) is not None for h in hits)
    head = ["#", "image", *labels]
    head += ["matches", "P(all terms)"] if terms else ["shared attributes"]
    head += ["similarity"] if sims else []
    coco = any(h.categories for h in hits)
    head += ["COCO categories"] if coco else []
    head.append("caption")
    rows = []
    for i, h in enumerate(hits):
        cells = [_td("#", str(i + 1)), _td("", html.escape(h.image), "name")]
        if terms:
            for k, label in zip(keys, labels, strict=True):
                p = h.attributes.get(k, 0.0)
                cells.append(_td(label, f"{p:.2f}", "ok" if p >= CUTOFF else "no"))
            cells += [
                _td("matches", f"{h.terms_matched}/{len(h.attributes)}"),
                _td("P(all terms)", f"{_joint(h):.2f}"),
            ]
        else:
            shared = ", ".join(f"{a} {p:.2f}" for a, p in h.attributes.items())
            cells.append(_td("shared:", html.escape(shared)))
        if sims:
            sim = _similarity(h)
            cells.append(_td("similarity", "" if sim is None else f"{sim:.2f}"))
        if coco:
            cells.append(_td("COCO:", html.escape(", ".join(h.categories))))
        cells.append(_td("", html.escape(h.caption), "caption"))
        rows.append(f"<tr>{''.join(cells)}</tr>")
    header = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    return (
        "<div class='search-table'><table><thead><tr>"
        + header
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
    )


def _similarity(h: Hit) -> float | None:
    return h.photo_similarity if h.photo_similarity is not None else h.text_similarity


def _joint(h: Hit) -> float:
    return math.exp(h.terms_log_p) if h.terms_log_p is not None else math.prod(h.attributes.values())


def hit_card(h: Hit, rank: int) -> str:
    """The selected hit: why it ranked (each term's probability), its captions, its COCO facts."""
    lines = [f"### #{rank} `{h.image}`", h.explanation() or "", ""]
    if h.attributes:
        lines += ["| term | probability |", "|---|---|"]
        label = term_label if h.from_terms else (lambda a: f"P({a})")
        for a, p in h.attributes.items():
            mark = " ✓" if h.from_terms and p >= CUTOFF else (" ✗" if h.from_terms else "")
            lines.append(f"| {label(a)} | {p:.2f}{mark} |")
        lines.append("")
    for c in h.captions or ([h.caption] if h.caption else []):
        lines.append(f"> {c.replace('|', '/')}  ")
    if h.categories:
        lines.append(f"\nCOCO categories: {', '.join(h.categories)}")
    if h.coco_url:
        lines.append(f"\n[COCO image {h.coco_id}]({h.coco_url})")
    return "\n".join(lines)


def share_query(query: str, like: str | None, shown: int) -> str:
    """The URL query string that brings this search back (q, like, n; empty for no search)."""
    params = {k: v for k, v in (("q", query), ("like", like or "")) if v}
    if not params:
        return ""
    if shown != PAGE:
        params["n"] = str(shown)
    return urlencode(params)


def read_share(params: Mapping[str, str]) -> tuple[str, str | None, int]:
    """(query, like, how many to show) from a shared URL's parameters, bounded."""
    query = str(params.get("q", "") or "")[:500].strip()
    like = str(params.get("like", "") or "").strip() or None
    try:
        shown = int(params.get("n", PAGE))
    except ValueError:
        shown = PAGE
    return query, like, max(1, min(shown, MAX_SHOWN))
