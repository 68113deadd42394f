"""AttributeModel interface, checkpoint round trips, and refusal of broken checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cocoattr.checkpoints import load_model
from cocoattr.errors import UserError
from cocoattr.hub import save_checkpoint
from cocoattr.model import AttributeModel

ATTRS = ["red", "furry", "outdoor"]
TYPES = ["color", "texture", "scene"]


@pytest.fixture(scope="module")
def small_model() -> AttributeModel:
    torch.manual_seed(0)
    return AttributeModel(ATTRS, TYPES, image_size=64, dim=64, heads=8, embed_dim=32).eval()


def test_outputs_have_the_documented_shapes(small_model):
    with torch.inference_mode():
        out = small_model(torch.randn(2, 3, 64, 64))
    h, w = small_model.grid
    assert out.logits.shape == (2, 3)
    assert out.maps.shape == (2, 3, h, w)
    assert torch.allclose(out.maps.sum((2, 3)), torch.ones(2, 3), atol=1e-5)
    assert torch.allclose(out.embedding.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert ((out.probs > 0) & (out.probs < 1)).all()


def test_contrastive_loss_prefers_matching_sets(small_model):
    out = small_model.forward_head(torch.randn(4, small_model.backbone.channels, *small_model.grid))
    labels = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    loss = small_model.contrastive_loss(out, labels)
    assert torch.isfinite(loss) and loss > 0
    assert small_model.contrastive_loss(out, torch.zeros(4, 3, dtype=torch.long)) == 0


def test_checkpoint_round_trip(tmp_path, small_model):
    folder = save_checkpoint(small_model, tmp_path / "ckpt", metrics={"mAP": 0.5})
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    loaded = load_model(folder)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        a, b = small_model(x), loaded(x)
    assert torch.allclose(a.logits, b.logits, atol=1e-6)
    card = (folder / "README.md").read_text()
    assert card.startswith("---") and "library_name: cocoattr" in card and "mAP" in card


def test_truncated_weights_are_refused(tmp_path, small_model):
    folder = save_checkpoint(small_model, tmp_path / "ckpt")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_model(folder)


def test_config_that_disagrees_with_tensors_is_refused(tmp_path, small_model):
    folder = save_checkpoint(small_model, tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config["dim"] = 128
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="disagrees"):
        load_model(folder)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "malformed JSON"),
        ('{"attributes": ["a"], "attribute_types": ["color"], "evil": 1}', "unknown"),
    ],
)
def test_bad_config_json(tmp_path, small_model, text, message):
    folder = save_checkpoint(small_model, tmp_path / "ckpt")
    (folder / "config.json").write_text(text)
    with pytest.raises(UserError, match=message):
        load_model(folder)


def test_missing_folder_and_bad_hub_id():
    with pytest.raises(UserError, match="no such folder"):
        load_model("./does/not/exist")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("heads", 0, "heads: input should be greater than or equal to 1"),
        ("image_size", 0, "image_size: input should be greater than or equal to 32"),
        ("image_size", -7, "image_size: input should be greater than or equal to 32"),
        ("image_size", 30000, "image_size: input should be less than or equal to 1024"),  # ~11 GB on load
        ("concepts", "no", "concepts: input should be a valid boolean"),
        ("temperature", float("nan"), "temperature: input should be a finite number"),
        ("dropout", 1.5, "dropout: input should be less than 1"),
        ("backbone", "resnet9000", "backbone: value error, unknown backbone"),
        ("attribute_types", ["color", "texture", "flavour"], "unknown types"),
        ("dim", 100, "dim 100 must be divisible by heads 8"),
    ],
)
def test_config_values_out_of_bounds_are_one_line_naming_the_key(tmp_path, small_model, key, value, message):
    """A Hub repo is untrusted: every config value is checked before any tensor is allocated."""
    folder = save_checkpoint(small_model, tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError) as err:
        load_model(folder)
    text = str(err.value)
    assert text.startswith(str(folder / "config.json")) and message in text and "\n" not in text, text


def test_loading_the_default_never_builds_it(tmp_path, monkeypatch):
    """'default' that has not been built is one line saying how to build it, and nothing is written."""
    import cocoattr.checkpoints

    monkeypatch.setattr(cocoattr.checkpoints, "DEFAULT_DIR", tmp_path / "default")
    with pytest.raises(UserError, match="not built yet: run `make default`"):
        load_model("default")
    assert not (tmp_path / "default").exists()


def test_stale_default_still_loads_with_one_notice(tmp_path, monkeypatch, capsys, small_model):
    import cocoattr.checkpoints

    folder = save_checkpoint(small_model, tmp_path / "default", extra_files={"recipe.txt": "old\n"})
    monkeypatch.setattr(cocoattr.checkpoints, "DEFAULT_DIR", folder)
    assert load_model("default").attributes == small_model.attributes
    assert "built from older code" in capsys.readouterr().err


def test_an_interrupted_checkpoint_save_keeps_the_old_checkpoint(tmp_path, small_model, monkeypatch):
    import cocoattr.hub

    folder = save_checkpoint(small_model, tmp_path / "ckpt")
    before = (folder / "model.safetensors").read_bytes()

    def crash_halfway(model, filename):  # noqa: ANN001 - safetensors' signature
        Path(filename).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(cocoattr.hub, "save_model", crash_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(small_model, folder)
    assert (folder / "model.safetensors").read_bytes() == before
    assert load_model(folder).attributes == small_model.attributes
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
