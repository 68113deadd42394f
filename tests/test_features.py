"""cocoattr.features: the fixed evidence channels mean what their names say."""

from __future__ import annotations

import numpy as np
import torch

from cocoattr.features import SCENE_CHANNELS, FeatureGrid


def _normalised(grid: FeatureGrid, rgb: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float() / 255
    return (x - grid.mean) / grid.std


def test_sky_sits_on_smooth_blue_above_and_vegetation_on_textured_green():
    """A small fixture: flat sky-blue upper half, noisy green lower half."""
    grid = FeatureGrid("mobilenet_v2", scene=True).eval()
    rng = np.random.default_rng(0)
    image = np.zeros((96, 96, 3), np.uint8)
    image[:48] = (90, 150, 230)
    image[48:] = np.clip(rng.normal((60, 150, 50), 45, (48, 96, 3)), 0, 255)
    with torch.no_grad():
        scene = grid.scene_channels(_normalised(grid, image), (4, 4), None)[0]
    sky, veg, cover = (scene[SCENE_CHANNELS.index(n)] for n in SCENE_CHANNELS)
    assert float(sky[0].mean()) > 0.5 and float(sky[3].mean()) < 0.05
    assert float(veg[3].mean()) > 0.5 and float(veg[0].mean()) < 0.05
    assert float(cover.abs().max()) == 0.0  # no detector, no cover
    flipped = image[::-1].copy()  # the same blue below the horizon is no sky
    with torch.no_grad():
        low = grid.scene_channels(_normalised(grid, flipped), (4, 4), None)[0, 0]
    assert float(low.max()) < 0.5 * float(sky.max())


def test_scene_channels_extend_the_grid():
    plain = FeatureGrid("mobilenet_v2", colour=True)
    grid = FeatureGrid("mobilenet_v2", colour=True, scene=True)
    assert grid.channels == plain.channels + len(SCENE_CHANNELS)
    with torch.no_grad():
        parts = grid.eval().parts(torch.zeros(1, 3, 96, 96))
    assert [p.shape[1] for p in parts] == [plain.feature_channels, 13, 3]
