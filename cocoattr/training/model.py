"""What trains: the starting model, which weights learn, the step DDP wraps, the loss, the
optimiser and the learning-rate schedule.

  * Masked loss: unknown labels (-1) contribute nothing, unless `unknown_weight` > 0, which
    counts them as weak negatives (the "assume negative" baseline of single-positive
    multi-label learning): caption-mined labels are almost all positives, and a loss over
    positives only can be minimised by saying "yes" to everything.
  * AdamW with weight decay on matrices only, linear warm-up then cosine to 10% (nanoGPT).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from cocoattr.model import AttributeModel
from cocoattr.training.config import TrainConfig


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

    description = f"Trained with cocoattr.training from init {cfg.init!r} on {cfg.data.source} data."
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

    def forward(self, x: torch.Tensor, labels3: torch.Tensor, cells: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        out = self.model.forward_head(x, cells) if self.cached else self.model(x, cells)
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
