"""The default's per-attribute calibration: the shipped file is what the checkpoint holds, and
its fit (train/calibrate_default.py) is honest about held-out images."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from cocoattr.data.gallery import load_gallery
from cocoattr.hub import load_folder
from cocoattr.zeroshot import GLOBAL_ATTRIBUTES, KNOBS, build_model, default_calibration

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def calibrate():
    spec = importlib.util.spec_from_file_location(
        "calibrate_default", ROOT / "train" / "calibrate_default.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_default_holds_type_triple_plus_offset(default_checkpoint):
    model = load_folder(default_checkpoint)
    offsets = default_calibration()["offsets"]
    checked = 0
    for j, (name, kind) in enumerate(zip(model.attributes, model.attribute_types, strict=True)):
        if name not in offsets or name in GLOBAL_ATTRIBUTES or model.cls_bias[j] == -9.0:
            continue
        w = np.add(KNOBS["type_calibration"][kind], offsets[name])
        got = [model.cls_weight[j, j].item(), model.cls_global[j, j].item(), model.cls_bias[j].item()]
        np.testing.assert_allclose(got, w, atol=1e-5, err_msg=name)
        checked += 1
    assert checked >= 100  # most attributes have an offset


def test_offsets_for_unknown_attributes_are_refused():
    with pytest.raises(ValueError, match="not in the vocabulary.*zebra-ish"):
        build_model(offsets={"zebra-ish": [0.0, 0.0, 1.0]})


def _toy(rng, n=30):
    """Two attributes: 0 is positive exactly where its evidence is high; 1 is always positive
    whatever its evidence (a base rate only an offset can learn)."""
    attn = rng.uniform(0, 1, (n, 2))
    mean = attn / 2
    labels = np.stack([attn[:, 0] > 0.5, np.ones(n, bool)], axis=1).astype(np.int8)
    labels[0, 0] = -1  # an unknown label is not fitted
    return attn, mean, labels


def test_offsets_learn_a_base_rate_and_shrink_to_zero(calibrate):
    attn, mean, labels = _toy(np.random.default_rng(0))
    base = np.tile([1.0, 1.0, -3.0], (2, 1))
    loose = calibrate.fit_offsets(attn, mean, labels, base, shrinkage=0.1)
    tight = calibrate.fit_offsets(attn, mean, labels, base, shrinkage=1e4)
    assert loose[1, 2] > 1.0  # the always-positive attribute's bias goes up
    assert np.abs(tight).max() < 0.01  # heavy shrinkage keeps the type's triple
    assert np.abs(loose).max() > 10 * np.abs(tight).max()


@pytest.mark.parametrize("refit_types", [False, True], ids=["offsets", "types-and-offsets"])
def test_k_fold_never_sees_the_labels_it_scores(calibrate, refit_types):
    attn, mean, labels = _toy(np.random.default_rng(1))
    base = np.tile([1.0, 1.0, -3.0], (2, 1))
    types = np.array(["shape", "texture"]) if refit_types else None
    held = calibrate.k_fold(attn, mean, labels, base, shrinkage=0.3, folds=3, types=types)
    flipped = labels.copy()
    flipped[0::3] = 1 - np.clip(flipped[0::3], 0, 1)  # change every label of fold 0
    again = calibrate.k_fold(attn, mean, flipped, base, shrinkage=0.3, folds=3, types=types)
    np.testing.assert_allclose(held[0::3], again[0::3], atol=1e-6)  # fold 0 scored by the others alone
    assert not np.allclose(held[1::3], again[1::3], atol=1e-3)  # fold 0 did train the rest
    if refit_types:  # the type triples came from the folds, not from `base`
        offsets_only = calibrate.k_fold(attn, mean, labels, base, shrinkage=0.3, folds=3)
        assert not np.allclose(held, offsets_only, atol=1e-2)


def test_the_file_records_the_held_out_figures():
    cal = default_calibration()
    held, types_only = cal["held_out"], cal["held_out_types_only"]
    assert cal["folds"] >= 2 and cal["shrinkage"] > 0
    assert cal["images"] == len(load_gallery())  # refitted whenever the gallery changes
    for key in ("mean_per_image_auc", "precision_at_5", "precision_at_5_non_colour"):
        assert 0 < held[key] <= 1
    assert (
        held["mean_per_image_auc"] > types_only["mean_per_image_auc"]
    )  # the offsets earn their place held out
    assert all(len(v) == 3 and all(np.isfinite(v)) for v in cal["offsets"].values())
    assert torch.tensor(list(cal["offsets"].values())).abs().max() < 10  # shrunk, not free


def test_a_small_vocabulary_without_person_or_sky_builds_and_predicts():
    """`zeroshot.DETECTOR_ONLY` and SCENE_EVIDENCE name attributes of the bundled vocabulary, and
    the attention keys take 50 singular directions; a user's three-attribute vocabulary lacks
    those attributes and has 3 directions, and still builds and reads a real photo."""
    from cocoattr.data.gallery import gallery_root
    from cocoattr.detector import COCO80
    from cocoattr.features import SCENE_CHANNELS
    from cocoattr.predictor import Predictor
    from cocoattr.vocab import Vocabulary, load_vocabulary

    bundled = load_vocabulary()
    keep = [a for a in bundled.to_json()["attributes"] if a["name"] in ("red", "dog", "furry")]
    for a in keep:
        a["implies"] = [n for n in a["implies"] if n in ("red", "dog", "furry")]
    vocab = Vocabulary.from_json({**bundled.to_json(), "attributes": keep})
    model = build_model(vocab=vocab, offsets={})
    grid = model.backbone
    objects = grid.channels - len(COCO80) - len(SCENE_CHANNELS)  # the detector block precedes the scene one
    dog = model.attributes.index("dog")
    weight = model.token_proj.weight[dog, objects + COCO80.index("dog")].item()
    assert weight == pytest.approx(KNOBS["object_weight"])
    probs = Predictor(model).predict_one(gallery_root() / "images" / "skimage_chelsea.jpg").probs
    assert probs[model.attributes.index("furry")] > 0.5 > probs[model.attributes.index("red")]
