"""The Gradio app through its named API, as a user's script (gradio_client) sees it.

One server per session (tests/conftest.py `app_server`): the embedded zero-shot default and
a gallery index built at start-up. Expectations are loose enough for a zero-shot model but
tight enough that a broken wiring (wrong attribute order, unsorted results) fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gradio_client import handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image

from cocoattr import viz
from cocoattr.data.gallery import load_gallery

APP_GALLERY = Path(__file__).resolve().parent.parent / "cocoattr" / "gallery" / "images"
CHELSEA = APP_GALLERY / "skimage_chelsea.jpg"
ASTRONAUT = APP_GALLERY / "skimage_astronaut.jpg"
ANIMALS = {
    "gradio_cheetah.jpg", "gradio_cheetah1.jpg", "gradio_lion.jpg", "skimage_chelsea.jpg",
    "scipy_raccoon.jpg", "foolbox_imagenet_00_243_bull_mastiff.jpg", "foolbox_imagenet_16_251_dalmatian.jpg",
}  # fmt: skip
# gradio's queue calls pandas APIs that pandas 3 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")


# ---------------------------------------------------------------------------- the API surface


def test_named_endpoints_and_defaults(app_client) -> None:
    api = app_client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/predict", "/heatmap", "/search", "/objects"} <= set(api)

    def required(name: str) -> list[str]:
        return [p["parameter_name"] for p in api[name]["parameters"] if not p["parameter_has_default"]]

    assert required("/predict") == ["image"]
    assert required("/heatmap") == ["image"]
    assert required("/search") == []
    assert required("/objects") == ["image"]
    assert [p["parameter_name"] for p in api["/objects"]["parameters"]] == ["image", "min_score", "top_k"]
    assert [p["parameter_name"] for p in api["/predict"]["parameters"]] == ["image", "top_k", "threshold"]
    assert len(api) == 4, "UI events must stay out of the documented API"
    for name, endpoint in api.items():
        assert len(endpoint["description"]) > 30, f"{name}: the docstring describes the endpoint"


def test_the_api_pages_sample_search_call_works(app_client) -> None:
    """The API page's sample call for /search is its defaults: they must make a valid query."""
    params = app_client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/search"][
        "parameters"
    ]
    assert all(p["parameter_has_default"] for p in params)
    hits = app_client.predict(*[p["parameter_default"] for p in params], api_name="/search")
    satisfied = [h["satisfies"] for h in hits]
    assert hits and satisfied[0] and sum(satisfied) >= 5  # the gallery has 7 furry animals
    assert hits == app_client.predict(api_name="/search"), "no arguments: the same defaults"


def test_mcp_tools_are_the_endpoints_with_their_docstrings(app_server) -> None:
    """launch(mcp_server=True): each named endpoint is an MCP tool whose schema its docstring writes."""
    import json
    import urllib.request

    with urllib.request.urlopen(app_server.url + "gradio_api/mcp/schema", timeout=30) as r:
        tools = {t["name"]: t for t in json.load(r)}
    assert {"predict", "heatmap", "objects", "search"} <= set(tools), sorted(tools)
    for name in ("predict", "heatmap", "objects", "search"):
        props = tools[name]["inputSchema"]["properties"]
        assert all(len(p.get("description", "")) > 10 for p in props.values()), (name, props)
    assert "any case" in tools["heatmap"]["inputSchema"]["properties"]["attribute"]["description"]
    assert tools["search"]["inputSchema"].get("required", []) == []


def test_startup_built_the_index(app_server) -> None:
    assert app_server.index_file.is_file(), "a missing index is built at start-up"


# ---------------------------------------------------------------------------- /predict


def test_predict_chelsea_is_a_furry_cat(app_client, app_predictor) -> None:
    probs = app_client.predict(handle_file(str(CHELSEA)), api_name="/predict")
    assert list(probs) != app_predictor.attributes and set(probs) == set(app_predictor.attributes)
    values = list(probs.values())
    assert all(0.0 <= v <= 1.0 for v in values)
    assert values == sorted(values, reverse=True), "highest first"
    top10 = list(probs)[:10]
    assert {"cat", "furry", "animal"} & set(top10), top10


def test_predict_top_k_and_threshold(app_client) -> None:
    top3 = app_client.predict(handle_file(str(CHELSEA)), 3, api_name="/predict")
    assert len(top3) == 3
    confident = app_client.predict(handle_file(str(CHELSEA)), 0, 0.9, api_name="/predict")
    assert confident and all(v >= 0.9 for v in confident.values())
    assert list(confident)[:3] == list(top3)


# ---------------------------------------------------------------------------- /heatmap


def test_heatmap_is_an_overlay_of_the_input_size(app_client) -> None:
    original = Image.open(CHELSEA).convert("RGB")
    out = Image.open(app_client.predict(handle_file(str(CHELSEA)), api_name="/heatmap")).convert("RGB")
    assert out.size == original.size
    diff = np.abs(np.asarray(out, np.int16) - np.asarray(original, np.int16))
    assert diff.mean() > 5, "a colormap was blended over the photo"
    furry = Image.open(
        app_client.predict(handle_file(str(CHELSEA)), "furry", 0.8, "inferno", api_name="/heatmap")
    ).convert("RGB")
    assert furry.size == original.size
    assert not np.array_equal(np.asarray(furry), np.asarray(out))


# ---------------------------------------------------------------------------- /objects


def test_objects_astronaut_matches_the_predictor(app_client, app_predictor) -> None:
    got = app_client.predict(handle_file(str(ASTRONAUT)), api_name="/objects")
    (want,) = app_predictor.predict_objects([ASTRONAUT])
    assert want.objects, "the astronaut is detected"
    assert len(got) == len(want.objects)
    for g, w in zip(got, want.objects, strict=True):
        assert g["category"] == w.category and g["score"] == pytest.approx(w.score, abs=1e-3)
        assert g["box"] == pytest.approx(list(w.box), abs=0.2)
        top5 = [app_predictor.attributes[i] for i in np.argsort(-w.probs, kind="stable")[:5]]
        assert list(g["attributes"]) == top5
        assert list(g["attributes"].values()) == pytest.approx(
            [float(w.probs[app_predictor.attributes.index(n)]) for n in top5], abs=1e-4
        )
    person = next(o for o in got if o["category"] == "person")
    assert person["score"] >= 0.5
    x1, y1, x2, y2 = person["box"]
    assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 512


def test_objects_min_score_and_top_k(app_client) -> None:
    photo = handle_file(str(ASTRONAUT))
    three = app_client.predict(photo, 0.35, 3, api_name="/objects")
    assert three and all(len(o["attributes"]) == 3 for o in three)
    assert app_client.predict(photo, 0.99, api_name="/objects") == [], "nothing that confident"
    everything = app_client.predict(photo, 0.35, 0, api_name="/objects")
    assert len(everything[0]["attributes"]) >= 150, "top_k=0: every attribute"
    _assert_user_error(lambda: app_client.predict(photo, 2, api_name="/objects"), "min_score")


# ---------------------------------------------------------------------------- /search


def test_search_furry_animal_ranks_gallery_animals(app_client) -> None:
    hits = app_client.predict("furry animal", api_name="/search")
    assert len(hits) == 10
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert [h["rank"] for h in hits] == list(range(1, 11))
    assert all((APP_GALLERY / h["image"]).is_file() for h in hits)
    assert {m["attribute"] for m in hits[0]["matched"]} == {"furry", "animal"}
    assert sum(h["image"] in ANIMALS for h in hits[:3]) >= 2, [h["image"] for h in hits[:3]]
    assert hits[0]["caption"], "gallery hits carry their caption"


def test_search_syntax_top_k_and_query_by_image(app_client) -> None:
    hits = app_client.predict("kitty, -indoor", 4, api_name="/search")
    assert len(hits) == 4
    assert {m["attribute"] for m in hits[0]["matched"]} == {"cat", "-indoor"}
    same = app_client.predict("", 3, handle_file(str(CHELSEA)), api_name="/search")
    assert same[0]["image"] == CHELSEA.name, "an image is its own nearest neighbour"


def test_attribute_names_in_any_case(app_client) -> None:
    """Typed names are matched without case: 'FURRY' is furry, 'Furry, ANIMAL' is furry, animal."""
    photo = handle_file(str(CHELSEA))
    upper = Image.open(app_client.predict(photo, "FURRY", api_name="/heatmap"))
    lower = Image.open(app_client.predict(photo, "furry", api_name="/heatmap"))
    assert np.array_equal(np.asarray(upper), np.asarray(lower))
    dog = Image.open(app_client.predict(photo, " Dog ", api_name="/heatmap"))
    assert not np.array_equal(np.asarray(dog), np.asarray(lower)), "Dog is the dog map, not the top one"
    assert app_client.predict("Furry, ANIMAL", 5, api_name="/search") == app_client.predict(
        "furry, animal", 5, api_name="/search"
    )


# ---------------------------------------------------------------------------- errors a user can cause


def _assert_user_error(call, *fragments: str) -> None:
    with pytest.raises(AppError) as info:
        call()
    message = str(info.value)
    assert any(f in message for f in fragments), message
    assert "Traceback" not in message and "/tmp/" not in message, message


def test_errors_are_readable_and_the_app_keeps_serving(app_client, app_bad_files) -> None:
    pdf, huge = handle_file(str(app_bad_files["pdf"])), handle_file(str(app_bad_files["huge"]))
    _assert_user_error(lambda: app_client.predict(pdf, api_name="/predict"), "not an image")
    _assert_user_error(lambda: app_client.predict(huge, api_name="/predict"), "too large")
    _assert_user_error(lambda: app_client.predict(pdf, api_name="/heatmap"), "not an image")
    _assert_user_error(lambda: app_client.predict(pdf, api_name="/objects"), "not an image")
    _assert_user_error(
        lambda: app_client.predict(handle_file(str(CHELSEA)), "unicornish", api_name="/heatmap"),
        "unknown attribute",
    )
    _assert_user_error(lambda: app_client.predict("   ", api_name="/search"), "empty query")
    _assert_user_error(lambda: app_client.predict("zzqxv", api_name="/search"), "nothing in the query")
    _assert_user_error(lambda: app_client.predict("", 5, pdf, api_name="/search"), "not an image")
    probs = app_client.predict(handle_file(str(CHELSEA)), 5, api_name="/predict")
    assert len(probs) == 5, "still serving after the errors"


def _raw_call(url: str, endpoint: str, data: list) -> str:
    """POST an endpoint's call as any HTTP client can (no gradio_client upload first); its event."""
    import json
    import urllib.request

    post = urllib.request.Request(url + f"gradio_api/call/{endpoint}", json.dumps({"data": data}).encode(),
                                  {"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(post, timeout=30) as r:
        event = json.load(r)["event_id"]
    with urllib.request.urlopen(url + f"gradio_api/call/{endpoint}/{event}", timeout=60) as r:
        return r.read().decode()


def test_the_page_and_the_api_refuse_server_files(app_server, tmp_path_factory) -> None:
    """Only uploads and the served folders (the gallery, the index's images) can be read: not
    the app's source, its checkpoint, /etc/passwd, or a photo elsewhere on the server."""
    import urllib.error
    import urllib.parse
    import urllib.request

    root = Path(__file__).resolve().parent.parent
    secret = tmp_path_factory.mktemp("server-only") / "private.jpg"
    Image.open(CHELSEA).save(secret)  # a real image: refused for where it is, not what it is

    def status(path: str) -> int:
        try:
            with urllib.request.urlopen(
                app_server.url + "gradio_api/file=" + urllib.parse.quote(path), timeout=30
            ):
                return 200
        except urllib.error.HTTPError as e:
            return e.code

    assert status(str(CHELSEA)) == 200, "the gallery is served (the examples and results show it)"
    for path in ("/etc/passwd", str(root / "app.py"), str(root / "checkpoints" / "default" / "config.json"),
                 str(secret), str(APP_GALLERY / ".." / ".." / "app.py")):  # fmt: skip
        assert status(path) in (403, 404), path
    for endpoint, args in (("predict", [0, 0.0]), ("heatmap", ["", 0.5, "jet"]), ("objects", [0.35, 5])):
        for path in ("/etc/passwd", str(secret)):
            answer = _raw_call(
                app_server.url, endpoint, [{"path": path, "meta": {"_type": "gradio.FileData"}}, *args]
            )
            assert answer.startswith("event: error") and "root:" not in answer, (endpoint, path, answer)
    ok = _raw_call(
        app_server.url, "predict", [{"path": str(CHELSEA), "meta": {"_type": "gradio.FileData"}}, 3, 0.0]
    )
    assert ok.startswith("event: complete"), ok  # the same call with a served file works


# ---------------------------------------------------------------------------- the About panel


def test_about_names_the_zero_shot_default(app_predictor, app_server) -> None:
    from cocoattr import serving
    from cocoattr.index import Index

    text = serving.about_text(app_predictor, Index.load(app_server.index_file))
    assert "/" not in text.split("**Checkpoint:**")[1].split("\n")[0]  # no server path for visitors
    assert f"{app_predictor.model.kind} model" in text
    assert (
        f"{len(app_predictor.attributes)} attributes in 8 types" in text
        and f"{len(load_gallery())} images" in text
    )
    if app_predictor.model.kind == "zero-shot":
        assert text.count("zero-shot** model") == 1 and text.count("real accuracy") == 1, "one notice"
    metrics, _ = serving.read_metrics(Path(app_predictor.model.source))
    for key in metrics:  # each metric under a name people read, never its raw key
        assert f"| {key} |" not in text and f"| {serving.metric_label(key)[0]} |" in text


def test_about_shows_no_server_path_and_names_metrics(app_predictor, tmp_path) -> None:
    from cocoattr import serving

    folder = tmp_path / "secret-server-folder" / "photos"

    class _Index:  # only what about_text reads: its size and where its images are
        root_spec = str(folder)

        def __len__(self) -> int:
            return 3

    text = serving.about_text(app_predictor, _Index())  # type: ignore[arg-type]
    assert "3 images from the folder `photos`" in text and str(tmp_path) not in text
    assert serving.metric_label("gallery_precision_at_5") == (
        "precision of the top 5 attributes",
        "the bundled gallery (in-sample: it fitted the calibration)",
    )
    assert serving.metric_label("heldout_mean_per_image_auc") == (
        "mean per-image AUC",
        "the gallery, held out (k-fold calibration)",
    )
    assert serving.metric_label("val_mAP") == ("mean average precision (mAP)", "validation")
    assert serving.metric_label("n_train") == ("images", "training")
    assert serving.metric_label("some_new_key") == ("some new key", "")


# ---------------------------------------------------------------------------- cocoattr.viz


def test_overlay_keeps_size_and_follows_the_map() -> None:
    image = Image.new("RGB", (120, 80), (128, 128, 128))
    attn = np.zeros((9, 9), np.float32)
    attn[0, 0] = 1.0  # all attention in the top-left cell
    out = np.asarray(viz.overlay(image, attn, opacity=1.0, cmap="jet"), np.int16)
    assert out.shape == (80, 120, 3)
    hot, cold = out[2, 2], out[-2, -2]
    assert hot[0] > hot[2] and cold[2] > cold[0], "jet: red where attended, blue elsewhere"
    clear = viz.overlay(image, attn, opacity=0.0)
    assert np.array_equal(np.asarray(clear), np.asarray(image))


def test_upsample_map_is_normalised_and_handles_flat_maps() -> None:
    field = viz.upsample_map(np.random.default_rng(0).random((9, 9)), (50, 30))
    assert field.shape == (30, 50) and 0.0 <= field.min() and field.max() <= 1.0 and field.max() > 0.9
    assert not viz.upsample_map(np.full((9, 9), 1 / 81), (10, 10)).any()
    with pytest.raises(ValueError, match="colormap"):
        viz.overlay(Image.new("RGB", (4, 4)), np.ones((2, 2)), cmap="no-such-map")


def test_bars_by_type_groups_sorts_and_thresholds() -> None:
    names = ["red", "blue", "wooden", "cat", "dog"]
    types = ["color", "color", "material", "category", "category"]
    probs = np.array([0.2, 0.9, 0.05, 0.7, 0.8])
    bars = viz.bars_by_type(probs, names, types, top_k=1, threshold=0.1)
    assert list(bars) == ["color", "material", "category"]
    assert bars == {"color": {"blue": 0.9}, "material": {}, "category": {"dog": 0.8}}
    assert viz.top_attributes(probs, names, 2) == [("blue", 0.9), ("dog", 0.8)]
