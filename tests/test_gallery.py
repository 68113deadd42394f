"""Consistency checks for the bundled real-photo gallery in cocoattr/gallery/."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from cocoattr.vocab import load_vocabulary

GALLERY = Path(__file__).resolve().parent.parent / "cocoattr" / "gallery"
IMAGES = GALLERY / "images"


@pytest.fixture(scope="module")
def captions() -> dict:
    with open(GALLERY / "captions.json", encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def attributes() -> dict:
    with open(GALLERY / "attributes.json", encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def vocabulary():
    return load_vocabulary()


def test_captions_format(captions):
    assert set(captions) >= {"info", "licenses", "images", "annotations"}
    licence_ids = {lic["id"] for lic in captions["licenses"]}
    for lic in captions["licenses"]:
        assert {"id", "name", "url"} <= set(lic)
    for img in captions["images"]:
        assert {"id", "file_name", "width", "height", "license", "source"} <= set(img)
        assert img["license"] in licence_ids
    ids = [img["id"] for img in captions["images"]]
    assert ids == list(range(1, len(ids) + 1))
    names = [img["file_name"] for img in captions["images"]]
    assert len(set(names)) == len(names)
    ann_ids = [a["id"] for a in captions["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)
    for a in captions["annotations"]:
        assert a["image_id"] in set(ids)
        assert isinstance(a["caption"], str) and a["caption"].strip()


def test_at_least_30_images(captions):
    assert len(captions["images"]) >= 30
    on_disk = {p.name for p in IMAGES.glob("*.jpg")}
    assert on_disk == {img["file_name"] for img in captions["images"]}


def test_images_decode_as_rgb_and_are_small(captions):
    for img in captions["images"]:
        with Image.open(IMAGES / img["file_name"]) as im:
            im.load()
            assert im.format == "JPEG", img["file_name"]
            assert im.mode == "RGB", img["file_name"]
            assert max(im.size) <= 640, img["file_name"]
            assert im.size == (img["width"], img["height"]), img["file_name"]


def test_every_image_has_two_captions(captions):
    counts = Counter(a["image_id"] for a in captions["annotations"])
    for img in captions["images"]:
        assert counts[img["id"]] >= 2, img["file_name"]


def test_attribute_names_in_vocabulary(attributes, vocabulary):
    assert attributes["vocabulary"] == "cocoattr/vocab/attributes.json"
    assert attributes["info"]["protocol"]
    for ann in attributes["annotations"]:
        for name in ann["positive"] + ann["unknown"]:
            assert name in vocabulary, (ann["image_id"], name)


def test_positive_and_unknown_disjoint(attributes):
    for ann in attributes["annotations"]:
        assert len(set(ann["positive"])) == len(ann["positive"])
        assert len(set(ann["unknown"])) == len(ann["unknown"])
        assert not set(ann["positive"]) & set(ann["unknown"]), ann["image_id"]


def test_every_image_has_attribute_labels(captions, attributes):
    labelled = [ann["image_id"] for ann in attributes["annotations"]]
    assert sorted(labelled) == sorted(img["id"] for img in captions["images"])
    for ann in attributes["annotations"]:
        assert len(ann["positive"]) >= 5, ann["image_id"]


def test_licenses_mentions_every_file(captions):
    text = (GALLERY / "LICENSES.md").read_text(encoding="utf-8")
    for img in captions["images"]:
        assert img["file_name"] in text, img["file_name"]
