"""Heatmap faithfulness: does an attribute's map point at where the attribute is?

Two numbers per (image, attribute) with a ground-truth region (a mask: boxes, COCO polygons,
panoptic segments), each also for a centre-Gaussian baseline map so a figure can be read:

- mass in mask: the share of the map's total inside the mask. A uniform map scores the mask's
  area fraction, which is reported beside it.
- pointing game (Zhang et al., "Top-down neural attention by excitation backprop", 2016): a hit
  when the map's peak lies inside the mask or within `POINTING_TOLERANCE_PX` (15) pixels of it.

The map scored is the one the Heatmaps tab draws (`viz.upsample_map`: bilinear to the image's
own size, min-max normalised), so the figures describe what a user looks at. Min-max drops the
uniform floor of the attention weights; on the raw weights every mass would sit nearer the
area fraction. This module holds the arithmetic and the inputs' validation only: reading data
sets and running a checkpoint live in `cocoattr.evaluation`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from cocoattr.errors import UserError
from cocoattr.viz import upsample_map
from cocoattr.vocab import TYPES, Vocabulary

POINTING_TOLERANCE_PX = 15  # the pointing game's tolerance in Zhang et al. 2016
CENTRE_SIGMA = 0.25  # the baseline's standard deviation, as a fraction of each side


@dataclass(frozen=True)
class HeatmapTarget:
    """One image and where its attributes are. `regions` builds the (H, W) bool masks on demand,
    in the frame of `size` = (W, H), so a whole COCO split's targets fit in memory."""

    path: Path
    size: tuple[int, int]
    regions: Callable[[], dict[str, np.ndarray]]


@dataclass(frozen=True)
class RegionScore:
    """The figures for one (image, attribute): the model's map and the centre baseline's."""

    image: str
    attribute: str
    type: str
    area: float  # the mask's share of the image: a uniform map's mass in mask
    mass: float
    hit: bool
    baseline_mass: float
    baseline_hit: bool


def heatmap_field(attn: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (h, w) attention map as the Heatmaps tab shows it on an image of `size` = (W, H)."""
    return upsample_map(attn, size)


@lru_cache(maxsize=8)
def centre_gaussian(size: tuple[int, int], sigma: float = CENTRE_SIGMA) -> np.ndarray:
    """The baseline map: a Gaussian at the image centre, std `sigma` x each side, min-max
    normalised like the model's maps; read-only because it is cached."""
    w, h = size
    xs = ((np.arange(w) + 0.5) / w - 0.5) / sigma
    ys = ((np.arange(h) + 0.5) / h - 0.5) / sigma
    g = np.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2)).astype(np.float32)
    g = (g - g.min()) / (g.max() - g.min())
    g.flags.writeable = False
    return g


def mass_in_mask(field: np.ndarray, mask: np.ndarray) -> float:
    """The share of a non-negative map's total that falls inside `mask`; a map with no mass
    at all (a flat one after min-max) is spread evenly, so it scores the area fraction."""
    field, mask = _check(field, mask)
    total = float(field.sum(dtype=np.float64))
    if total <= 0.0:
        return float(mask.mean())
    return float(field[mask].sum(dtype=np.float64)) / total


def pointing_hit(field: np.ndarray, mask: np.ndarray, tolerance: float = POINTING_TOLERANCE_PX) -> bool:
    """Whether the map's peak (the first maximum in row order) lies in `mask` or within
    `tolerance` pixels of it. A flat map has no peak and misses."""
    field, mask = _check(field, mask)
    if float(field.max()) <= float(field.min()):
        return False
    y, x = np.unravel_index(int(np.argmax(field)), field.shape)
    r = int(math.floor(tolerance))
    y0, x0 = max(0, y - r), max(0, x - r)
    window = mask[y0 : y + r + 1, x0 : x + r + 1]
    if not window.any():
        return False
    wy, wx = np.nonzero(window)
    return bool(((wy + y0 - y) ** 2 + (wx + x0 - x) ** 2 <= tolerance**2).any())


def _check(field: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    field, mask = np.asarray(field), np.asarray(mask, dtype=bool)
    if field.ndim != 2 or field.shape != mask.shape:
        raise ValueError(f"map {field.shape} and mask {mask.shape} must be the same (H, W)")
    return field, mask


def score_region(
    attn: np.ndarray, mask: np.ndarray, *, image: str, attribute: str, type_: str
) -> RegionScore:
    """One (image, attribute): the model's (h, w) map against `mask` (H, W), and the baseline."""
    mask = np.asarray(mask, dtype=bool)
    size = (mask.shape[1], mask.shape[0])
    field, base = heatmap_field(attn, size), centre_gaussian(size)
    return RegionScore(
        image=image, attribute=attribute, type=type_, area=float(mask.mean()),
        mass=mass_in_mask(field, mask), hit=pointing_hit(field, mask),
        baseline_mass=mass_in_mask(base, mask), baseline_hit=pointing_hit(base, mask),
    )  # fmt: skip


def _mean(scores: Sequence[RegionScore]) -> dict:
    n = len(scores)
    avg = lambda get: round(sum(get(s) for s in scores) / n, 4)  # noqa: E731
    return {
        "n": n,
        "images": len({s.image for s in scores}),
        "mass_in_mask": avg(lambda s: s.mass),
        "mass_in_mask_baseline": avg(lambda s: s.baseline_mass),
        "area_fraction": avg(lambda s: s.area),
        "pointing": avg(lambda s: float(s.hit)),
        "pointing_baseline": avg(lambda s: float(s.baseline_hit)),
    }


def summarise(scores: Iterable[RegionScore]) -> dict:
    """Means over (image, attribute) pairs: overall, per vocabulary type (vocabulary order), per
    attribute (most pairs first)."""
    scores = list(scores)
    if not scores:
        raise UserError("no (image, attribute) pairs with a region to score")
    by_type: dict[str, list[RegionScore]] = {}
    by_attr: dict[str, list[RegionScore]] = {}
    for s in scores:
        by_type.setdefault(s.type, []).append(s)
        by_attr.setdefault(s.attribute, []).append(s)
    order = [t for t in TYPES if t in by_type] + sorted(set(by_type) - set(TYPES))
    attrs = sorted(by_attr, key=lambda a: (-len(by_attr[a]), a))
    return {
        "protocol": {
            "map": "viz.upsample_map: bilinear to the image size, min-max normalised",
            "pointing_tolerance_px": POINTING_TOLERANCE_PX,
            "baseline": f"centre Gaussian, std {CENTRE_SIGMA} x each side",
            "area_fraction": "a uniform map's mass in mask",
        },
        "overall": _mean(scores),
        "by_type": {t: _mean(by_type[t]) for t in order},
        "by_attribute": {a: _mean(by_attr[a]) | {"type": by_attr[a][0].type} for a in attrs},
    }


def format_summary(summary: Mapping, top: int = 15) -> str:
    """The table `evaluate --heatmaps` prints: overall, each type, the `top` attributes with most pairs."""
    head = f"{'':<22}{'pairs':>6}{'mass':>8}{'centre':>8}{'area':>8}{'point':>8}{'centre':>8}"
    lines = [
        f"heatmap faithfulness ({summary['overall']['images']} images): mass in mask and pointing game "
        f"(peak within {POINTING_TOLERANCE_PX} px), model vs centre Gaussian; area = a uniform map's mass",
        head,
    ]

    def row(label: str, m: Mapping) -> str:
        return (f"{label:<22}{m['n']:>6}{m['mass_in_mask']:>8.3f}{m['mass_in_mask_baseline']:>8.3f}"
                f"{m['area_fraction']:>8.3f}{m['pointing']:>8.3f}{m['pointing_baseline']:>8.3f}")  # fmt: skip

    lines.append(row("overall", summary["overall"]))
    lines += [row(f"type {t}", m) for t, m in summary["by_type"].items()]
    attrs = list(summary["by_attribute"].items())
    lines += [row(f"  {a}", m) for a, m in attrs[:top]]
    if len(attrs) > top:
        lines.append(f"  ... {len(attrs) - top} more attributes in --json")
    return "\n".join(lines)


# ------------------------------------------------------------------------- ground truth inputs


def box_mask(boxes: Iterable[Sequence[float]], size: tuple[int, int]) -> np.ndarray:
    """The union of [x0, y0, x1, y1] boxes (pixels, x1/y1 exclusive edges) as an (H, W) mask of
    `size` = (W, H): a pixel is inside when its centre is."""
    w, h = size
    mask = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        c0, c1 = max(0, math.ceil(x0 - 0.5)), min(w, math.ceil(x1 - 0.5))
        r0, r1 = max(0, math.ceil(y0 - 0.5)), min(h, math.ceil(y1 - 0.5))
        mask[r0:r1, c0:c1] = True
    return mask


def instance_mask(ann: Mapping, size: tuple[int, int]) -> np.ndarray:
    """One COCO instance annotation (polygons, RLE, or only a box) as an (H, W) bool mask."""
    from pycocotools import mask as mask_utils

    w, h = size
    seg = ann.get("segmentation")
    if not seg:
        x, y, bw, bh = (float(v) for v in ann["bbox"])
        return box_mask([(x, y, x + bw, y + bh)], size)
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = seg
    return mask_utils.decode(rle).astype(bool)


def category_attributes(vocab: Vocabulary) -> dict[str, list[str]]:
    """COCO-80 category name -> the vocabulary attributes that *are* it: the entries of
    `vocab/coco80.json` (the detector's evidence table) with weight 1, less scene attributes
    (a bed implies `indoor`, but the bed's box is not where `indoor` is)."""
    data = json.loads(resources.files("cocoattr").joinpath("vocab/coco80.json").read_text("utf-8"))
    return {
        c["name"]: [
            a for a, p in c["attributes"].items() if p == 1 and a in vocab and vocab[a].type != "scene"
        ]
        for c in data["categories"]
    }


def read_boxes(
    path: Path, vocab: Vocabulary, sizes: Mapping[str, tuple[int, int]]
) -> dict[str, dict[str, list]]:
    """A boxes file, `{"images": {file name: {attribute: [[x0, y0, x1, y1], ...]}}}` in each photo's
    own pixels, checked against the vocabulary and `sizes` (file name -> (W, H)); a bad entry is
    one UserError line naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, dict):
        raise UserError(f"{path}: expected {{'images': {{file name: {{attribute: [boxes]}}}}}}")
    for name, attrs in images.items():
        if name not in sizes:
            raise UserError(f"{path}: {name!r} is not a gallery image")
        if not isinstance(attrs, dict):
            raise UserError(f"{path}: {name}: expected {{attribute: [[x0, y0, x1, y1], ...]}}")
        w, h = sizes[name]
        for attr, boxes in attrs.items():
            if attr not in vocab:
                raise UserError(f"{path}: {name}: {attr!r} is not a vocabulary attribute")
            if not isinstance(boxes, list) or not boxes:
                raise UserError(f"{path}: {name}: {attr}: expected a non-empty list of boxes")
            for box in boxes:
                ok = (isinstance(box, list) and len(box) == 4
                      and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box))  # fmt: skip
                if not ok or not (0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h):
                    raise UserError(
                        f"{path}: {name}: {attr}: box {box} is not [x0, y0, x1, y1] with "
                        f"0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h}"
                    )
    return images
