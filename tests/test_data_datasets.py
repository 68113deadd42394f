"""Samples, deterministic splits, the torch Dataset, and the bundled gallery loader."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cocoattr.data import datasets as ds
from cocoattr.data.captions import CaptionMiner
from cocoattr.data.gallery import gallery_root, load_gallery, read_hand_labels
from cocoattr.data.splits import select_split
from cocoattr.errors import UserError
from cocoattr.vocab import load_vocabulary


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255


def test_dataset_whole_image_and_crop(tmp_path):
    path = tmp_path / "img.png"
    array = np.zeros((100, 200, 3), dtype=np.uint8)
    array[:, 100:] = 255
    Image.fromarray(array).save(path)
    labels = np.array([1, 0, -1], dtype=np.int8)
    samples = [ds.Sample(7, path, labels), ds.Sample(7, path, labels, box=(100.0, 0.0, 50.0, 50.0))]
    dataset = ds.AttributeDataset(samples, to_tensor, context=0.2)
    image, y, known = dataset[0]
    assert image.shape == (3, 100, 200)
    assert y.tolist() == [1.0, 0.0, 0.0] and known.tolist() == [True, True, False]
    crop, _, _ = dataset[1]
    assert crop.shape == (3, 60, 70)  # (90..160, 0..60) clipped at the top
    assert float(crop[:, :, :10].mean()) == 0.0 and float(crop[:, :, 10:].mean()) == 1.0
    batch = next(iter(torch.utils.data.DataLoader(ds.AttributeDataset(samples[:1], to_tensor), batch_size=1)))
    assert batch[2].dtype == torch.bool


def test_exif_rotation_is_applied(tmp_path):
    path = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    Image.new("RGB", (40, 20)).save(path, exif=exif)
    image = ds.AttributeDataset([ds.Sample(1, path, np.zeros(1, np.int8))], to_tensor).image(0)
    assert image.size == (20, 40) and image.mode == "RGB"


def test_coco_caption_samples(tmp_path):
    images = tmp_path / "val2017"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "000000000001.jpg")
    Image.new("RGB", (8, 8)).save(images / "000000000002.jpg")
    data = {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": 8, "height": 8} for i in (1, 2, 3)],
        "annotations": [
            {"id": 1, "image_id": 1, "caption": "A red bus on a street."},
            {"id": 2, "image_id": 2, "caption": "Something happens."},
            {"id": 3, "image_id": 3, "caption": "A cat."},
        ],
    }
    (tmp_path / "captions_val2017.json").write_text(json.dumps(data))
    vocab = load_vocabulary()
    samples, report = ds.coco_caption_samples(tmp_path / "captions_val2017.json", images, CaptionMiner(vocab))
    assert [s.image_id for s in samples] == [1]
    assert samples[0].labels[vocab.index("bus")] == 1 and samples[0].labels[vocab.index("cat")] == -1
    assert "1 missing image files" in report.summary() and "1 images with no mined label" in report.summary()


def test_cocottributes_samples(tmp_path):
    from test_data_cocottributes import coco2014_tree, official_like_dict

    pkl = tmp_path / "c.pkl"
    pkl.write_bytes(pickle.dumps(official_like_dict(), protocol=2))
    instances, dirs = coco2014_tree(tmp_path / "coco")
    vocab = load_vocabulary()
    samples, report, mapping = ds.cocottributes_samples(pkl, instances, dirs, vocab)
    assert [(s.image_id, s.box) for s in samples] == [
        (9, (50.0, 20.0, 100.0, 40.0)),
        (9, (0.0, 0.0, 20.0, 20.0)),
        (42, (10.0, 10.0, 30.0, 30.0)),
    ]
    assert samples[0].labels[vocab.index("furry")] == 1 and report.count == 0
    image, y, known = ds.AttributeDataset(samples, to_tensor)[0]
    assert image.shape == (3, 56, 140)
    assert int(known.sum()) == len(mapping.columns)


def _tiny_gallery(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (10, 10), (200, 0, 0)).save(root / "images" / "a.jpg")
    Image.new("RGB", (10, 10)).save(root / "images" / "b.jpg")
    (root / "captions.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10},
                   {"id": 2, "file_name": "b.jpg", "width": 10, "height": 10}],
        "annotations": [{"id": 1, "image_id": 1, "caption": "A red car."},
                        {"id": 2, "image_id": 2, "caption": "A black cat at night."}],
    }))  # fmt: skip
    (root / "attributes.json").write_text(json.dumps({"annotations": [
        {"image_id": 1, "positive": ["red", "car"], "unknown": ["old"]},
        {"image_id": 2, "positive": ["cat", "black", "night"], "unknown": []},
    ]}))  # fmt: skip
    return root


def test_gallery_loader_and_samples(tmp_path):
    vocab = load_vocabulary()
    g = load_gallery(_tiny_gallery(tmp_path / "g"), vocab)
    assert g.image_ids == [1, 2] and g.paths[0] == tmp_path / "g" / "images" / "a.jpg"
    assert g.captions[1] == ["A black cat at night."]
    assert g.labels.dtype == np.int8 and g.labels.shape == (2, len(vocab))
    row = {n: int(g.labels[0, vocab.index(n)]) for n in ("red", "car", "old", "cat")}
    assert row == {"red": 1, "car": 1, "old": -1, "cat": 0}
    hand = ds.gallery_samples(g, "hand")
    mined = ds.gallery_samples(g, "mined")
    assert hand[1].labels[vocab.index("dog")] == 0 and mined[1].labels[vocab.index("dog")] == -1
    assert mined[1].labels[vocab.index("cat")] == 1


def test_bad_hand_labels(tmp_path):
    path = tmp_path / "attributes.json"
    path.write_text(json.dumps({"annotations": [{"image_id": 1, "positive": ["redd"]}]}))
    with pytest.raises(
        UserError, match="attributes.json: image_id 1 names attributes not in the vocabulary: \\['redd'\\]"
    ):
        read_hand_labels(path)


@pytest.mark.skipif(not (gallery_root() / "captions.json").is_file(), reason="gallery not bundled")
def test_bundled_gallery_loads():
    g = load_gallery()
    assert len(g) == len(g.paths) == g.labels.shape[0] > 0
    assert all(p.is_file() for p in g.paths)
    assert (g.labels == 1).any(axis=1).all()
    train = select_split(ds.gallery_samples(g), "train")
    assert 0 < len(train) < len(g)
