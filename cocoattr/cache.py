"""Recent predictions by file content: the app's Predict and Heatmaps tabs and its API share
them, so moving a slider, switching tab or uploading the same photo again never re-runs the model.

Keys are the file's sha256 (`cocoattr.index.file_sha256`, the one content hash): gradio
re-writes every upload to a new temporary file, so a path or mtime would always miss.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from cocoattr import viz
from cocoattr.images import load_image
from cocoattr.index import file_sha256

if TYPE_CHECKING:
    from cocoattr.predictor import Prediction

DISPLAY_SIDE = 768  # cached display copies are at most this size (the API draws on the full image)


@dataclass(frozen=True)
class Cached:
    shown: Image.Image  # a copy at most `display_side` pixels on its longer side
    prediction: Prediction
    size: tuple[int, int]  # the original (W, H)


def content_key(path: str | os.PathLike) -> str:
    """The file's sha256; an unreadable file gets a key of its own (loading it then says why)."""
    try:
        return file_sha256(path)
    except OSError:
        return f"unreadable:{path}"


class PredictionCache:
    """The last `size` predictions, by file content; `predict` runs the model on a loaded image."""

    def __init__(
        self, predict: Callable[[Image.Image], Prediction], size: int = 32, display_side: int = DISPLAY_SIDE
    ) -> None:
        self.predict, self.size, self.display_side = predict, size, display_side
        self._items: OrderedDict[str, Cached] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, path: str | os.PathLike) -> Cached:
        """The cached prediction for an image file, computed on a miss; raises UserError for a bad file."""
        key = content_key(path)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        image = load_image(path, name=Path(path).name)  # the name only: no server paths in messages
        item = Cached(viz.display_copy(image, self.display_side), self.predict(image), image.size)
        with self._lock:
            self._items[key] = item
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return item
