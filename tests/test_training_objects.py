"""Training on object regions (#16 item 4, #18 item 3): with `data.objects: region` an object
sample (a COCONut thing segment, a COCO Attributes box) is its whole photo plus the grid cells
of its mask or box, and the head trains restricted to them: the path `predict --objects` and
`evaluate --objects` serve. Fixtures: tests/test_data_coconut.py's parquet shard (real photos,
painted panoptic segments) and the embedded default."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from test_data_coconut import write_shard

from cocoattr.data.datasets import cocottributes_samples
from cocoattr.data.splits import split_of
from cocoattr.hub import load_folder
from cocoattr.images import load_image
from cocoattr.inference import InferenceModel, region_cells
from cocoattr.predictor import Predictor
from cocoattr.training.config import config_from_dict
from cocoattr.training.data import ImageDataset, Preprocess, load_splits, sample_cells, sample_region
from cocoattr.training.model import TrainStep

IDS = (139, 285, 724)  # the shard's photos on disk: a person; a dining table and a cup; a boat


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coconut-objects") / "data"
    write_shard(root / "coconut" / "relabeled_coco_val" / "data" / "validation-00000-of-00001.parquet", root)
    return root


@pytest.fixture(scope="module")
def model(default_checkpoint):
    return load_folder(default_checkpoint).eval()


def data_config(root, **extra) -> dict:
    fractions = [0.5, 0.5, 0.0]
    seed = next(s for s in range(500) if [split_of(i, fractions, s) for i in IDS] == ["val", "train", "val"])
    return {"source": "coconut", "root": str(root), "split": fractions, "split_seed": seed,
            "train_labels": "coconut-objects", "eval_labels": "coconut-objects", **extra}  # fmt: skip


def test_the_trainable_region_head_is_the_one_that_serves(model, data_root) -> None:
    """AttributeModel with `cells` (what training back-propagates through) gives the logits of
    InferenceModel.with_regions (what predict/evaluate --objects serve), for a box and a mask."""
    photo = load_image(data_root / "coco" / "val2017" / "000000000285.jpg")
    x = Predictor(model).preprocess([photo])
    mask = np.zeros((photo.height, photo.width), bool)
    mask[150:310, 200:400] = True  # the cup
    regions = [np.array([0.0, 0.25, 1.0, 1.0]), mask]
    with torch.inference_mode():
        _, served = InferenceModel(model).with_regions(x, [regions])
        cells = region_cells(regions, *model.grid)
        trained = TrainStep(model, cached=False)(
            x.expand(2, -1, -1, -1), torch.zeros(2, model.num_attributes), cells
        )[0]
        whole = model(x, torch.ones(1, cells.shape[1], dtype=torch.bool)).logits
        plain = model(x).logits
    torch.testing.assert_close(trained, served[0], atol=2e-4, rtol=1e-4)
    assert (trained[0] - trained[1]).abs().max() > 0.1  # the two regions read different cells
    torch.testing.assert_close(whole, plain)  # every cell is the unrestricted head


def test_a_mirrored_object_reads_the_cells_of_its_mirrored_region(data_root, model) -> None:
    """Training mirrors half the photos: the cells must follow the object, mask or box."""
    splits = load_splits(config_from_dict({"data": data_config(data_root, objects="region")}).data)
    samples = splits["train"] + splits["val"]
    data = ImageDataset(samples, Preprocess(model), train=True, seed=0, cells=sample_cells(samples, model.grid),
                        grid=model.grid)  # fmt: skip
    flipped = 0
    for epoch in range(4):
        data.epoch = epoch
        for i, s in enumerate(samples):
            x, _, _, cells = data[i]
            photo = load_image(s.path)
            mirrored = not torch.equal(x, Preprocess(model)(photo))
            if mirrored:
                torch.testing.assert_close(x, Preprocess(model)(photo.transpose(0)))  # FLIP_LEFT_RIGHT
            mask = sample_region(s, photo.size)
            expected = region_cells([mask[:, ::-1].copy() if mirrored else mask], *model.grid)[0]
            assert torch.equal(cells, expected)
            flipped += mirrored
    assert 0 < flipped < 4 * len(samples)
    boxed = replace(samples[0], mask=None)
    w = load_image(boxed.path).width
    x, y, bw, bh = boxed.box
    size = load_image(boxed.path).size
    mirrored_box = replace(boxed, box=(w - x - bw, y, bw, bh))
    assert torch.equal(
        sample_cells([boxed], model.grid, mirrored=True), sample_cells([mirrored_box], model.grid)
    )
    assert np.allclose(sample_region(boxed, size, mirrored=True), sample_region(mirrored_box, size))


def test_coconut_objects_are_samples_with_their_masks(data_root, model) -> None:
    splits = load_splits(config_from_dict({"data": data_config(data_root, objects="region")}).data)
    samples = splits["train"] + splits["val"]
    got = sorted((s.image_id, s.labels[s.labels != -1].size > 0) for s in samples)
    assert got == [(139, True), (285, True), (285, True), (724, True)]  # person; table, cup; boat
    cup = next(s for s in samples if s.image_id == 285 and s.box == (200.0, 150.0, 200.0, 160.0))
    cells = sample_cells([cup], model.grid)[0]
    assert 0 < cells.sum() < cells.numel()
    data = ImageDataset([cup], Preprocess(model), train=False, seed=0, cells=sample_cells([cup], model.grid),
                        grid=model.grid)  # fmt: skip
    x, _, _, got_cells = data[0]
    assert x.shape == (3, model.image_size, model.image_size) and torch.equal(got_cells, cells)
    np.testing.assert_array_equal(np.asarray(data.image(0)), np.asarray(load_image(cup.path)))  # not cropped


def test_training_on_object_regions_end_to_end(data_root, tmp_path) -> None:
    from cocoattr.training.loop import fit, prepare

    cfg = config_from_dict({
        "data": data_config(data_root, objects="region"), "init": "imagenet", "image_size": 128, "epochs": 2,
        "batch_size": 2, "feature_cache": True, "cache_dir": str(tmp_path / "cache"), "threads": 1,
        "early_stop_patience": 0,
    })  # fmt: skip
    run = prepare(cfg, tmp_path / "run")
    train = run.datasets["train"]
    assert [s.image_id for s in train.samples] == [285, 285]
    assert train.rows == [0, 0] and len(train.grids) == 1  # the photo's two objects share its grid
    assert not torch.equal(train.cells[0], train.cells[1])  # the table and the cup
    result = fit(cfg, tmp_path / "run")
    assert result["train_labels"] == "coconut-objects" and result["n_train"] == 2
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").is_file()
    card = (tmp_path / "run" / "checkpoint" / "README.md").read_text()
    assert "COCONut object" in card and "restricted to each object's mask" in card


def test_coco_attributes_boxes_train_as_regions_of_the_whole_photo(tmp_path, model) -> None:
    """The COCO Attributes fixture (two patches in one 200 x 100 photo, boxes only): region mode
    serves the whole photo and the box's cells; crop mode the box with context, as before."""
    from test_data_cocottributes import coco2014_tree, official_like_dict, write_py2_pickle

    write_py2_pickle(tmp_path / "c.pkl", official_like_dict())
    coco2014_tree(tmp_path / "coco")
    root = tmp_path / "coco"
    samples, _, _ = cocottributes_samples(tmp_path / "c.pkl", {s: root / "annotations" / f"instances_{s}.json"
                                          for s in ("train2014", "val2014")},
                                          {s: root / s for s in ("train2014", "val2014")})  # fmt: skip
    big = next(s for s in samples if s.box == (50.0, 20.0, 100.0, 40.0))
    cells = sample_cells([big], (4, 8))[0].view(4, 8)
    # x 0.25..0.75, y 0.2..0.6: the cells whose centre is inside, columns 2..5 (centres 0.31 .. 0.69)
    # of row 1 (centre 0.375; row 2's is 0.625)
    assert cells.nonzero().tolist() == [[1, c] for c in range(2, 6)]
    region = ImageDataset([big], Preprocess(model), train=False, seed=0, cells=sample_cells([big], model.grid),
                          grid=model.grid)  # fmt: skip
    crop = ImageDataset([big], Preprocess(model), train=False, seed=0, grid=model.grid)
    assert region.image(0).size == (200, 100) and crop.image(0).size == (140, 56)  # 20% context each side
    assert crop[0][3].all() and not region[0][3].all()


def test_objects_is_crop_or_region() -> None:
    from cocoattr.errors import UserError

    assert config_from_dict({"data": {"objects": "region"}}).data.objects == "region"
    assert config_from_dict({}).data.objects == "crop"
    with pytest.raises(UserError, match="'data.objects': must be one of crop, region"):
        config_from_dict({"data": {"objects": "mask"}}, "config.yaml")
