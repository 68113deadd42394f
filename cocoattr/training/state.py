"""The resume state: one `TrainState`, saved to and resumed from `RUN_DIR/last/` by its fields.

    RUN_DIR/last/model/              the weights (a checkpoint folder, safetensors)
    RUN_DIR/last/state.json          every TrainState field; the optimizer, scaler and RNG
                                     states as JSON with their tensors named ...
    RUN_DIR/last/state.safetensors   ... and stored here

No pickles. `last/` is replaced whole (`cocoattr.atomic.atomic_folder`), at every epoch end and
every `checkpoint_every_steps`, so a crash or Ctrl-C leaves the previous save or the new one.
A `last/` written before this layout (`state.pt`, a torch.save of the same fields) still
resumes: it is read with `weights_only=True`.

The data order of epoch e is a pure function of (seed, e) and the augmentation of sample i of
epoch e of (seed, e, i); with the RNG states restored too, a resumed run replays exactly.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from cocoattr.atomic import atomic_folder, atomic_write_json
from cocoattr.model import AttributeModel

STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"
LEGACY_STATE = "state.pt"


# --------------------------------------------------------------------------- RNG


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Python, NumPy, torch and CUDA generator states (types torch.load(weights_only=True) accepts)."""
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


class RNG:
    """All generators as one object with the optimizer's state_dict / load_state_dict interface."""

    def state_dict(self) -> dict:
        return rng_state()

    def load_state_dict(self, state: dict) -> None:
        set_rng_state(state)


# --------------------------------------------------------------------------- the state


@dataclass
class TrainState:
    """Where a run is. Saved and restored field by field: a field whose value has `state_dict()`
    (optimizer, scaler, RNG) is saved as that state and loaded back into the same object."""

    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    rng: RNG = field(default_factory=RNG)
    epoch: int = 1  # the epoch being run (1-based; > cfg.epochs when done)
    batch_in_epoch: int = 0  # batches of this epoch already stepped
    step: int = 0  # optimizer steps so far
    loss_sum: float = 0.0  # this epoch's running sums, for its mean train loss
    label_sum: float = 0.0
    loss_count: int = 0
    best_map: float = -1.0  # best val mAP so far (-1: none yet)
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    history: list[dict] = field(default_factory=list)  # one row per epoch, epoch 0 = the start
    start: dict = field(default_factory=dict)  # the starting model's val (and test) figures

    def saved(self) -> dict[str, Any]:
        """{field: value}, with each stateful object replaced by its state_dict()."""
        return {f.name: _state_of(getattr(self, f.name)) for f in fields(self)}

    def restore(self, saved: dict[str, Any]) -> None:
        """The inverse of `saved`: state dicts are loaded into the objects, in field order."""
        for f in fields(self):
            current = getattr(self, f.name)
            if hasattr(current, "load_state_dict"):
                current.load_state_dict(saved[f.name])
            else:
                setattr(self, f.name, saved[f.name])

    def next_epoch(self) -> None:
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self.loss_sum, self.label_sum, self.loss_count = 0.0, 0.0, 0


def _state_of(value: Any) -> Any:
    return value.state_dict() if hasattr(value, "state_dict") else value


# --------------------------------------------------------------------------- JSON + tensors


def _encode(value: Any, tensors: dict[str, torch.Tensor], name: str) -> Any:
    """JSON for a state dict: tensors become {"__tensor__": name}; tuples and dicts keep their
    types (an optimizer's state is keyed by int, Python's RNG state is a tuple)."""
    if isinstance(value, torch.Tensor):
        tensors[name] = value.detach().cpu().contiguous()
        return {"__tensor__": name}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{name}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{name}.{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {"__items__": [[k, _encode(v, tensors, f"{name}.{k}")] for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save {name}: {type(value).__name__}")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__tuple__" in value:
            return tuple(_decode(v, tensors) for v in value["__tuple__"])
        return {k: _decode(v, tensors) for k, v in value["__items__"]}
    return value


# --------------------------------------------------------------------------- RUN_DIR/last


def save_last(run_dir: Path, model: AttributeModel, state: TrainState) -> None:
    """Replace RUN_DIR/last whole: the weights, then the state (JSON + safetensors)."""
    from cocoattr.hub import save_checkpoint

    saved, tensors = state.saved(), {}
    stateful = {k for k in saved if hasattr(getattr(state, k), "load_state_dict")}
    record = {
        "fields": {k: v for k, v in saved.items() if k not in stateful},
        "state_dicts": {k: _encode(saved[k], tensors, k) for k in sorted(stateful)},
    }
    with atomic_folder(Path(run_dir) / "last") as staging:
        save_checkpoint(model, staging / "model")
        save_file(tensors, str(staging / STATE_TENSORS))
        atomic_write_json(staging / STATE_JSON, record)


def _read_state(folder: Path) -> dict[str, Any] | None:
    if (folder / STATE_JSON).is_file() and (folder / STATE_TENSORS).is_file():
        tensors = load_file(str(folder / STATE_TENSORS))
        record = json.loads((folder / STATE_JSON).read_text("utf-8"))
        return record["fields"] | {k: _decode(v, tensors) for k, v in record["state_dicts"].items()}
    if (folder / LEGACY_STATE).is_file():  # written before state.json: the same fields, torch.save'd
        return torch.load(folder / LEGACY_STATE, map_location="cpu", weights_only=True)
    return None


def load_last(run_dir: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """(model state dict, TrainState.saved() as it was) from RUN_DIR/last, or from the copy an
    interrupted replace leaves beside it; None when there is neither."""
    run_dir = Path(run_dir)
    for folder in (run_dir / "last", run_dir / ".last.old"):
        weights = folder / "model" / "model.safetensors"
        if weights.is_file():
            saved = _read_state(folder)
            if saved is not None:
                return load_file(str(weights)), saved
    return None
