"""Drawing what the model saw: attention-map overlays and per-type bar data.

Kept apart from the app so the CLI, notebooks and tests render maps the same way, and so
the app stays UI-only. Maps are the model's own cross-attention weights (`Prediction.maps`,
one (h, w) grid per attribute, summing to 1); they are upsampled bilinearly to the image
size and min-max normalised per map, because raw attention mass shrinks as the grid grows
and only the relative layout within one map is meaningful.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image

from cocoattr.vocab import TYPES

DEFAULT_CMAP = "jet"
CMAPS = ("jet", "inferno", "viridis", "magma", "turbo", "coolwarm")


@lru_cache(maxsize=16)
def _lut(name: str) -> np.ndarray:
    """(256, 3) uint8 lookup table for a matplotlib colormap (headless-safe, no pyplot)."""
    from matplotlib import colormaps

    try:
        cmap = colormaps[name]
    except KeyError:
        raise ValueError(f"unknown colormap {name!r}; try one of {', '.join(CMAPS)}") from None
    return (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


def upsample_map(attn: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) attention grid -> (H, W) float32 in [0, 1] for an image of `size` = (W, H).

    Bilinear, so a 9x9 grid becomes a smooth field rather than blocks; a constant map
    (no spatial preference) becomes all zeros instead of dividing by zero.
    """
    a = np.asarray(attn, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"expected an (h, w) map, got shape {a.shape}")
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    field = Image.fromarray(a).resize(size, Image.BILINEAR)
    return np.clip(np.asarray(field, dtype=np.float32), 0.0, 1.0)


def overlay(
    image: Image.Image, attn: np.ndarray, opacity: float = 0.5, cmap: str = DEFAULT_CMAP
) -> Image.Image:
    """The image with `attn` drawn over it as a colormap heatmap, same size as `image`.

    Opacity scales with the map's value too, so cold regions keep the photo visible and
    the hot spot stands out: alpha = opacity * (0.35 + 0.65 * value).
    """
    rgb = image.convert("RGB")
    field = upsample_map(attn, rgb.size)
    heat = _lut(cmap)[(field * 255).astype(np.uint8)].astype(np.float32)
    alpha = (float(np.clip(opacity, 0.0, 1.0)) * (0.35 + 0.65 * field))[..., None]
    base = np.asarray(rgb, dtype=np.float32)
    return Image.fromarray((base * (1.0 - alpha) + heat * alpha).round().astype(np.uint8))


def display_copy(image: Image.Image, max_side: int = 768) -> Image.Image:
    """A downscaled copy for on-screen overlays: blending a 24 MP photo per attribute is slow."""
    if max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    return image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR
    )


def top_attributes(probs: np.ndarray, names: Sequence[str], k: int = 10) -> list[tuple[str, float]]:
    """The k most probable attributes, highest first (ties keep vocabulary order)."""
    order = np.argsort(-np.asarray(probs), kind="stable")[: max(0, k)]
    return [(names[i], float(probs[i])) for i in order]


def bars_by_type(
    probs: np.ndarray,
    names: Sequence[str],
    types: Sequence[str],
    top_k: int = 5,
    threshold: float = 0.0,
) -> dict[str, dict[str, float]]:
    """{type: {attribute: probability}} with each type's top_k at or above threshold.

    Types appear in vocabulary order (color, material, ...); a type with nothing above the
    threshold maps to an empty dict so a UI can still show its (empty) panel.
    """
    probs = np.asarray(probs, dtype=np.float64)
    order = [t for t in TYPES if t in set(types)] + sorted(set(types) - set(TYPES))
    out: dict[str, dict[str, float]] = {}
    for type_ in order:
        idx = [i for i, t in enumerate(types) if t == type_ and probs[i] >= threshold]
        idx.sort(key=lambda i: -probs[i])
        out[type_] = {names[i]: round(float(probs[i]), 4) for i in idx[: max(0, top_k)]}
    return out
