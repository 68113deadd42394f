"""The training config: a YAML file validated at the edge (pydantic), one line naming the key.

Every key is optional (train/README.md lists them). A bad value is a `UserError` such as
`config.yaml: 'lr': must be a finite number > 0 (got nan)`, which the CLI prints as one line
with exit code 2. Each field's `description` is the phrase after "must be", so the message for
a wrong type, a NaN and an out-of-bounds value of one key is the same sentence.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cocoattr.data.gallery import GALLERY_SPLIT, GALLERY_SPLIT_SEED
from cocoattr.errors import UserError

Labels = Literal["hand", "captions", "coconut", "coconut+captions", "coconut-objects"]
# dense panoptic labels per image, alone or filled in by captions; or per thing segment (an object)
COCONUT_LABELS = ("coconut", "coconut+captions", "coconut-objects")
_STRICT = ConfigDict(extra="forbid", strict=True)


def _number(default: float, text: str, **bounds: float) -> Any:
    """A finite float field (NaN and infinity are refused) with bounds; `text` says them."""
    return Field(default, allow_inf_nan=False, description=f"a finite number {text}", **bounds)


def _count(default: int, text: str = ">= 0", **bounds: int) -> Any:
    return Field(default, description=f"an integer {text}", **bounds)


def _text(default: str | None, what: str = "text") -> Any:
    return Field(default, description=what)


class DataConfig(BaseModel):
    """Where samples come from. Paths are relative to `root` (the `data download --root` folder)."""

    model_config = _STRICT

    source: Literal["gallery", "coco_captions", "coco_attributes", "coconut"] = Field(
        "gallery", description="one of gallery, coco_captions, coco_attributes, coconut"
    )
    root: str | None = _text(None, "a folder name or null")  # gallery: None = the bundled one
    train_labels: Labels = Field(
        "captions", description="one of hand, captions, coconut, coconut+captions, coconut-objects"
    )
    # labels scored on val/test
    eval_labels: Labels = Field(
        "hand", description="one of hand, captions, coconut, coconut+captions, coconut-objects"
    )
    # How an object sample (COCO Attributes box, COCONut segment) reaches the model: its box cropped
    # with context, or the whole photo with the head restricted to its box or mask (`predict --objects`).
    objects: Literal["crop", "region"] = Field("crop", description="one of crop, region")
    split: list[float] = Field(
        default_factory=lambda: list(GALLERY_SPLIT),
        description="three fractions (train, val, test), each >= 0, summing to 1",
    )
    split_seed: int = Field(GALLERY_SPLIT_SEED, description="an integer")
    min_votes: int = _count(1, ">= 1", ge=1)  # caption miner: captions that must mention an attribute
    captions_json: str = _text("coco/annotations/captions_train2017.json", "a file name")
    image_dir: str = _text("coco/train2017", "a folder name")
    attributes_pickle: str = _text("cocottributes/cocottributes_eccv_version.pkl", "a file name")
    instances: dict[str, str] = Field(
        default_factory=lambda: {
            "train2014": "coco/annotations/instances_train2014.json",
            "val2014": "coco/annotations/instances_val2014.json",
        },
        description="a mapping of COCO split name to file name",
    )
    image_dirs: dict[str, str] = Field(
        default_factory=lambda: {"train2014": "coco/train2014", "val2014": "coco/val2014"},
        description="a mapping of COCO split name to folder name",
    )
    coconut: str = _text("coconut/relabeled_coco_val", "a folder name")  # a `data download coconut-*` folder
    coconut_images: str = _text("coco", "a folder name")  # holds val2017/, train2017/, unlabeled2017/
    max_train: int = _count(0, ge=0)  # 0 = all; else the first N training samples (quick runs)
    max_eval: int = _count(0, ge=0)  # same for val and test

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        split = self.split
        if len(split) != 3 or any(f < 0 for f in split) or abs(sum(split) - 1) > 1e-6:
            raise ValueError(f"'data.split': must be three fractions >= 0 summing to 1 (got {split})")
        both = (self.train_labels, self.eval_labels)
        if self.source == "coco_captions" and "hand" in both:
            raise ValueError("'data.train_labels'/'data.eval_labels': coco_captions has captions only")
        if self.source == "coco_attributes" and "captions" in both:
            raise ValueError("'data.train_labels'/'data.eval_labels': coco_attributes has hand labels only")
        if self.source == "coconut" and any(x not in COCONUT_LABELS for x in both):
            raise ValueError(
                "'data.train_labels'/'data.eval_labels': coconut has coconut, coconut+captions or "
                "coconut-objects labels"
            )
        if self.source != "coconut" and any(x in COCONUT_LABELS for x in both):
            raise ValueError(
                "'data.train_labels'/'data.eval_labels': coconut labels need 'data.source': coconut"
            )
        return self


class TrainConfig(BaseModel):
    model_config = _STRICT

    data: DataConfig = Field(default_factory=DataConfig, description="a mapping")
    # 'default' (zero-shot), 'imagenet' (fresh head) or a checkpoint folder / Hub id
    init: str = _text("default", "default, imagenet, a checkpoint folder or a Hub id")
    backbone: str = _text("mobilenet_v2", "a backbone name")  # init: imagenet only
    image_size: int | None = Field(  # None = the init checkpoint's size
        None, ge=32, le=1024, description="an integer from 32 to 1024, or null (the init's size)"
    )
    epochs: int = _count(20, ">= 1", ge=1)
    batch_size: int = _count(16, ">= 1", ge=1)  # global: split over DDP ranks
    lr: float = _number(3e-4, "> 0", gt=0)
    weight_decay: float = _number(0.05, ">= 0", ge=0)
    warmup_epochs: float = _number(1.0, ">= 0", ge=0)
    grad_clip: float = _number(1.0, ">= 0 (0 = off)", ge=0)  # max global grad norm
    loss: Literal["bce", "asl"] = Field("asl", description="one of bce, asl")
    asl_gamma_neg: float = _number(4.0, ">= 0", ge=0)
    asl_gamma_pos: float = _number(0.0, ">= 0", ge=0)
    asl_clip: float = _number(0.05, "from 0 to 1", ge=0, le=1)
    unknown_weight: float = _number(0.0, ">= 0", ge=0)  # unknown labels as negatives; 0 = fully masked
    contrastive_weight: float = _number(0.1, ">= 0", ge=0)
    # 0 = frozen backbone; N = last N stages of backbone.body; -1 = all
    finetune_stages: int = _count(0, ">= -1 (-1 = all stages)", ge=-1)
    feature_cache: bool = Field(True, description="true or false")  # only with a frozen backbone
    cache_dir: str | None = _text(None, "a folder name or null")  # None = RUN_DIR/cache
    augment: bool = Field(True, description="true or false")  # crop + flip; off with the feature cache
    early_stop_patience: int = _count(5, ">= 0 (0 = never stop early)", ge=0)
    checkpoint_every_steps: int = _count(0, ">= 0 (0 = at epoch ends only)", ge=0)
    eval_batch_size: int = _count(32, ">= 1", ge=1)
    seed: int = Field(0, description="an integer")
    num_workers: int = _count(0, ge=0)
    amp: bool = Field(True, description="true or false")  # bf16/fp16 autocast on CUDA; off on CPU
    threads: int = _count(0, ">= 0 (0 = torch's default)", ge=0)  # torch CPU threads per process

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.feature_cache and self.finetune_stages != 0:
            raise ValueError("'feature_cache': needs a frozen backbone (finetune_stages: 0)")
        return self


def _field_text(loc: tuple) -> tuple[str, str | None]:
    """('data', 'split', 1) -> ("data.split", "three fractions ...") for the field at `loc`."""
    model: type[BaseModel] | None = TrainConfig
    names, text = [], None
    for part in loc:
        fields = model.model_fields if model is not None else {}
        if not isinstance(part, str) or part not in fields:
            break
        names.append(part)
        info = fields[part]
        text, inner = info.description, info.annotation
        model = inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None
    return ".".join(names), text


def _one_line(error: ValidationError) -> str:
    """The first problem, naming the key: "'lr': must be a finite number > 0 (got nan)"."""
    first = error.errors()[0]
    key, text = _field_text(first["loc"])
    if first["type"] == "extra_forbidden":
        parent = TrainConfig if "." not in key else DataConfig
        bad = ".".join(str(p) for p in first["loc"])
        return f"'{bad}': unknown key (known: {', '.join(parent.model_fields)})"
    if first["type"] == "value_error":  # a cross-key check: its message names the key(s)
        return str(first["ctx"]["error"])
    if first["type"] in ("model_type", "model_attributes_type", "dict_type") and not first["loc"]:
        return "expected a mapping of keys to values"
    got = first.get("input")
    return f"'{key}': must be {text or first['msg'].lower()} (got {type(got).__name__} {got!r:.60})"


def config_from_dict(raw: Any, source: str = "config") -> TrainConfig:
    """Validated TrainConfig; every problem is a one-line UserError naming `source` and the key."""
    try:
        return TrainConfig.model_validate({} if raw is None else raw)
    except ValidationError as e:
        raise UserError(f"{source}: {_one_line(e)}") from None


def load_config(path: str | os.PathLike) -> TrainConfig:
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text("utf-8"))
    except OSError as e:
        raise UserError(f"{path}: cannot read config ({e.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (a YAML config is UTF-8 text)") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: malformed YAML ({' '.join(str(e).split())})") from None
    return config_from_dict(raw, str(path))


def dump_config(cfg: TrainConfig) -> str:
    """The resolved config as YAML, in field order (RUN_DIR/config.yaml)."""
    import yaml

    return yaml.safe_dump(cfg.model_dump(), sort_keys=False)
