"""cocoattr.inference: every serving rewrite computes the training-time model's function."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cocoattr.inference import ConvAct, InferenceModel, _fused_conv_op, inference_copy


def test_inference_backbone_fuses_every_relu6_into_its_convolution(random_model):
    if _fused_conv_op() is None:
        pytest.skip("this torch build has no oneDNN pointwise convolution")
    model = random_model(zero_features=False)
    fast = inference_copy(model.backbone).body
    stock_relu6 = sum(isinstance(m, torch.nn.ReLU6) for m in model.backbone.body.modules())
    fused = [m for m in fast.modules() if isinstance(m, ConvAct)]
    assert stock_relu6 == 35 and len(fused) == stock_relu6  # MobileNetV2: 35 conv+BN+ReLU6 blocks
    left = [n for n, m in fast.named_modules() if isinstance(m, (torch.nn.ReLU6, torch.nn.BatchNorm2d))]
    assert all(n.endswith(".act") for n in left)  # each ReLU6 now lives only as ConvAct's fallback
    assert all(m.attr == "hardtanh" and m.scalars == [0.0, 6.0] for m in fused)
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():  # the fused op on channels_last, the two-op path on NCHW
        a = fast(x.contiguous(memory_format=torch.channels_last))
        b = fast(x)
    with torch.no_grad():
        c = model.backbone.body(x)
    np.testing.assert_allclose(a.numpy(), c.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(b.numpy(), c.numpy(), atol=1e-4, rtol=1e-4)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 6.0  # the clamp really ran


def test_inference_model_equals_the_training_path(random_model):
    """The serving rewrites (cached queries, folded output projection, blockwise token
    projection, fused backbone) are the same function, and a weight change refreshes them."""
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
        assert torch.allclose(a.logits, b.logits, atol=1e-4)
        assert torch.allclose(a.maps, b.maps, atol=1e-5)
        assert torch.allclose(a.embedding, b.embedding, atol=1e-5)
    assert not torch.allclose(fast.logits, fast2.logits)
