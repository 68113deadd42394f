"""cocoattr.transforms: the pixels every consumer feeds the model."""

from __future__ import annotations

import numpy as np
import pytest

from cocoattr.data.gallery import load_gallery
from cocoattr.images import load_image
from cocoattr.transforms import resize_rgb


@pytest.mark.parametrize("size", [(512, 512), (256, 200), (96, 96), (4000, 3000), (37, 1200)])
def test_resize_matches_pillow_within_two_grey_levels(size):
    """torch's antialiased uint8 kernel stands in for Pillow's resize: same picture, faster.
    Covers down- and upscaling, the box pre-reduction of huge sources and an extreme aspect."""
    from PIL import Image

    photo = load_image(load_gallery().paths[0])
    image = photo.resize(size, Image.BICUBIC)  # real photo content at each test size
    want = np.asarray(image.resize((96, 96), Image.BILINEAR, reducing_gap=3.0)).astype(int)
    got = resize_rgb(image, 96)
    assert got.shape == (96, 96, 3) and got.dtype == np.uint8 and got.flags.c_contiguous
    diff = np.abs(got.astype(int) - want)
    assert diff.max() <= 2 and diff.mean() < 0.1, (diff.max(), diff.mean())


def test_the_engine_normalises_every_pixel_value_bit_for_bit_as_normalize():
    """The serving graph normalises its uint8 input itself; the colour channels threshold the
    result (v < 0.2, ...), so it must be `normalize`'s value exactly, for every byte and channel."""
    import io
    import warnings

    import onnxruntime as ort
    import torch

    from cocoattr.backbones import get_spec
    from cocoattr.transforms import normalize, normalize_constants, normalize_pixels

    spec = get_spec("mobilenet_v2")
    mean, std = (
        np.array(spec.mean, np.float32).reshape(3, 1, 1),
        np.array(spec.std, np.float32).reshape(3, 1, 1),
    )
    pixels = np.repeat(np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1), 3, axis=3)
    scale, shift = normalize_constants(mean, std)

    class Normalise(torch.nn.Module):
        def forward(self, u: torch.Tensor) -> torch.Tensor:
            return normalize_pixels(u, scale, shift)

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore")
        torch.onnx.export(Normalise(), (torch.from_numpy(pixels),), buffer, input_names=["u"], dynamo=False)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"u": pixels})[0]
    want = normalize(pixels, mean, std).numpy()
    assert got.dtype == want.dtype == np.float32 and np.array_equal(got, want)
    np.testing.assert_allclose(want, (pixels.transpose(0, 3, 1, 2) / 255 - mean) / std, atol=1e-6)
