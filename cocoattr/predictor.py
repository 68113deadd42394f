"""Model + preprocessing + batching: the one way images become `AttributeOutput`s.

The CLI, the index builder and the app all call `Predictor`, so a checkpoint behaves the
same everywhere. Preprocessing squashes the whole image to the model's square input
(nothing is cropped away, and the attention maps line up with the full picture).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from cocoattr.errors import UserError
from cocoattr.images import ImageInput, load_image
from cocoattr.model import AttributeModel, AttributeOutput


@dataclass
class Prediction:
    """One image's result, detached from torch: what callers serialise or draw."""

    probs: np.ndarray  # (A,)
    maps: np.ndarray  # (A, h, w)
    embedding: np.ndarray  # (D,)


class Predictor:
    def __init__(self, model: AttributeModel, batch_size: int = 16, threads: int | None = None) -> None:
        self.model = model.eval()
        self.batch_size = batch_size
        if threads:
            torch.set_num_threads(threads)
        spec = model.backbone
        self.size = model.image_size
        self.mean = spec.mean.view(3, 1, 1).numpy()
        self.std = spec.std.view(3, 1, 1).numpy()

    @classmethod
    def from_checkpoint(cls, source: str | os.PathLike | None = None, **kwargs) -> Predictor:
        from cocoattr.hub import load_model

        return cls(load_model(source), **kwargs)

    @property
    def attributes(self) -> list[str]:
        return self.model.attributes

    @property
    def attribute_types(self) -> list[str]:
        return self.model.attribute_types

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """RGB PIL images -> normalised (B, 3, S, S) float tensor."""
        batch = np.empty((len(images), 3, self.size, self.size), np.float32)
        for i, image in enumerate(images):
            if image.width * image.height > 4 * self.size * self.size:
                image = image.copy()
                image.draft("RGB", (2 * self.size, 2 * self.size))  # fast JPEG downscale on decode
            resized = image.resize((self.size, self.size), Image.BILINEAR, reducing_gap=3.0)
            batch[i] = np.asarray(resized, np.float32).transpose(2, 0, 1) / 255.0
        return torch.from_numpy((batch - self.mean) / self.std)

    @torch.inference_mode()
    def forward(self, images: Sequence[Image.Image]) -> AttributeOutput:
        return self.model(self.preprocess(images))

    def predict(self, images: Sequence[ImageInput]) -> list[Prediction]:
        """Predictions for already-valid inputs; a bad one raises `UserError`."""
        loaded = [load_image(im) for im in images]
        out: list[Prediction] = []
        for start in range(0, len(loaded), self.batch_size):
            o = self.forward(loaded[start : start + self.batch_size])
            probs, maps, emb = o.probs.numpy(), o.maps.numpy(), o.embedding.numpy()
            out += [Prediction(probs[i], maps[i], emb[i]) for i in range(len(probs))]
        return out

    def predict_one(self, image: ImageInput) -> Prediction:
        return self.predict([image])[0]

    def predict_files(
        self, paths: Iterable[str | os.PathLike]
    ) -> Iterator[tuple[str, Prediction | UserError]]:
        """Yield (path, prediction or the error that skipped it), in order, batching good files.

        A bad file never stops the batch: callers report it and carry on.
        """
        pending: list[tuple[str, Image.Image]] = []
        for path in paths:
            try:
                pending.append((str(path), load_image(path)))
            except UserError as e:
                yield from self._flush(pending)
                pending = []
                yield str(path), e
                continue
            if len(pending) == self.batch_size:
                yield from self._flush(pending)
                pending = []
        yield from self._flush(pending)

    def _flush(self, pending: list[tuple[str, Image.Image]]) -> Iterator[tuple[str, Prediction]]:
        if not pending:
            return
        o = self.forward([im for _, im in pending])
        probs, maps, emb = o.probs.numpy(), o.maps.numpy(), o.embedding.numpy()
        for i, (path, _) in enumerate(pending):
            yield path, Prediction(probs[i], maps[i], emb[i])
