"""The resume state (cocoattr.training.state): one TrainState saved to RUN_DIR/last and loaded
back field for field; a save interrupted halfway leaves the previous last/ loadable; a last/
written before state.json (state.pt) still loads."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from cocoattr.training.config import TrainConfig
from cocoattr.training.model import make_optimizer, set_trainable
from cocoattr.training.state import TrainState, load_last, rng_state, save_last


def _state(model) -> TrainState:
    params = set_trainable(model, 0)
    optimizer = make_optimizer(model, params, TrainConfig())
    return TrainState(optimizer=optimizer, scaler=torch.amp.GradScaler("cuda", enabled=False))


def _train_one_step(model, state: TrainState) -> None:
    x = torch.randn(2, model.backbone.channels, *model.grid)
    loss = model.forward_head(x).logits.square().mean()
    state.optimizer.zero_grad()
    loss.backward()
    state.optimizer.step()
    state.step += 1
    state.batch_in_epoch += 1
    state.loss_sum += loss.item()
    state.loss_count += 1


@pytest.fixture
def trained(random_model):
    model = random_model().train()
    state = _state(model)
    _train_one_step(model, state)
    state.history.append({"epoch": 0, "train_loss": None, "val_mAP": 0.25, "lr": 0.0, "step": 0})
    state.start = {"val_mAP": 0.25, "val_auc": None}
    state.best_map, state.best_epoch = 0.25, 0
    return model, state


def _resume(random_model, run_dir: Path):
    """A fresh model and TrainState, loaded from run_dir/last as fit() does."""
    model = random_model().train()
    state = _state(model)
    weights, saved = load_last(run_dir)
    model.load_state_dict(weights, strict=True)
    state.restore(saved)
    return model, state


def _assert_same(a: TrainState, b: TrainState) -> None:
    for name in ("epoch", "batch_in_epoch", "step", "loss_sum", "loss_count", "best_map", "history", "start"):
        assert getattr(a, name) == getattr(b, name), name
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys() and sa["state"]  # int keys survive the JSON
    for key, entry in sa["state"].items():
        for name, value in entry.items():
            torch.testing.assert_close(value, sb["state"][key][name], rtol=0, atol=0)


def test_save_and_resume_round_trip(tmp_path: Path, trained, random_model) -> None:
    model, state = trained
    save_last(tmp_path, model, state)
    assert sorted(p.name for p in (tmp_path / "last").iterdir()) == [
        "model",
        "state.json",
        "state.safetensors",
    ]
    expected = (random.random(), np.random.rand(), torch.rand(3))  # drawn right after the save
    resumed, restored = _resume(random_model, tmp_path)
    _assert_same(state, restored)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, resumed.state_dict()[key], rtol=0, atol=0, msg=key)
    assert (random.random(), np.random.rand()) == expected[:2]  # RNG states restored exactly
    torch.testing.assert_close(torch.rand(3), expected[2], rtol=0, atol=0)
    fields = json.loads((tmp_path / "last" / "state.json").read_text())["fields"]
    assert fields["step"] == 1 and fields["epoch"] == 1  # readable without torch


def test_new_format_is_read_without_torch_load(
    tmp_path: Path, trained, random_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, state = trained
    save_last(tmp_path, model, state)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    _assert_same(state, _resume(random_model, tmp_path)[1])


def _half_then_raise(real):
    """A writer that writes a truncated file, then fails (a crash or a full disk mid-save)."""

    def writer(*args, **kwargs):
        real(*args, **kwargs)
        target = next(Path(a) for a in args if isinstance(a, (str, Path)) and Path(a).is_file())
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
        raise OSError("No space left on device")

    return writer


@pytest.mark.parametrize("writer", ["weights", "state tensors"])
def test_interrupted_save_leaves_the_previous_last_loadable(
    tmp_path: Path, trained, random_model, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    from cocoattr import hub
    from cocoattr.training import state as state_module

    model, state = trained
    save_last(tmp_path, model, state)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train_one_step(model, state)  # step 2, new weights
    if writer == "weights":
        monkeypatch.setattr(hub, "save_weights", _half_then_raise_weights(hub.save_weights))
    else:
        monkeypatch.setattr(state_module, "save_file", _half_then_raise(state_module.save_file))
    with pytest.raises(OSError, match="No space"):
        save_last(tmp_path, model, state)
    monkeypatch.undo()

    resumed, restored = _resume(random_model, tmp_path)
    assert restored.step == 1 and restored.loss_count == 1  # the previous save, whole
    for key, value in before.items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no staging folder left behind


def _half_then_raise_weights(real):
    def writer(model, folder):
        real(model, folder)
        path = Path(folder) / "model.safetensors"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        raise OSError("No space left on device")

    return writer


def test_a_legacy_state_pt_still_resumes(tmp_path: Path, trained, random_model) -> None:
    """last/ as written before state.json: model/ + state.pt, a torch.save of this dict."""
    from cocoattr.hub import save_checkpoint

    model, state = trained
    legacy = {
        "optimizer": state.optimizer.state_dict(), "scaler": state.scaler.state_dict(), "rng": rng_state(),
        "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch, "step": state.step,
        "loss_sum": state.loss_sum, "label_sum": state.label_sum, "loss_count": state.loss_count,
        "best_map": state.best_map, "best_epoch": state.best_epoch, "bad_epochs": state.bad_epochs,
        "history": state.history, "start": state.start,
    }  # fmt: skip
    save_checkpoint(model, tmp_path / "last" / "model")
    torch.save(legacy, tmp_path / "last" / "state.pt")
    expected = torch.rand(3)
    resumed, restored = _resume(random_model, tmp_path)
    _assert_same(state, restored)
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


def test_nothing_to_resume(tmp_path: Path) -> None:
    assert load_last(tmp_path) is None
    (tmp_path / "last" / "model").mkdir(parents=True)  # a folder without its files is not a save
    assert load_last(tmp_path) is None
