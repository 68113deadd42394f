"""Predictor: the optimised inference path (decode threads, BatchNorm folded, channels_last,
blockwise token projection) computes the same function as the training-time model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cocoattr.data.gallery import load_gallery
from cocoattr.errors import UserError
from cocoattr.images import load_image
from cocoattr.model import AttributeModel
from cocoattr.predictor import Predictor

ATTRS = ["red", "furry", "outdoor", "wooden"]
TYPES = ["color", "texture", "scene", "material"]


@pytest.fixture(scope="module")
def photos() -> list:
    return load_gallery().paths[:5]


def random_model(zero_features: bool) -> AttributeModel:
    """Random weights everywhere, BatchNorm statistics included, so folding them is tested."""
    torch.manual_seed(0)
    model = AttributeModel(ATTRS, TYPES, image_size=96, dim=64, heads=8, embed_dim=32)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
        if zero_features:
            model.token_proj.weight[:, : model.backbone.feature_channels] = 0
    return model.eval()


def eager(model: AttributeModel, predictor: Predictor, paths: list) -> dict[str, np.ndarray]:
    """The training-time function: eager NCHW backbone, nn.MultiheadAttention, autograd on."""
    images = [load_image(p, min_side=2 * model.image_size) for p in paths]
    with torch.enable_grad():
        out = model(predictor.preprocess(images).contiguous())
    return {"probs": out.probs.detach().numpy(), "maps": out.maps.detach().numpy(),
            "embedding": out.embedding.detach().numpy()}  # fmt: skip


@pytest.mark.parametrize("zero_features", [False, True], ids=["all-blocks", "feature-block-zero"])
def test_predict_equals_the_training_time_model(photos, zero_features):
    model = random_model(zero_features)
    predictor = Predictor(model, batch_size=3)  # 5 photos: a full and a partial batch
    got = predictor.predict(photos)
    want = eager(model, predictor, photos)
    assert len(got) == len(photos)
    for key, ref in want.items():
        mine = np.stack([getattr(p, key) for p in got])
        assert mine.shape == ref.shape
        np.testing.assert_allclose(mine, ref, atol=2e-5, rtol=1e-4, err_msg=key)
    # the skipped block is really skipped, and only when it is zero
    blocks = model._token_blocks([model.backbone.feature_channels, 1000, 13])
    assert (blocks[0] is None) == zero_features and blocks[1] is not None


def test_decode_threads_keep_order_and_match_serial(photos):
    model = random_model(zero_features=False)
    threaded = Predictor(model, decode_workers=2).predict(photos)
    serial = Predictor(model, decode_workers=1).predict(photos)
    one_by_one = [Predictor(model).predict_one(p) for p in photos]
    for a, b, c in zip(threaded, serial, one_by_one, strict=True):
        np.testing.assert_array_equal(a.probs, b.probs)
        np.testing.assert_allclose(a.probs, c.probs, atol=1e-6)  # batch 1 vs 5: same up to rounding
    assert len({p.probs.tobytes() for p in threaded}) == len(photos)  # different photos, different outputs


def test_a_bad_image_in_a_batch_is_one_user_error(photos, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    predictor = Predictor(random_model(zero_features=False))
    with pytest.raises(UserError, match="broken.jpg"):
        predictor.predict([photos[0], bad, photos[1]])
    results = list(predictor.predict_files([photos[0], bad, photos[1]]))
    assert [r[0] for r in results] == [str(photos[0]), str(bad), str(photos[1])]
    assert isinstance(results[1][1], UserError)
    assert not isinstance(results[0][1], UserError) and not isinstance(results[2][1], UserError)


def test_inference_backbone_fuses_every_relu6_into_its_convolution():
    from cocoattr.predictor import ConvAct, _fused_conv_op

    if _fused_conv_op() is None:
        pytest.skip("this torch build has no oneDNN pointwise convolution")
    model = random_model(zero_features=False)
    fast = Predictor(model).inference_backbone().body
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


@pytest.mark.parametrize("size", [(512, 512), (256, 200), (96, 96), (4000, 3000), (37, 1200)])
def test_resize_matches_pillow_within_two_grey_levels(size):
    """torch's antialiased uint8 kernel stands in for Pillow's resize: same picture, faster.
    Covers down- and upscaling, the box pre-reduction of huge sources and an extreme aspect."""
    from PIL import Image

    from cocoattr.predictor import resize_rgb

    photo = load_image(load_gallery().paths[0])
    image = photo.resize(size, Image.BICUBIC)  # real photo content at each test size
    want = np.asarray(image.resize((96, 96), Image.BILINEAR, reducing_gap=3.0)).astype(int)
    got = resize_rgb(image, 96)
    assert got.shape == (96, 96, 3) and got.dtype == np.uint8 and got.flags.c_contiguous
    diff = np.abs(got.astype(int) - want)
    assert diff.max() <= 2 and diff.mean() < 0.1, (diff.max(), diff.mean())
