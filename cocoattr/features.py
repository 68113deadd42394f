"""The image side of the model: a backbone's feature grid plus fixed evidence channels.

`FeatureGrid` wraps a registered backbone and can append three fixed channel groups that make
zero-shot attributes possible without attribute data:
  * concepts: per-location ImageNet class probabilities (the classifier applied per cell);
  * colour:   per-cell fractions of the 11 basic colour terms plus brightness/saturation;
  * objects:  per-cell COCO-80 class evidence from a NanoDet detector (`cocoattr.detector`):
              each class's best score over the detector cells inside the grid cell, at every
              stride. The detector runs on the model's own input (squashed to `image_size`, the
              same pixels as the backbone; at 288 px its coarsest grid is the backbone's 9x9) and
              its boxes give the per-object results;
  * scene:    where colour and texture sit: sky (blue / white / grey, smooth, in the upper part),
              vegetation (green and textured), and how much of the frame the biggest detected
              object fills, of any class and of a person or animal (score x box area, one
              number each broadcast over the grid: close-ups, single objects and faces fill it).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from cocoattr.backbones import get_spec, load_imagenet_state
from cocoattr.detector import COCO80, MEAN_BGR, NUM_CLASSES, STD_BGR, NanoDet, NanoDetOutput, decode_boxes

COLOUR_TERMS = (
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
    "black",
    "white",
    "gray",
)
COLOUR_CHANNELS = COLOUR_TERMS + ("brightness", "saturation")
SCENE_CHANNELS = ("sky", "vegetation", "object_cover", "creature_cover")
# COCO-80 classes with a face: `creature_cover` is the frame share of the biggest of them
CREATURES = ("person", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe")
CREATURE_INDEX = [COCO80.index(c) for c in CREATURES]


def colour_names(rgb: torch.Tensor) -> torch.Tensor:
    """Per-pixel basic colour term (one-hot over 11) + brightness + saturation: (B, 13, H, W).

    Hand-set HSV rules, a fixed stem rather than learned weights: colour words are the
    one attribute family an ImageNet classifier knows nothing about.
    """
    r, g, b = rgb.unbind(1)
    v, _ = rgb.max(1)
    mn, _ = rgb.min(1)
    delta = v - mn
    s = torch.where(v > 0, delta / v.clamp_min(1e-6), torch.zeros_like(v))
    safe = delta.clamp_min(1e-6)
    h = (
        torch.where(v == r, ((g - b) / safe) % 6, torch.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4))
        * 60.0
    )
    achromatic = (s < 0.2) | (v < 0.2)
    # each term is one mask; stacked, not written into a buffer in place, so the function
    # exports to ONNX with its shapes known (`cocoattr.engine`)
    terms = {"black": v < 0.2, "white": (~(v < 0.2)) & (s < 0.2) & (v >= 0.75),
             "gray": (~(v < 0.2)) & (s < 0.2) & (v < 0.75)}  # fmt: skip
    chrom = ~achromatic
    brownish = chrom & (h >= 10) & (h < 50) & (v < 0.65)
    terms["brown"] = brownish
    rest = chrom & ~brownish
    terms["red"] = rest & ((h < 12) | (h >= 340)) & ~((s < 0.5) & (v > 0.8))
    terms["pink"] = rest & (((h >= 290) & (h < 340)) | (((h < 12) | (h >= 340)) & (s < 0.5) & (v > 0.8)))
    terms["orange"] = rest & (h >= 12) & (h < 40)
    terms["yellow"] = rest & (h >= 40) & (h < 70)
    terms["green"] = rest & (h >= 70) & (h < 170)
    terms["blue"] = rest & (h >= 170) & (h < 260)
    terms["purple"] = rest & (h >= 260) & (h < 290)
    stacked = torch.stack([terms[t] for t in COLOUR_TERMS], dim=1).to(rgb.dtype)
    return torch.cat([stacked, v.unsqueeze(1), s.unsqueeze(1)], dim=1)


def _max_pool(x: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """`adaptive_max_pool2d(x, (gh, gw))`; a plain max pool where the sizes divide (the same
    maximum, and it exports to ONNX: `cocoattr.engine`)."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h % gh == 0 and w % gw == 0:
        return F.max_pool2d(x, (h // gh, w // gw))
    return F.adaptive_max_pool2d(x, (gh, gw))


class FeatureGrid(nn.Module):
    """Image batch -> (B, C, h, w): backbone features [+ concepts] [+ colour] [+ objects]."""

    def __init__(self, name: str, concepts: bool = False, colour: bool = False, concept_temperature: float = 1.0,
                 objects: bool = False, scene: bool = False):  # fmt: skip
        super().__init__()
        spec = get_spec(name)
        self.name = name
        self.body, classifier = spec.build()
        self.classifier = classifier if concepts else None
        self.colour = colour
        self.concept_temperature = concept_temperature
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self.detector = NanoDet() if objects else None
        self.scene = scene
        # The detector's input from the backbone's: RGB in [0, 1] -> upstream's BGR mean/std.
        self.register_buffer("det_mean", torch.tensor(MEAN_BGR).view(1, 3, 1, 1) / 255, persistent=False)
        self.register_buffer("det_std", torch.tensor(STD_BGR).view(1, 3, 1, 1) / 255, persistent=False)
        self.feature_channels = spec.channels
        self.channels = (
            spec.channels
            + (classifier.out_features if concepts else 0)
            + (len(COLOUR_CHANNELS) if colour else 0)
            + (NUM_CLASSES if objects else 0)
            + (len(SCENE_CHANNELS) if scene else 0)
        )

    def load_imagenet(self) -> None:
        state = load_imagenet_state(self.name)
        if self.classifier is None:
            state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.startswith(("mean", "std", "det_", "detector."))]:
            raise RuntimeError(
                f"{self.name}: weights do not fit (missing {missing}, unexpected {unexpected})"
            )

    def _sampled_rgb(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """RGB in [0, 1] from every `step`-th pixel (>= 8x8 samples per grid cell): at 288 px a
        16th of the work of using every pixel, and no colour blending."""
        (gh, gw), (xh, xw) = (int(grid[0]), int(grid[1])), (int(x.shape[-2]), int(x.shape[-1]))
        step = max(1, min(xh // (8 * gh), xw // (8 * gw)))
        return (x[..., ::step, ::step] * self.std + self.mean).clamp(0, 1)

    @staticmethod
    def _cell_mean(t: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, gh, gw) means; a plain average pool when the cells tile the
        input exactly (the same mean, and it exports to ONNX for `cocoattr.engine`)."""
        (gh, gw), (sh, sw) = (int(grid[0]), int(grid[1])), (int(t.shape[-2]), int(t.shape[-1]))
        if sh % gh == 0 and sw % gw == 0:
            return F.avg_pool2d(t, (sh // gh, sw // gw))
        return F.adaptive_avg_pool2d(t, (gh, gw))

    def colour_channels(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Colour-term fractions per grid cell."""
        return self._cell_mean(colour_names(self._sampled_rgb(x, grid)), grid)

    def scene_channels(
        self, x: torch.Tensor, grid: tuple[int, int], detections: NanoDetOutput | None
    ) -> torch.Tensor:
        """(B, 4, h, w): sky and vegetation fractions per cell, and the frame share of the biggest
        detected object (max over the detector's boxes of score x area), of any class and of a
        person or animal. Fixed rules like the colour stem; on the gallery, sky alone ranks `sky`
        photos at AUC 0.89, vegetation ranks `plant` at 0.92, object cover ranks `close-up` at
        0.82 and `single` at 0.84, creature cover ranks `face` at 1.00 (9 photos with one)."""
        rgb = self._sampled_rgb(x, grid)
        terms = colour_names(rgb)
        idx = {t: i for i, t in enumerate(COLOUR_TERMS)}
        lum = rgb.mean(1, keepdim=True)
        grad = F.pad((lum[..., :, 1:] - lum[..., :, :-1]).abs(), (0, 1)) + F.pad(
            (lum[..., 1:, :] - lum[..., :-1, :]).abs(), (0, 0, 0, 1)
        )
        smooth = torch.exp(-F.avg_pool2d(grad, 3, 1, 1) / 0.04)[:, 0]  # 1 on flat areas, ~0 on texture
        rows = torch.linspace(0, 1, rgb.shape[-2], device=x.device, dtype=x.dtype).view(1, -1, 1)
        upper = (1 - rows / 0.6).clamp(0, 1)
        skyish = terms[:, idx["blue"]] + terms[:, idx["white"]] + 0.5 * terms[:, idx["gray"]]
        sky = skyish * smooth * upper
        vegetation = terms[:, idx["green"]] * (1 - smooth)
        pooled = self._cell_mean(torch.stack([sky, vegetation], 1), grid)
        cover = torch.zeros_like(pooled)
        if detections is not None:
            boxes, scores = decode_boxes(detections, input_size=int(x.shape[-1]))  # (B, N, 4), (B, N, 80)
            wh = (boxes[..., 2:] - boxes[..., :2]) / float(x.shape[-1])
            area = wh[..., 0] * wh[..., 1]
            best = torch.stack([scores.amax(-1), scores[..., CREATURE_INDEX].amax(-1)], 1)  # (B, 2, N)
            cover = cover + (best * area[:, None]).amax(-1)[..., None, None]
        return torch.cat([pooled, cover], 1)

    def concepts(self, feats: torch.Tensor) -> torch.Tensor:
        """Per-cell ImageNet class probabilities (B, K, h, w) from body features, computed
        cell-major (a linear layer and a softmax over the last dim) and returned as a
        channels_last view, no copy."""
        logits = self.classifier(feats.permute(0, 2, 3, 1))  # (B, h, w, K)
        return F.softmax(logits / self.concept_temperature, dim=-1).permute(0, 3, 1, 2)

    def load_detector(self, state: dict[str, torch.Tensor]) -> None:
        """Set the detector's weights (`cocoattr.tfjs.nanodet_state_dict`), strictly."""
        self.detector.load_state_dict(state, strict=True)

    def detect(self, x: torch.Tensor) -> NanoDetOutput:
        """The detector's raw output for a normalised batch (the backbone's input)."""
        rgb = x * self.std + self.mean
        return self.detector((rgb.flip(1) - self.det_mean) / self.det_std)

    @staticmethod
    def object_channels(detections: NanoDetOutput, grid: tuple[int, int]) -> torch.Tensor:
        """(B, 80, h, w): per grid cell, each class's best detector score at any stride."""
        gh, gw = int(grid[0]), int(grid[1])
        return torch.stack([_max_pool(level, gh, gw) for level in detections.scores]).amax(0)

    def parts(self, x: torch.Tensor, detections: NanoDetOutput | None = None) -> list[torch.Tensor]:
        """[features, concepts?, colour?, objects?, scene?], each (B, *, h, w): the grid before
        concatenation. `detections` (from `detect(x)`) saves running the detector twice."""
        feats = self.body(x)
        parts = [feats]
        if self.classifier is not None:
            parts.append(self.concepts(feats))
        if self.colour:
            parts.append(self.colour_channels(x, feats.shape[-2:]))
        if self.detector is not None:
            detections = detections if detections is not None else self.detect(x)
            parts.append(self.object_channels(detections, feats.shape[-2:]))
        if self.scene:
            parts.append(self.scene_channels(x, feats.shape[-2:], detections))
        return parts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = self.parts(x)
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
