"""`python -m cocoattr train` at the edge (cocoattr.cli.cmd_train): a bad --out is one clear
line and exit 2 before any work starts (no config read past validation, no model built)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cocoattr.cli import main


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "ok.yaml"
    path.write_text("epochs: 1\n", "utf-8")
    return path


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if training starts."""
    from cocoattr.training import loop

    monkeypatch.setattr(loop, "prepare", lambda *a, **k: pytest.fail("training started"))


def _one_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cocoattr: error: "), err
    return err[0]


def test_out_is_an_existing_file(tmp_path: Path, config: Path, no_work, capsys) -> None:
    out = tmp_path / "run.txt"
    out.write_text("keep me")
    assert main(["train", "--config", str(config), "--out", str(out)]) == 2
    assert f"{out}: is a file" in _one_line(capsys)
    assert out.read_text() == "keep me"


def test_out_below_a_file(tmp_path: Path, config: Path, no_work, capsys) -> None:
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "run"
    assert main(["train", "--config", str(config), "--out", str(out)]) == 2
    assert "is not a folder" in _one_line(capsys)


def test_out_in_an_unwritable_folder(
    tmp_path: Path, config: Path, no_work, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    assert main(["train", "--config", str(config), "--out", str(locked / "run")]) == 2
    assert "permission denied" in _one_line(capsys)
    assert not (locked / "run").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_out_in_a_read_only_folder(tmp_path: Path, config: Path, no_work, capsys) -> None:
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(["train", "--config", str(config), "--out", str(locked / "run")]) == 2
        assert "permission denied" in _one_line(capsys)
    finally:
        locked.chmod(0o755)


def test_good_out_reaches_training(
    tmp_path: Path, config: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """cmd_train passes the validated config and the folder on, and prints the result lines."""
    from cocoattr.training import loop

    seen = {}

    def fake_fit(cfg, run_dir, resume=True):
        seen.update(cfg=cfg, run_dir=run_dir, resume=resume)
        return {"best_epoch": 3, "val_mAP": 0.5, "val_auc": None, "test_mAP": 0.25}

    monkeypatch.setattr(loop, "fit", fake_fit)
    out = tmp_path / "new" / "run"
    assert main(["train", "--config", str(config), "--out", str(out), "--no-resume"]) == 0
    assert seen["cfg"].epochs == 1 and seen["run_dir"] == out and seen["resume"] is False
    captured = capsys.readouterr()
    assert captured.out.strip() == "best_epoch 3  val_mAP 0.5000  test_mAP 0.2500"
    assert f"cocoattr: wrote {out / 'checkpoint'} and {out / 'report.md'}" in captured.err
