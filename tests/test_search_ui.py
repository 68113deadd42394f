"""The search answer the Search tab and /search show, on a real index built with the default model:
the relevance cut-off, each term's own probability (P(not a) for -a), facets, photo + terms, the
downloads, autocomplete ranking and the query held in the URL. Expected values are read from the
index's own stored probabilities and embeddings, never typed in."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest

from cocoattr.errors import UserError
from cocoattr.index import Index
from cocoattr.search import CUTOFF, Photo, find, term_label
from cocoattr.ui import search_view as view
from cocoattr.ui.export import to_csv, to_json, write_exports
from cocoattr.vocab import load_vocabulary

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")


@pytest.fixture(scope="module")
def index(real_index) -> Index:
    return Index.load(real_index[1], real_index[0])  # served from the photos' folder, as the app does


def _p(index: Index, image: str, attribute: str) -> float:
    return float(index.probs[index.paths.index(image), index.attributes.index(attribute)])


def _satisfying(index: Index, include: list[str], exclude: list[str]) -> set[str]:
    return {
        image for image in index.paths
        if all(_p(index, image, a) >= CUTOFF for a in include)
        and all(1 - _p(index, image, a) >= CUTOFF for a in exclude)
    }  # fmt: skip


# ----------------------------------------------------------------------------- the cut-off


def test_the_cut_off_keeps_only_images_that_satisfy_every_term(index) -> None:
    want = _satisfying(index, ["animal"], [])
    assert 0 < len(want) < len(index), "the query splits the index (else the test shows nothing)"
    cut = find(index, "animal", k=10, cutoff=True)
    assert {h.image for h in cut.hits} == want
    assert cut.matching == len(want) and cut.total == len(index) and cut.hidden == len(index) - len(want)
    assert all(h.satisfied and h.attributes["animal"] >= CUTOFF for h in cut.hits)
    padded = find(index, "animal", k=10)  # the API and the CLI: every image, ranked, each flagged
    assert len(padded.hits) == len(index) and padded.matching == len(want)
    assert {h.image for h in padded.hits if not h.satisfied} == set(index.paths) - want
    assert [h.image for h in padded.hits[: len(want)]] == [h.image for h in cut.hits]


def test_an_exclusion_is_judged_on_p_not_a(index) -> None:
    want = _satisfying(index, ["outdoor"], ["animal"])  # the jeep and the flower, not the lion
    assert want and want != _satisfying(index, ["outdoor"], []), "the exclusion removes some images"
    res = find(index, "outdoor, -animal", k=10, cutoff=True)
    assert {h.image for h in res.hits} == want
    for h in res.hits:
        assert h.attributes["-animal"] == pytest.approx(1 - _p(index, h.image, "animal"), abs=1e-3)


def test_nothing_satisfies_is_an_empty_answer_not_padding(index) -> None:
    assert _satisfying(index, ["vehicle", "furry"], []) == set()
    res = find(index, "vehicle, furry", k=10, cutoff=True)
    assert res.hits == [] and res.matching == 0 and res.hidden == len(index) and res.facets == []
    assert view.no_results_note("zzzz", "nothing matches") == "**No results for `zzzz`**: nothing matches"
    assert view.no_results_note("", "bad", like="a.jpg").startswith("**No results for images like `a.jpg`**")
    note = view.results_note(res, "vehicle, furry", None, False)
    assert note.startswith("**No image satisfies** `vehicle, furry`") and f"all {len(index)}" in note


# ----------------------------------------------------------------------------- per-term probabilities


def test_each_term_has_its_own_labelled_probability_and_the_score_is_their_product(index) -> None:
    res = find(index, "outdoor, -indoor", k=len(index))
    for h in res.hits:
        p_out, p_in = _p(index, h.image, "outdoor"), _p(index, h.image, "indoor")
        row = h.to_api(1)
        assert [(m["attribute"], m["label"]) for m in row["matched"]] == [
            ("outdoor", "P(outdoor)"), ("-indoor", "P(not indoor)")
        ]  # fmt: skip
        assert [m["probability"] for m in row["matched"]] == pytest.approx([p_out, 1 - p_in], abs=1e-3)
        assert [m["satisfied"] for m in row["matched"]] == [p_out >= CUTOFF, 1 - p_in >= CUTOFF]
        assert row["terms_probability"] == pytest.approx(p_out * (1 - p_in), abs=2e-3)
        assert row["terms_probability"] == pytest.approx(math.exp(row["score"]), abs=2e-3)
        assert row["terms_matched"] == (p_out >= CUTOFF) + (1 - p_in >= CUTOFF) and row["terms"] == 2
        assert f"P(not indoor) {1 - p_in:.2f}" in row["explanation"]
        assert row["explanation"].startswith(f"matches {row['terms_matched']}/2 terms")
    assert term_label("-indoor") == "P(not indoor)" and term_label("red") == "P(red)"


def test_hits_carry_the_gallery_captions(index) -> None:
    import dataclasses

    from cocoattr.data.gallery import load_gallery

    g = load_gallery()
    by_name = {p.name: c for p, c in zip(g.paths, g.captions, strict=True)}
    assert all(h.captions == [] for h in find(index, "outdoor", k=len(index)).hits), "a plain folder: none"
    gallery = dataclasses.replace(index, root_spec="gallery")  # the same photos, as the bundled gallery
    for h in find(gallery, "outdoor", k=len(index)).hits:
        assert h.captions == by_name[h.image] and h.caption == by_name[h.image][0]


# ----------------------------------------------------------------------------- facets


def test_facets_count_the_attributes_of_the_satisfying_images(index) -> None:
    res = find(index, "outdoor", k=1, cutoff=True)
    rows = [index.paths.index(i) for i in _satisfying(index, ["outdoor"], [])]
    counts = {a: int((index.probs[rows, j] >= CUTOFF).sum()) for j, a in enumerate(index.attributes)}
    assert res.facets and len(res.facets) <= 8
    assert all(counts[a] == c for a, c in res.facets), "counted over all satisfying images, not the page"
    assert "outdoor" not in dict(res.facets), "the query's own attribute is no facet"
    best = max(c for a, c in counts.items() if a != "outdoor")
    assert res.facets[0][1] == best and [c for _, c in res.facets] == sorted(
        (c for _, c in res.facets), reverse=True
    )
    label, value = view.facet_choices(res)[0]
    assert label == f"{value} · {res.facets[0][1]}/{res.matching}"


# ----------------------------------------------------------------------------- photo + terms


def test_photo_and_terms_combine(index, real_index, app_predictor) -> None:
    lion = real_index[0] / "gradio_lion.jpg"
    alone = find(index, image=lion, k=len(index), predictor=app_predictor)
    assert alone.hits[0].image == "gradio_lion.jpg" and alone.matching is None
    both = find(index, "-furry", image=lion, k=len(index), predictor=app_predictor, cutoff=True)
    assert {h.image for h in both.hits} == _satisfying(index, [], ["furry"])
    assert "gradio_lion.jpg" not in {h.image for h in both.hits}, "the furry lion fails -furry"
    photo = Photo.of(index, lion, app_predictor)
    emb = index.embeddings / np.linalg.norm(index.embeddings, axis=1, keepdims=True)
    cos = emb @ (photo.embedding / np.linalg.norm(photo.embedding))
    for h in both.hits:
        i = index.paths.index(h.image)
        assert h.photo_similarity == pytest.approx(float(cos[i]), abs=1e-4)
        want = (
            math.log(min(max(1 - _p(index, h.image, "furry"), 1e-4), 1 - 1e-4)) + cos[i] / index.temperature
        )
        assert h.score == pytest.approx(float(want), abs=1e-3)
    assert [h.score for h in both.hits] == sorted((h.score for h in both.hits), reverse=True)
    assert any("combined with the query photo" in n for n in both.notes)


def test_more_like_this_uses_the_stored_embedding_and_only_index_images(index) -> None:
    like = Photo.row(index, "sklearn_flower.jpg")
    res = find(index, photo=like, k=2)
    assert res.hits[0].image == "sklearn_flower.jpg" and res.hits[0].score == pytest.approx(1.0, abs=1e-4)
    for bad in ("../../../etc/passwd", "/etc/passwd", str(index.path(0)), "missing.jpg"):
        with pytest.raises(UserError, match="not an image of this index"):
            Photo.row(index, bad)


# ----------------------------------------------------------------------------- downloads


def test_the_downloads_hold_paths_scores_and_each_terms_probability(index, tmp_path, monkeypatch) -> None:
    from cocoattr.ui import export

    res = find(index, "outdoor, -indoor", k=len(index))
    doc = json.loads(to_json(res, "outdoor, -indoor"))
    assert doc["query"] == "outdoor, -indoor" and doc["satisfying"] == res.matching
    assert [r["image"] for r in doc["results"]] == [h.image for h in res.hits]
    assert [r["score"] for r in doc["results"]] == [round(h.score, 4) for h in res.hits]
    rows = list(csv.DictReader(io.StringIO(to_csv(res))))
    assert len(rows) == len(res.hits)
    for r, h in zip(rows, res.hits, strict=True):
        assert r["image"] == h.image and float(r["score"]) == pytest.approx(h.score, abs=1e-4)
        assert float(r["P(not indoor)"]) == pytest.approx(1 - _p(index, h.image, "indoor"), abs=1e-3)
        assert float(r["P(outdoor)"]) == pytest.approx(_p(index, h.image, "outdoor"), abs=1e-3)
        assert r["satisfies"] == str(h.satisfied) and r["caption"] == h.caption
    monkeypatch.setattr(export, "EXPORTS", tmp_path)
    j, c = write_exports(res, "outdoor, -indoor")
    assert j.name == "cocoattr-search-outdoor-indoor.json" and c.suffix == ".csv"
    assert json.loads(j.read_text()) == doc and c.read_text() == to_csv(res)
    assert "/" not in "".join(r["image"] for r in rows), "paths relative to the indexed folder"


# ----------------------------------------------------------------------------- autocomplete, URL


def test_autocomplete_puts_the_exact_name_first_then_prefixes() -> None:
    names = load_vocabulary().names
    assert "checkered" in names and "red" in names
    assert view.complete("red", names)[0] == "red", "not 'checkered', the first substring alphabetically"
    assert view.complete("Red ", names)[0] == "red"
    fur = view.complete("fur", names)
    assert fur[0] == "furry" and all(
        n.startswith("fur") for n in fur[: sum(n.startswith("fur") for n in names)]
    )
    assert view.complete("cat", names)[0] == "cat"
    assert view.complete("furyy", names)[0] == "furry", "a typo still completes"
    assert view.complete("", names) == [] and view.complete("zzzz", names) == []


def test_terms_are_appended_and_the_query_round_trips_through_the_url() -> None:
    assert view.add_term("", "red") == "red"
    assert view.add_term("furry animal,", "indoor", exclude=True) == "furry animal, -indoor"
    assert view.add_term("red", "-indoor") == "red, -indoor"
    shared = view.share_query("red, -indoor", None, view.PAGE)
    assert shared == "q=red%2C+-indoor"
    from urllib.parse import parse_qsl

    assert view.read_share(dict(parse_qsl(shared))) == ("red, -indoor", None, view.PAGE)
    assert view.read_share({"q": "x", "like": "a.jpg", "n": "99999"}) == ("x", "a.jpg", view.MAX_SHOWN)
    assert view.read_share({"n": "lots"}) == ("", None, view.PAGE)
    assert view.share_query("", None, 24) == ""


# ----------------------------------------------------------------------------- the Service and /search


def test_the_service_combines_a_cached_photo_with_terms_and_draws_a_hits_heatmaps(
    index, real_index, app_predictor
):
    from cocoattr.serving import Service

    calls = []
    service = Service(app_predictor, index, concurrency=1)
    predict = service.cache.predict
    service.cache.predict = lambda image: calls.append(1) or predict(image)
    lion = str(real_index[0] / "gradio_lion.jpg")
    first = service.search("-furry", 3, lion, cutoff=True)
    again = service.search("-furry, outdoor", 3, lion, cutoff=True)  # load more / a facet: same photo
    assert len(calls) == 1, "the query photo runs the model once, then comes from the cache"
    want = find(index, "-furry", image=lion, k=3, predictor=app_predictor, cutoff=True)
    assert [(h.image, round(h.score, 4)) for h in first.hits] == [
        (h.image, round(h.score, 4)) for h in want.hits
    ]
    assert all(h.satisfied for h in again.hits) and again.matching == len(
        _satisfying(index, ["outdoor"], ["furry"])
    )
    like = service.search("", 2, None, like="gradio_lion.jpg")
    assert like.hits[0].image == "gradio_lion.jpg" and len(calls) == 1, "more like this: the stored embedding"
    hit = first.hits[0]
    tiles = service.hit_heatmaps(hit, list(hit.attributes))
    p = float(service.prediction(str(hit.path)).prediction.probs[app_predictor.attributes.index("furry")])
    assert [label for _, label in tiles] == [f"furry: P(not furry) {1 - p:.2f}"]
    assert tiles[0][0].size == service.prediction(str(hit.path)).shown.size


def test_the_search_api_combines_text_with_the_photo_and_keeps_its_keys(app_client) -> None:
    from gradio_client import handle_file

    lion = handle_file(str(real_gallery() / "gradio_lion.jpg"))
    photo = app_client.predict("", 5, lion, api_name="/search")
    assert photo[0]["image"] == "gradio_lion.jpg", "the photo alone: itself first"
    both = app_client.predict("-furry", 5, lion, api_name="/search")
    assert both[0]["image"] != "gradio_lion.jpg", "the typed -furry is no longer ignored"
    for row in both:
        assert {"rank", "image", "score", "matched", "caption"} <= set(row)
        assert [(m["attribute"], m["label"]) for m in row["matched"]] == [("-furry", "P(not furry)")]
        assert row["satisfies"] == (row["matched"][0]["probability"] >= CUTOFF)
        assert 0 < row["photo_similarity"] <= 1.0001 and row["explanation"].startswith("matches ")
    assert [r["score"] for r in both] == sorted((r["score"] for r in both), reverse=True)


def real_gallery():
    from cocoattr.data.gallery import gallery_root

    return gallery_root() / "images"
