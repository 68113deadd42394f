"""Predictor: decode threads, batching and the serving engine compute the same function as the
training-time model, on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cocoattr.data.gallery import load_gallery
from cocoattr.errors import UserError
from cocoattr.images import load_image
from cocoattr.model import AttributeModel
from cocoattr.predictor import Predictor


@pytest.fixture(scope="module")
def photos() -> list:
    return load_gallery().paths[:5]


def eager(model: AttributeModel, predictor: Predictor, paths: list) -> dict[str, np.ndarray]:
    """The training-time function: eager NCHW backbone, nn.MultiheadAttention, autograd on."""
    images = [load_image(p, min_side=2 * model.image_size) for p in paths]
    with torch.enable_grad():
        out = model(predictor.preprocess(images).contiguous())
    return {"probs": out.probs.detach().numpy(), "maps": out.maps.detach().numpy(),
            "embedding": out.embedding.detach().numpy()}  # fmt: skip


@pytest.mark.parametrize("zero_features", [False, True], ids=["all-blocks", "feature-block-zero"])
def test_predict_equals_the_training_time_model(photos, zero_features, random_model):
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
    blocks = predictor.engine.head._token_blocks((model.backbone.feature_channels, 1000, 13))
    assert (blocks[0] is None) == zero_features and blocks[1] is not None


def test_decode_threads_keep_order_and_match_serial(photos, random_model):
    model = random_model(zero_features=False)
    threaded = Predictor(model, decode_workers=2).predict(photos)
    serial = Predictor(model, decode_workers=1).predict(photos)
    one_by_one = [Predictor(model).predict_one(p) for p in photos]
    for a, b, c in zip(threaded, serial, one_by_one, strict=True):
        np.testing.assert_array_equal(a.probs, b.probs)
        np.testing.assert_allclose(a.probs, c.probs, atol=1e-6)  # batch 1 vs 5: same up to rounding
    assert len({p.probs.tobytes() for p in threaded}) == len(photos)  # different photos, different outputs


def test_a_bad_image_in_a_batch_is_one_user_error(photos, tmp_path, random_model):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    predictor = Predictor(random_model(zero_features=False))
    with pytest.raises(UserError, match="broken.jpg"):
        predictor.predict([photos[0], bad, photos[1]])
    results = list(predictor.predict_files([photos[0], bad, photos[1]]))
    assert [r[0] for r in results] == [str(photos[0]), str(bad), str(photos[1])]
    assert isinstance(results[1][1], UserError)
    assert not isinstance(results[0][1], UserError) and not isinstance(results[2][1], UserError)
