"""AttributeModel interface, checkpoint round trips, and refusal of broken checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from cocoattr.errors import UserError
from cocoattr.hub import load_model, save_checkpoint
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


def test_inference_head_equals_the_training_path(small_model):
    """The eval fast path (cached queries, folded output projection) is the same function."""
    torch.manual_seed(1)
    for p in small_model.parameters():  # non-trivial weights everywhere
        torch.nn.init.normal_(p, std=0.1)
    grid = torch.randn(3, small_model.backbone.channels, *small_model.grid)
    with torch.enable_grad():
        slow = small_model.forward_head(grid)
    with torch.inference_mode():
        fast = small_model.forward_head(grid)
        with torch.no_grad():
            small_model.cls_weight.add_(0.5)  # a weight change must refresh the cached constants
        fast2 = small_model.forward_head(grid)
    with torch.enable_grad():
        slow2 = small_model.forward_head(grid)
    for a, b in ((slow, fast), (slow2, fast2)):
        assert torch.allclose(a.logits, b.logits, atol=1e-5)
        assert torch.allclose(a.maps, b.maps, atol=1e-6)
        assert torch.allclose(a.embedding, b.embedding, atol=1e-6)
    assert not torch.allclose(fast.logits, fast2.logits)
