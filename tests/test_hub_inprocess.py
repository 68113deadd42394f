"""Checkpoint I/O (`cocoattr.hub`) called in this process, so a mutation tool sees every line
(tests/test_hub.py drives the same paths through `python -m cocoattr` subprocesses, which it
cannot): config bounds, strict loading, atomic saves and file modes, metrics from metrics.json
or the model card, and download / push against conftest's fake Hub on 127.0.0.1 (huggingface_hub
pointed at it by patching its constants, which it otherwise reads once, at import time)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

import cocoattr.hub as hub
from cocoattr.engine import ONNX_NAME
from cocoattr.errors import UserError
from cocoattr.hub import (
    CARD_NAME,
    CONFIG_NAME,
    METRICS_NAME,
    WEIGHTS_NAME,
    download,
    load_folder,
    model_card,
    model_config,
    push_to_hub,
    read_config,
    read_metrics,
    save_checkpoint,
    save_weights,
)
from cocoattr.model import AttributeModel

ATTRS, TYPES = ["red", "furry", "outdoor"], ["color", "texture", "scene"]
METRICS = {"mAP": 0.5, "images": 36}
SHIPPED = {CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, METRICS_NAME, ONNX_NAME}  # what download / push move


@pytest.fixture(scope="module")
def small_model() -> AttributeModel:
    torch.manual_seed(0)
    return AttributeModel(ATTRS, TYPES, image_size=64, dim=64, heads=8, embed_dim=32).eval()


@pytest.fixture(scope="module")
def saved(small_model, tmp_path_factory) -> Path:
    """A checkpoint folder written once; tests that change files copy it first (`folder`)."""
    return save_checkpoint(small_model, tmp_path_factory.mktemp("saved") / "ckpt", metrics=METRICS)


@pytest.fixture
def folder(saved, tmp_path) -> Path:
    copy = tmp_path / "ckpt"
    copy.mkdir()
    for p in saved.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    return copy


def _logits(model: AttributeModel) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.inference_mode():
        return model(torch.randn(1, 3, 64, 64)).logits


# ----------------------------------------------------------------------------- read_config


def test_read_config_is_the_file_as_a_dict(folder):
    assert read_config(folder) == json.loads((folder / CONFIG_NAME).read_text("utf-8"))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "{path}: missing (a checkpoint folder needs config.json and model.safetensors)"),
        (b"[1, 2]", "{path}: expected a JSON object"),
        (b'"a string"', "{path}: expected a JSON object"),
        ("unknown", "{path}: unknown config keys ['alpha', 'zeta']"),
    ],
)  # fmt: skip
def test_read_config_refuses_a_bad_file_in_one_exact_line(folder, content, expected):
    path = folder / CONFIG_NAME
    if content is None:
        path.unlink()
    elif content == "unknown":
        path.write_text(json.dumps({**json.loads(path.read_text()), "zeta": 1, "alpha": 2}), "utf-8")
    else:
        path.write_bytes(content)
    with pytest.raises(UserError) as err:
        read_config(folder)
    assert str(err.value) == expected.format(path=path)


@pytest.mark.parametrize("content", [b"{not json", b'{"a": 1', b"\xff\xfe{}"])
def test_malformed_or_undecodable_json_is_one_line(folder, content):
    (folder / CONFIG_NAME).write_bytes(content)
    with pytest.raises(UserError) as err:
        read_config(folder)
    assert str(err.value).startswith(f"{folder / CONFIG_NAME}: malformed JSON (") and "\n" not in str(
        err.value
    )


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [("image_size", 31, "image_size"), ("image_size", 1025, "image_size"), ("heads", 65, "heads"),
     ("dropout", 1.0, "dropout"), ("concepts", 1, "concepts"), ("attributes", [], "attributes")],
)  # fmt: skip
def test_every_bound_is_checked_and_names_the_key(folder, key, value, fragment):
    path = folder / CONFIG_NAME
    config = json.loads(path.read_text())
    config[key] = value
    path.write_text(json.dumps(config))
    with pytest.raises(UserError) as err:
        read_config(folder)
    assert str(err.value).startswith(f"{path}: {fragment}"), str(err.value)


def test_the_bounds_themselves_are_accepted(folder):
    path = folder / CONFIG_NAME
    config = json.loads(path.read_text())
    for key, value in (("image_size", 32), ("image_size", 1024), ("heads", 64), ("dropout", 0.0)):
        path.write_text(json.dumps({**config, key: value}))
        assert read_config(folder)[key] == value


# ----------------------------------------------------------------------------- load_folder


def test_load_folder_loads_strictly_and_records_where_and_which_weights(folder, small_model):
    model = load_folder(str(folder))
    assert torch.allclose(_logits(model), _logits(small_model), atol=1e-6)
    assert model.source == str(folder) and not model.training
    assert model.weights_sha256 == hashlib.sha256((folder / WEIGHTS_NAME).read_bytes()).hexdigest()
    assert model.attributes == ATTRS


def test_overrides_apply_only_to_config_keys(folder):
    model = load_folder(folder, dropout=0.25, not_a_config_key=3)
    assert model_config(model)["dropout"] == 0.25 and "not_a_config_key" not in model_config(model)
    assert model_config(load_folder(folder))["dropout"] == 0.0


def test_an_override_the_model_refuses_is_one_line_naming_the_config(folder):
    with pytest.raises(UserError) as err:
        load_folder(folder, heads=3)
    text = str(err.value)
    assert (
        text.startswith(f"{folder / CONFIG_NAME}: ") and "divisible by heads 3" in text and "\n" not in text
    )


def test_missing_weights_are_one_exact_line(folder):
    (folder / WEIGHTS_NAME).unlink()
    with pytest.raises(UserError) as err:
        load_folder(folder)
    assert str(err.value) == f"{folder / WEIGHTS_NAME}: missing"


@pytest.mark.parametrize(
    "damage",
    [lambda b: b[: len(b) // 2], lambda b: b[:7], lambda b: os.urandom(4096), lambda b: pickle.dumps({"x": 1})],
    ids=["half", "header-cut", "random", "pickle"],
)  # fmt: skip
def test_truncated_or_corrupt_weights_are_refused(folder, damage):
    weights = folder / WEIGHTS_NAME
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(UserError) as err:
        load_folder(folder)
    assert str(err.value).startswith(f"{weights}: truncated or corrupt safetensors file (")


def test_a_config_that_disagrees_names_the_first_two_mismatches(folder):
    path = folder / CONFIG_NAME
    config = json.loads(path.read_text())
    config["attributes"], config["attribute_types"] = ATTRS[:2], TYPES[:2]  # several tensors change shape
    path.write_text(json.dumps(config))
    with pytest.raises(UserError) as err:
        load_folder(folder)
    prefix = f"{folder}: config.json disagrees with model.safetensors: "
    text = str(err.value)
    assert text.startswith(prefix) and "\n" not in text and "\t" not in text
    parts = text[len(prefix) :].split("; ")
    assert len(parts) == 2 and all(p.startswith("size mismatch for ") for p in parts), parts


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_weights_with_a_tensor_missing_or_extra_are_refused_not_half_loaded(folder, change):
    """Strict loading: a non-strict load would leave a missing tensor at its random init silently."""
    from safetensors.torch import load_file, save_file

    weights = folder / WEIGHTS_NAME
    state = load_file(weights)
    if change == "missing":
        state.pop(sorted(state)[-1])
    else:
        state["extra.weight"] = torch.zeros(2)
    save_file(state, weights)
    with pytest.raises(UserError) as err:
        load_folder(folder)
    key = "Missing key(s)" if change == "missing" else "Unexpected key(s)"
    assert str(err.value).startswith(f"{folder}: config.json disagrees with model.safetensors: {key}")


# ----------------------------------------------------------------------------- saving


def test_save_checkpoint_writes_every_part(small_model, tmp_path):
    out = save_checkpoint(small_model, str(tmp_path / "ckpt"), metrics=METRICS, card_extra="Trained on X.",
                          extra_files={"recipe.txt": "abc\n"})  # fmt: skip
    assert out == tmp_path / "ckpt" and isinstance(out, Path)
    assert {p.name for p in out.iterdir()} == SHIPPED - {ONNX_NAME} | {"recipe.txt"}
    config = json.loads((out / CONFIG_NAME).read_text("utf-8"))
    assert config == model_config(small_model) and list(config) == sorted(config)  # sort_keys
    assert (out / CARD_NAME).read_text("utf-8") == model_card(config, METRICS, "Trained on X.")
    assert json.loads((out / METRICS_NAME).read_text("utf-8")) == METRICS
    assert (out / "recipe.txt").read_text("utf-8") == "abc\n"
    assert torch.allclose(_logits(load_folder(out)), _logits(small_model), atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"], "no temporary left beside it"


def test_save_checkpoint_without_metrics_has_no_metrics_file(small_model, tmp_path):
    out = save_checkpoint(small_model, tmp_path / "ckpt")
    assert {p.name for p in out.iterdir()} == {CONFIG_NAME, WEIGHTS_NAME, CARD_NAME}
    assert (out / CARD_NAME).read_text("utf-8") == model_card(model_config(small_model))  # no extra text


def test_saving_over_a_folder_replaces_it_whole(small_model, folder):
    (folder / "stale.txt").write_text("from an older save")
    (folder / METRICS_NAME).write_text(json.dumps({"old": 1}))
    save_checkpoint(small_model, folder)
    assert {p.name for p in folder.iterdir()} == {CONFIG_NAME, WEIGHTS_NAME, CARD_NAME}
    assert [p.name for p in folder.parent.iterdir()] == ["ckpt"]


def test_an_interrupted_save_leaves_the_old_folder_whole(small_model, folder, monkeypatch):
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def crash(*args, **kwargs):  # noqa: ANN002, ANN003
        raise KeyboardInterrupt

    monkeypatch.setattr(hub, "model_card", crash)  # after the weights and config.json are staged
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(small_model, folder, metrics={"new": 2})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in folder.parent.iterdir()] == ["ckpt"]


def test_save_weights_replaces_the_file_atomically(small_model, folder, monkeypatch):
    weights = folder / WEIGHTS_NAME
    before = weights.read_bytes()
    torch.manual_seed(5)
    other = AttributeModel(ATTRS, TYPES, image_size=64, dim=64, heads=8, embed_dim=32).eval()
    save_weights(other, str(folder))
    assert weights.read_bytes() != before and sorted(os.listdir(folder)) == sorted(SHIPPED - {ONNX_NAME})
    assert torch.allclose(_logits(load_folder(folder)), _logits(other), atol=1e-6)
    written = weights.read_bytes()

    def half_then_crash(model, filename):  # noqa: ANN001 - safetensors' signature
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(hub, "save_model", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        save_weights(small_model, folder)
    assert weights.read_bytes() == written and sorted(os.listdir(folder)) == sorted(SHIPPED - {ONNX_NAME})


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_saved_files_follow_the_umask(small_model, tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        out = save_checkpoint(small_model, tmp_path / "ckpt", metrics=METRICS)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == dir_mode
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == dict.fromkeys(
        (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, METRICS_NAME), file_mode
    )


# ----------------------------------------------------------------------------- the model card


def test_the_model_card_says_what_the_config_says():
    config = {"backbone": "mobilenet_v2", "attributes": ["red", "cat", "blue"], "image_size": 288,
              "attribute_types": ["color", "category", "color"], "heads": 8, "dim": 512, "embed_dim": 384,
              "kind": "zero-shot", "description": "A test model.", "concepts": True, "colour": False}  # fmt: skip
    card = model_card(config, {"mAP": 0.52234, "images": 36, "note": "text", "split": None}, "Extra words.")
    head, front, body = card.split("---\n", 2)
    assert head == "" and set(front.splitlines()) >= {
        "library_name: cocoattr", "license: apache-2.0", "pipeline_tag: image-classification",
        "- image-classification", "- multi-label", "- visual-attributes", "- backbone:mobilenet_v2",
    }  # fmt: skip
    assert body == "\n".join([
        "", "# cocoattr zero-shot attribute model (mobilenet_v2)", "", "A test model.", "",
        "- Attributes: 3 (category, color)",
        "- Input: 288x288 RGB, backbone `mobilenet_v2` + ImageNet concepts=True + colour channels=False",
        "- Head: 8-head cross-attention, d=512, contrastive dim 384", "",
        "## Metrics", "", "| metric | value |", "|---|---|", "| mAP | 0.5223 |", "| images | 36 |", "",
        "Extra words.", "", "## Vocabulary", "", "red, cat, blue", "",
    ])  # fmt: skip


def test_a_card_without_kind_description_or_metrics_uses_the_defaults():
    config = {"backbone": "mobilenet_v2", "attributes": ["red"], "attribute_types": ["color"],
              "image_size": 64, "heads": 2, "dim": 8, "embed_dim": 4}  # fmt: skip
    body = model_card(config).split("---\n", 2)[2]
    assert body == "\n".join([
        "", "# cocoattr trained attribute model (mobilenet_v2)", "", "", "", "- Attributes: 1 (color)",
        "- Input: 64x64 RGB, backbone `mobilenet_v2` + ImageNet concepts=None + colour channels=None",
        "- Head: 2-head cross-attention, d=8, contrastive dim 4", "", "## Vocabulary", "", "red", "",
    ])  # fmt: skip
    assert "## Metrics" not in model_card(config, {})


# ----------------------------------------------------------------------------- read_metrics


CARD = """---
library_name: cocoattr
---
| early | 1 |

# cocoattr \ufffd model

## Metrics   

| metric | value |
|---|---|
| metric | 7 |
| mAP | 0.5223 |
| images | 36 |
| delta | -3 |
| small | 1e-3 |
| broken | n/a |
| after_broken | 2 |
| three | 1 | 2 |
  | indented | 4 |
| spaced | 5 |   
|Xtight|7|

## Vocabulary

| later | 9 |
"""


def test_read_metrics_reads_metrics_json_first_keeping_numbers_only(tmp_path):
    (tmp_path / METRICS_NAME).write_text(json.dumps({"mAP": 0.5, "n": 3, "name": "x", "flag": True}), "utf-8")
    (tmp_path / CARD_NAME).write_text(CARD, "utf-8")
    assert read_metrics(str(tmp_path)) == ({"mAP": 0.5, "n": 3}, "metrics.json")


@pytest.mark.parametrize(
    "metrics_json", [None, b"{not json", b"\xff\xfe", b"[1, 2]", b'{"name": "x", "flag": true}', b"{}"]
)
def test_read_metrics_falls_back_to_the_cards_table(tmp_path, metrics_json):
    """Only rows of the `## Metrics` section with two cells and a number; the header row (first
    cell `metric`, even with a number beside it) is not a metric; a card that is not UTF-8 reads."""
    if metrics_json is not None:
        (tmp_path / METRICS_NAME).write_bytes(metrics_json)
    (tmp_path / CARD_NAME).write_bytes(CARD.encode("utf-8").replace(b"\xef\xbf\xbd", b"\xff"))  # not UTF-8
    rows, where = read_metrics(tmp_path)
    assert where == "model card"
    assert rows == {"mAP": 0.5223, "images": 36, "delta": -3, "small": 0.001, "after_broken": 2, "spaced": 5,
                    "Xtight": 7}  # fmt: skip
    kinds = [type(rows[k]) for k in ("mAP", "images", "delta", "small", "spaced")]
    assert kinds == [float, int, int, float, int]


def test_read_metrics_of_a_card_made_by_model_card_round_trips(tmp_path):
    config = {"backbone": "mobilenet_v2", "attributes": ["red"], "attribute_types": ["color"],
              "image_size": 64, "heads": 2, "dim": 8, "embed_dim": 4}  # fmt: skip
    (tmp_path / CARD_NAME).write_text(model_card(config, {"gallery_mAP": 0.52234, "gallery_images": 36}))
    assert read_metrics(tmp_path) == ({"gallery_mAP": 0.5223, "gallery_images": 36}, "model card")


@pytest.mark.parametrize(
    "card", [None, "# a card\n\n## Metrics\n\n| metric | value |\n|---|---|\n", "no table\n"]
)
def test_no_metrics_anywhere_is_empty(tmp_path, card):
    if card is not None:
        (tmp_path / CARD_NAME).write_text(card, "utf-8")
    assert read_metrics(tmp_path) == ({}, "")


# ----------------------------------------------------------------------------- download


@pytest.fixture
def repos(at_hub, saved):
    """Model repos on the fake Hub: good (with files download must leave behind), truncated,
    corrupt, and one without weights."""
    files = {n: (saved / n).read_bytes() for n in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, METRICS_NAME)}
    weights = files[WEIGHTS_NAME]
    at_hub.repos["inproc/good"] = {**files, ONNX_NAME: b"onnx bytes", "recipe.txt": b"x", "notes/a.bin": b"y"}
    at_hub.repos["inproc/truncated"] = {**files, WEIGHTS_NAME: weights[: len(weights) // 3]}
    at_hub.repos["inproc/corrupt"] = {**files, WEIGHTS_NAME: b"\x08" + weights[1:]}
    at_hub.repos["inproc/no-weights"] = {n: d for n, d in files.items() if n != WEIGHTS_NAME}
    return at_hub


def test_download_fetches_the_checkpoint_files_and_nothing_else(repos, saved, small_model, tmp_path):
    path = download("inproc/good")
    assert path.is_relative_to(tmp_path / "hf-cache")
    assert {p.name for p in path.iterdir()} == SHIPPED
    for name in SHIPPED:
        assert (path / name).read_bytes() == repos.repos["inproc/good"][name]
    assert torch.allclose(_logits(load_folder(path)), _logits(small_model), atol=1e-6)


def test_download_asks_for_the_given_revision(repos):
    download("inproc/good", revision="v1.0")
    assert "GET /api/models/inproc/good/revision/v1.0" in repos.requests
    download("inproc/good")
    assert "GET /api/models/inproc/good/revision/main" in repos.requests


def test_offline_the_cached_download_is_served_without_a_request(repos, monkeypatch):
    import huggingface_hub.constants as hc

    online = download("inproc/good")
    n = len(repos.requests)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    assert download("inproc/good") == online and len(repos.requests) == n
    with pytest.raises(UserError) as err:
        download("inproc/truncated")
    assert str(err.value) == "Hub checkpoint 'inproc/truncated' is not cached and the Hub cannot be reached"


@pytest.mark.parametrize("repo", ["inproc/truncated", "inproc/corrupt"])
def test_a_downloaded_truncated_or_corrupt_checkpoint_is_refused_on_load(repos, repo):
    path = download(repo)
    with pytest.raises(UserError, match="truncated or corrupt safetensors file"):
        load_folder(path)


@pytest.mark.parametrize(
    ("repo", "expected"),
    [("inproc/nope", "Hub checkpoint 'inproc/nope' not found (or private: set HF_TOKEN)"),
     ("inproc/no-weights", "Hub checkpoint 'inproc/no-weights' has no model.safetensors")],
)  # fmt: skip
def test_download_failures_are_one_exact_line(repos, repo, expected):
    with pytest.raises(UserError) as err:
        download(repo)
    assert str(err.value) == expected


@pytest.mark.parametrize("error", [OSError("disk full"), ValueError("bad repo id")])
def test_other_download_errors_are_one_line_naming_the_repo(monkeypatch, error):
    def fail(*args, **kwargs):  # noqa: ANN002, ANN003
        raise error

    monkeypatch.setattr(hub, "snapshot_download", fail)
    with pytest.raises(UserError) as err:
        download("inproc/any")
    assert str(err.value) == f"could not download Hub checkpoint 'inproc/any' ({type(error).__name__})"


# ----------------------------------------------------------------------------- push


@pytest.fixture
def api_calls(monkeypatch) -> list:
    """What push_to_hub asked of HfApi (the real client, against the fake Hub)."""
    calls: list = []

    class Recording(hub.HfApi):
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            calls.append(("init", args, kwargs))
            super().__init__(*args, **kwargs)

        def create_repo(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
            calls.append(("create_repo", args, kwargs))
            return super().create_repo(*args, **kwargs)

        def upload_folder(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
            calls.append(("upload_folder", args, kwargs))
            return super().upload_folder(*args, **kwargs)

    monkeypatch.setattr(hub, "HfApi", Recording)
    return calls


def test_push_uploads_the_checkpoint_files_and_returns_the_commit(at_hub, api_calls, folder, small_model):
    (folder / "recipe.txt").write_text("not shipped")
    url = push_to_hub(str(folder), "inproc/pushed", token="hf_fake")
    files = at_hub.repos["inproc/pushed"]
    assert url == f"{at_hub.url}/inproc/pushed/commit/{at_hub.sha(files)}"
    assert set(files) == SHIPPED and (folder / ONNX_NAME).is_file()  # push exports the CPU graph first
    assert all(files[name] == (folder / name).read_bytes() for name in SHIPPED)
    assert [c[0] for c in api_calls] == ["init", "create_repo", "upload_folder"]
    assert api_calls[0][2] == {"token": "hf_fake"}
    assert api_calls[1][1] == ("inproc/pushed",)
    assert api_calls[1][2] == {"private": False, "exist_ok": True, "repo_type": "model"}
    assert api_calls[2][2]["folder_path"] == str(folder) and api_calls[2][2]["repo_id"] == "inproc/pushed"
    assert torch.allclose(_logits(load_folder(download("inproc/pushed"))), _logits(small_model), atol=1e-6)


def test_push_private_asks_for_a_private_repo(at_hub, api_calls, folder):
    push_to_hub(folder, "inproc/private", private=True)
    assert api_calls[1][2]["private"] is True and api_calls[0][2] == {"token": None}


def test_push_checks_the_config_before_any_request(at_hub, folder):
    (folder / CONFIG_NAME).write_text("[]")
    n = len(at_hub.requests)
    with pytest.raises(UserError, match="expected a JSON object"):
        push_to_hub(folder, "inproc/bad")
    assert len(at_hub.requests) == n and not (folder / ONNX_NAME).exists()


def test_a_hub_refusal_during_push_is_one_line(at_hub, folder, monkeypatch):
    monkeypatch.setattr(hub.HfApi, "create_repo", lambda self, *a, **k: None)  # the upload then gets a 404
    with pytest.raises(UserError) as err:
        push_to_hub(folder, "inproc/never-created")
    text = str(err.value)
    assert text.startswith("could not push to the Hub repo 'inproc/never-created' (RepositoryNotFoundError: ")
    assert text.endswith(")") and "\n" not in text and len(text) < 400, text


@pytest.mark.parametrize(
    ("message", "shown"), [("first line\nsecond", "first line"), ("\n  \nsecond", "second"), ("", "")]
)
def test_a_push_error_shows_its_first_non_blank_line(at_hub, folder, monkeypatch, message, shown):
    def refuse(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        raise OSError(message)

    monkeypatch.setattr(hub.HfApi, "upload_folder", refuse)
    with pytest.raises(UserError) as err:
        push_to_hub(folder, "inproc/refused")
    assert str(err.value) == f"could not push to the Hub repo 'inproc/refused' (OSError: {shown})"


def test_write_onnx_exports_once_and_again_for_new_weights(folder, small_model, monkeypatch):
    import cocoattr.engine

    path = hub.write_onnx(str(folder))
    assert path == folder / ONNX_NAME and path.is_file()
    exports = []
    real = cocoattr.engine.export_onnx
    monkeypatch.setattr(cocoattr.engine, "export_onnx", lambda *a: exports.append(a) or real(*a))
    before = path.read_bytes()
    assert hub.write_onnx(folder) == path and exports == [] and path.read_bytes() == before
    torch.manual_seed(9)
    save_weights(AttributeModel(ATTRS, TYPES, image_size=64, dim=64, heads=8, embed_dim=32).eval(), folder)
    hub.write_onnx(folder)
    assert len(exports) == 1 and path.read_bytes() != before


def test_an_unreachable_hub_is_one_line_for_push_and_download(at_hub, folder, monkeypatch):
    """huggingface_hub 2 lets its HTTP client's ConnectError through (not an OSError)."""
    import socket

    import huggingface_hub.constants as hc

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(hc, "ENDPOINT", dead)
    monkeypatch.setattr(hc, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}")
    with pytest.raises(UserError, match=r"could not push to the Hub repo 'inproc/dead' \(ConnectError"):
        push_to_hub(folder, "inproc/dead", token="hf_fake")
    with pytest.raises(UserError, match="inproc/dead"):
        download("inproc/dead")
