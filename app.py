"""cocoattr web app: Predict, Heatmaps and Search tabs plus a named API, ready to host as a Space.

Layout and event wiring only: predictions come from `cocoattr.predictor.Predictor` (one
model, loaded once at start-up) through `cocoattr.cache.PredictionCache`, overlays from
`cocoattr.viz`, the index from `cocoattr.index.open_or_build` and results from
`cocoattr.search.find` (the same call and `Hit` type as `cocoattr search`). Run `python app.py`
(or `make demo`); GRADIO_SERVER_NAME / GRADIO_SERVER_PORT choose where it listens
(default 127.0.0.1:7860).

Environment:
    COCOATTR_CHECKPOINT  checkpoint folder or Hub id (default: the Hub default, falling back
                         offline to the embedded zero-shot default)
    COCOATTR_IMAGES      folder of images to search (default: the bundled gallery); with a Hub
                         index, where its images are (else its thumbnails are shown); hits are
                         only ever read from this folder, never from one an index file names
    COCOATTR_INDEX       index file for those images (built at start-up when missing), or
                         hf://datasets/USER/NAME: a pushed index (`cocoattr index push`), downloaded
                         once into the HF cache; offline without a cache, the bundled gallery
    COCOATTR_DEVICE      'cpu' (onnxruntime, default) or 'cuda' (PyTorch)
    COCOATTR_CONCURRENCY how many requests run at once (default 2; CPU-bound work)

API (gradio_client): /predict(image, top_k=0, threshold=0.0) -> {attribute: probability},
/heatmap(image, attribute="", opacity=0.5, colormap="jet") -> overlay image of the input's size,
/objects(image, min_score=0.35, top_k=5) -> [{box: [x1, y1, x2, y2], category, detector_category, score,
    attributes}, ...],
/search(query="furry, animal", top_k=10, image=None) -> [{rank, image, score, matched, caption}, ...].
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cocoattr.allocator import tune_malloc

tune_malloc()  # first: importing gradio starts a thread, and a thread's first malloc picks its arena

import gradio as gr

from cocoattr import viz
from cocoattr.data.gallery import gallery_root
from cocoattr.errors import UserError
from cocoattr.index import GALLERY, Index, checkpoint_identity, open_or_build
from cocoattr.index_hub import checkpoint_mismatch, hub_repo
from cocoattr.index_hub import open_index as open_hub_index
from cocoattr.predictor import Predictor
from cocoattr.serving import MIN_SCORE, Service, about_text
from cocoattr.ui import page
from cocoattr.ui.search_tab import search_tab
from cocoattr.ui.widgets import UI, error_note, image_input, user_errors

ENV_INDEX = "COCOATTR_INDEX"
ENV_DEVICE = "COCOATTR_DEVICE"
ENV_IMAGES = "COCOATTR_IMAGES"
ENV_CONCURRENCY = "COCOATTR_CONCURRENCY"
SAMPLE_QUERY = "furry, animal"  # /search's default: the API page shows it as the sample call
EXAMPLE_NAMES = (
    "skimage_chelsea.jpg",
    "skimage_coffee.jpg",
    "foolbox_imagenet_16_251_dalmatian.jpg",
    "gradio_lion.jpg",
    "skimage_motorcycle.jpg",
    "foolbox_imagenet_04_949_strawberry.jpg",
    "gradio_tower.jpg",
    "skimage_astronaut.jpg",
)
t0 = time.perf_counter()


def log(message: str) -> None:
    """Start-up progress on stderr (what a Space's log shows while it boots)."""
    print(f"cocoattr app [{time.perf_counter() - t0:5.1f}s]: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- start-up


def _concurrency() -> int:
    return max(1, int(os.environ.get(ENV_CONCURRENCY, "2") or 2))


def open_index(predictor: Predictor) -> Index:
    """The index of COCOATTR_IMAGES (default: the gallery) at COCOATTR_INDEX (default: its usual place)."""
    spec = os.environ.get(ENV_INDEX, "").strip()
    images = os.environ.get(ENV_IMAGES, "").strip() or None
    if spec and hub_repo(spec):  # a pushed index: served as it is, never rebuilt; files: COCOATTR_IMAGES
        fallback = lambda: open_or_build(predictor, GALLERY, say=log)  # noqa: E731
        index = open_hub_index(spec, fallback, say=log, images=images)
        why = checkpoint_mismatch(index, checkpoint_identity(predictor.model))
        if why:
            log(why)
        return index
    images = images or GALLERY
    if images != GALLERY and not Path(images).expanduser().is_dir():
        raise UserError(f"{ENV_IMAGES}={images!r}: no such folder")
    return open_or_build(predictor, images, os.environ.get(ENV_INDEX, "").strip() or None, say=log)


# --------------------------------------------------------------------------- the named API


def api_functions(s: Service) -> tuple[Callable, Callable, Callable, Callable]:
    """predict, heatmap, objects, search: plain values in, JSON-able values out.

    Their names are the MCP tools' names and their docstrings (Args included) describe the
    endpoints in view_api(), on the API page and in the MCP tool schemas.
    """

    @user_errors
    def predict(image: str, top_k: int = 0, threshold: float = 0.0) -> dict[str, float]:
        """Which visual attributes a photo shows: each attribute's probability, highest first.

        Args:
            image: the photo (a file or URL; JPEG, PNG, WebP, ... up to 64 megapixels).
            top_k: return only the k most likely attributes; 0 returns all of them.
            threshold: return only attributes with a probability at least this (0 to 1).

        Returns:
            {attribute: probability}, highest first.
        """
        return s.probabilities(image, top_k, threshold)

    @user_errors
    def heatmap(image: str, attribute: str = "", opacity: float = 0.5, colormap: str = viz.DEFAULT_CMAP):
        """Where the model sees an attribute in a photo: the photo with its attention map overlaid.

        Args:
            image: the photo (a file or URL).
            attribute: an attribute name such as 'furry' or 'red' (any case); empty: the photo's top one.
            opacity: how strongly the map covers the photo, 0 (invisible) to 1.
            colormap: the map's colours: jet, inferno, viridis, magma, turbo or coolwarm.

        Returns:
            The overlay, an image of the input's size.
        """
        return s.heatmap(image, attribute, opacity, colormap)

    @user_errors
    def objects(image: str, min_score: float = MIN_SCORE, top_k: int = 5) -> list[dict]:
        """The objects (COCO's 80 categories) in a photo, best first, each with its own attributes.

        Args:
            image: the photo (a file or URL).
            min_score: keep objects whose detector score is at least this (0 to 1).
            top_k: attributes given per object; 0 gives all of them.

        Returns:
            [{box: [x1, y1, x2, y2] in the photo's pixels, category, detector_category, score,
            attributes: {name: probability}}]; category is the detector's class unless the attributes
            inside the box overrule it.
        """
        return s.objects(image, min_score, top_k)

    @user_errors
    def search(query: str = SAMPLE_QUERY, top_k: int = 10, image: str | None = None) -> list[dict]:
        """Images of the app's index that match a query, best first.

        Args:
            query: attributes separated by commas ('red, furry, -indoor': -x excludes x, x^2 weighs x
                twice) or free text ('a dog on a beach'); defaults to the API page's sample query,
                so pass query='' to search by a photo alone.
            top_k: how many images to return (1 to 100).
            image: optional query photo (a file or URL): images like it; with a query, the query's
                attributes decide which images qualify and the photo ranks them.

        Returns:
            [{rank, image, score, matched: [{attribute, probability}], caption}], best first.
        """
        return s.search_rows(query, top_k, image)

    return predict, heatmap, objects, search


def api_endpoints(s: Service) -> None:
    """/predict, /heatmap, /objects, /search (`api_functions`) on hidden components."""
    predict, heatmap, objects, search = api_functions(s)
    with gr.Column(visible=False):  # API-only inputs/outputs: hidden, so the endpoints have clean signatures
        a_image = image_input(label="image")
        a_topk = gr.Number(value=0, precision=0, label="top_k")
        a_thr = gr.Number(value=0.0, label="threshold")
        a_attr = gr.Textbox(value="", label="attribute")
        a_opacity = gr.Number(value=0.5, label="opacity")
        a_cmap = gr.Textbox(value=viz.DEFAULT_CMAP, label="colormap")
        a_query = gr.Textbox(value=SAMPLE_QUERY, label="query")  # the API page's sample call works
        a_k = gr.Number(value=10, precision=0, label="top_k")
        a_min = gr.Number(value=MIN_SCORE, label="min_score")
        a_ok = gr.Number(value=5, precision=0, label="top_k")
        a_objects = gr.JSON(label="objects")
        a_probs = gr.JSON(label="probabilities")
        a_overlay = gr.Image(type="pil", format="png", label="overlay")
        a_hits = gr.JSON(label="results")
        a_go = [gr.Button(visible=False) for _ in range(4)]
    a_go[0].click(predict, [a_image, a_topk, a_thr], a_probs, api_name="predict")
    a_go[1].click(heatmap, [a_image, a_attr, a_opacity, a_cmap], a_overlay, api_name="heatmap")
    a_go[2].click(search, [a_query, a_k, a_image], a_hits, api_name="search")
    a_go[3].click(objects, [a_image, a_min, a_ok], a_objects, api_name="objects")


# --------------------------------------------------------------------------- tabs


def predict_tab(s: Service, examples: list[list[str]]) -> tuple[gr.Image, Any]:
    """Photo in, per-type probability bars out; returns (the photo input, its change event).

    A bad photo is one bold line in the summary with every panel cleared (not a toast plus an
    "Error" pill on each panel, with the previous photo's results left standing).
    """
    type_order = s.type_order

    def cleared(note: str) -> list:
        return [gr.Label(value=None, label=t) for t in type_order] + [note]

    def ui_predict(image: str | None, top_k: float, threshold: float) -> list:
        if not image:
            return cleared("")
        try:
            item = s.prediction(image)
        except UserError as e:
            return cleared(error_note(e))
        probs = item.prediction.probs
        bars = viz.bars_by_type(probs, s.names, s.predictor.attribute_types, int(top_k), float(threshold))
        labels = [
            gr.Label(value=bars[t] or None, label=t if bars[t] else f"{t}: nothing ≥ {threshold:.2f}")
            for t in type_order
        ]
        top = ", ".join(f"**{n}** {p:.2f}" for n, p in viz.top_attributes(probs, s.names, 8))
        return labels + [f"{item.size[0]}×{item.size[1]} px. Most likely: {top}"]

    def ui_objects(image: str | None, min_score: float) -> tuple:
        try:
            value, colours, text = s.object_view(image, min_score) if image else (None, {}, "")
        except UserError:  # the summary already says why
            value, colours, text = None, {}, ""
        return gr.AnnotatedImage(value=value, color_map=colours, visible=value is not None), text

    with gr.Tab("Predict", id="predict"), gr.Row(elem_id="predict-row"):
        with gr.Column(scale=2, elem_id="predict-input"):
            image = image_input(
                label="Photo (drop, paste or click)",
                elem_id="predict-image",
                sources=["upload", "clipboard"],
                height=360,
            )
            with gr.Column(elem_id="predict-controls"):
                top_k = gr.Slider(1, 15, value=5, step=1, label="top-k per type")
                threshold = gr.Slider(0.0, 1.0, value=0.1, step=0.01, label="threshold")
                min_score = gr.Slider(
                    0.05, 1.0, value=MIN_SCORE, step=0.05, label="object boxes: detector score ≥"
                )
                gr.Examples(examples, inputs=[image], label="Gallery photos", examples_per_page=8)
        with gr.Column(scale=3, elem_id="predict-output"):
            summary = gr.Markdown(elem_id="predict-summary")
            labels = []
            for row in range(0, len(type_order), 4):
                with gr.Row(equal_height=True):
                    for t in type_order[row : row + 4]:
                        labels.append(
                            gr.Label(
                                label=t,
                                show_label=True,
                                min_width=160,
                                elem_id=f"bars-{t.replace(' ', '-')}",
                                elem_classes=["type-bars"],
                            )
                        )
            boxes = gr.AnnotatedImage(
                label="objects", format="jpeg", height=420, visible=False, elem_id="predict-objects"
            )
            objects = gr.Markdown(elem_id="predict-objects-list")
    inputs, outputs = [image, top_k, threshold], labels + [summary]
    changed = image.change(ui_predict, inputs, outputs, **UI)
    for ctl in (top_k, threshold):
        ctl.release(ui_predict, inputs, outputs, show_progress="hidden", **UI)
    changed.then(ui_objects, [image, min_score], [boxes, objects], **UI)  # after the bars
    min_score.release(ui_objects, [image, min_score], [boxes, objects], show_progress="hidden", **UI)
    return image, changed


def heatmap_tab(s: Service) -> gr.Image:
    """Where the model sees an attribute: one overlay plus side-by-side tiles; returns the photo input."""
    names = s.names

    def cleared(note: str) -> tuple:
        return gr.Image(value=None, label="overlay"), [], note

    def ui_heatmap(image: str | None, attribute: str | None, compare: list[str] | None,
                   n: float, opacity: float, cmap: str, last: list | None) -> tuple:  # fmt: skip
        key = [image, attribute, sorted(compare or []), n, opacity, cmap]
        if image and key == last:  # the tab's first showing fires `change` again: nothing new to draw
            return gr.skip(), gr.skip(), gr.skip(), last
        return (*draw(image, attribute, compare, n, opacity, cmap), key)

    def draw(image: str | None, attribute: str | None, compare: list[str] | None,
             n: float, opacity: float, cmap: str) -> tuple:  # fmt: skip
        if not image:
            return cleared("")
        try:
            item = s.prediction(image)
            shown, pred = item.shown, item.prediction
            attribute = s.attribute(pred, attribute)
            main = s.overlay(shown, pred, attribute, opacity, cmap)
        except UserError as e:
            return cleared(error_note(e))
        p = pred.probs[names.index(attribute)]
        others = [a for a in (compare or []) if a in names] or [
            a for a, _ in viz.top_attributes(pred.probs, names, int(n))
        ]
        tiles = [
            (s.overlay(shown, pred, a, opacity, cmap), f"{a} {pred.probs[names.index(a)]:.2f}")
            for a in others
        ]
        return gr.Image(value=main, label=f"where the model sees '{attribute}' (p = {p:.2f})"), tiles, ""

    with gr.Tab("Heatmaps", id="heatmaps"):
        with gr.Row(elem_id="heatmap-row"):
            with gr.Column(scale=2, elem_id="heatmap-input"):
                image = image_input(
                    label="Photo", sources=["upload", "clipboard"], height=300, elem_id="heatmap-image"
                )
                with gr.Column(elem_id="heatmap-controls"):
                    attr = gr.Dropdown(
                        choices=sorted(names),
                        value=None,
                        label="attribute (empty: the top one)",
                        filterable=True,
                    )
                    compare = gr.Dropdown(
                        choices=sorted(names),
                        value=[],
                        multiselect=True,
                        label="compare side by side (empty: the top ones)",
                    )
                    n = gr.Slider(2, 12, value=6, step=1, label="how many top attributes")
                    opacity = gr.Slider(0.0, 1.0, value=0.55, step=0.05, label="opacity")
                    cmap = gr.Dropdown(choices=list(viz.CMAPS), value=viz.DEFAULT_CMAP, label="colormap")
            with gr.Column(scale=3, elem_id="heatmap-output"):
                note = gr.Markdown(elem_id="heatmap-note")
                main = gr.Image(
                    label="overlay", type="pil", format="jpeg", interactive=False, elem_id="heatmap-main"
                )
        gr.Markdown(
            "Maps are the model's own cross-attention weights over its feature grid, "
            "upsampled bilinearly to the photo: what the classifier read, not a post-hoc guess."
        )
        tiles = gr.Gallery(
            label="side by side", columns=6, height="auto", format="jpeg", elem_id="heatmap-tiles"
        )
        # Inside the tab: a component between two gr.Tab children of gr.Tabs shifts the next tab's
        # index, and gradio then draws that tab's button twice once it is opened.
        drawn = gr.State(None)  # the inputs of what is on screen
    inputs, outputs = [image, attr, compare, n, opacity, cmap, drawn], [main, tiles, note, drawn]
    image.change(ui_heatmap, inputs, outputs, **UI)
    for ctl in (attr, compare, cmap):
        ctl.input(ui_heatmap, inputs, outputs, show_progress="hidden", **UI)
    for ctl in (n, opacity):
        ctl.release(ui_heatmap, inputs, outputs, show_progress="hidden", **UI)
    return image


# --------------------------------------------------------------------------- about


def about_panel(predictor: Predictor, index: Index) -> None:
    with gr.Accordion("About this model", open=False):
        gr.Markdown(about_text(predictor, index), elem_id="about")


# --------------------------------------------------------------------------- the app


def build_demo(predictor: Predictor | None = None, index: Index | None = None) -> gr.Blocks:
    """The whole app. Tests inject a predictor / index; a Space builds both here, once."""
    if predictor is None:
        log("loading the checkpoint")
        predictor = Predictor.from_checkpoint(None, device=os.environ.get(ENV_DEVICE, "cpu"))
        log(f"loaded {getattr(predictor.model, 'source', '?')} ({predictor.model.kind})")
    if index is None:
        log("opening the search index")
        index = open_index(predictor)
        log(f"index ready: {len(index)} images")
    s = Service(predictor, index, _concurrency())
    gallery_images = gallery_root() / "images"
    gr.set_static_paths(
        [str(p) for p in (index.root, gallery_images) if p is not None and p.is_dir()]
    )  # serve results and examples in place
    examples = [[str(gallery_images / n)] for n in EXAMPLE_NAMES if (gallery_images / n).is_file()]
    with gr.Blocks(title="cocoattr: visual attributes", analytics_enabled=False) as demo:
        gr.Markdown(
            "# cocoattr\nWhich **visual attributes** a photo shows (color, material, texture, shape, size, "
            "state, scene, category), **where** the model sees each one, and **which images** show them."
        )
        with gr.Tabs():
            p_image, p_changed = predict_tab(s, examples)
            h_image = heatmap_tab(s)
            search_tab(s)
        about_panel(predictor, index)
        api_endpoints(s)
        # Predict's photo also feeds Heatmaps, so switching tab shows the same picture.
        p_changed.success(lambda x: x, p_image, h_image, show_progress="hidden", **UI)
    demo.queue(default_concurrency_limit=_concurrency(), max_size=64)
    return demo


# Launch settings shared by `python app.py`, a Space and the tests: the page's CSS and script
# (gradio 6 takes them at launch), the named endpoints as MCP tools too (their docstrings are the
# tool schemas; needs the `mcp` package, `gradio[mcp]`: without it gradio says so and serves the app).
LAUNCH_KWARGS: dict[str, Any] = {"max_file_size": "40mb", "css": page.CSS, "js": page.JS, "mcp_server": True}


def __getattr__(name: str) -> Any:  # PEP 562: `app.demo` builds lazily (gradio's reload mode looks for it)
    if name == "demo":
        globals()["demo"] = value = build_demo()
        return value
    raise AttributeError(name)


if __name__ == "__main__":
    try:
        demo = build_demo()
    except UserError as e:  # a bad COCOATTR_* setting or checkpoint: one line, not a traceback
        print(f"cocoattr: error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    log("serving")
    demo.launch(**LAUNCH_KWARGS)
