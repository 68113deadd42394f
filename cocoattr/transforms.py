"""Pixels in: decoded RGB images -> the normalised tensor a checkpoint's backbone expects.

One implementation for prediction, the index, evaluation and the training workers (which must
pickle `preprocess`, so these are plain functions). The whole image is squashed to the square
input: nothing is cropped away, and attention maps line up with the full picture.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F


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
    the inference backbone wants, with no transposing copy."""
    if not batch.flags.writeable:  # a view of a PIL image; torch.from_numpy wants to own writes
        batch = batch.copy()
    return normalize_pixels(torch.from_numpy(batch), *normalize_constants(mean, std))


def normalize_constants(mean: np.ndarray, std: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (1, 3, 1, 1) float32, with pixel * scale + shift = (pixel / 255 - mean) / std."""
    scale = torch.from_numpy((1.0 / (255.0 * np.asarray(std, np.float32))).astype(np.float32)).view(
        1, 3, 1, 1
    )
    shift = torch.from_numpy((-np.asarray(mean, np.float32) / np.asarray(std, np.float32)).astype(np.float32))
    return scale, shift.view(1, 3, 1, 1)


def pixel_planes(pixels: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 tensor -> (B, 3, H, W) float 0..255: the one transpose and cast every
    normalisation starts from (the serving graph shares it between the backbone and the detector)."""
    return pixels.permute(0, 3, 1, 2).float()


def normalize_pixels(pixels: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 tensor -> (B, 3, H, W) float: `normalize` on a tensor, and the first
    step of the exported serving graph (`cocoattr.engine`). A multiply, then an add: two
    roundings as onnxruntime makes them, not `torch.addcmul`'s fused one, so the engine's input
    is bit for bit this one (the colour channels threshold it: tests/test_transforms.py)."""
    return pixel_planes(pixels) * scale + shift


def preprocess(images: Sequence[Image.Image], size: int, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """RGB PIL images -> normalised (B, 3, size, size) float tensor (mean/std shaped (3, 1, 1)).

    A plain function so training workers (which must pickle it) use exactly this code."""
    return normalize(np.stack([resize_rgb(image, size) for image in images]), mean, std)
