"""The training config (cocoattr.training.config): every bad value is one line naming the key,
through `config_from_dict`, `load_config` and the CLI (exit 2, no traceback, nothing written)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cocoattr.errors import UserError
from cocoattr.training.config import TrainConfig, config_from_dict, dump_config, load_config

ROOT = Path(__file__).resolve().parent.parent


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg), "utf-8")
    return path


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"epoch": 3}, "'epoch'"),
        ({"epochs": "ten"}, "'epochs'"),
        ({"lr": True}, "'lr'"),
        ({"data": {"sorce": "gallery"}}, "'data.sorce'"),
        ({"data": {"split": [0.5, "a", 0.5]}}, "'data.split'"),
        ({"loss": "hinge"}, "'loss'"),
        ({"feature_cache": True, "finetune_stages": 2}, "'feature_cache'"),
        ({"data": {"source": "coco_captions", "train_labels": "hand"}}, "'data.train_labels"),
    ],
)
def test_bad_config_names_the_key(raw: dict, key: str) -> None:
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        config_from_dict(raw)


def test_bad_config_file_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from cocoattr.cli import main

    bad = write_config(tmp_path / "bad.yaml", {"epochs": 2, "batch_sise": 4})
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert "batch_sise" in capsys.readouterr().err


def test_shipped_configs_are_valid() -> None:
    for path in sorted((ROOT / "train" / "configs").glob("*.yaml")):
        load_config(path)


# ----------------------------------------------------------------------------- bounds, one per key
# Each case fails if its bound is removed from TrainConfig (checked by deleting it).

BOUNDS = [
    ("lr: .nan", "'lr': must be a finite number > 0"),
    ("lr: .inf", "'lr': must be a finite number > 0"),
    ("lr: 0", "'lr': must be a finite number > 0"),
    ("grad_clip: .inf", "'grad_clip': must be a finite number >= 0"),
    ("grad_clip: -1", "'grad_clip': must be a finite number >= 0"),
    ("warmup_epochs: .nan", "'warmup_epochs': must be a finite number >= 0"),
    ("warmup_epochs: -1", "'warmup_epochs': must be a finite number >= 0"),
    ("weight_decay: -0.1", "'weight_decay': must be a finite number >= 0"),
    ("unknown_weight: .inf", "'unknown_weight': must be a finite number >= 0"),
    ("unknown_weight: -1", "'unknown_weight': must be a finite number >= 0"),
    ("contrastive_weight: -1", "'contrastive_weight': must be a finite number >= 0"),
    ("asl_gamma_neg: .nan", "'asl_gamma_neg': must be a finite number >= 0"),
    ("asl_gamma_neg: -1", "'asl_gamma_neg': must be a finite number >= 0"),
    ("asl_gamma_pos: -1", "'asl_gamma_pos': must be a finite number >= 0"),
    ("asl_clip: -0.1", "'asl_clip': must be a finite number from 0 to 1"),
    ("asl_clip: 2", "'asl_clip': must be a finite number from 0 to 1"),
    ("image_size: -5", "'image_size': must be an integer from 32 to 1024"),
    ("image_size: 100000", "'image_size': must be an integer from 32 to 1024"),
    ("num_workers: -1", "'num_workers': must be an integer >= 0"),
    ("threads: -2", "'threads': must be an integer >= 0"),
    ("epochs: 0", "'epochs': must be an integer >= 1"),
    ("batch_size: 0", "'batch_size': must be an integer >= 1"),
    ("eval_batch_size: 0", "'eval_batch_size': must be an integer >= 1"),
    ("early_stop_patience: -1", "'early_stop_patience': must be an integer >= 0"),
    ("checkpoint_every_steps: -1", "'checkpoint_every_steps': must be an integer >= 0"),
    ("finetune_stages: -2\nfeature_cache: false", "'finetune_stages': must be an integer >= -1"),
    ("data: {min_votes: 0}", "'data.min_votes': must be an integer >= 1"),
    ("data: {max_train: -1}", "'data.max_train': must be an integer >= 0"),
    ("data: {max_eval: -1}", "'data.max_eval': must be an integer >= 0"),
    ("data: {split: [0.5, 0.5]}", "'data.split': must be three fractions"),
    ("data: {split: [1.5, -0.25, -0.25]}", "'data.split': must be three fractions"),
    ("data: {source: imagenet}", "'data.source': must be one of gallery, coco_captions, coco_attributes"),
    ("data: {source: coco_attributes, train_labels: captions}", "coco_attributes has hand labels only"),
]


@pytest.mark.parametrize(("text", "message"), BOUNDS, ids=[t for t, _ in BOUNDS])
def test_each_bound_is_one_line_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text + "\n", "utf-8")
    with pytest.raises(UserError) as info:
        load_config(path)
    line = str(info.value)
    assert line.startswith(f"{path}: ") and message in line, line
    assert "\n" not in line


@pytest.mark.parametrize(
    "text",
    [
        "lr: 1.0e-6\ngrad_clip: 0\nwarmup_epochs: 0\nunknown_weight: 0",  # the smallest values allowed
        "image_size: 32\nnum_workers: 0\nthreads: 0\nfinetune_stages: -1\nfeature_cache: false",
        "image_size: null\ncache_dir: null\ndata: {root: null}",
        "warmup_epochs: 2\nlr: 1",  # integers where floats are expected
    ],
)
def test_values_at_the_bounds_are_accepted(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text + "\n", "utf-8")
    cfg = load_config(path)
    assert isinstance(cfg.lr, float) and isinstance(cfg.warmup_epochs, float)


def test_defaults_are_unchanged() -> None:
    cfg = TrainConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.warmup_epochs) == (
        20,
        16,
        3e-4,
        0.05,
        1.0,
    )
    assert (cfg.grad_clip, cfg.loss, cfg.asl_gamma_neg, cfg.asl_gamma_pos, cfg.asl_clip) == (
        1.0,
        "asl",
        4.0,
        0.0,
        0.05,
    )
    assert (cfg.unknown_weight, cfg.contrastive_weight, cfg.finetune_stages, cfg.feature_cache) == (
        0.0,
        0.1,
        0,
        True,
    )
    assert (cfg.init, cfg.backbone, cfg.image_size, cfg.cache_dir, cfg.augment) == (
        "default",
        "mobilenet_v2",
        None,
        None,
        True,
    )
    assert (cfg.early_stop_patience, cfg.checkpoint_every_steps, cfg.eval_batch_size) == (5, 0, 32)
    assert (cfg.seed, cfg.num_workers, cfg.amp, cfg.threads) == (0, 0, True, 0)
    data = cfg.data
    assert (data.source, data.root, data.train_labels, data.eval_labels) == (
        "gallery",
        None,
        "captions",
        "hand",
    )
    assert (data.split, data.split_seed, data.min_votes, data.max_train, data.max_eval) == (
        [0.5, 0.25, 0.25],
        0,
        1,
        0,
        0,
    )
    assert data.instances["val2014"] == "coco/annotations/instances_val2014.json"
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg  # config.yaml reads back


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("epochs: 2\n  bad indent: [\n", "malformed YAML"),
        ("- just\n- a list\n", "expected a mapping"),
        ("data: 5\n", "'data': must be a mapping"),
    ],
)
def test_malformed_yaml_is_one_line(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text, "utf-8")
    with pytest.raises(UserError) as info:
        load_config(path)
    assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_a_nan_through_the_cli_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("lr: .nan\n", "utf-8")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cocoattr", "train", "--config", str(path), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    expected = f"cocoattr: error: {path}: 'lr': must be a finite number > 0 (got float nan)"
    assert proc.stderr.strip().splitlines() == [expected]
    assert not out.exists()
