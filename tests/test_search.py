"""Searching an index: the scoring, query by image and free text, one `Hit` type whose rows the CLI
and the app's /search API both come from (and agree), and the gallery Recall@K."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cocoattr import backends
from cocoattr.cli import main
from cocoattr.data.gallery import load_gallery
from cocoattr.index import Index
from cocoattr.search import Hit, find, search, search_by_image

ATTRS = ["red", "furry", "indoor", "animal"]
DIM = 8
# gradio's queue calls pandas APIs that pandas 3 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")


def _toy_index(n: int = 6) -> Index:
    rng = np.random.default_rng(1)
    probs = np.array([[0.9, 0.9, 0.1, 0.9], [0.9, 0.1, 0.1, 0.9], [0.1, 0.9, 0.9, 0.9],
                      [0.5, 0.5, 0.5, 0.5], [0.1, 0.1, 0.1, 0.1], [0.9, 0.9, 0.95, 0.9]])[:n]  # fmt: skip
    return Index(
        root_spec="/photos", paths=[f"{i}.jpg" for i in range(n)], sizes=np.zeros(n, np.int64),
        mtimes=np.zeros(n, np.int64), probs=probs.astype(np.float16),
        embeddings=rng.normal(size=(n, DIM)).astype(np.float32), attributes=list(ATTRS),
        checkpoint={"sha256": "x", "source": "x"},
    )  # fmt: skip


def test_search_ranks_by_all_terms(monkeypatch):
    index = _toy_index()
    hits = search(index, "red, furry, -indoor", k=3, use_encoder=False)
    assert [h.image for h in hits] == ["0.jpg", "3.jpg", "1.jpg"]
    assert hits[0].attributes == {"red": pytest.approx(0.9, abs=1e-3), "furry": pytest.approx(0.9, abs=1e-3),
                                  "-indoor": pytest.approx(0.9, abs=1e-3)}  # fmt: skip
    assert hits[0].score > hits[1].score > hits[2].score
    assert [h.image for h in search(index, "-red, -furry", k=1, use_encoder=False)] == ["4.jpg"]
    # same attribute results whichever backend is asked for
    monkeypatch.setattr(backends, "FAISS_MIN_ITEMS", 2)
    assert index.backend("auto").name == "faiss"
    assert [h.image for h in search(index, "red, furry, -indoor", k=3, backend="faiss", use_encoder=False)] == [
        "0.jpg", "3.jpg", "1.jpg"
    ]  # fmt: skip


def test_one_hit_type_gives_the_cli_row_and_the_api_row():
    hit = Hit(
        "sub/a.jpg", Path("/photos/sub/a.jpg"), 1.234567, {"red": 0.9, "-indoor": 0.8}, None, "a red car"
    )
    assert hit.to_json() == {
        "image": "/photos/sub/a.jpg",
        "score": 1.23457,
        "attributes": {"red": 0.9, "-indoor": 0.8},
    }
    row = hit.to_api(3)
    original = {"rank": 3, "image": "sub/a.jpg", "score": 1.2346, "caption": "a red car"}
    assert {k: row[k] for k in original} == original  # the keys /search has always had, unchanged
    assert [{k: m[k] for k in ("attribute", "probability")} for m in row["matched"]] == [
        {"attribute": "red", "probability": 0.9}, {"attribute": "-indoor", "probability": 0.8}
    ]  # fmt: skip
    assert [(m["label"], m["satisfied"]) for m in row["matched"]] == [
        ("P(red)", True),
        ("P(not indoor)", True),
    ]
    assert row["terms_matched"] == row["terms"] == 2
    assert row["explanation"] == "matches 2/2 terms: P(red) 0.90 × P(not indoor) 0.80 = 0.72"
    hit.text_similarity = 0.5
    assert hit.to_json()["text_similarity"] == 0.5 and "text_similarity" not in hit.to_api(1)


# ----------------------------------------------------------------------------- with the real default model


def test_query_by_image_and_free_text(real_index):
    root, out = real_index
    index = Index.load(out)
    assert index.attribute_text is not None and index.text_proj is not None
    hits = search_by_image(index, root / "skimage_coffee.jpg", k=2)
    assert hits[0].image == "skimage_coffee.jpg" and hits[0].score == pytest.approx(1.0, abs=1e-3)
    hits = search(index, "a lion resting in the grass", k=4)
    assert hits[0].text_similarity is not None and len(hits) == 4


def test_find_reads_text_and_images_for_every_caller(real_index):
    root, out = real_index
    index = Index.load(out)
    text = find(index, "kitty, -indoor", k=2)
    assert text.query is not None and any("'kitty' -> cat" in n for n in text.notes), text.notes
    assert [h.image for h in text.hits] == [h.image for h in search(index, "kitty, -indoor", k=2)]
    photo = find(index, image=root / "skimage_coffee.jpg", k=1)
    assert photo.query is None and photo.hits[0].image == "skimage_coffee.jpg"
    assert photo.notes == ["nearest neighbours of the query photo (embedding cosine)"]


def test_the_app_and_the_cli_return_the_same_hits(app_client, app_server, capsys):
    query = "furry, brown, -indoor"
    api = app_client.predict(query, 8, api_name="/search")
    capsys.readouterr()
    assert main(["search", "--index", str(app_server.index_file), "--json", "--top-k", "8", query]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert len(api) == len(cli) == 8
    assert [Path(h["image"]).name for h in cli] == [h["image"] for h in api]
    assert [h["score"] for h in api] == pytest.approx([h["score"] for h in cli], abs=1e-4)
    for a, c in zip(api, cli, strict=True):
        assert {m["attribute"]: m["probability"] for m in a["matched"]} == pytest.approx(
            c["attributes"], abs=1e-4
        )
        assert list(c["attributes"]) == ["furry", "brown", "-indoor"]


def test_gallery_recall_through_the_cli(app_server, capsys):
    assert main(["index", "recall", "--index", str(app_server.index_file), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_images"] == len(load_gallery()) and len(result["queries"]) == 20
    assert 0.0 <= result["R@1"] <= result["R@5"] <= result["R@10"] <= 1.0
    assert result["hit@10"] >= 0.5, result
    assert main(["index", "recall", "--index", str(app_server.index_file)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith(f"gallery attribute-search Recall@K ({len(load_gallery())} images")
    assert table[-1].startswith("hit@1 ") and any(line.startswith("furry animal") for line in table)
