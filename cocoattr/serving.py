"""What the app serves, without gradio: one model on a fixed pool of threads, recent predictions
by file content, and the answers of the named API (/predict, /heatmap, /objects, /search).

`app.py` lays these out and wires events; every number and image it shows comes from here.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import math
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from cocoattr import viz
from cocoattr.atomic import atomic_write_bytes
from cocoattr.cache import Cached, PredictionCache
from cocoattr.errors import UserError
from cocoattr.hub import read_metrics
from cocoattr.images import load_image
from cocoattr.index import GALLERY, Index
from cocoattr.search import Hit, Photo, Results, check_checkpoint, find
from cocoattr.vocab import TYPES, match_attribute

if TYPE_CHECKING:
    from cocoattr.predictor import DetectedObject, Prediction, Predictor

MAX_RESULTS = 100  # /search returns at most this many rows
EMPTY_QUERY = "type attributes like 'furry, animal' or 'red, -indoor'"
MIN_SCORE = 0.35  # /objects and the Predict tab: detector boxes at least this confident
BOX_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324")


class Service:
    """The model, the index and recent predictions, shared by every tab and endpoint."""

    def __init__(self, predictor: Predictor, index: Index, concurrency: int = 2) -> None:
        self.predictor, self.index = predictor, index
        # Model work runs on one fixed pool: gradio calls handlers from a large, changing thread
        # pool, and every new thread that enters torch gets its own OpenMP team and allocator
        # state, so memory crept up with each thread used.
        self._threads = ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="cocoattr-model")
        self.cache = PredictionCache(lambda image: self.on_model_thread(predictor.predict_one, image))

    def on_model_thread(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        return self._threads.submit(fn, *args, **kwargs).result()

    @property
    def names(self) -> list[str]:
        return self.predictor.attributes

    @property
    def type_order(self) -> list[str]:
        return [t for t in TYPES if t in self.predictor.attribute_types]

    def prediction(self, image: str) -> Cached:
        """The (cached) prediction for an uploaded file; raises UserError for a missing or bad one."""
        if not image:
            raise UserError("no image given")
        return self.cache.get(image)

    def attribute(self, pred: Prediction, attribute: str | None) -> str:
        """The attribute asked for (any case, validated, with suggestions), or the prediction's top one."""
        attribute, names = (attribute or "").strip(), self.names
        if not attribute:
            return names[int(np.argmax(pred.probs))]
        found = match_attribute(attribute, names)
        if found is None:
            close = difflib.get_close_matches(attribute.lower(), names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserError(f"unknown attribute {attribute!r}{hint}")
        return found

    def overlay(
        self, image: Image.Image, pred: Prediction, attribute: str, opacity: float, cmap: str
    ) -> Image.Image:
        try:
            return viz.overlay(
                image, pred.maps[self.names.index(attribute)], float(opacity), cmap or viz.DEFAULT_CMAP
            )
        except ValueError as e:  # an unknown colormap
            raise UserError(str(e)) from None

    def probabilities(self, image: str, top_k: int = 0, threshold: float = 0.0) -> dict[str, float]:
        """/predict: every attribute's probability (or the top_k / those >= threshold), highest first."""
        pred = self.prediction(image).prediction
        k = int(top_k) if top_k and int(top_k) > 0 else len(self.names)
        top = viz.top_attributes(pred.probs, self.names, k)
        return {n: round(p, 5) for n, p in top if p >= float(threshold or 0)}

    def heatmap(
        self, image: str, attribute: str = "", opacity: float = 0.5, colormap: str = ""
    ) -> Image.Image:
        """/heatmap: the full-size input with `attribute`'s map overlaid (default: the top attribute)."""
        pred = self.prediction(image).prediction
        attribute = self.attribute(pred, attribute)
        return self.overlay(load_image(image, name=Path(image).name), pred, attribute, opacity, colormap)

    def detect(self, image: str, min_score: float = MIN_SCORE) -> list[DetectedObject]:
        """The objects in an uploaded file with a detector score >= min_score, best first."""
        if not image:
            raise UserError("no image given")
        if not self.predictor.has_detector:
            raise UserError("this checkpoint has no object detector")
        score = float(MIN_SCORE if min_score is None else min_score)
        if not 0.0 <= score <= 1.0:
            raise UserError(f"min_score must be between 0 and 1 (got {score:g})")
        photo = load_image(image, name=Path(image).name)  # no server paths in errors
        return self.on_model_thread(self.predictor.predict_objects, [photo], score)[0].objects or []

    def objects(self, image: str, min_score: float = MIN_SCORE, top_k: int = 5) -> list[dict]:
        """/objects: [{box (x1, y1, x2, y2 in the image's pixels), category, detector_category,
        score, attributes (the object's top_k, all when top_k <= 0)}], best first."""
        return [o.to_json(self.names, int(top_k or 0)) for o in self.detect(image, min_score)]

    def object_view(self, image: str, min_score: float = MIN_SCORE, top_k: int = 5) -> tuple:
        """The Predict tab's objects: ((display copy, [(box, label)]) or None, {label: colour},
        markdown: each object's top attributes, or why there is nothing to draw)."""
        if not self.predictor.has_detector:
            return None, {}, "this checkpoint has no object detector"
        item, found = self.prediction(image), self.detect(image, min_score)
        if not found:
            return None, {}, f"no objects found above {float(min_score):.2f}"
        sx, sy = item.shown.width / item.size[0], item.shown.height / item.size[1]
        boxes, colours, lines = [], {}, []
        for i, o in enumerate(found):
            label = o.label
            x1, y1, x2, y2 = o.box
            boxes.append(((round(x1 * sx), round(y1 * sy), round(x2 * sx), round(y2 * sy)), label))
            colours.setdefault(label, BOX_COLOURS[i % len(BOX_COLOURS)])
            top = ", ".join(f"{n} {p:.2f}" for n, p in viz.top_attributes(o.probs, self.names, top_k))
            lines.append(f"- **{label}**: {top}")
        return (item.shown, boxes), colours, "\n".join(lines)

    def search(
        self,
        query: str,
        top_k: int,
        image: str | None = None,
        *,
        like: str | None = None,
        cutoff: bool = False,
    ) -> Results:
        """`cocoattr.search.find` on the model threads: query text, a query photo (an uploaded file,
        its prediction cached like every tab's, or `like`, an image of the index by its relative
        path) or both combined; `cutoff` ranks only the images that satisfy the query."""
        photo = None
        if like:
            photo = Photo.row(self.index, like)
        elif image:
            check_checkpoint(self.index, self.predictor)
            pred = self.prediction(image).prediction  # no server paths in errors
            photo = Photo(pred.embedding, pred.probs)
        return self.on_model_thread(find, self.index, query, photo=photo, k=top_k, cutoff=cutoff)

    def search_rows(self, query: str = "", top_k: int = 10, image: str | None = None) -> list[dict]:
        """/search: ranked rows for an attribute query, free text, a query photo, or photo + terms."""
        query = (query or "").strip()
        if not query and not image:
            raise UserError(f"empty query: {EMPTY_QUERY}, or give a photo")
        result = self.search(query, max(1, min(int(top_k or 10), MAX_RESULTS)), image or None)
        return [h.to_api(i + 1) for i, h in enumerate(result.hits)]

    def hit_heatmaps(self, hit: Hit, attributes: list[str], opacity: float = 0.55) -> list[tuple[Any, str]]:
        """Where the model sees each of `attributes` in a search hit: [(overlay, 'red: P(red) 0.87')]."""
        item = self.prediction(str(_hit_file(hit)))
        pred, names = item.prediction, self.names
        tiles = []
        for key in attributes:
            name = key.lstrip("-")
            if name not in names:
                continue
            p = float(pred.probs[names.index(name)])
            label = f"{name}: P(not {name}) {1 - p:.2f}" if key.startswith("-") else f"{name}: P {p:.2f}"
            tiles.append((self.overlay(item.shown, pred, name, opacity, viz.DEFAULT_CMAP), label))
        return tiles


# ----------------------------------------------------------------------------- what the page shows


def _hit_file(h: Hit) -> Path:
    """The hit's file when this machine has it, else its index thumbnail written to a temporary file."""
    if h.path is not None and (h.path.is_file() or not h.thumbnail):
        return h.path
    if not h.thumbnail:
        raise UserError(f"{h.image}: not on this machine, and the index has no thumbnail of it")
    out = (
        Path(tempfile.gettempdir()) / "cocoattr-thumbnails" / f"{hashlib.sha256(h.thumbnail).hexdigest()}.jpg"
    )
    if not out.is_file():
        atomic_write_bytes(out, h.thumbnail)
    return out


def _tile_image(h: Hit) -> Any:
    """The hit's file when this machine has it, else the index's thumbnail (a Hub index), else grey."""
    return row_image(h.path, h.thumbnail)


def row_image(path: Path | None, thumbnail: bytes | None) -> Any:
    """An index row's file when this machine has it, else its thumbnail, else a grey square."""
    if path is not None and (path.is_file() or not thumbnail):
        return str(path)
    if thumbnail:
        return Image.open(io.BytesIO(thumbnail))
    return Image.new("RGB", (64, 64), "#ddd")


def _tile_caption(h: Hit, i: int) -> str:
    """Short enough for a grid tile: rank, then how well it matches (the details are beside the grid)."""
    if h.from_terms and h.attributes:
        joint = math.exp(h.terms_log_p) if h.terms_log_p is not None else math.prod(h.attributes.values())
        return f"#{i + 1} · {h.terms_matched}/{len(h.attributes)} · P {joint:.2f}"
    sim = h.photo_similarity if h.photo_similarity is not None else h.text_similarity
    return f"#{i + 1} · similarity {sim:.2f}" if sim is not None else f"#{i + 1}"


def search_tile(h: Hit, i: int) -> tuple[Any, str]:
    """One Search-tab tile: (image or file, caption)."""
    return _tile_image(h), _tile_caption(h, i)


# What each recorded metric is, for people (the keys stay those of metrics.json).
METRIC_NAMES = {
    "mAP": "mean average precision (mAP)",
    "auc": "mean per-image AUC",
    "mean_per_image_auc": "mean per-image AUC",
    "per_image_auc": "mean per-image AUC",
    "precision_at_5": "precision of the top 5 attributes",
    "precision_at_5_non_colour": "precision of the top 5 attributes, colours left out",
    "colours_in_top_5": "colours among the top 5 attributes",
    "micro_f1": "F1, pooled over all attributes (micro)",
    "macro_f1": "F1, averaged over attributes (macro)",
    "CF1": "per-class F1 (CF1)",
    "OF1": "overall F1 (OF1)",
    "n_attributes_scored": "attributes scored",
    "images": "images",
    "best_epoch": "best epoch",
    "epochs_run": "epochs run",
}
METRIC_SETS = {"gallery": "the bundled gallery (in-sample: it fitted the calibration)",
               "heldout": "the gallery, held out (k-fold calibration)",
               "val": "validation", "test": "test", "train": "training"}  # fmt: skip


def metric_label(key: str) -> tuple[str, str]:
    """(what, measured on) for a metrics.json key: 'gallery_precision_at_5' ->
    ('precision of the top 5 attributes', 'the bundled gallery (in-sample: ...)'); unknown keys read as words."""
    where, _, rest = key.partition("_")
    if where in METRIC_SETS and rest:
        return metric_label(rest)[0], METRIC_SETS[where]
    if key.startswith("n_") and key[2:] in METRIC_SETS:
        return "images", METRIC_SETS[key[2:]]
    return METRIC_NAMES.get(key, key.replace("_", " ")), ""


def _shown_folder(spec: str) -> str:
    """An index's images as a visitor may see them: a Hub id, or a folder's name (no server path)."""
    if spec == GALLERY:
        return "the bundled gallery"
    if spec.startswith("hf://"):
        return f"`{spec}`"
    return f"the folder `{Path(spec).name or spec}`"


def about_text(predictor: Predictor, index: Index) -> str:
    """Markdown for the About panel: which model (its name, never a server path), the zero-shot
    notice once, the vocabulary, the index, and its metrics under names people read."""
    model = predictor.model
    source = Path(getattr(model, "source", "") or "")
    kind = getattr(model, "kind", "trained")
    counts = {t: predictor.attribute_types.count(t) for t in TYPES if t in predictor.attribute_types}
    lines = [
        f"**Checkpoint:** `{source.name or 'in memory'}` "
        f"({'embedded default, ' if source.name == 'default' else ''}{kind} model)  ",
    ]
    description = " ".join(str(getattr(model, "description", "") or "").split())
    if kind == "zero-shot":  # one notice: what it is (the description's first sentence), what to expect
        what = description.split(". ")[0].rstrip(".") + ". " if description else ""
        lines += ["", (
            f"> This is a **zero-shot** model, trained on no attribute labels. {what}Expect sensible top "
            "attributes but rough probabilities; load a trained checkpoint (`COCOATTR_CHECKPOINT`) for "
            "real accuracy."
        )]  # fmt: skip
    elif description:
        lines += ["", description]
    lines += [
        "",
        f"**Vocabulary:** {len(predictor.attributes)} attributes in {len(counts)} types ("
        + ", ".join(f"{t} {n}" for t, n in counts.items())
        + ")  ",
        f"**Search index:** {len(index)} images from {_shown_folder(index.root_spec)}",
    ]
    metrics, where = read_metrics(source) if str(source) else ({}, "")
    if not metrics:
        return "\n".join(lines + ["", "No metrics recorded for this checkpoint."])
    lines += [
        "",
        f"**Metrics** (from the checkpoint's {where}):",
        "",
        "| metric | on | value |",
        "|---|---|---|",
    ]
    for k, v in metrics.items():
        name, on = metric_label(k)
        lines.append(f"| {name} | {on} | {v:.3f} |" if isinstance(v, float) else f"| {name} | {on} | {v} |")
    return "\n".join(lines)
