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
