"""The training run, top to bottom: `fit` builds a `Run`, then epochs of `train_one_epoch`, each
scored by `evaluate`, then the best epoch's checkpoint, thresholds and report.

    YAML config -> samples per split -> model (zero-shot default, ImageNet + fresh head, or a
    checkpoint) -> [feature cache] -> AdamW + warm-up/cosine -> epochs of masked multi-label loss
    (+ contrastive) -> validation mAP -> best checkpoint (Hub layout) + thresholds + report.

DDP through torchrun: DistributedSampler, per-rank batch = batch_size / world so the global batch
(and the step count) match a single process; the label loss is normalised by the global label
count; only rank 0 writes files; validation scores are all-gathered so every rank takes the same
decisions. Resume: `TrainState` in RUN_DIR/last (`cocoattr.training.state`).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from cocoattr import metrics
from cocoattr.atomic import atomic_write_json, atomic_write_text
from cocoattr.data.datasets import Sample
from cocoattr.data.splits import SPLITS
from cocoattr.model import AttributeModel
from cocoattr.training.cache import GridDataset, cached_grids
from cocoattr.training.config import TrainConfig, dump_config
from cocoattr.training.data import ImageDataset, Preprocess, label_matrix, load_splits, sample_cells
from cocoattr.training.distributed import Dist, StopFlag, all_reduce_sum, barrier, setup_distributed, teardown
from cocoattr.training.model import TrainStep, build_model, label_loss, lr_at, make_optimizer, set_trainable
from cocoattr.training.report import write_history, write_report
from cocoattr.training.state import TrainState, load_last, save_last, seed_everything


@dataclass
class Run:
    """What a run builds once; every function below reads it."""

    cfg: TrainConfig
    run_dir: Path
    d: Dist
    model: AttributeModel
    params: list[nn.Parameter]  # the trainable ones
    cached: bool  # datasets hold backbone grids (frozen backbone + feature cache), not images
    splits: dict[str, list[Sample]]
    datasets: dict[str, Dataset]
    step_module: nn.Module  # TrainStep, DDP-wrapped on several ranks
    sampler: DistributedSampler
    per_rank_batch: int
    total_steps: int
    warmup_steps: int
    amp_dtype: torch.dtype | None  # None: no autocast


def fit(cfg: TrainConfig, run_dir: str | Path, resume: bool = True) -> dict:
    """Train per `cfg` into `run_dir`; returns the final metrics (rank 0; {} on other ranks)."""
    run = prepare(cfg, Path(run_dir))
    state = TrainState(optimizer=make_optimizer(run.model, run.params, cfg), scaler=_scaler(run))
    if resume:
        resume_from_last(run, state)
    if not state.history:  # epoch 0: the starting model, so "did training help?" is in the table
        record_start(run, state)
    stopped = train_epochs(run, state)
    teardown(run.d)
    if stopped:
        raise KeyboardInterrupt
    if not run.d.main:
        return {}
    return finish(run, state)


def prepare(cfg: TrainConfig, run_dir: Path) -> Run:
    """Process group, seeds, data, model, datasets (filling the feature cache), sampler, schedule."""
    d = setup_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    barrier(d)
    seed_everything(cfg.seed)

    splits = load_splits(cfg.data)
    model = build_model(cfg).to(d.device)
    params = set_trainable(model, cfg.finetune_stages)
    cached = cfg.feature_cache and cfg.finetune_stages == 0
    datasets = make_datasets(cfg, model, splits, run_dir, d, cached)

    per_rank_batch = max(1, cfg.batch_size // d.world)
    sampler = DistributedSampler(
        datasets["train"], num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed
    )
    steps_per_epoch = math.ceil(len(sampler) / per_rank_batch)
    step_module: nn.Module = TrainStep(model, cached)
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel

        step_module = DistributedDataParallel(step_module, find_unused_parameters=True)
    amp_dtype = None
    if cfg.amp and d.device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return Run(
        cfg, run_dir, d, model, params, cached, splits, datasets, step_module, sampler, per_rank_batch,
        total_steps=cfg.epochs * steps_per_epoch, warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
        amp_dtype=amp_dtype,
    )  # fmt: skip


def make_datasets(cfg: TrainConfig, model: AttributeModel, splits: dict[str, list[Sample]], run_dir: Path,
                  d: Dist, cached: bool) -> dict[str, Dataset]:  # fmt: skip
    """Per split with samples: cached backbone grids, or images (augmented for train if asked).
    With `data.objects: region`, object samples keep their whole photo and carry the grid cells
    of their box or mask (`sample_cells`); cached, the objects of one photo share its grid."""
    regions = cfg.data.objects == "region"
    cells = {s: sample_cells(splits[s], model.grid) if regions else None for s in SPLITS if splits[s]}
    if cached:
        cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else run_dir / "cache"
        out: dict[str, Dataset] = {}
        for s in cells:
            photos, rows = _photos(splits[s]) if regions else (splits[s], None)
            grids = cached_grids(model, photos, cache_dir, d, cfg.eval_batch_size, cfg.num_workers, s)
            out[s] = GridDataset(grids, splits[s], rows, cells[s])
        return out
    pre = Preprocess(model)
    return {s: ImageDataset(splits[s], pre, s == "train" and cfg.augment, cfg.seed, cells[s], model.grid)
            for s in cells}  # fmt: skip


def _photos(samples: list[Sample]) -> tuple[list[Sample], list[int]]:
    """(one whole-photo sample per distinct photo, each sample's index into them)."""
    first: dict[Path, int] = {}
    photos: list[Sample] = []
    for x in samples:
        if x.path not in first:
            first[x.path] = len(photos)
            photos.append(replace(x, box=None, mask=None))
    return photos, [first[x.path] for x in samples]


def _scaler(run: Run) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cuda", enabled=run.amp_dtype == torch.float16)


def resume_from_last(run: Run, state: TrainState) -> None:
    """Weights and TrainState (optimizer, scaler, RNG, counters, history) from RUN_DIR/last."""
    last = load_last(run.run_dir)
    if last is None:
        return
    weights, saved = last
    run.model.load_state_dict(weights, strict=True)
    state.restore(saved)
    if run.d.main:
        print(f"cocoattr: resuming {run.run_dir} at epoch {state.epoch}, step {state.step}", file=sys.stderr)


def save_best(run: Run, state: TrainState) -> None:
    """RUN_DIR/checkpoint: the best model so far (rank 0 calls this)."""
    from cocoattr.hub import save_checkpoint

    scores = {"val_mAP": state.best_map, "best_epoch": state.best_epoch}
    save_checkpoint(run.model, run.run_dir / "checkpoint", metrics=scores)


def record_start(run: Run, state: TrainState) -> None:
    """History row 0 and the starting model as the first 'best' checkpoint."""
    row = history_row(run, state, 0, None, None, 0.0, 0.0)
    state.history.append(row)
    state.best_map = row["val_mAP"] if row["val_mAP"] is not None else -1.0
    state.start = {"val_mAP": row["val_mAP"], "val_auc": row["val_auc"]}
    if "test" in run.datasets:  # recorded only, never used to decide anything
        test_map, test_auc = evaluate(run, run.model, "test")
        state.start |= {"test_mAP": test_map, "test_auc": test_auc}
    if run.d.main:
        save_best(run, state)
        write_history(run.run_dir, state.history)


def train_epochs(run: Run, state: TrainState) -> bool:
    """Epochs until cfg.epochs or early stopping; True if Ctrl-C / SIGTERM stopped the run (saved)."""
    with StopFlag() as stop:
        while state.epoch <= run.cfg.epochs:
            t0 = time.time()
            if not train_one_epoch(run, state, stop):
                if run.d.main:
                    save_last(run.run_dir, run.model, state)
                    write_history(run.run_dir, state.history)
                return True
            end_epoch(run, state, time.time() - t0)
    return False


def train_one_epoch(run: Run, state: TrainState, stop: StopFlag) -> bool:
    """The rest of epoch `state.epoch` (from batch `state.batch_in_epoch`); False if stopped."""
    cfg, d, model = run.cfg, run.d, run.model
    run.sampler.set_epoch(state.epoch)
    run.datasets["train"].epoch = state.epoch
    order = list(run.sampler)
    batches = [order[i : i + run.per_rank_batch] for i in range(0, len(order), run.per_rank_batch)]
    loader = DataLoader(run.datasets["train"], batch_sampler=batches[state.batch_in_epoch :],
                        num_workers=cfg.num_workers)  # fmt: skip
    model.train()
    model.backbone.eval()  # BatchNorm statistics stay ImageNet's even when fine-tuning
    bar = tqdm(loader, desc=f"epoch {state.epoch}/{cfg.epochs}", disable=not d.main, leave=False)
    for x, targets, known, cells in bar:
        lr = lr_at(state.step, run.total_steps, run.warmup_steps, cfg.lr)
        loss, label_part = train_step(run, state, x, targets, known, cells, lr)
        state.step += 1
        state.batch_in_epoch += 1
        state.loss_sum += loss
        state.label_sum += label_part
        state.loss_count += 1
        bar.set_postfix(loss=f"{state.loss_sum / state.loss_count:.4f}", lr=f"{lr:.2e}")
        if stop.agreed(d):
            return False
        if cfg.checkpoint_every_steps and state.step % cfg.checkpoint_every_steps == 0 and d.main:
            save_last(run.run_dir, model, state)
    return True


def train_step(run: Run, state: TrainState, x: torch.Tensor, targets: torch.Tensor, known: torch.Tensor,
               cells: torch.Tensor, lr: float) -> tuple[float, float]:  # fmt: skip
    """One optimizer step; returns (loss, its label part)."""
    cfg, d, optimizer, scaler = run.cfg, run.d, state.optimizer, state.scaler
    for group in optimizer.param_groups:
        group["lr"] = lr
    x, targets, known, cells = x.to(d.device), targets.to(d.device), known.to(d.device), cells.to(d.device)
    labels3 = torch.where(known, targets, torch.full_like(targets, -1.0))
    # Normalise the label loss by the GLOBAL weight count, so 2 ranks == 1 process.
    weight = all_reduce_sum(d, known.float().sum() + (~known).float().sum() * cfg.unknown_weight)
    amp = run.amp_dtype is not None
    with torch.autocast("cuda", dtype=run.amp_dtype) if amp else contextlib.nullcontext():
        logits, contrastive = run.step_module(x, labels3, cells)
    labels_part = label_loss(logits, targets, known, cfg) * d.world / weight.clamp_min(1.0)
    loss = labels_part + cfg.contrastive_weight * contrastive.float()
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.item(), labels_part.item()


def end_epoch(run: Run, state: TrainState, seconds: float) -> None:
    """Validate, keep the best checkpoint, count towards early stopping, save history and last/."""
    cfg, d, epoch = run.cfg, run.d, state.epoch
    means = torch.tensor([state.loss_sum, state.label_sum], dtype=torch.float64) / max(1, state.loss_count)
    if d.enabled:  # the mean over ranks (each rank's label part is already globally normalised)
        all_reduce_sum(d, means)
        means /= d.world
    train_loss, train_label_loss = float(means[0]), float(means[1])
    lr_now = lr_at(state.step - 1, run.total_steps, run.warmup_steps, cfg.lr)
    row = history_row(run, state, epoch, train_loss, train_label_loss, seconds, lr_now)
    state.history.append(row)
    improved = row["val_mAP"] is not None and row["val_mAP"] > state.best_map
    if improved:
        state.best_map, state.best_epoch, state.bad_epochs = row["val_mAP"], epoch, 0
        if d.main:
            save_best(run, state)
    else:
        state.bad_epochs += 1
    if d.main:
        print(f"epoch {epoch}: train_loss {train_loss:.4f}  val_mAP {_fmt(row['val_mAP'])}  "
              f"val_auc {_fmt(row['val_auc'])}  {row['seconds']:.1f}s" + ("  *" if improved else ""),
              file=sys.stderr)  # fmt: skip
    state.next_epoch()
    if cfg.early_stop_patience and state.bad_epochs >= cfg.early_stop_patience:
        if d.main:
            print(f"cocoattr: early stop, no better val mAP for {state.bad_epochs} epochs", file=sys.stderr)
        state.epoch = cfg.epochs + 1
    if d.main:
        write_history(run.run_dir, state.history)
        save_last(run.run_dir, run.model, state)


# --------------------------------------------------------------------------- scoring


@torch.no_grad()
def predict_scores(
    model: AttributeModel, dataset: Dataset, cached: bool, d: Dist, batch_size: int
) -> np.ndarray:
    """(N, A) probabilities; each rank scores a shard and the shards are all-gathered."""
    model.eval()
    mine = list(range(d.rank, len(dataset), d.world))
    loader = DataLoader(torch.utils.data.Subset(dataset, mine), batch_size=batch_size)
    parts = []
    for x, _, _, cells in loader:
        x, cells = x.to(d.device), cells.to(d.device)
        out = model.forward_head(x, cells) if cached else model(x, cells)
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


def evaluate(run: Run, model: AttributeModel, split: str) -> tuple[float, float]:
    """(mAP, mean per-image AUC) of `model` on `split`, over all ranks."""
    scores = predict_scores(model, run.datasets[split], run.cached, run.d, run.cfg.eval_batch_size)
    labels = label_matrix(run.splits[split])
    return metrics.mean_average_precision(scores, labels), metrics.mean_per_image_auc(scores, labels)


def history_row(run: Run, state: TrainState, epoch: int, train_loss: float | None,
                label_loss_: float | None, seconds: float, lr: float) -> dict:  # fmt: skip
    """One history.json row: the train losses given, validation scored now (NaN -> None)."""
    val_map, val_auc = evaluate(run, run.model, "val")
    row = {
        "epoch": epoch, "train_loss": train_loss, "train_label_loss": label_loss_,
        "val_mAP": val_map, "val_auc": val_auc, "lr": lr, "seconds": round(seconds, 2), "step": state.step,
    }  # fmt: skip
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


# --------------------------------------------------------------------------- the end of a run


def finish(run: Run, state: TrainState) -> dict:
    """Best weights -> thresholds tuned on val -> val/test metrics -> checkpoint, metrics, report."""
    from cocoattr.checkpoints import load_model
    from cocoattr.hub import save_checkpoint

    cfg, names, kinds = run.cfg, run.model.attributes, run.model.attribute_types
    best = load_model(run.run_dir / "checkpoint").to(run.d.device)
    single = Dist(device=run.d.device)
    scores = {s: predict_scores(best, run.datasets[s], run.cached, single, cfg.eval_batch_size)
              for s in ("val", "test") if s in run.datasets}  # fmt: skip
    labels = {s: label_matrix(run.splits[s]) for s in scores}
    thresholds = metrics.tune_thresholds(scores["val"], labels["val"])
    evals = {s: metrics.evaluate(scores[s], labels[s], names, kinds, thresholds) for s in scores}
    result: dict[str, Any] = {"best_epoch": state.best_epoch, "val_mAP": state.best_map}
    if "test" in evals:
        result |= {"test_mAP": evals["test"]["mAP"], "test_auc": evals["test"]["mean_per_image_auc"],
                   "test_macro_f1": evals["test"]["macro_f1"]}  # fmt: skip
    result |= {
        "val_auc": evals["val"]["mean_per_image_auc"],
        **{f"n_{s}": len(run.splits[s]) for s in SPLITS},
        "data": cfg.data.source, "train_labels": cfg.data.train_labels, "eval_labels": cfg.data.eval_labels,
        "init": cfg.init, "epochs_run": len(state.history) - 1, "start": state.start,
        "thresholds": {n: float(t) for n, t in zip(names, thresholds, strict=True)},
        "eval": evals,
    }  # fmt: skip
    save_checkpoint(best, run.run_dir / "checkpoint", metrics=result, card_extra=card_text(cfg, result))
    atomic_write_json(run.run_dir / "metrics.json", result)
    write_report(run.run_dir, state.history, result, cfg.model_dump())
    return result


def card_text(cfg: TrainConfig, result: dict) -> str:
    """The model card's training section."""
    labels = {"captions": "caption-mined (weak, noisy) labels", "hand": "hand labels",
              "coconut": "COCONut panoptic labels", "coconut+captions": "COCONut labels filled in by captions",
              "coconut-objects": "COCONut object (thing segment) labels"}  # fmt: skip
    return (
        "## Training\n\n"
        f"- Data: {cfg.data.source}; trained on {result['n_train']} samples with "
        f"{labels[cfg.data.train_labels]}; validated on {result['n_val']} and tested on {result['n_test']} "
        f"with {labels[cfg.data.eval_labels]}.\n"
        f"- Init: `{cfg.init}`; best epoch {result['best_epoch']} of {result['epochs_run']} (by val mAP); "
        f"loss {cfg.loss}, lr {cfg.lr}, batch {cfg.batch_size}, "
        f"{'frozen backbone + feature cache' if cfg.feature_cache else f'stages {cfg.finetune_stages}'}.\n"
        "- Per-attribute thresholds tuned on validation are in `metrics.json` (`thresholds`).\n"
        + (f"- Objects: {OBJECT_VIEWS[cfg.data.objects]}.\n" if _has_objects(cfg) else "")
    )


OBJECT_VIEWS = {"crop": "each object's box cropped with context",
                "region": "the whole photo, the head restricted to each object's mask or box cells"}  # fmt: skip


def _has_objects(cfg: TrainConfig) -> bool:
    return cfg.data.source == "coco_attributes" or "coconut-objects" in (
        cfg.data.train_labels,
        cfg.data.eval_labels,
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
