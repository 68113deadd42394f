"""Model + preprocessing + batching: the one way images become `AttributeOutput`s.

The CLI, the index builder and the app all call `Predictor`, so a checkpoint behaves the
same everywhere. Preprocessing squashes the whole image to the model's square input
(nothing is cropped away, and the attention maps line up with the full picture).
"""

from __future__ import annotations

import copy
import functools
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from cocoattr.errors import UserError
from cocoattr.images import ImageInput, load_image
from cocoattr.model import AttributeModel, AttributeOutput


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d in an nn.Sequential into
    that conv (in place; returns `module`). Same function up to float rounding, one op fewer per
    layer: on CPU the unfused BatchNorm was ~15% of MobileNetV2's time. Subclasses of
    BatchNorm2d (e.g. timm's BatchNormAct2d, which also applies an activation) are left alone."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:], strict=False):
            conv, bn = seq._modules[a], seq._modules[b]
            if (
                type(conv) is nn.Conv2d
                and type(bn) is nn.BatchNorm2d
                and bn.running_mean is not None
                and not (conv.training or bn.training)
            ):
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = nn.Identity()
    return module


@functools.cache
def _fused_conv_op():  # noqa: ANN202 - a torch op, or None where this torch build lacks it
    try:
        return torch.ops.mkldnn._convolution_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


class ConvAct(nn.Module):
    """Conv2d then ReLU/ReLU6 as one oneDNN call, the activation applied as a post-op while the
    output is still in cache (the op torch.compile's CPU backend emits). The separate in-place
    clamp of ReLU6 was ~10% of MobileNetV2's CPU time; fused, the body runs 10-20% faster at
    batch 16. The same function exactly; autograd, CUDA and non-channels_last input take the
    plain two-op path."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module) -> None:
        super().__init__()
        self.conv, self.act = conv, act
        self.attr, self.scalars = (
            ("relu", []) if isinstance(act, nn.ReLU) else ("hardtanh", [act.min_val, act.max_val])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, op = self.conv, _fused_conv_op()
        if (op is None or torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32
                or not x.is_contiguous(memory_format=torch.channels_last)):  # fmt: skip
            return self.act(c(x))
        return op(x, c.weight, c.bias, c.padding, c.stride, c.dilation, c.groups, self.attr, self.scalars, "")


def fuse_conv_activation(module: nn.Module) -> nn.Module:
    """Replace each Conv2d that an nn.Sequential follows (past Identity, e.g. a folded
    BatchNorm) with ReLU, ReLU6 or Hardtanh by a `ConvAct` (in place; returns `module`)."""
    if _fused_conv_op() is None:
        return module
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        live = [(name, m) for name, m in seq._modules.items() if not isinstance(m, nn.Identity)]
        for (a, conv), (b, act) in zip(live, live[1:], strict=False):
            if (type(conv) is nn.Conv2d and isinstance(conv.padding, tuple) and conv.padding_mode == "zeros"
                    and type(act) in (nn.ReLU, nn.ReLU6, nn.Hardtanh)):  # fmt: skip
                seq._modules[a], seq._modules[b] = ConvAct(conv, act), nn.Identity()
    return module


def resize_rgb(image: Image.Image, size: int) -> np.ndarray:
    """The whole image squashed to (size, size, 3) uint8 by antialiased bilinear resampling.

    torch's uint8 kernel (the one torchvision's v2 transforms use) gives Pillow's result to
    within 2 grey levels (mean 0.01) at ~3x its speed: 1.7 -> 0.55 ms for a 512 px photo. It
    releases the GIL, so `Predictor` runs it in its decode threads. Sources 6x the target or
    more (big PNGs; JPEGs arrive draft-decoded) stay with Pillow, whose box pre-reduction
    (`reducing_gap=3`) is faster there: 20 vs 54 ms for 12 MP."""
    if max(image.width, image.height) >= 6 * size:
        return np.asarray(image.resize((size, size), Image.BILINEAR, reducing_gap=3.0))
    pixels = np.array(image)  # a writable copy; torch must not see Pillow's read-only buffer
    if pixels.shape[:2] == (size, size):
        return pixels
    x = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)  # NCHW view of HWC: channels_last
    with torch.inference_mode():
        out = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[0].permute(1, 2, 0).contiguous().numpy()  # torch returns NCHW; back to HWC


def normalize(batch: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> normalised float (B, 3, H, W) in channels_last memory: the layout
    the inference backbone wants, in one pass and with no transposing copy."""
    if not batch.flags.writeable:  # a view of a PIL image; torch.from_numpy wants to own writes
        batch = batch.copy()
    pixels = torch.from_numpy(batch).permute(0, 3, 1, 2)
    scale = torch.from_numpy((1.0 / (255.0 * std)).astype(np.float32)).view(1, 3, 1, 1)
    shift = torch.from_numpy((-mean / std).astype(np.float32)).view(1, 3, 1, 1)
    return torch.addcmul(shift, pixels.float(), scale)


def preprocess(images: Sequence[Image.Image], size: int, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """RGB PIL images -> normalised (B, 3, size, size) float tensor (mean/std shaped (3, 1, 1)).

    A plain function so training workers (which must pickle it) use exactly this code."""
    return normalize(np.stack([resize_rgb(image, size) for image in images]), mean, std)


def inference_copy(backbone: nn.Module) -> nn.Module:
    """An eval-mode copy of `backbone` with BatchNorm folded into its convolutions, ReLU6 fused
    into them and channels_last weights (~2x faster on CPU); the original is untouched. Feed it
    channels_last input. Used by prediction and by the training feature cache."""
    tensors = [*backbone.parameters(), *backbone.buffers()]
    shared = {id(t): t for t in tensors if t.ndim < 4}  # copy only the conv weights
    fast = fuse_conv_activation(fold_batchnorm(copy.deepcopy(backbone, memo=shared).eval()))
    return fast.to(memory_format=torch.channels_last)


@dataclass
class Prediction:
    """One image's result, detached from torch: what callers serialise or draw."""

    probs: np.ndarray  # (A,)
    maps: np.ndarray  # (A, h, w)
    embedding: np.ndarray  # (D,)


class Predictor:
    """A checkpoint ready for CPU inference: decode threads, the fused inference backbone and
    the cached head. In your own process, call `cocoattr.allocator.tune_malloc()` first, as
    the CLI and the app do: at batch 16 it is worth 1.3-1.6x (`bench/`)."""

    def __init__(
        self, model: AttributeModel, batch_size: int = 16, threads: int | None = None, decode_workers: int = 2
    ) -> None:
        self.model = model.eval()
        self.batch_size = batch_size
        self.decode_workers = max(1, decode_workers)
        if threads:
            torch.set_num_threads(threads)
        spec = model.backbone
        self.size = model.image_size
        self.mean = spec.mean.view(3, 1, 1).numpy()
        self.std = spec.std.view(3, 1, 1).numpy()
        self._fast: tuple[tuple, nn.Module] | None = None  # (weights' versions, inference backbone)
        self._decoder: ThreadPoolExecutor | None = None

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
        return preprocess(images, self.size, self.mean, self.std)

    def inference_backbone(self) -> nn.Module:
        """`model.backbone` prepared for CPU inference: a copy (the model itself is untouched) with
        BatchNorm folded into the convolutions and channels_last weights, ~2-3x faster than eager
        NCHW on 2 cores. Rebuilt if the model's backbone weights are changed in place."""
        backbone = self.model.backbone
        tensors = [*backbone.parameters(), *backbone.buffers()]
        key = (id(backbone), *(t._version for t in tensors), *(t.data_ptr() for t in tensors))
        if self._fast is None or self._fast[0] != key:
            self._fast = (key, inference_copy(backbone))
        return self._fast[1]

    def forward(self, images: Sequence[Image.Image]) -> AttributeOutput:
        """Decoded RGB images -> model output (inference mode, fast backbone)."""
        return self._forward_pixels(np.stack([resize_rgb(image, self.size) for image in images]))

    @torch.inference_mode()
    def _forward_pixels(self, pixels: np.ndarray) -> AttributeOutput:
        parts = self.inference_backbone().parts(normalize(pixels, self.mean, self.std))
        return self.model.forward_parts(parts)

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
