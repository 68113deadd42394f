"""The embedded default: built from text and ImageNet only, it must beat the plain baseline."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cocoattr.evaluation import evaluate_checkpoint
from cocoattr.hub import read_config
from cocoattr.predictor import Predictor
from cocoattr.zeroshot import class_attribute_matrix, imagenet_classes


@pytest.fixture(scope="module")
def predictor(default_checkpoint) -> Predictor:
    return Predictor.from_checkpoint(default_checkpoint)


def test_default_is_a_regular_checkpoint(default_checkpoint):
    config = read_config(default_checkpoint)
    assert config["kind"] == "zero-shot" and config["heads"] == 8 and len(config["attributes"]) >= 150
    assert "zero-shot" in (default_checkpoint / "README.md").read_text()


def test_class_knowledge_from_text():
    from cocoattr.vocab import load_vocabulary

    vocab = load_vocabulary()
    m = class_attribute_matrix(vocab, use_text_encoder=False)
    classes = [lemma for lemma, _ in imagenet_classes()]
    tabby = next(i for i, c in enumerate(classes) if c.startswith("tabby"))
    zebra = next(i for i, c in enumerate(classes) if c.startswith("zebra"))
    for cls, attrs in ((tabby, ("cat", "animal", "furry")), (zebra, ("zebra", "striped", "animal"))):
        for a in attrs:
            assert m[cls, vocab.index(a)] >= 0.5, (classes[cls], a)
    assert m[tabby, vocab.index("vehicle")] == 0


def test_colour_maps_point_at_the_colour(predictor):
    # Left half red, right half blue: each colour's attention must sit on its own half.
    arr = np.zeros((288, 288, 3), np.uint8)
    arr[:, :144] = (220, 20, 20)
    arr[:, 144:] = (20, 40, 220)
    pred = predictor.predict_one(Image.fromarray(arr))
    names = predictor.attributes
    red, blue = pred.maps[names.index("red")], pred.maps[names.index("blue")]
    w = red.shape[1]
    assert red[:, : w // 2].sum() > 0.8 * red.sum()
    assert blue[:, (w + 1) // 2 :].sum() > 0.8 * blue.sum()
    assert pred.probs[names.index("red")] > 0.5 and pred.probs[names.index("green")] < 0.5


def test_a_real_cat_photo(predictor):
    from cocoattr.data.gallery import gallery_root

    pred = predictor.predict_one(gallery_root() / "images" / "skimage_chelsea.jpg")
    top = {predictor.attributes[i] for i in np.argsort(-pred.probs)[:15]}
    assert {"cat", "animal", "furry"} & top


@pytest.mark.slow
def test_default_beats_the_posterior_baseline_on_the_gallery():
    result = evaluate_checkpoint("default", baseline=True)
    model, base = result["model"], result["baseline_mean"]
    assert model["mean_per_image_auc"] > 0.8
    assert model["mean_per_image_auc"] > base["mean_per_image_auc"] + 0.1
    assert model["mAP"] > base["mAP"] + 0.03


def test_the_default_boxes_people_and_vehicles_with_their_attributes(predictor):
    """The detector inside the default: a person in the astronaut photo and a motorcycle in the
    motorcycle photo, boxed in the photo's own pixels, each with attributes from its box."""
    from cocoattr.data.gallery import gallery_root

    images = gallery_root() / "images"
    names = predictor.attributes
    for file, category, attribute in (("skimage_astronaut.jpg", "person", "person"),
                                      ("skimage_motorcycle.jpg", "motorcycle", "motorcycle")):  # fmt: skip
        pred = predictor.predict_objects([images / file])[0]
        best = max((o for o in pred.objects if o.category == category), key=lambda o: o.score)
        assert best.score >= 0.5, (file, [(o.category, o.score) for o in pred.objects])
        x1, y1, x2, y2 = best.box
        assert 0 <= x1 < x2 <= 700 and 0 <= y1 < y2 <= 600 and (x2 - x1) > 200
        assert best.probs.shape == (len(names),)
        assert best.probs[names.index(attribute)] >= 0.5
    cat = predictor.predict_objects([images / "skimage_chelsea.jpg"])[0]
    assert not [o for o in cat.objects if o.category == "person" and o.score >= 0.5]


def test_attributes_without_evidence_are_said_to_be_unseen_not_a_flat_prior(predictor, default_checkpoint):
    """Attributes no evidence channel speaks for (`smiling`, `empty`) score ~0 everywhere instead
    of their type's flat prior, which outranked real attributes."""
    weights = predictor.model.token_proj.weight[: len(predictor.attributes)]
    unseen = [
        n
        for j, n in enumerate(predictor.attributes)
        if not weights[j].any() and predictor.model.cls_bias[j] < -8
    ]
    assert {"smiling", "empty"} <= set(unseen) and "person" not in unseen and "red" not in unseen
    pred = predictor.predict_one(
        default_checkpoint.parent.parent / "cocoattr" / "gallery" / "images" / "skimage_chelsea.jpg"
    )
    assert max(pred.probs[predictor.attributes.index(n)] for n in unseen) < 1e-3


def test_person_is_the_detectors_word_alone(predictor):
    """ImageNet-1k has no person class, so its text evidence for `person` was glosses (the yurt
    "used by ... people" read as one). The default reads `person` from the detector's cells only,
    at `detector_only_weight` times the other classes' weight: a hand and distant windsurfers are
    people, the yurt is not; `man` keeps its ImageNet evidence (a groom, a ballplayer)."""
    from cocoattr.data.gallery import gallery_root
    from cocoattr.detector import COCO80
    from cocoattr.features import COLOUR_CHANNELS
    from cocoattr.zeroshot import KNOBS

    names, grid = predictor.attributes, predictor.model.backbone
    weights = predictor.model.token_proj.weight.detach()
    concepts = slice(grid.feature_channels, grid.feature_channels + grid.classifier.out_features)
    objects = concepts.stop + len(COLOUR_CHANNELS)  # the detector's block follows the colour one
    person, man = names.index("person"), names.index("man")
    assert not weights[person, concepts].any() and weights[man, concepts].any()
    expected = KNOBS["object_weight"] * KNOBS["detector_only_weight"]
    assert float(weights[person, objects + COCO80.index("person")]) == pytest.approx(expected)
    images = gallery_root() / "images"
    probs = {
        n: predictor.predict_one(images / f"{n}.jpg").probs[person]
        for n in ("foolbox_imagenet_08_915_yurt", "foolbox_imagenet_02_438_beaker", "sporco_sail")
    }
    assert probs["foolbox_imagenet_08_915_yurt"] < 0.3, probs
    assert probs["foolbox_imagenet_02_438_beaker"] >= 0.5 and probs["sporco_sail"] >= 0.5, probs
