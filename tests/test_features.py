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
    sky, veg, cover, creatures = (scene[SCENE_CHANNELS.index(n)] for n in SCENE_CHANNELS)
    assert float(sky[0].mean()) > 0.5 and float(sky[3].mean()) < 0.05
    assert float(veg[3].mean()) > 0.5 and float(veg[0].mean()) < 0.05
    assert float(cover.abs().max()) == float(creatures.abs().max()) == 0.0  # no detector, no cover
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
    assert [p.shape[1] for p in parts] == [plain.feature_channels, 13, 4]


def test_cover_is_the_biggest_detected_box_and_creature_cover_a_person_or_animal(default_checkpoint):
    """Real photos: a portrait and a cat close-up are filled by one person / animal, a city
    street's biggest box is a small share of it, and the motorcycle fills its frame with no
    creature. Each cover is the max over the detector's boxes of score x box area, one number
    broadcast over the grid."""
    from cocoattr.data.gallery import load_gallery
    from cocoattr.detector import decode_boxes
    from cocoattr.features import CREATURE_INDEX
    from cocoattr.hub import load_folder
    from cocoattr.images import load_image
    from cocoattr.predictor import Predictor

    predictor = Predictor(load_folder(default_checkpoint))
    grid = predictor.model.backbone
    paths = {p.stem: p for p in load_gallery().paths}
    names = ["mpl_grace_hopper", "skimage_chelsea", "piexif_prague_street", "skimage_motorcycle"]
    x = predictor.preprocess([load_image(paths[n]) for n in names])
    with torch.no_grad():
        detections = grid.detect(x)
        scene = grid.scene_channels(x, (9, 9), detections)
        boxes, scores = decode_boxes(detections, input_size=x.shape[-1])
    area = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])) / x.shape[-1] ** 2
    cover, creatures = (scene[:, SCENE_CHANNELS.index(n)] for n in ("object_cover", "creature_cover"))
    assert torch.equal(cover, cover[:, :1, :1].expand_as(cover))  # one number per image
    torch.testing.assert_close(cover[:, 0, 0], (scores.amax(-1) * area).amax(1))
    torch.testing.assert_close(creatures[:, 0, 0], (scores[..., CREATURE_INDEX].amax(-1) * area).amax(1))
    hopper, cat, street, motorcycle = creatures[:, 0, 0].tolist()
    assert hopper > 0.3 and cat > 0.3 and street < 0.1 and motorcycle < 0.1
    assert float(cover[3, 0, 0]) > 0.3 and float(cover[2, 0, 0]) < 0.1
