"""Model + preprocessing + batching: the one way images become `Prediction`s.

The CLI, the index builder, evaluation and the app all call `Predictor`, so a checkpoint
behaves the same everywhere: decode threads ahead of the model, `cocoattr.transforms` for the
pixels, `cocoattr.engine` for the forward pass (onnxruntime on the CPU, PyTorch on CUDA).
"""

from __future__ import annotations

import functools
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.ops import batched_nms

from cocoattr.checkpoints import load_model
from cocoattr.detector import COCO80, NMS_IOU
from cocoattr.engine import serving_engine
from cocoattr.errors import UserError
from cocoattr.images import ImageInput, load_image
from cocoattr.model import AttributeModel, AttributeOutput
from cocoattr.transforms import preprocess, resize_rgb
from cocoattr.viz import top_attributes

# An object's category is the detector's unless the attribute head, reading the evidence inside
# its box, disagrees: the detector's class (where the vocabulary names it) below AGREE and another
# named COCO-80 class at OVERRULE or more. NanoDet calls the gallery's dalmatian a giraffe (0.56)
# and Chelsea the cat a dog (0.46); inside those boxes `dog` reads 0.91 and `cat` 0.91.
AGREE, OVERRULE = 0.5, 0.8


def object_label(category: str, detector_category: str, score: float) -> str:
    """How a box is captioned (app, CLI): "person 0.75", or "dog (detector: giraffe 0.56)"."""
    if category == detector_category:
        return f"{category} {score:.2f}"
    return f"{category} (detector: {detector_category} {score:.2f})"


@dataclass
class DetectedObject:
    """One object in an image: its box in the image's own pixels, COCO-80 category (see AGREE),
    the detector's score and class for the box, and the attribute probabilities read from inside it."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    category: str
    score: float
    probs: np.ndarray  # (A,)
    detector_category: str  # the detector's class; `category` differs when the head overruled it

    @property
    def label(self) -> str:
        return object_label(self.category, self.detector_category, self.score)

    def to_json(self, names: Sequence[str], top_k: int = 5) -> dict:
        """What the CLI's --json and the app's /objects give for it: the box (pixels, 0.1 px),
        category, score and its `top_k` most probable attributes (all when top_k <= 0), highest first."""
        k = int(top_k) if top_k and int(top_k) > 0 else len(names)
        return {
            "box": [round(float(v), 1) for v in self.box],
            "category": self.category,
            "detector_category": self.detector_category,
            "score": round(float(self.score), 4),
            "attributes": {n: round(p, 5) for n, p in top_attributes(self.probs, names, k)},
        }


@dataclass
class Prediction:
    """One image's result, detached from torch: what callers serialise or draw."""

    probs: np.ndarray  # (A,)
    maps: np.ndarray  # (A, h, w)
    embedding: np.ndarray  # (D,)
    objects: list[DetectedObject] | None = None  # filled by `predict_objects`


def _distinct(objects: list[DetectedObject]) -> list[DetectedObject]:
    """`objects` (best first) without those that, once overruled into the same category, repeat a
    better one's box: the detector's NMS is per class, so a cat it also called a dog had two boxes.
    The same torchvision NMS again, over the final categories; order kept."""
    if len(objects) < 2:
        return objects
    boxes = torch.tensor([o.box for o in objects], dtype=torch.float32)
    scores = torch.tensor([o.score for o in objects], dtype=torch.float32)
    categories = torch.tensor([COCO80.index(o.category) for o in objects])
    return [objects[i] for i in sorted(batched_nms(boxes, scores, categories, NMS_IOU).tolist())]


class Predictor:
    """A checkpoint ready for inference: decode threads, then the serving engine on `device`:
    "cpu" runs the exported graph on onnxruntime with `threads` intra-op threads (default: the
    core count), "cuda" runs PyTorch there."""

    def __init__(self, model: AttributeModel, batch_size: int = 16, threads: int | None = None,
                 decode_workers: int = 2, device: str = "cpu") -> None:  # fmt: skip
        self.model = model.eval()
        self.batch_size = batch_size
        self.decode_workers = max(1, decode_workers)
        self.device = device
        if threads:
            torch.set_num_threads(threads)
        spec = model.backbone
        self.size = model.image_size
        self.mean = spec.mean.view(3, 1, 1).numpy()
        self.std = spec.std.view(3, 1, 1).numpy()
        self.engine = serving_engine(model, device, threads)
        self._decoder: ThreadPoolExecutor | None = None

    @classmethod
    def from_checkpoint(cls, source: str | os.PathLike | None = None, **kwargs) -> Predictor:
        return cls(load_model(source), **kwargs)

    @property
    def attributes(self) -> list[str]:
        return self.model.attributes

    @property
    def attribute_types(self) -> list[str]:
        return self.model.attribute_types

    @property
    def has_detector(self) -> bool:
        """Whether `predict_objects` works: the checkpoint has the COCO-80 detector."""
        return self.model.backbone.detector is not None

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Decoded RGB images -> the normalised (B, 3, S, S) batch the PyTorch model takes."""
        return preprocess(images, self.size, self.mean, self.std)

    def pixels(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Decoded RGB images -> the (B, S, S, 3) uint8 batch the serving engine takes."""
        return np.stack([resize_rgb(image, self.size) for image in images])

    def forward(self, images: Sequence[Image.Image]) -> AttributeOutput:
        """Decoded RGB images -> model output (the serving engine)."""
        return self._forward_pixels(self.pixels(images))

    def _forward_pixels(self, pixels: np.ndarray) -> AttributeOutput:
        return self.engine(pixels)

    def _prepare(self, image: ImageInput) -> np.ndarray:
        """Decode and resize one input: the per-image half of predict, run in decode threads."""
        return resize_rgb(load_image(image, min_side=2 * self.size), self.size)

    def _decode_pool(self) -> ThreadPoolExecutor:
        if self._decoder is None:
            self._decoder = ThreadPoolExecutor(self.decode_workers, thread_name_prefix="cocoattr-decode")
        return self._decoder

    def load_pixels(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Decode and resize inputs into one (N, size, size, 3) uint8 array; a bad one raises
        `UserError`. Several are done by `decode_workers` threads (Pillow releases the GIL): on
        2 cores that nearly halves the ~3 ms per photo spent before the backbone."""
        images = list(images)
        if len(images) > 1 and self.decode_workers > 1:
            pixels = list(self._decode_pool().map(self._prepare, images))
        else:
            pixels = [self._prepare(image) for image in images]
        return np.stack(pixels) if pixels else np.empty((0, self.size, self.size, 3), np.uint8)

    def predict(self, images: Sequence[ImageInput]) -> list[Prediction]:
        """Predictions for already-valid inputs; a bad one raises `UserError`."""
        pixels = self.load_pixels(images)
        out: list[Prediction] = []
        for start in range(0, len(pixels), self.batch_size):
            out += self._predictions(pixels[start : start + self.batch_size])
        return out

    def _predictions(self, pixels: np.ndarray) -> list[Prediction]:
        o = self._forward_pixels(pixels)
        probs, maps, emb = o.probs.numpy(), o.maps.numpy(), o.embedding.numpy()
        return [Prediction(probs[i], maps[i], emb[i]) for i in range(len(probs))]

    def predict_objects(self, images: Sequence[ImageInput], score_threshold: float = 0.35,
                        max_objects: int = 10) -> list[Prediction]:  # fmt: skip
        """Predictions with `objects` filled: boxes, categories and per-object attributes. Images
        are decoded at full size (no JPEG draft), so boxes are in the image's own pixels."""
        out: list[Prediction] = []
        for start in range(0, len(images), self.batch_size):
            chunk = [load_image(image) for image in images[start : start + self.batch_size]]
            o, found = self.engine.with_objects(self.pixels(chunk), score_threshold, max_objects)
            for i, (image, objects) in enumerate(zip(chunk, found, strict=True)):
                scale = np.array([image.width, image.height] * 2, np.float32)
                probs = torch.sigmoid(objects.logits).numpy()
                detected = [
                    DetectedObject(
                        tuple(float(v) for v in box * scale),
                        self.agreed_category(COCO80[int(label)], probs[k]),
                        float(score),
                        probs[k],
                        COCO80[int(label)],
                    )  # fmt: skip
                    for k, (box, score, label) in enumerate(
                        zip(objects.boxes.numpy(), objects.scores, objects.labels, strict=True)
                    )
                ]
                out.append(
                    Prediction(
                        o.probs[i].numpy(), o.maps[i].numpy(), o.embedding[i].numpy(), _distinct(detected)
                    )
                )
        return out

    def agreed_category(self, detected: str, probs: np.ndarray) -> str:
        """`detected`, or the COCO-80 class the object's attributes overrule it with (AGREE); only
        classes the vocabulary names as categories count (the fruit `orange` is not the colour)."""
        index = self._category_index
        if detected not in index or probs[index[detected]] >= AGREE:
            return detected
        best = max(
            (c for c in COCO80 if c in index and c != detected), key=lambda c: probs[index[c]], default=None
        )
        return best if best is not None and probs[index[best]] >= OVERRULE else detected

    @functools.cached_property
    def _category_index(self) -> dict[str, int]:
        """{name: column} of the category-type attributes, for `agreed_category`."""
        return {n: i for i, (n, t) in enumerate(zip(self.attributes, self.attribute_types, strict=True))
                if t == "category"}  # fmt: skip

    def predict_one(self, image: ImageInput) -> Prediction:
        return self.predict([image])[0]

    def predict_files(
        self, paths: Iterable[str | os.PathLike]
    ) -> Iterator[tuple[str, Prediction | UserError]]:
        """Yield (path, prediction or the error that skipped it), in order, batching good files.

        A bad file never stops the batch: callers report it and carry on.
        """
        pending: list[tuple[str, np.ndarray]] = []
        for path, pixels in self._decoded(paths):
            if isinstance(pixels, UserError):
                yield from self._flush(pending)
                pending = []
                yield path, pixels
                continue
            pending.append((path, pixels))
            if len(pending) == self.batch_size:
                yield from self._flush(pending)
                pending = []
        yield from self._flush(pending)

    def _decoded(self, paths: Iterable[str | os.PathLike]) -> Iterator[tuple[str, np.ndarray | UserError]]:
        """Files decoded and resized by the decode threads ahead of the model, in order, at most
        two batches ahead (Pillow releases the GIL, so this overlaps with the forward pass)."""

        def load(path: str | os.PathLike) -> np.ndarray | UserError:
            try:
                return self._prepare(path)
            except UserError as e:
                return e

        pool, window = self._decode_pool(), deque()
        for path in paths:
            window.append((str(path), pool.submit(load, path)))
            if len(window) >= 2 * self.batch_size:
                done_path, future = window.popleft()
                yield done_path, future.result()
        while window:
            done_path, future = window.popleft()
            yield done_path, future.result()

    def _flush(self, pending: list[tuple[str, np.ndarray]]) -> Iterator[tuple[str, Prediction]]:
        if pending:
            paths = [path for path, _ in pending]
            yield from zip(paths, self._predictions(np.stack([p for _, p in pending])), strict=True)
