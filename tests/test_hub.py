"""The real Hub code path (huggingface_hub's snapshot_download / upload_folder) against a local
stand-in for the Hub on 127.0.0.1. The CLI runs in a subprocess with HF_ENDPOINT set, because
huggingface_hub reads its endpoint once, at import time."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cocoattr.engine import ONNX_NAME
from cocoattr.hub import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE = REPO_ROOT / "cocoattr" / "gallery" / "images" / "gradio_lion.jpg"


@pytest.fixture(scope="module")
def checkpoint(default_checkpoint) -> Path:
    return default_checkpoint


@pytest.fixture(scope="module")
def hub(checkpoint, fake_hub):
    fake = fake_hub
    files = {n: (checkpoint / n).read_bytes() for n in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)}
    fake.repos["user/good"] = dict(files)
    weights = files[WEIGHTS_NAME]
    fake.repos["user/truncated"] = {**files, WEIGHTS_NAME: weights[: len(weights) // 2]}
    config = json.loads(files[CONFIG_NAME])
    config["attributes"], config["attribute_types"] = (
        config["attributes"][:-1],
        config["attribute_types"][:-1],
    )
    fake.repos["user/mismatch"] = {**files, CONFIG_NAME: json.dumps(config).encode()}
    return fake


@pytest.fixture(scope="module")
def run_cli(hub_cli):
    """conftest's `hub_cli`: the CLI in a subprocess against an endpoint, with a private HF cache."""
    return hub_cli


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("cocoattr: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def predict_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    out = json.loads(proc.stdout)
    assert len(out) == 1 and len(out[0]["attributes"]) > 100
    return out[0]["attributes"]


def test_download_then_offline_from_cache(hub, tmp_path, run_cli):
    home = tmp_path / "hf"
    first = predict_json(
        run_cli(["predict", "--checkpoint", "user/good", "--json", str(IMAGE)], hub.url, home)
    )
    assert any(r.startswith("GET /user/good/resolve/") for r in hub.requests)
    snapshots = list((home / "hub" / "models--user--good" / "snapshots").iterdir())
    assert (
        len(snapshots) == 1
        and (snapshots[0] / WEIGHTS_NAME).read_bytes() == hub.repos["user/good"][WEIGHTS_NAME]
    )

    n = len(hub.requests)
    offline = run_cli(["predict", "--checkpoint", "user/good", "--json", str(IMAGE)], hub.url, home,
                      HF_HUB_OFFLINE="1")  # fmt: skip
    assert predict_json(offline) == first
    assert len(hub.requests) == n  # served from the cache: no request reached the "Hub"


def test_offline_without_cache_is_one_line_error(hub, tmp_path, run_cli):
    proc = run_cli(
        ["predict", "--checkpoint", "user/good", str(IMAGE)], hub.url, tmp_path / "hf", HF_HUB_OFFLINE="1"
    )
    assert "not cached" in one_line_error(proc)


def test_unreachable_implicit_default_falls_back_to_embedded(hub, tmp_path, checkpoint, run_cli):
    with_port_closed = "http://127.0.0.1:9"  # discard port: nothing listens there
    proc = run_cli(["predict", "--json", str(IMAGE)], with_port_closed, tmp_path / "hf")
    predict_json(proc)
    notices = [ln for ln in proc.stderr.splitlines() if "embedded zero-shot default" in ln]
    assert len(notices) == 1 and notices[0].startswith("cocoattr: ")
    # the implicit default repo not existing on the (reachable) Hub falls back the same way
    proc = run_cli(["predict", "--json", str(IMAGE)], hub.url, tmp_path / "hf2")
    predict_json(proc)
    assert "embedded zero-shot default" in proc.stderr


def test_a_hub_default_older_than_the_code_falls_back_and_an_explicit_one_says_rebuild(
    hub, tmp_path, run_cli
):
    """The Hub default published before the 4-channel scene stem (its token projection one scene
    column short): unnamed, predict falls back to the embedded default in one line; named, the
    one-line error says to rebuild it."""
    from safetensors.torch import load, save

    from cocoattr.checkpoints import DEFAULT_HUB_ID

    files = hub.repos["user/good"]
    state = load(files[WEIGHTS_NAME])
    state["token_proj.weight"] = state["token_proj.weight"][:, :-1].contiguous()
    hub.repos[DEFAULT_HUB_ID] = {**files, WEIGHTS_NAME: save(state)}
    hub.repos["user/old-scene"] = hub.repos[DEFAULT_HUB_ID]
    try:
        proc = run_cli(["predict", "--json", str(IMAGE)], hub.url, tmp_path / "hf")
        predict_json(proc)
        notices = [ln for ln in proc.stderr.splitlines() if "embedded zero-shot default instead" in ln]
        assert len(notices) == 1 and "disagrees with model.safetensors" in notices[0]
        proc = run_cli(["predict", "--checkpoint", "user/old-scene", str(IMAGE)], hub.url, tmp_path / "hf")
        assert "must be rebuilt" in one_line_error(proc)
    finally:
        del hub.repos[DEFAULT_HUB_ID], hub.repos["user/old-scene"]


def test_explicit_unknown_repo_is_one_line_error(hub, tmp_path, run_cli):
    proc = run_cli(["predict", "--checkpoint", "user/nope", str(IMAGE)], hub.url, tmp_path / "hf")
    assert "'user/nope' not found" in one_line_error(proc)


def test_truncated_weights_are_one_line_error(hub, tmp_path, run_cli):
    proc = run_cli(["predict", "--checkpoint", "user/truncated", str(IMAGE)], hub.url, tmp_path / "hf")
    assert "truncated or corrupt" in one_line_error(proc)


def test_config_disagreeing_with_tensors_is_one_line_error(hub, tmp_path, run_cli):
    proc = run_cli(["predict", "--checkpoint", "user/mismatch", str(IMAGE)], hub.url, tmp_path / "hf")
    assert "disagrees with model.safetensors" in one_line_error(proc)


def test_push_then_download(hub, tmp_path, checkpoint, run_cli):
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder)
    proc = run_cli(["push", "--checkpoint", str(folder), "--repo", "user/pushed"], hub.url, tmp_path / "hf",
                   HF_TOKEN="hf_fake_token_for_the_local_server")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "/user/pushed/commit/" in proc.stdout
    assert hub.repos["user/pushed"][WEIGHTS_NAME] == (checkpoint / WEIGHTS_NAME).read_bytes()
    shipped = {CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, "metrics.json", ONNX_NAME} & {
        p.name for p in folder.iterdir()
    }
    # metrics.json too when the checkpoint has one; model.onnx, which push exports for CPU serving
    assert {CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, ONNX_NAME} <= shipped
    assert set(hub.repos["user/pushed"]) == shipped  # and nothing else from the folder (no recipe.txt)
    proc = run_cli(["predict", "--checkpoint", "user/pushed", "--json", str(IMAGE)], hub.url, tmp_path / "hf")
    predict_json(proc)


def test_read_metrics_prefers_metrics_json_then_the_card(tmp_path):
    from cocoattr.hub import METRICS_NAME, model_card, read_metrics

    metrics = {"gallery_mAP": 0.5223, "gallery_images": 36, "note": "text is skipped", "flag": True}
    config = {"backbone": "mobilenet_v2", "attributes": ["red", "cat"], "attribute_types": ["color", "category"],
              "image_size": 288, "heads": 8, "dim": 512, "embed_dim": 384}  # fmt: skip
    both, card_only, neither = tmp_path / "both", tmp_path / "card", tmp_path / "neither"
    for folder in (both, card_only, neither):
        folder.mkdir()
    for folder in (both, card_only):
        (folder / CARD_NAME).write_text(model_card(config, metrics), "utf-8")
    (both / METRICS_NAME).write_text(json.dumps(metrics), "utf-8")
    numeric = {"gallery_mAP": 0.5223, "gallery_images": 36}
    assert read_metrics(both) == (numeric, "metrics.json")
    assert read_metrics(card_only) == (numeric, "model card")  # a Hub download has no metrics.json
    assert read_metrics(neither) == ({}, "")
