"""The Search tab's downloads: the shown results as JSON (the /search rows plus the query) and as
CSV (one row per hit, one column per term's probability), written through the one atomic write."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import tempfile
from pathlib import Path

from cocoattr.atomic import atomic_write_text
from cocoattr.search import Results, term_label

EXPORTS = Path(tempfile.gettempdir()) / "cocoattr-exports"


def export_rows(results: Results) -> list[dict]:
    """The shown hits as /search rows (rank, image, score, matched, caption, satisfies, ...)."""
    return [h.to_api(i + 1) for i, h in enumerate(results.hits)]


def to_json(results: Results, query: str, like: str | None = None, photo: bool = False) -> str:
    """The query, how many images satisfy it, and the rows."""
    doc = {
        "query": query,
        "like": like,
        "photo": photo,
        "satisfying": results.matching,
        "index_images": results.total,
        "results": export_rows(results),
    }
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def to_csv(results: Results) -> str:
    """One row per hit: rank, image path (relative to the indexed folder), score, the terms'
    probabilities (a column each, headed P(red) / P(not indoor)), matches, caption."""
    rows = export_rows(results)
    keys = [m["attribute"] for m in rows[0]["matched"]] if rows and results.hits[0].from_terms else []
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["rank", "image", "score", "satisfies", "terms_matched", "terms", "terms_probability",
                "photo_similarity", *[term_label(k) for k in keys], "matched", "caption"])  # fmt: skip
    for r in rows:
        probs = {m["attribute"]: m["probability"] for m in r["matched"]}
        matched = "; ".join(f"{m['label']} {m['probability']:.4f}" for m in r["matched"])
        w.writerow([r["rank"], r["image"], r["score"], "" if r["satisfies"] is None else r["satisfies"],
                    r["terms_matched"], r["terms"], r.get("terms_probability", ""), r.get("photo_similarity", ""),
                    *[probs.get(k, "") for k in keys], matched, r["caption"]])  # fmt: skip
    return out.getvalue()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "photo"


def write_exports(
    results: Results, query: str, like: str | None = None, photo: bool = False
) -> tuple[Path, Path]:
    """(JSON file, CSV file) for the download buttons, named after the query."""
    text = to_json(results, query, like, photo)
    folder = EXPORTS / hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    name = f"cocoattr-search-{_slug(query or like or '')}"
    json_path = atomic_write_text(folder / f"{name}.json", text)
    csv_path = atomic_write_text(folder / f"{name}.csv", to_csv(results))
    return Path(json_path), Path(csv_path)
