"""Training: one readable loop (`train`, top to bottom, nanoGPT style) plus small helpers.

    YAML config -> samples per split -> model (zero-shot default, ImageNet + fresh head, or a
    checkpoint) -> [feature cache] -> AdamW + warm-up/cosine -> epochs of masked multi-label loss
    (+ contrastive) -> validation mAP -> best checkpoint (Hub layout) + thresholds + report.

Design choices, each for a reason:
  * Frozen backbone (`finetune_stages: 0`) + `feature_cache: true`: the backbone runs once per
    image and its (C, h, w) grid is stored as float16 on disk; epochs then run only
    `AttributeModel.forward_head`. That is what makes the gallery config finish in minutes on
    a laptop CPU. Cached grids cannot be augmented, so there is NO augmentation in that mode.
  * Masked loss: unknown labels (-1) contribute nothing, unless `unknown_weight` > 0, which
    counts them as weak negatives (the "assume negative" baseline of single-positive
    multi-label learning): caption-mined labels are almost all positives, and a loss over
    positives only can be minimised by saying "yes" to everything.
  * Resume: `RUN_DIR/last/` (weights as safetensors + optimizer/scaler/RNG/counters via
    torch.save, loaded with weights_only=True) is replaced atomically at every epoch end and
    every `checkpoint_every_steps`; the data order of epoch e is a pure function of (seed, e)
    and augmentation of sample i of epoch e of (seed, e, i), so a resumed run replays exactly.
  * DDP through torchrun: `torch.distributed` (gloo on CPU, nccl on GPU), DistributedSampler,
    per-rank batch = batch_size / world so the global batch (and the step count) match a
    single process; the label loss is normalised by the global label count; only rank 0
    writes files; validation scores are all-gathered so every rank takes the same decisions.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import types
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cocoattr.data.datasets import AttributeDataset, Sample
from cocoattr.data.gallery import GALLERY_SPLIT, GALLERY_SPLIT_SEED
from cocoattr.data.splits import SPLITS, split_of
from cocoattr.errors import UserError
from cocoattr.model import AttributeModel

# --------------------------------------------------------------------------- config


@dataclass
class DataConfig:
    """Where samples come from. Paths are relative to `root` (the `data download --root` folder)."""

    source: str = "gallery"  # gallery | coco_captions | coco_attributes
    root: str | None = None  # gallery: None = the bundled one; coco_*: the data root
    train_labels: str = "captions"  # hand | captions (gallery: both exist; coco_captions: captions)
    eval_labels: str = "hand"  # labels scored on val/test
    split: list[float] = field(default_factory=lambda: list(GALLERY_SPLIT))
    split_seed: int = GALLERY_SPLIT_SEED
    min_votes: int = 1  # caption miner: captions that must mention an attribute
    captions_json: str = "coco/annotations/captions_train2017.json"
    image_dir: str = "coco/train2017"
    attributes_pickle: str = "cocottributes/cocottributes_eccv_version.pkl"
    instances: dict[str, str] = field(
        default_factory=lambda: {
            "train2014": "coco/annotations/instances_train2014.json",
            "val2014": "coco/annotations/instances_val2014.json",
        }
    )
    image_dirs: dict[str, str] = field(
        default_factory=lambda: {"train2014": "coco/train2014", "val2014": "coco/val2014"}
    )
    max_train: int = 0  # 0 = all; else the first N training samples (quick runs)
    max_eval: int = 0  # same for val and test


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    init: str = "default"  # 'default' (zero-shot), 'imagenet' (fresh head) or a checkpoint folder/Hub id
    backbone: str = "mobilenet_v2"  # init: imagenet only
    image_size: int | None = None  # None = the init checkpoint's size
    epochs: int = 20
    batch_size: int = 16  # global: split over DDP ranks
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    loss: str = "asl"  # bce | asl
    asl_gamma_neg: float = 4.0
    asl_gamma_pos: float = 0.0
    asl_clip: float = 0.05
    unknown_weight: float = 0.0  # weight of unknown labels as negatives; 0 = fully masked
    contrastive_weight: float = 0.1
    finetune_stages: int = 0  # 0 = frozen backbone; N = last N stages of backbone.body; -1 = all
    feature_cache: bool = True  # only with a frozen backbone
    cache_dir: str | None = None  # None = RUN_DIR/cache
    augment: bool = True  # random crop + flip; ignored (off) with the feature cache
    early_stop_patience: int = 5  # epochs without a better val mAP; 0 = never stop early
    checkpoint_every_steps: int = 0  # also save RUN_DIR/last every N steps; 0 = epoch ends only
    eval_batch_size: int = 32
    seed: int = 0
    num_workers: int = 0
    amp: bool = True  # bf16/fp16 autocast on CUDA; always off on CPU
    threads: int = 0  # torch CPU threads per process; 0 = torch's default


def _type_ok(value: Any, tp: Any) -> bool:
    """isinstance for the few annotation forms the config uses."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        k, v = typing.get_args(tp)
        return isinstance(value, dict) and all(_type_ok(a, k) and _type_ok(b, v) for a, b in value.items())
    return isinstance(value, tp)


def _from_dict(cls: type, raw: Any, prefix: str = "") -> Any:
    """A config dataclass from YAML data; unknown keys and wrong types name the key."""
    if not isinstance(raw, dict):
        raise UserError(f"config{' ' + prefix.rstrip('.') if prefix else ''}: expected a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise UserError(f"config: unknown key '{prefix}{unknown[0]}' (known: {', '.join(sorted(names))})")
    values = {}
    for key, value in raw.items():
        tp = hints[key]
        if isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"):
            values[key] = _from_dict(tp, value, f"{prefix}{key}.")
        elif not _type_ok(value, tp):
            shown = tp.__name__ if isinstance(tp, type) else str(tp)
            raise UserError(
                f"config: key '{prefix}{key}' must be {shown}, not {type(value).__name__} {value!r}"
            )
        else:
            values[key] = float(value) if tp is float else value
    return cls(**values)


def _check_choices(cfg: TrainConfig) -> None:
    choices = {
        "data.source": (cfg.data.source, ("gallery", "coco_captions", "coco_attributes")),
        "data.train_labels": (cfg.data.train_labels, ("hand", "captions")),
        "data.eval_labels": (cfg.data.eval_labels, ("hand", "captions")),
        "loss": (cfg.loss, ("bce", "asl")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise UserError(f"config: key {key!r} must be one of {allowed}, not {value!r}")
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "eval_batch_size": cfg.eval_batch_size}
    for key, value in positive.items():
        if value < 1:
            raise UserError(f"config: key {key!r} must be >= 1, not {value}")
    for key in ("lr", "weight_decay", "warmup_epochs", "grad_clip", "unknown_weight", "contrastive_weight"):
        if getattr(cfg, key) < 0:
            raise UserError(f"config: key {key!r} must be >= 0")
    split = cfg.data.split
    if len(split) != 3 or any(f < 0 for f in split) or abs(sum(split) - 1) > 1e-6:
        raise UserError(f"config: key 'data.split' must be three fractions summing to 1, not {split}")
    if cfg.data.source == "coco_captions" and "hand" in (cfg.data.train_labels, cfg.data.eval_labels):
        raise UserError("config: key 'data.train_labels'/'data.eval_labels': coco_captions has captions only")
    if cfg.data.source == "coco_attributes" and "captions" in (cfg.data.train_labels, cfg.data.eval_labels):
        raise UserError(
            "config: key 'data.train_labels'/'data.eval_labels': coco_attributes has hand labels only"
        )
    if cfg.feature_cache and cfg.finetune_stages != 0:
        raise UserError("config: key 'feature_cache' needs a frozen backbone (finetune_stages: 0)")


def config_from_dict(raw: dict) -> TrainConfig:
    """Validated TrainConfig; every problem is a UserError naming the key."""
    cfg = _from_dict(TrainConfig, raw or {})
    _check_choices(cfg)
    return cfg


def load_config(path: str | os.PathLike) -> TrainConfig:
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text("utf-8"))
    except OSError as e:
        raise UserError(f"{path}: cannot read config ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: malformed YAML ({e})") from None
    try:
        return config_from_dict(raw)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


# --------------------------------------------------------------------------- distributed / seeding


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup_distributed() -> Dist:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them this is a single process."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist(device=torch.device("cuda" if cuda else "cpu"))
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local}" if cuda else "cpu"))


def barrier(d: Dist) -> None:
    if d.enabled:
        torch.distributed.barrier()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """All RNG states, in types torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    keys, pos, has_gauss, gauss_np = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss_np))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- data


def _gallery_splits(data: DataConfig) -> dict[str, dict[str, list[Sample]]]:
    from cocoattr.data.datasets import gallery_samples
    from cocoattr.data.gallery import load_gallery

    gallery = load_gallery(Path(data.root) if data.root else None)
    by_labels = {"hand": gallery_samples(gallery, "hand"), "captions": gallery_samples(gallery, "mined")}
    which = gallery.splits(data.split, data.split_seed)
    return {
        labels: {s: [x for x in samples if which[x.image_id] == s] for s in SPLITS}
        for labels, samples in by_labels.items()
    }


def _coco_samples(data: DataConfig) -> list[Sample]:
    root = Path(data.root or ".").expanduser()
    if data.source == "coco_captions":
        from cocoattr.data.captions import CaptionMiner
        from cocoattr.data.datasets import coco_caption_samples

        samples, report = coco_caption_samples(
            root / data.captions_json, root / data.image_dir, CaptionMiner(min_votes=data.min_votes)
        )
    else:
        from cocoattr.data.datasets import cocottributes_samples

        samples, report, _ = cocottributes_samples(
            root / data.attributes_pickle,
            {k: root / v for k, v in data.instances.items()},
            {k: root / v for k, v in data.image_dirs.items()},
        )
    print(f"cocoattr: {len(samples)} samples; {report.summary()}", file=sys.stderr)
    return samples


def load_splits(data: DataConfig) -> dict[str, list[Sample]]:
    """{'train': samples with train_labels, 'val'/'test': samples with eval_labels}."""
    if data.source == "gallery":
        both = _gallery_splits(data)
        out = {"train": both[data.train_labels]["train"]}
        out |= {s: both[data.eval_labels][s] for s in ("val", "test")}
    else:
        samples = _coco_samples(data)
        out = {
            s: [x for x in samples if split_of(x.image_id, data.split, data.split_seed) == s] for s in SPLITS
        }
    if data.max_train:
        out["train"] = out["train"][: data.max_train]
    if data.max_eval:
        out |= {s: out[s][: data.max_eval] for s in ("val", "test")}
    for split in ("train", "val"):
        if not out[split]:
            raise UserError(f"config: data gives no {split} samples (check data.split and data.max_*)")
    return out


class Preprocess:
    """The model's own preprocessing (`cocoattr.predictor.preprocess`, one image), picklable for workers."""

    def __init__(self, model: AttributeModel) -> None:
        self.size = model.image_size
        self.mean = model.backbone.mean.view(3, 1, 1).cpu().numpy()
        self.std = model.backbone.std.view(3, 1, 1).cpu().numpy()

    def __call__(self, image: Any) -> torch.Tensor:
        from cocoattr.transforms import preprocess

        return preprocess([image], self.size, self.mean, self.std)[0]


def augment(image: Any, rng: np.random.Generator) -> Any:
    """Random crop keeping 65-100% of each side, and a horizontal flip half the time."""
    from PIL import Image

    w, h = image.size
    cw, ch = int(w * rng.uniform(0.65, 1.0)), int(h * rng.uniform(0.65, 1.0))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    image = image.crop((x, y, x + cw, y + ch))
    return image.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


class ImageDataset(AttributeDataset):
    """AttributeDataset whose augmentation of item i in epoch e depends only on (seed, e, i)."""

    def __init__(self, samples: Sequence[Sample], transform: Preprocess, train: bool, seed: int) -> None:
        super().__init__(samples, transform)
        self.train, self.seed, self.epoch = train, seed, 0

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        labels = self.samples[index].labels
        image = self.image(index)
        if self.train:
            image = augment(image, np.random.default_rng([self.seed, self.epoch, index]))
        return (
            self.transform(image),
            torch.from_numpy((labels == 1).astype(np.float32)),
            torch.from_numpy(labels != -1),
        )


class GridDataset(Dataset):
    """Cached (C, h, w) float16 grids with their labels: what the head trains on."""

    def __init__(self, grids: np.ndarray, samples: Sequence[Sample]) -> None:
        self.grids, self.samples = grids, list(samples)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        labels = self.samples[index].labels
        return (
            torch.from_numpy(np.asarray(self.grids[index], dtype=np.float32)),
            torch.from_numpy((labels == 1).astype(np.float32)),
            torch.from_numpy(labels != -1),
        )


# --------------------------------------------------------------------------- feature cache


def _backbone_key(model: AttributeModel, samples: Sequence[Sample]) -> str:
    """Hash of what determines the grids: backbone config + weights, input size, image list."""
    from cocoattr.hub import model_config

    cfg = model_config(model)
    h = hashlib.sha256()
    h.update(json.dumps({k: cfg.get(k) for k in ("backbone", "concepts", "colour", "concept_temperature",
                                                   "image_size")}, sort_keys=True).encode())  # fmt: skip
    for name, tensor in sorted(model.backbone.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for s in samples:
        h.update(f"{s.path}|{s.box}\n".encode())
    return h.hexdigest()[:20]


@torch.no_grad()
def cached_grids(model: AttributeModel, samples: Sequence[Sample], cache_dir: Path, d: Dist,
                 batch_size: int, num_workers: int, desc: str) -> np.ndarray:  # fmt: skip
    """(N, C, h, w) float16 memmap of backbone grids, computed once (ranks share the work)."""
    from numpy.lib.format import open_memmap

    path = cache_dir / f"{model.backbone.name}-{model.image_size}-{_backbone_key(model, samples)}.npy"
    if not path.is_file():
        tmp = path.with_name(path.name + ".tmp.npy")
        if d.main:
            cache_dir.mkdir(parents=True, exist_ok=True)
            shape = (len(samples), model.backbone.channels, *model.grid)
            open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape).flush()
        barrier(d)
        grids = np.load(tmp, mmap_mode="r+")
        mine = list(range(d.rank, len(samples), d.world))
        loader = DataLoader(
            torch.utils.data.Subset(AttributeDataset(samples, Preprocess(model)), mine),
            batch_size=batch_size, num_workers=num_workers,
        )  # fmt: skip
        from cocoattr.inference import inference_copy

        backbone = inference_copy(model.backbone)  # frozen here: BN folded, channels_last
        done = 0
        for images, _, _ in tqdm(loader, desc=f"cache {desc}", disable=not d.main, leave=False):
            x = images.to(d.device).contiguous(memory_format=torch.channels_last)
            feats = backbone(x).float().cpu().numpy().astype(np.float16)
            grids[mine[done : done + len(feats)]] = feats
            done += len(feats)
        grids.flush()
        del grids
        barrier(d)
        if d.main:
            os.replace(tmp, path)
        barrier(d)
    return np.load(path, mmap_mode="r")


# --------------------------------------------------------------------------- model


def _resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    n, dim = pos.shape[1], pos.shape[2]
    side = int(math.isqrt(n))
    if side * side != n:
        return torch.zeros(1, grid[0] * grid[1], dim)
    square = pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    resized = F.interpolate(square, size=grid, mode="bilinear", align_corners=False)
    return resized.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)


def build_model(cfg: TrainConfig) -> AttributeModel:
    """The starting model, re-created as kind='trained' (so the saved config says so)."""
    from cocoattr.checkpoints import load_model
    from cocoattr.hub import model_config

    description = f"Trained with cocoattr.train from init {cfg.init!r} on {cfg.data.source} data."
    if cfg.init == "imagenet":
        from cocoattr.text import encode
        from cocoattr.vocab import load_vocabulary

        vocab = load_vocabulary()
        model = AttributeModel(
            vocab.names, [a.type for a in vocab], backbone=cfg.backbone,
            image_size=cfg.image_size or 288, kind="trained", description=description,
        )  # fmt: skip
        model.backbone.load_imagenet()
        with torch.no_grad():
            model.text_embeddings.copy_(torch.from_numpy(encode([a.prompt for a in vocab])))
        return model
    source = load_model(cfg.init)
    config = model_config(source) | {"kind": "trained", "description": description}
    if cfg.image_size:
        config["image_size"] = cfg.image_size
    model = AttributeModel(**config)
    state = source.state_dict()
    if state["pos_embed"].shape != model.pos_embed.shape:
        state["pos_embed"] = _resize_pos_embed(state["pos_embed"], model.grid)
    model.load_state_dict(state, strict=True)
    return model


def set_trainable(model: AttributeModel, finetune_stages: int) -> list[nn.Parameter]:
    """Freeze the backbone except its last `finetune_stages` stages (-1: all); the ImageNet
    classifier behind the concept channels always stays frozen."""
    for p in model.parameters():
        p.requires_grad_(True)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    if finetune_stages:
        body = model.backbone.body
        stages = list(body.children()) if len(list(body.children())) > 1 else [body]
        for stage in stages if finetune_stages < 0 else stages[-finetune_stages:]:
            for p in stage.parameters():
                p.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


class TrainStep(nn.Module):
    """What DDP wraps: grids or images -> (logits, contrastive loss), so every used weight is
    reached through one forward call."""

    def __init__(self, model: AttributeModel, cached: bool) -> None:
        super().__init__()
        self.model, self.cached = model, cached

    def forward(self, x: torch.Tensor, labels3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.forward_head(x) if self.cached else self.model(x)
        return out.logits, self.model.contrastive_loss(out, labels3)


def label_loss(
    logits: torch.Tensor, targets: torch.Tensor, known: torch.Tensor, cfg: TrainConfig
) -> torch.Tensor:
    """Per-entry BCE or asymmetric loss (ASL, Ridnik et al. 2021), weighted: known labels 1,
    unknowns `unknown_weight` (as negatives). Returned as a SUM; the caller normalises."""
    logits = logits.float()
    if cfg.loss == "bce":
        per = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    else:
        p = torch.sigmoid(logits)
        p_neg = (p - cfg.asl_clip).clamp_min(0) if cfg.asl_clip > 0 else p
        pos = targets * torch.log(p.clamp_min(1e-8)) * (1 - p) ** cfg.asl_gamma_pos
        neg = (1 - targets) * torch.log((1 - p_neg).clamp_min(1e-8)) * p_neg**cfg.asl_gamma_neg
        per = -(pos + neg)
    weights = known.float() + (~known).float() * cfg.unknown_weight
    return (per * weights).sum()


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up to `base`, then cosine to 10% of it."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: AttributeModel, params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not biases, norms, 1-d vectors), as in nanoGPT."""
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))


@torch.no_grad()
def predict_scores(
    model: AttributeModel, dataset: Dataset, cached: bool, d: Dist, batch_size: int
) -> np.ndarray:
    """(N, A) probabilities; each rank scores a shard and the shards are all-gathered."""
    model.eval()
    mine = list(range(d.rank, len(dataset), d.world))
    loader = DataLoader(torch.utils.data.Subset(dataset, mine), batch_size=batch_size)
    parts = []
    for x, _, _ in loader:
        out = model.forward_head(x.to(d.device)) if cached else model(x.to(d.device))
        parts.append(out.probs.float().cpu().numpy())
    scores = np.concatenate(parts) if parts else np.zeros((0, model.num_attributes), np.float32)
    if d.enabled:
        gathered: list = [None] * d.world
        torch.distributed.all_gather_object(gathered, (mine, scores))
        full = np.zeros((len(dataset), model.num_attributes), np.float32)
        for idx, part in gathered:
            full[idx] = part
        scores = full
    return scores


def label_matrix(samples: Sequence[Sample]) -> np.ndarray:
    return np.stack([s.labels for s in samples]).astype(np.int8)


# --------------------------------------------------------------------------- resume state


def save_last(run_dir: Path, model: AttributeModel, state: dict) -> None:
    """Replace RUN_DIR/last atomically: weights (safetensors) + state.pt (optimizer, RNG, counters)."""
    from cocoattr.hub import save_checkpoint

    staging = Path(tempfile.mkdtemp(dir=run_dir, prefix=".last."))
    try:
        save_checkpoint(model, staging / "model")
        torch.save(state, staging / "state.pt")
        last, old = run_dir / "last", run_dir / ".last.old"
        shutil.rmtree(old, ignore_errors=True)
        if last.exists():
            last.rename(old)
        staging.rename(last)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_last(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """(model state dict, training state) from RUN_DIR/last (or the copy a crash left mid-swap)."""
    from safetensors.torch import load_file

    for folder in (run_dir / "last", run_dir / ".last.old"):
        if (folder / "state.pt").is_file() and (folder / "model" / "model.safetensors").is_file():
            state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
            return load_file(str(folder / "model" / "model.safetensors")), state
    return None


class StopFlag:
    """Ctrl-C / SIGTERM: finish the current step, save RUN_DIR/last, then stop (second one kills)."""

    def __init__(self) -> None:
        self.set = False
        self._old: dict = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def agreed(self, d: Dist) -> bool:
        """Stop only when every rank stops at the same step."""
        if not d.enabled:
            return self.set
        flag = torch.tensor([1.0 if self.set else 0.0])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


# --------------------------------------------------------------------------- the training run


def train(cfg: TrainConfig, run_dir: str | os.PathLike, resume: bool = True) -> dict:
    """Train per `cfg` into `run_dir`; returns the final metrics (rank 0; {} on other ranks)."""
    from cocoattr import metrics
    from cocoattr.hub import save_checkpoint
    from cocoattr.report import write_history, write_report

    run_dir = Path(run_dir)
    d = setup_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(_dump_yaml(asdict(cfg)), "utf-8")
    barrier(d)
    seed_everything(cfg.seed)

    # ---- data and model
    splits = load_splits(cfg.data)
    model = build_model(cfg).to(d.device)
    params = set_trainable(model, cfg.finetune_stages)
    cached = cfg.feature_cache and cfg.finetune_stages == 0
    if cached:
        cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else run_dir / "cache"
        datasets = {
            s: GridDataset(
                cached_grids(model, splits[s], cache_dir, d, cfg.eval_batch_size, cfg.num_workers, s),
                splits[s],
            )  # fmt: skip
            for s in SPLITS
            if splits[s]
        }
    else:
        pre = Preprocess(model)
        datasets = {
            s: ImageDataset(splits[s], pre, s == "train" and cfg.augment, cfg.seed)
            for s in SPLITS
            if splits[s]
        }
    val_labels = label_matrix(splits["val"])
    names, kinds = model.attributes, model.attribute_types

    per_rank_batch = max(1, cfg.batch_size // d.world)
    sampler = torch.utils.data.DistributedSampler(
        datasets["train"], num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed
    )
    steps_per_epoch = math.ceil(len(sampler) / per_rank_batch)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)

    step_module = TrainStep(model, cached)
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel

        step_module = DistributedDataParallel(step_module, find_unused_parameters=True)
    optimizer = make_optimizer(model, params, cfg)
    use_amp = cfg.amp and d.device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    # ---- state: fresh, or resumed from RUN_DIR/last
    epoch, batch_in_epoch, step = 1, 0, 0
    loss_sum, label_sum, loss_count = 0.0, 0.0, 0
    best_map, best_epoch, bad_epochs, history, start = -1.0, 0, 0, [], {}
    last = load_last(run_dir) if resume else None
    if last is not None:
        weights, state = last
        model.load_state_dict(weights, strict=True)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        epoch, batch_in_epoch, step = state["epoch"], state["batch_in_epoch"], state["step"]
        loss_sum, label_sum, loss_count = state["loss_sum"], state["label_sum"], state["loss_count"]
        best_map, best_epoch, bad_epochs = state["best_map"], state["best_epoch"], state["bad_epochs"]
        history, start = state["history"], state["start"]
        if d.main:
            print(f"cocoattr: resuming {run_dir} at epoch {epoch}, step {step}", file=sys.stderr)

    def checkpoint_state() -> dict:
        return {
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
            "epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": step,
            "loss_sum": loss_sum, "label_sum": label_sum, "loss_count": loss_count,
            "best_map": best_map, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
            "history": history, "start": start,
        }  # fmt: skip

    def validate(epoch_no: int, train_loss: float | None, label_loss_: float | None, seconds: float,
                 lr: float) -> dict:  # fmt: skip
        scores = predict_scores(model, datasets["val"], cached, d, cfg.eval_batch_size)
        row = {
            "epoch": epoch_no, "train_loss": train_loss, "train_label_loss": label_loss_,
            "val_mAP": metrics.mean_average_precision(scores, val_labels),
            "val_auc": metrics.mean_per_image_auc(scores, val_labels),
            "lr": lr, "seconds": round(seconds, 2), "step": step,
        }  # fmt: skip
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}

    if not history:  # epoch 0: the starting model, so "did training help?" is in the table
        row = validate(0, None, None, 0.0, 0.0)
        history.append(row)
        best_map = row["val_mAP"] if row["val_mAP"] is not None else -1.0
        start = {"val_mAP": row["val_mAP"], "val_auc": row["val_auc"]}
        if "test" in datasets:  # recorded only, never used to decide anything
            test_scores = predict_scores(model, datasets["test"], cached, d, cfg.eval_batch_size)
            test_labels = label_matrix(splits["test"])
            start |= {"test_mAP": metrics.mean_average_precision(test_scores, test_labels),
                      "test_auc": metrics.mean_per_image_auc(test_scores, test_labels)}  # fmt: skip
        if d.main:
            save_checkpoint(model, run_dir / "checkpoint", metrics={"val_mAP": best_map, "best_epoch": 0})
            write_history(run_dir, history)

    # ---- the loop
    stopped = False
    with StopFlag() as stop:
        while epoch <= cfg.epochs and not stopped:
            t0 = time.time()
            sampler.set_epoch(epoch)
            datasets["train"].epoch = epoch
            order = list(sampler)
            batches = [order[i : i + per_rank_batch] for i in range(0, len(order), per_rank_batch)]
            loader = DataLoader(datasets["train"], batch_sampler=batches[batch_in_epoch:],
                                num_workers=cfg.num_workers)  # fmt: skip
            model.train()
            model.backbone.eval()  # BatchNorm statistics stay ImageNet's even when fine-tuning
            bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=not d.main, leave=False)
            for x, targets, known in bar:
                lr = lr_at(step, total_steps, warmup_steps, cfg.lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x, targets, known = x.to(d.device), targets.to(d.device), known.to(d.device)
                labels3 = torch.where(known, targets, torch.full_like(targets, -1.0))
                # Normalise the label loss by the GLOBAL weight count, so 2 ranks == 1 process.
                weight = known.float().sum() + (~known).float().sum() * cfg.unknown_weight
                if d.enabled:
                    torch.distributed.all_reduce(weight)
                autocast = torch.autocast("cuda", dtype=amp_dtype) if use_amp else contextlib.nullcontext()
                with autocast:
                    logits, contrastive = step_module(x, labels3)
                labels_part = label_loss(logits, targets, known, cfg) * d.world / weight.clamp_min(1.0)
                loss = labels_part + cfg.contrastive_weight * contrastive.float()
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                step += 1
                batch_in_epoch += 1
                loss_sum += loss.item()
                label_sum += labels_part.item()
                loss_count += 1
                bar.set_postfix(loss=f"{loss_sum / loss_count:.4f}", lr=f"{lr:.2e}")
                if stop.agreed(d):
                    stopped = True
                    break
                if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0 and d.main:
                    save_last(run_dir, model, checkpoint_state())
            if stopped:
                break

            # ---- end of epoch: validate, keep the best, early stopping, save state
            means = torch.tensor([loss_sum, label_sum], dtype=torch.float64) / max(1, loss_count)
            if d.enabled:  # the mean over ranks (each rank's label part is already globally normalised)
                torch.distributed.all_reduce(means)
                means /= d.world
            train_loss, train_label_loss = float(means[0]), float(means[1])
            lr_now = lr_at(step - 1, total_steps, warmup_steps, cfg.lr)
            row = validate(epoch, train_loss, train_label_loss, time.time() - t0, lr_now)
            history.append(row)
            improved = row["val_mAP"] is not None and row["val_mAP"] > best_map
            if improved:
                best_map, best_epoch, bad_epochs = row["val_mAP"], epoch, 0
                if d.main:
                    save_checkpoint(
                        model, run_dir / "checkpoint", metrics={"val_mAP": best_map, "best_epoch": epoch}
                    )
            else:
                bad_epochs += 1
            if d.main:
                print(f"epoch {epoch}: train_loss {train_loss:.4f}  val_mAP {_fmt(row['val_mAP'])}  "
                      f"val_auc {_fmt(row['val_auc'])}  {row['seconds']:.1f}s" + ("  *" if improved else ""),
                      file=sys.stderr)  # fmt: skip
            epoch, batch_in_epoch, loss_sum, label_sum, loss_count = epoch + 1, 0, 0.0, 0.0, 0
            if cfg.early_stop_patience and bad_epochs >= cfg.early_stop_patience:
                if d.main:
                    print(f"cocoattr: early stop, no better val mAP for {bad_epochs} epochs", file=sys.stderr)
                epoch = cfg.epochs + 1
            if d.main:
                write_history(run_dir, history)
                save_last(run_dir, model, checkpoint_state())
        if stopped and d.main:
            save_last(run_dir, model, checkpoint_state())
            write_history(run_dir, history)
    barrier(d)
    if d.enabled:
        torch.distributed.destroy_process_group()
    if stopped:
        raise KeyboardInterrupt
    if not d.main:
        return {}

    # ---- final: best weights -> thresholds tuned on val -> test -> checkpoint, report
    from cocoattr.checkpoints import load_model

    best = load_model(run_dir / "checkpoint").to(d.device)
    single = Dist(device=d.device)
    val_scores = predict_scores(best, datasets["val"], cached, single, cfg.eval_batch_size)
    thresholds = metrics.tune_thresholds(val_scores, val_labels)
    result: dict[str, Any] = {"best_epoch": best_epoch, "val_mAP": best_map}
    evals = {"val": metrics.evaluate(val_scores, val_labels, names, kinds, thresholds)}
    if "test" in datasets:
        test_labels = label_matrix(splits["test"])
        test_scores = predict_scores(best, datasets["test"], cached, single, cfg.eval_batch_size)
        evals["test"] = metrics.evaluate(test_scores, test_labels, names, kinds, thresholds)
        result |= {"test_mAP": evals["test"]["mAP"], "test_auc": evals["test"]["mean_per_image_auc"],
                   "test_macro_f1": evals["test"]["macro_f1"]}  # fmt: skip
    result |= {
        "val_auc": evals["val"]["mean_per_image_auc"],
        "n_train": len(splits["train"]), "n_val": len(splits["val"]), "n_test": len(splits["test"]),
        "data": cfg.data.source, "train_labels": cfg.data.train_labels, "eval_labels": cfg.data.eval_labels,
        "init": cfg.init, "epochs_run": len(history) - 1, "start": start,
        "thresholds": {n: float(t) for n, t in zip(names, thresholds, strict=True)},
        "eval": evals,
    }  # fmt: skip
    card = _card_text(cfg, result)
    save_checkpoint(best, run_dir / "checkpoint", metrics=result, card_extra=card)
    _atomic_json(run_dir / "metrics.json", result)
    write_report(run_dir, history, result, asdict(cfg))
    return result


# --------------------------------------------------------------------------- small utilities


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _dump_yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def _atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1), "utf-8")
    os.replace(tmp, path)


def _card_text(cfg: TrainConfig, result: dict) -> str:
    labels = {"captions": "caption-mined (weak, noisy) labels", "hand": "hand labels"}
    return (
        "## Training\n\n"
        f"- Data: {cfg.data.source}; trained on {result['n_train']} samples with "
        f"{labels[cfg.data.train_labels]}; validated on {result['n_val']} and tested on {result['n_test']} "
        f"with {labels[cfg.data.eval_labels]}.\n"
        f"- Init: `{cfg.init}`; best epoch {result['best_epoch']} of {result['epochs_run']} (by val mAP); "
        f"loss {cfg.loss}, lr {cfg.lr}, batch {cfg.batch_size}, "
        f"{'frozen backbone + feature cache' if cfg.feature_cache else f'stages {cfg.finetune_stages}'}.\n"
        "- Per-attribute thresholds tuned on validation are in `metrics.json` (`thresholds`).\n"
    )


def run_train(args: argparse.Namespace) -> int:
    """`python -m cocoattr train --config FILE --out RUN_DIR [--no-resume]`."""
    cfg = load_config(args.config)
    result = train(cfg, args.out, resume=getattr(args, "resume", True))
    if result:
        keys = ("best_epoch", "val_mAP", "val_auc", "test_mAP", "test_auc")
        print("  ".join(f"{k} {result[k]:.4f}" if isinstance(result[k], float) else f"{k} {result[k]}"
                        for k in keys if k in result and result[k] is not None))  # fmt: skip
        print(
            f"cocoattr: wrote {Path(args.out) / 'checkpoint'} and {Path(args.out) / 'report.md'}",
            file=sys.stderr,
        )
    return 0
