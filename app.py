"""cocoattr web app: Predict, Heatmaps and Search tabs plus a named API, ready to host as a Space.

UI only: every number comes from `cocoattr.predictor.Predictor` (one model, loaded once at
start-up), overlays from `cocoattr.viz`, and search from the index through `search_index`,
the one adapter between this file and `cocoattr.index`. Run `python app.py` (or `make demo`);
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT choose where it listens (default 127.0.0.1:7860).

Environment:
    COCOATTR_CHECKPOINT  checkpoint folder or Hub id (default: the Hub default, falling back
                         offline to the embedded zero-shot default)
    COCOATTR_IMAGES      folder of images to search (default: the bundled gallery)
    COCOATTR_INDEX       index file for those images (built at start-up when missing)
    COCOATTR_CONCURRENCY how many requests run at once (default 2; CPU-bound work)

API (gradio_client): /predict(image, top_k=0, threshold=0.0) -> {attribute: probability},
/heatmap(image, attribute="", opacity=0.5, colormap="jet") -> overlay image of the input's size,
/search(query="", top_k=10, image=None) -> [{rank, image, score, matched, caption}, ...].
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache, wraps
from pathlib import Path
from typing import Any

from cocoattr.allocator import tune_malloc

tune_malloc()  # first: importing gradio starts a thread, and a thread's first malloc picks its arena

import gradio as gr
import numpy as np
from PIL import Image

from cocoattr import viz
from cocoattr.data.gallery import gallery_root
from cocoattr.errors import UserError
from cocoattr.images import load_image
from cocoattr.index import GALLERY, Index, build_index, checkpoint_identity, search, search_by_image
from cocoattr.predictor import Prediction, Predictor
from cocoattr.query import parse_query
from cocoattr.vocab import TYPES

REPO = Path(__file__).resolve().parent


ENV_INDEX = "COCOATTR_INDEX"
ENV_IMAGES = "COCOATTR_IMAGES"
ENV_CONCURRENCY = "COCOATTR_CONCURRENCY"
DEFAULT_INDEX = REPO / "checkpoints" / "gallery-index.npz"  # the Makefile's `make index` target
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
QUERY_EXAMPLES = (
    "furry animal",
    "red, -indoor",
    "striped^2, animal",
    "a cup of coffee on a table",
    "metal, vehicle",
)
HEATMAP_SIDE = 768  # on-screen overlays are drawn on a copy this size; the API draws full size
t0 = time.perf_counter()


def log(message: str) -> None:
    """Start-up progress on stderr (what a Space's log shows while it boots)."""
    print(f"cocoattr app [{time.perf_counter() - t0:5.1f}s]: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- errors


def _user_message(e: UserError) -> str:
    """gr.Error renders HTML; file names come from users, so neutralise markup (keep '->' readable)."""
    return str(e).replace("&", "&amp;").replace("<", "&lt;")


def user_errors(fn: Callable) -> Callable:
    """Turn a `UserError` into a `gr.Error` the page shows (no traceback); the app keeps serving."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            raise gr.Error(_user_message(e), title="Cannot do that", print_exception=False) from None

    return wrapper


def image_input(**kwargs: Any) -> gr.Image:
    """A stock gr.Image whose upload reaches our code as an unopened file path.

    gr.Image opens the upload before our function runs (and decodes it for some modes), so a
    PDF renamed .jpg or a 20000x20000 PNG would fail inside gradio with an internal-looking
    message. Replacing this instance's `preprocess` lets `cocoattr.images.load_image` alone
    decide, with its readable UserErrors. (A subclass would do too, but gradio then writes an
    app.pyi stub next to this file and needs a custom frontend id.) The frontend and the API
    type (filepath for gradio_client) stay those of gr.Image.
    """
    component = gr.Image(type="filepath", image_mode=None, **kwargs)
    stock = component.preprocess

    def preprocess(payload: Any) -> str | None:
        if payload is None:
            return None
        if getattr(payload, "path", None):
            return str(payload.path)
        try:  # a data: URL (no file yet): let gradio write it to its cache
            return stock(payload)
        except Exception as e:  # gradio raises several types for undecodable data
            raise gr.Error(f"not an image ({type(e).__name__})", print_exception=False) from None

    component.preprocess = preprocess  # type: ignore[method-assign]
    return component


# --------------------------------------------------------------------------- search adapter


@dataclass
class SearchHit:
    """One ranked result, as the UI and the /search API show it."""

    image: str  # path relative to the indexed folder (what the API shows; no server paths)
    path: Path
    score: float
    matched: list[tuple[str, float]] = field(default_factory=list)  # (term, probability), best first
    caption: str = ""

    def as_json(self, rank: int) -> dict:
        return {
            "rank": rank,
            "image": self.image,
            "score": round(self.score, 4),
            "matched": [{"attribute": a, "probability": round(p, 4)} for a, p in self.matched],
            "caption": self.caption,
        }


@dataclass
class SearchResult:
    hits: list[SearchHit]
    notes: list[str]  # how the query was read: "kitty -> cat", "ignored 'zzz'"


def images_root() -> tuple[str, Path]:
    """('gallery' or a folder, its path): what the index covers (COCOATTR_IMAGES, default the gallery)."""
    images = os.environ.get(ENV_IMAGES, "").strip() or "gallery"
    if images == "gallery":
        return images, gallery_root() / "images"
    root = Path(images).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"{ENV_IMAGES}={images!r}: no such folder")
    return str(root), root


def index_path(images: str) -> Path:
    """COCOATTR_INDEX, else the gallery index, else one file per image folder under checkpoints/."""
    if os.environ.get(ENV_INDEX, "").strip():
        return Path(os.environ[ENV_INDEX]).expanduser()
    if images == "gallery":
        return DEFAULT_INDEX
    digest = hashlib.sha1(images.encode()).hexdigest()[:8]
    return REPO / "checkpoints" / f"index-{Path(images).name}-{digest}.npz"


def open_index(predictor: Predictor) -> Index:
    """The cached image set's index, built (progress on stderr) when missing, stale or incomplete.

    An up-to-date index is loaded as is (no folder scan, no write: a Space's disk may be
    read-only); otherwise `build_index` updates it incrementally, reusing unchanged images.
    """
    images, _ = images_root()
    path = index_path(images)
    spec = GALLERY if images == "gallery" else images
    if path.is_file():
        index = Index.load(path)
        same_model = index.checkpoint.get("sha256") == checkpoint_identity(predictor.model)["sha256"]
        if same_model and index.root_spec == spec and index.complete:
            return index
        why = (
            "another checkpoint"
            if not same_model
            else "another folder"
            if index.root_spec != spec
            else "partial"
        )
        log(f"index {path} is stale ({why}); updating it")
    else:
        log(f"no index at {path}: building it over {images} (first start only)")
    report = build_index(spec, path, predictor, progress=True)
    if report.failed:
        log(f"{len(report.failed)} images could not be read and are not searchable")
    return report.index


def search_index(
    index: Index, predictor: Predictor, query: str, top_k: int, image: str | None
) -> SearchResult:
    """The one call from the UI/API into the index: query text or an image -> ranked hits + notes."""
    captions = _captions(index.root_spec)
    if image:
        photo = load_image(image, name=Path(image).name)
        hits = on_model_thread(lambda: search_by_image(index, photo, k=top_k, predictor=predictor))
        notes = ["nearest neighbours of the query photo (embedding cosine)"]
    else:
        parsed = parse_query(query, attributes=index.attributes, attribute_embeddings=index.attribute_text)
        hits = search(index, parsed, k=top_k)
        notes = [str(m) for m in parsed.mappings if m.how != "attribute"] + list(parsed.warnings)
    return SearchResult(
        [
            SearchHit(h.image, h.path, h.score, list(h.attributes.items()), captions.get(h.image, ""))
            for h in hits
        ],
        notes,
    )


# --------------------------------------------------------------------------- model threads


def _concurrency() -> int:
    return max(1, int(os.environ.get(ENV_CONCURRENCY, "2") or 2))


_model_threads: ThreadPoolExecutor | None = None


def on_model_thread(fn: Callable, *args: Any) -> Any:
    """Run model work on one fixed pool of `COCOATTR_CONCURRENCY` threads. Gradio calls handlers
    from a large, changing thread pool, and every new thread that enters torch gets its own
    OpenMP team and allocator state, so memory crept up with each thread used."""
    global _model_threads
    if _model_threads is None:
        _model_threads = ThreadPoolExecutor(_concurrency(), thread_name_prefix="cocoattr-model")
    return _model_threads.submit(fn, *args).result()


@lru_cache(maxsize=4)
def _captions(root_spec: str) -> dict[str, str]:
    """First caption per gallery image (by file name); other image sets have none."""
    if root_spec != GALLERY:
        return {}
    from cocoattr.data.gallery import load_gallery

    g = load_gallery()
    return {p.name: (c[0] if c else "") for p, c in zip(g.paths, g.captions, strict=True)}


# --------------------------------------------------------------------------- predictions


def _content_key(path: Path) -> str:
    """Digest of the file's bytes: the same photo uploaded twice hits the cache."""
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return f"unreadable:{path}"
    return h.hexdigest()


class PredictionCache:
    """Recent predictions by file: moving a slider or switching tab never re-runs the model."""

    def __init__(self, predictor: Predictor, size: int = 32) -> None:
        self.predictor, self.size = predictor, size
        self._items: OrderedDict[str, tuple[Image.Image, Prediction, tuple[int, int]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str) -> tuple[Image.Image, Prediction, tuple[int, int]]:
        """(display-size copy, prediction, original (W, H)) for an image file; raises UserError."""
        p = Path(path)
        key = _content_key(p)  # gradio re-writes re-uploaded files, so mtime would always miss
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        image = load_image(path, name=p.name)
        pred = on_model_thread(self.predictor.predict_one, image)
        item = (viz.display_copy(image, HEATMAP_SIDE), pred, image.size)
        with self._lock:
            self._items[key] = item
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return item


# --------------------------------------------------------------------------- the app


def _about(predictor: Predictor, index: Index) -> str:
    """Markdown for the About panel: which model, how big its vocabulary, its metrics if any."""
    import json

    model = predictor.model
    source = Path(getattr(model, "source", "") or "")
    kind = getattr(model, "kind", "trained")
    counts = {t: predictor.attribute_types.count(t) for t in TYPES if t in predictor.attribute_types}
    lines = [
        f"**Checkpoint:** `{source.name or source}` "
        f"({'embedded default, ' if source.name == 'default' else ''}{kind} model)  ",
        f"**Location:** `{source}`  ",
    ]
    if kind == "zero-shot":
        lines.append(
            "> This is a **zero-shot** model: it was built from ImageNet classes and text, with no attribute "
            "labels. Expect sensible top attributes but rough probabilities; load a trained checkpoint "
            "(`COCOATTR_CHECKPOINT`) for real accuracy."
        )
    if getattr(model, "description", ""):
        lines += ["", model.description]
    lines += [
        "",
        f"**Vocabulary:** {len(predictor.attributes)} attributes in {len(counts)} types ("
        + ", ".join(f"{t} {n}" for t, n in counts.items())
        + ")  ",
        f"**Search index:** {len(index)} images from "
        f"`{'the bundled gallery' if index.root_spec == GALLERY else index.root_spec}`",
    ]
    metrics: dict = {}
    if (source / "metrics.json").is_file():
        try:
            metrics = json.loads((source / "metrics.json").read_text("utf-8"))
        except (OSError, ValueError):
            metrics = {}
    numeric = (
        {k: v for k, v in metrics.items() if isinstance(v, (int, float))} if isinstance(metrics, dict) else {}
    )
    if numeric:
        lines += ["", "**Metrics** (metrics.json):", "", "| metric | value |", "|---|---|"]
        lines += [
            f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in numeric.items()
        ]
    elif (source / "README.md").is_file():
        card = (source / "README.md").read_text("utf-8", errors="replace")
        m = re.search(r"^## Metrics\n(.*?)(?=^## |\Z)", card, re.S | re.M)
        lines += (
            ["", "**Metrics** (model card):", "", m.group(1).strip()]
            if m
            else ["", "No metrics in the model card."]
        )
    return "\n".join(lines)


def build_demo(predictor: Predictor | None = None, index: Index | None = None) -> gr.Blocks:
    """The whole app. Tests inject a predictor / index; a Space builds both here, once."""
    if predictor is None:
        log("loading the checkpoint")
        predictor = Predictor.from_checkpoint(None)
        log(f"loaded {getattr(predictor.model, 'source', '?')} ({predictor.model.kind})")
    if index is None:
        log("opening the search index")
        index = open_index(predictor)
        log(f"index ready: {len(index)} images")
    root = index.root
    gallery_images = gallery_root() / "images"
    gr.set_static_paths([str(root), str(gallery_images)])  # serve results and examples in place, no copies

    names, types = predictor.attributes, predictor.attribute_types
    type_order = [t for t in TYPES if t in types]
    cache = PredictionCache(predictor)

    def pick_attribute(pred: Prediction, attribute: str | None) -> str:
        attribute = (attribute or "").strip()
        if not attribute:
            return names[int(np.argmax(pred.probs))]
        if attribute not in names:
            close = difflib.get_close_matches(attribute.lower(), names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserError(f"unknown attribute {attribute!r}{hint}")
        return attribute

    # ---- API functions: plain values in, JSON-able values out
    @user_errors
    def api_predict(image: str, top_k: int = 0, threshold: float = 0.0) -> dict[str, float]:
        """Every attribute's probability (or the top_k / those >= threshold), highest first."""
        if not image:
            raise UserError("no image given")
        _, pred, _ = cache.get(image)
        k = int(top_k) if top_k and int(top_k) > 0 else len(names)
        return {
            n: round(p, 5) for n, p in viz.top_attributes(pred.probs, names, k) if p >= float(threshold or 0)
        }

    @user_errors
    def api_heatmap(image: str, attribute: str = "", opacity: float = 0.5, colormap: str = viz.DEFAULT_CMAP):
        """The full-size input with `attribute`'s attention map overlaid (default: the top attribute)."""
        if not image:
            raise UserError("no image given")
        _, pred, _ = cache.get(image)
        attribute = pick_attribute(pred, attribute)
        full = load_image(image, name=Path(image).name)
        try:
            return viz.overlay(
                full, pred.maps[names.index(attribute)], float(opacity), colormap or viz.DEFAULT_CMAP
            )
        except ValueError as e:
            raise UserError(str(e)) from None

    @user_errors
    def api_search(query: str = "", top_k: int = 10, image: str | None = None) -> list[dict]:
        """Ranked images for an attribute query ('red, furry, -indoor'), free text, or a query photo."""
        query = (query or "").strip()
        if not query and not image:
            raise UserError(
                "empty query: type attributes like 'furry, animal' or 'red, -indoor', or give a photo"
            )
        result = search_index(index, predictor, query, max(1, min(int(top_k or 10), 100)), image or None)
        return [h.as_json(i + 1) for i, h in enumerate(result.hits)]

    # ---- UI functions
    def ui_predict(image: str | None, top_k: float, threshold: float) -> list:
        if not image:
            return [gr.Label(value=None) for _ in type_order] + [""]
        _, pred, size = user_errors(cache.get)(image)
        bars = viz.bars_by_type(pred.probs, names, types, int(top_k), float(threshold))
        labels = [
            gr.Label(value=bars[t] or None, label=t if bars[t] else f"{t}: nothing ≥ {threshold:.2f}")
            for t in type_order
        ]
        top = ", ".join(f"**{n}** {p:.2f}" for n, p in viz.top_attributes(pred.probs, names, 8))
        return labels + [f"{size[0]}×{size[1]} px. Most likely: {top}"]

    def ui_heatmap(
        image: str | None,
        attribute: str | None,
        compare: list[str] | None,
        n: float,
        opacity: float,
        cmap: str,
    ) -> tuple:
        if not image:
            return gr.Image(value=None, label="overlay"), []
        shown, pred, _ = user_errors(cache.get)(image)
        attribute = user_errors(pick_attribute)(pred, attribute)
        p = pred.probs[names.index(attribute)]
        main = viz.overlay(shown, pred.maps[names.index(attribute)], opacity, cmap)
        others = [a for a in (compare or []) if a in names] or [
            a for a, _ in viz.top_attributes(pred.probs, names, int(n))
        ]
        tiles = [
            (
                viz.overlay(shown, pred.maps[names.index(a)], opacity, cmap),
                f"{a} {pred.probs[names.index(a)]:.2f}",
            )
            for a in others
        ]
        return gr.Image(value=main, label=f"where the model sees '{attribute}' (p = {p:.2f})"), tiles

    def ui_search(query: str, image: str | None, top_k: float) -> tuple:
        query = (query or "").strip()
        if not query and not image:
            gr.Warning(
                "Empty query: type attributes like 'furry, animal' or 'red, -indoor', or drop a photo."
            )
            return [], ""
        result = user_errors(search_index)(
            index, predictor, query if not image else "", int(top_k), image or None
        )
        tiles = [
            (
                str(h.path),
                ", ".join(f"{a} {p:.2f}" for a, p in h.matched[:4]) + f" · #{i + 1}, score {h.score:.2f}",
            )
            for i, h in enumerate(result.hits)
        ]
        what = "the query photo" if image else f"`{query}`"
        notes = f"{len(result.hits)} of {len(index)} images for {what}."
        if result.notes:
            notes += " Read as: " + "; ".join(result.notes)
        return tiles, notes

    def add_term(query: str, term: str | None, mode: str) -> tuple:
        if not term:
            return gr.Textbox(), gr.Dropdown()
        term = ("-" if mode == "exclude" else "") + term
        query = (query or "").strip().rstrip(",")
        return (f"{query}, {term}" if query else term), gr.Dropdown(value=None)

    ui = {"api_visibility": "undocumented"}  # the UI's own events stay out of view_api()
    with gr.Blocks(title="cocoattr: visual attributes", analytics_enabled=False) as demo:
        gr.Markdown(
            "# cocoattr\nWhich **visual attributes** a photo shows (color, material, texture, shape, size, "
            "state, scene, category), **where** the model sees each one, and **which images** show them."
        )
        with gr.Tabs():
            with gr.Tab("Predict", id="predict"):
                with gr.Row():
                    with gr.Column(scale=2):
                        p_image = image_input(
                            label="Photo (drop, paste or click)",
                            elem_id="predict-image",
                            sources=["upload", "clipboard"],
                            height=360,
                        )
                        p_topk = gr.Slider(1, 15, value=5, step=1, label="top-k per type")
                        p_thr = gr.Slider(0.0, 1.0, value=0.1, step=0.01, label="threshold")
                        gr.Examples(
                            [
                                [str(gallery_images / n)]
                                for n in EXAMPLE_NAMES
                                if (gallery_images / n).is_file()
                            ],
                            inputs=[p_image],
                            label="Gallery photos",
                            examples_per_page=8,
                        )
                    with gr.Column(scale=3):
                        p_summary = gr.Markdown(elem_id="predict-summary")
                        p_labels = []
                        for row in range(0, len(type_order), 4):
                            with gr.Row(equal_height=True):
                                for t in type_order[row : row + 4]:
                                    p_labels.append(
                                        gr.Label(
                                            label=t,
                                            show_label=True,
                                            min_width=160,
                                            elem_id=f"bars-{t.replace(' ', '-')}",
                                            elem_classes=["type-bars"],
                                        )
                                    )
            with gr.Tab("Heatmaps", id="heatmaps"):
                with gr.Row():
                    with gr.Column(scale=2):
                        h_image = image_input(
                            label="Photo",
                            sources=["upload", "clipboard"],
                            height=300,
                            elem_id="heatmap-image",
                        )
                        h_attr = gr.Dropdown(
                            choices=sorted(names),
                            value=None,
                            label="attribute (empty: the top one)",
                            filterable=True,
                        )
                        h_compare = gr.Dropdown(
                            choices=sorted(names),
                            value=[],
                            multiselect=True,
                            label="compare side by side (empty: the top ones)",
                        )
                        h_n = gr.Slider(2, 12, value=6, step=1, label="how many top attributes")
                        h_opacity = gr.Slider(0.0, 1.0, value=0.55, step=0.05, label="opacity")
                        h_cmap = gr.Dropdown(
                            choices=list(viz.CMAPS), value=viz.DEFAULT_CMAP, label="colormap"
                        )
                    with gr.Column(scale=3):
                        h_main = gr.Image(
                            label="overlay",
                            type="pil",
                            format="jpeg",
                            interactive=False,
                            elem_id="heatmap-main",
                        )
                gr.Markdown(
                    "Maps are the model's own cross-attention weights over its feature grid, "
                    "upsampled bilinearly to the photo: what the classifier read, not a post-hoc guess."
                )
                h_tiles = gr.Gallery(
                    label="side by side", columns=6, height="auto", format="jpeg", elem_id="heatmap-tiles"
                )
            with gr.Tab("Search", id="search"):
                with gr.Row():
                    with gr.Column(scale=3):
                        s_query = gr.Textbox(
                            label="query",
                            placeholder="red, furry, -indoor   or   a dog on a beach",
                            info="attributes separated by commas; -x excludes x; x^2 weighs x "
                            "twice; anything else is free text",
                            elem_id="search-query",
                        )
                        with gr.Row():
                            s_pick = gr.Dropdown(
                                choices=sorted(names),
                                value=None,
                                filterable=True,
                                scale=3,
                                label="add an attribute (type to autocomplete)",
                            )
                            s_mode = gr.Radio(["include", "exclude"], value="include", label="as", scale=1)
                        gr.Examples([[q] for q in QUERY_EXAMPLES], inputs=[s_query], label="try")
                    with gr.Column(scale=2):
                        s_image = image_input(
                            label="…or search by photo",
                            height=200,
                            sources=["upload", "clipboard"],
                            elem_id="search-image",
                        )
                        s_topk = gr.Slider(1, 48, value=12, step=1, label="results")
                        s_button = gr.Button("Search", variant="primary")
                s_notes = gr.Markdown(elem_id="search-notes")
                s_results = gr.Gallery(label="results", columns=6, height="auto", elem_id="search-results")
        with gr.Accordion("About this model", open=False):
            gr.Markdown(_about(predictor, index))

        # API-only inputs/outputs: hidden, so the named endpoints have clean signatures.
        with gr.Column(visible=False):
            a_image = image_input(label="image")
            a_topk = gr.Number(value=0, precision=0, label="top_k")
            a_thr = gr.Number(value=0.0, label="threshold")
            a_attr = gr.Textbox(value="", label="attribute")
            a_opacity = gr.Number(value=0.5, label="opacity")
            a_cmap = gr.Textbox(value=viz.DEFAULT_CMAP, label="colormap")
            a_query = gr.Textbox(value="", label="query")
            a_k = gr.Number(value=10, precision=0, label="top_k")
            a_probs = gr.JSON(label="probabilities")
            a_overlay = gr.Image(type="pil", format="png", label="overlay")
            a_hits = gr.JSON(label="results")
            a_go = [gr.Button(visible=False) for _ in range(3)]
        a_go[0].click(api_predict, [a_image, a_topk, a_thr], a_probs, api_name="predict")
        a_go[1].click(api_heatmap, [a_image, a_attr, a_opacity, a_cmap], a_overlay, api_name="heatmap")
        a_go[2].click(api_search, [a_query, a_k, a_image], a_hits, api_name="search")

        # UI wiring. Predict's photo also feeds Heatmaps, so switching tab shows the same picture.
        p_in = [p_image, p_topk, p_thr]
        p_image.change(ui_predict, p_in, p_labels + [p_summary], **ui).success(
            lambda x: x, p_image, h_image, show_progress="hidden", **ui
        )
        for ctl in (p_topk, p_thr):
            ctl.release(ui_predict, p_in, p_labels + [p_summary], show_progress="hidden", **ui)
        h_in = [h_image, h_attr, h_compare, h_n, h_opacity, h_cmap]
        h_image.change(ui_heatmap, h_in, [h_main, h_tiles], **ui)
        for ctl in (h_attr, h_compare, h_cmap):
            ctl.input(ui_heatmap, h_in, [h_main, h_tiles], show_progress="hidden", **ui)
        for ctl in (h_n, h_opacity):
            ctl.release(ui_heatmap, h_in, [h_main, h_tiles], show_progress="hidden", **ui)
        s_in = [s_query, s_image, s_topk]
        gr.on([s_button.click, s_query.submit], ui_search, s_in, [s_results, s_notes], **ui)
        s_image.upload(ui_search, s_in, [s_results, s_notes], **ui)
        s_pick.input(add_term, [s_query, s_pick, s_mode], [s_query, s_pick], show_progress="hidden", **ui)

    demo.queue(default_concurrency_limit=_concurrency(), max_size=64)
    return demo


# Launch settings shared by `python app.py`, a Space and the tests.
LAUNCH_KWARGS: dict[str, Any] = {"max_file_size": "40mb"}  # gr.Error messages show; internals do not


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
