"""cocoattr.inference: the head's serving form computes the training-time model's function."""

from __future__ import annotations

import pytest
import torch

from cocoattr.inference import InferenceModel


def test_inference_model_equals_the_training_path(random_model):
    """The serving rewrites (cached queries, folded output projection, blockwise token
    projection) are the same function, and a weight change refreshes them."""
    model = random_model(zero_features=False)
    engine = InferenceModel(model)
    x = torch.randn(3, 3, model.image_size, model.image_size)
    with torch.enable_grad():
        slow = model(x)
    fast = engine(x.contiguous(memory_format=torch.channels_last))
    with torch.no_grad():
        model.cls_weight.add_(0.5)  # a weight change must refresh the cached constants
    fast2 = engine(x.contiguous(memory_format=torch.channels_last))
    with torch.enable_grad():
        slow2 = model(x)
    assert not torch.allclose(slow.logits, slow2.logits)
    for a, b in ((slow, fast), (slow2, fast2)):
        assert torch.allclose(a.logits, b.logits, atol=1e-5)
        assert torch.allclose(a.maps, b.maps, atol=1e-6)
        assert torch.allclose(a.embedding, b.embedding, atol=1e-6)
    assert not torch.allclose(fast.logits, fast2.logits)


def test_token_dimensions_zero_on_every_image_are_left_out_and_change_nothing(random_model):
    """A token dimension no weight, bias or position feeds is dropped from the tokens (every
    matmul reading them shrinks); one fed only by the position embedding is kept. Same outputs."""
    model = random_model(zero_features=False)
    dead, position_only = [1, 5, 9, 30, 63], 17
    with torch.no_grad():
        for j in (*dead, position_only):
            model.token_proj.weight[j] = 0
            model.token_proj.bias[j] = 0
            model.pos_embed[..., j] = 0
        model.pos_embed[0, 3, position_only] = 0.5
    engine = InferenceModel(model)
    x = torch.randn(2, 3, model.image_size, model.image_size)
    with torch.no_grad():
        want = model(x)
        tokens, _, _ = engine._tokens(engine.prepared_backbone().parts(x))
    got = engine(x)
    assert tokens.shape[-1] == model.attn.embed_dim - len(dead)
    assert torch.allclose(got.logits, want.logits, atol=1e-5)
    assert torch.allclose(got.maps, want.maps, atol=1e-6)
    assert torch.allclose(got.embedding, want.embedding, atol=1e-6)


def test_box_masks_select_the_cells_inside_and_never_none():
    from cocoattr.inference import box_masks

    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0], [0.40, 0.40, 0.42, 0.42]])
    masks = box_masks(boxes, 4, 4).view(3, 4, 4)
    assert masks[0].tolist() == [[True, True, False, False], [True, True, False, False]] + [[False] * 4] * 2
    assert bool(masks[1].all())
    assert int(masks[2].sum()) == 1 and bool(masks[2, 1, 1])  # a tiny box keeps the cell under its centre


def test_a_region_covering_every_cell_is_the_whole_image_head(random_model):
    """Per-object attributes are the same head restricted to a box: the whole-image box gives
    exactly the image's logits, and a smaller box changes them."""
    engine = InferenceModel(random_model(zero_features=False))
    x = torch.randn(1, 3, 96, 96).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        tokens, h, w = engine._tokens(engine.prepared_backbone().parts(x))
        whole = engine._head(tokens, h, w)
        everything = engine._head(tokens, h, w, torch.ones(1, h * w, dtype=torch.bool))
        corner = engine._head(tokens, h, w, torch.arange(h * w)[None] == 0)
    assert torch.allclose(whole.logits, everything.logits, atol=1e-5)
    assert not torch.allclose(whole.logits, corner.logits, atol=1e-3)
    assert float(corner.maps[0, :, 0, 0].min()) == pytest.approx(1.0)  # all attention on the one cell


def test_objects_need_a_checkpoint_with_a_detector(random_model):
    from cocoattr.errors import UserError

    with pytest.raises(UserError, match="no object detector"):
        InferenceModel(random_model()).with_objects(torch.zeros(1, 3, 96, 96))


def test_the_small_evidence_parts_share_one_token_matmul_and_match_the_training_path():
    """Colour, object and scene channels go through token_proj as one concatenated block; the
    result must still be token_proj over the whole concatenated grid."""
    from cocoattr.inference import _token_groups
    from cocoattr.model import AttributeModel

    torch.manual_seed(0)
    model = AttributeModel(["red", "furry"], ["color", "texture"], objects=True, scene=True,
                           image_size=96, dim=64, heads=8, embed_dim=32)  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    model.eval()
    engine = InferenceModel(model)
    sizes = tuple(int(p.shape[1]) for p in model.backbone.parts(torch.zeros(1, 3, 96, 96)))
    engine._refresh()
    engine._token_blocks(sizes)
    assert [i for i, _ in engine._groups] == [[0], [1], [2, 3, 4]]  # features, concepts, the rest
    assert len(_token_groups([None, torch.ones(5, 2), torch.ones(3, 2)])) == 1
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        want = model(x)
    got = engine(x)
    assert torch.allclose(got.logits, want.logits, atol=1e-5)
    assert torch.allclose(got.maps, want.maps, atol=1e-6)
    assert torch.allclose(got.embedding, want.embedding, atol=1e-6)
