"""Per-object attributes on given regions (#16 item 4, #18 item 3): `inference.region_cells` turns
a box or a binary mask into the head's grid cells by one rule; `evaluate --objects` scores the
restricted head against COCONut's thing segments (the parquet + panoptic PNG fixture of
tests/test_data_coconut.py, and one with a dog-shaped mask on a real photo) and COCO Attributes'
patches (the pickle + 2014 instances fixture of tests/test_data_cocottributes.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from test_data_coconut import GALLERY, SCHEMA, SHARD, write_shard
from test_data_cocottributes import coco2014_tree, official_like_dict, write_py2_pickle

from cocoattr.cli import main
from cocoattr.data.coconut import coconut_objects, load_mapping, object_labels
from cocoattr.detector import COCO80
from cocoattr.faithfulness import box_mask
from cocoattr.images import load_image
from cocoattr.inference import box_masks, region_cells
from cocoattr.vocab import load_vocabulary

MASTIFF = "foolbox_imagenet_00_243_bull_mastiff.jpg"  # 512 x 512: a dog, a person's arm and body on the right
DOG_BOX, PERSON_BOX = (118, 0, 315, 460), (325, 0, 512, 370)  # gallery/boxes.json, drawn by hand


def dog_ellipse(size: tuple[int, int] = (512, 512)) -> np.ndarray:
    """A mask inside the dog's hand-drawn box touching its four sides: the dog, not its box."""
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    x0, y0, x1, y1 = DOG_BOX
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    r = ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2
    return r <= 1


@pytest.fixture(scope="module")
def vocab():
    return load_vocabulary()


# ----------------------------------------------------------------------------- region_cells


def test_a_rectangle_mask_keeps_the_cells_of_its_box() -> None:
    """Boxes in general position (no cell centre on an edge) on grids of several sizes: the mask
    of a box and the box give the same cells, tiny boxes included (their centre's cell)."""
    rng = np.random.default_rng(0)
    size = (641, 479)  # no cell centre on a pixel edge for these grids
    for h, w in ((9, 9), (7, 12), (16, 16)):
        for _ in range(60):
            x0, x1 = np.sort(rng.uniform(0, size[0], 2)).round() + 0.5
            y0, y1 = np.sort(rng.uniform(0, size[1], 2)).round() + 0.5
            mask = box_mask([(x0, y0, x1, y1)], size)
            if not mask.any():
                continue
            rows, cols = np.nonzero(mask)
            rel = (
                cols.min() / size[0],
                rows.min() / size[1],
                (cols.max() + 1) / size[0],
                (rows.max() + 1) / size[1],
            )
            expected = box_masks(torch.tensor([rel]), h, w)[0]
            assert torch.equal(region_cells([mask], h, w)[0], expected), (h, w, rel)
            assert torch.equal(region_cells([rel], h, w)[0], expected)


def test_masks_keep_the_cells_whose_centre_they_cover_and_always_one() -> None:
    mask = np.zeros((90, 90), bool)
    mask[0:10, 0:10] = True  # the top-left cell of a 9 x 9 grid, centre pixel (5, 5) inside
    mask[50:90, 80:90] = True  # the right column's bottom 4 cells (centres at rows 55 .. 85)
    cells = region_cells([mask], 9, 9)[0].view(9, 9)
    assert cells.sum() == 5 and cells[0, 0] and cells[5:, 8].all()
    tiny = np.zeros((90, 90), bool)
    tiny[31:33, 41:43] = True  # misses every cell centre: the cell holding it
    assert torch.nonzero(region_cells([tiny], 9, 9)[0]).flatten().tolist() == [3 * 9 + 4]
    ring = np.zeros((90, 90), bool)
    ring[2:4, 30:60] = True  # two strips far apart: the centroid's cell (row 4) holds none of it
    ring[86:88, 30:60] = True
    cells = region_cells([ring], 9, 9)[0].view(9, 9)
    assert cells.sum() == 1 and (cells[0].any() or cells[8].any())
    with pytest.raises(ValueError, match="empty mask"):
        region_cells([np.zeros((9, 9), bool)], 9, 9)
    with pytest.raises(ValueError, match="a box \\(4,\\) or a mask"):
        region_cells([np.zeros((2, 2, 2), bool)], 9, 9)


def test_the_dog_mask_is_fewer_cells_than_the_dog_box() -> None:
    mask, box = region_cells([dog_ellipse(), tuple(v / 512 for v in DOG_BOX)], 9, 9)
    assert mask.sum() < box.sum() and not (mask & ~box).any()


# ----------------------------------------------------------------------------- the restricted head


@pytest.fixture(scope="module")
def predictor(default_checkpoint):
    from cocoattr.predictor import Predictor

    return Predictor.from_checkpoint(default_checkpoint)


def _regions(predictor, regions):
    from cocoattr.images import load_image

    pixels = predictor.pixels([load_image(GALLERY / MASTIFF)])
    out, found = predictor.engine.with_regions(pixels, [regions])
    return pixels, out, found[0]


def test_a_mask_on_the_dog_weighs_the_dogs_attributes_over_the_whole_image(predictor) -> None:
    """The dog's mask raises dog and pet and lowers person against the whole photo; the person's
    box does the reverse; a region over the whole photo is the whole photo's head."""
    names = predictor.attributes
    person = box_mask([PERSON_BOX], (512, 512))
    _, out, logits = _regions(
        predictor, [dog_ellipse(), person, (0.0, 0.0, 1.0, 1.0), np.ones((512, 512), bool)]
    )
    whole, p = out.probs[0].numpy(), torch.sigmoid(logits).numpy()
    i = {n: names.index(n) for n in ("dog", "pet", "person")}
    assert p[0, i["dog"]] > whole[i["dog"]] + 0.1 and p[0, i["pet"]] > whole[i["pet"]] + 0.1
    assert p[0, i["person"]] < whole[i["person"]]
    assert p[1, i["person"]] > whole[i["person"]] and p[1, i["dog"]] < whole[i["dog"]] - 0.3
    assert np.allclose(p[2], whole, atol=1e-5) and np.allclose(p[3], whole, atol=1e-5)


def test_the_onnx_engine_and_torch_give_the_same_region_logits(predictor) -> None:
    from cocoattr.engine import TorchEngine

    regions = [dog_ellipse(), tuple(v / 512 for v in PERSON_BOX)]
    pixels, _, onnx = _regions(predictor, regions)
    _, found = TorchEngine(predictor.model, "cpu").with_regions(pixels, [regions])
    assert torch.allclose(onnx, found[0], atol=1e-3)


def test_the_attribute_head_overrules_a_detector_class_its_box_contradicts(predictor) -> None:
    """Real photos: NanoDet calls the dalmatian a giraffe and Chelsea the cat also a dog; read
    inside those boxes, the head says dog and cat, so those are the categories (the detector's
    class kept beside them), and the cat's second box, now a cat too, is not repeated. The
    motorcycle, which both agree on, keeps its class."""
    paths = {p.stem: p for p in GALLERY.glob("*.jpg")}
    names = ["foolbox_imagenet_16_251_dalmatian", "skimage_chelsea", "skimage_motorcycle"]
    dalmatian, cat, motorcycle = predictor.predict_objects([paths[n] for n in names])
    top = dalmatian.objects[0]
    assert (top.category, top.detector_category) == ("dog", "giraffe")
    assert top.to_json(predictor.attributes)["detector_category"] == "giraffe"
    assert [o.category for o in cat.objects] == ["cat"]
    raw = predictor.engine.with_objects(predictor.pixels([load_image(paths[names[1]])]))[1][0]
    assert sorted(COCO80[int(i)] for i in raw.labels) == ["cat", "dog"]  # what the detector said
    assert [(o.category, o.detector_category) for o in motorcycle.objects][0] == ("motorcycle", "motorcycle")


def test_only_category_attributes_overrule_and_only_when_sure(predictor) -> None:
    names = predictor.attributes
    probs = np.zeros(len(names), np.float32)
    probs[names.index("orange")] = 0.99  # the colour, not the fruit
    assert predictor.agreed_category("cat", probs) == "cat"
    probs[names.index("dog")] = 0.79  # below OVERRULE
    assert predictor.agreed_category("cat", probs) == "cat"
    probs[names.index("dog")] = 0.81
    assert predictor.agreed_category("cat", probs) == "dog"
    probs[names.index("cat")] = 0.5  # the detector's class at AGREE stands
    assert predictor.agreed_category("cat", probs) == "cat"
    assert predictor.agreed_category("dining table", probs) == "dining table"  # not in the vocabulary


# ----------------------------------------------------------------------------- COCONut objects


def test_object_labels_follow_the_mappings_rules(vocab) -> None:
    mapping = load_mapping(vocab)
    by_name = {c.name: c for c in mapping.categories.values()}
    dog = object_labels(by_name["dog"], vocab, mapping)
    assert all(dog[vocab.index(a)] == 1 for a in ("dog", "animal", "pet"))  # implies, then the vocabulary
    assert dog[vocab.index("person")] == 0 and dog[vocab.index("man")] == 0  # exhaustive + its `also`
    assert dog[vocab.index("sky")] == 0 and dog[vocab.index("cat")] == 0
    car = object_labels(by_name["car"], vocab, mapping)
    assert car[vocab.index("car")] == 1 and car[vocab.index("truck")] == -1  # truck: unless car
    assert car[vocab.index("bus")] == 0
    assert dog[vocab.index("red")] == -1  # nothing said about colour


def test_coconut_objects_are_the_thing_segments_with_pixels(vocab) -> None:
    rows = {r["image_info"]["id"]: r for r in write_shard(None, None).to_pylist()}
    objects = coconut_objects(rows[285], vocab)  # wall (stuff), dining table, cup painted over it
    assert [o.category.name for o in objects] == ["dining table", "cup"]
    assert objects[1].mask.sum() == 200 * 160
    assert objects[0].mask.sum() == 600 * 300 - 200 * 160  # the cup's pixels are not the table's
    assert [o.category.name for o in coconut_objects(rows[139], vocab)] == ["person"]


@pytest.fixture(scope="module")
def coconut_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("objects") / "data"
    write_shard(root / "coconut" / "relabeled_coco_val" / SHARD, root)
    return root


def write_mastiff_shard(folder: Path, images: Path) -> None:
    """A one-row shard in the real schema: the mastiff photo, the dog as an ellipse (segment 7)
    over the box of a person (segment 300), the rest void."""
    ids = np.zeros((512, 512), np.int64)
    ids[box_mask([PERSON_BOX], (512, 512))] = 300
    ids[dog_ellipse()] = 7
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    info = [{"area": int((ids == s).sum()), "category_id": c, "id": s, "iscrowd": 0, "isthing": 1}
            for s, c in ((7, 18), (300, 1))]  # fmt: skip
    name = "000000000777.jpg"
    (images / "val2017").mkdir(parents=True, exist_ok=True)
    Image.open(GALLERY / MASTIFF).save(images / "val2017" / name)
    row = {"mask": {"bytes": buf.getvalue(), "path": None},
           "segments_info": {"file_name": "000000000777.png", "image_id": 777, "segments_info": info},
           "image_info": {"coco_url": f"http://images.cocodataset.org/val2017/{name}", "date_captured": "",
                          "file_name": name, "height": 512, "id": 777, "license": 1, "width": 512}}  # fmt: skip
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([row], SCHEMA), folder / SHARD)


def test_score_objects_reads_the_dog_from_its_mask(tmp_path, predictor, vocab) -> None:
    """The dog object of the mastiff shard: the mask row puts dog higher than the whole photo and
    differs from the box row (fewer cells); the person object puts person higher."""
    from cocoattr.object_evaluation import coconut_object_targets, score_objects

    write_mastiff_shard(tmp_path / "coconut", tmp_path / "coco")
    targets, left_out = coconut_object_targets(tmp_path / "coconut", tmp_path / "coco", vocab)
    assert len(targets) == 1 and not any(left_out.values())
    scored = score_objects(predictor, targets, vocab)
    assert scored["categories"] == ["dog", "person"] and scored["n_images"] == 1
    dog, person = predictor.attributes.index("dog"), predictor.attributes.index("person")
    assert scored["labels"][0, dog] == 1 and scored["labels"][0, person] == 0
    assert scored["mask"][0, dog] > scored["image"][0, dog] + 0.1
    assert not np.allclose(scored["mask"][0], scored["box"][0], atol=1e-3)
    assert scored["mask"][1, person] > scored["image"][1, person]


def test_evaluate_objects_on_coconut_json(coconut_root, capsys, default_checkpoint) -> None:
    """The painted fixture: 4 thing segments (the tiny person, the dining table, the cup, the boat)
    in the 3 photos on disk; the 4th row's photo is not there. Labels: person; furniture; cup;
    boat and vehicle positive (5); every exhaustive attribute the category does not imply negative."""
    folder = coconut_root / "coconut" / "relabeled_coco_val"
    args = ["evaluate", "--objects", "--coconut", str(folder), "--coco", str(coconut_root / "coco"), "--json",
            "--checkpoint", str(default_checkpoint)]  # fmt: skip
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["n_objects"], out["n_images"], out["n_positive_labels"]) == (4, 3, 5)
    assert out["left_out"] == {"images_not_on_disk": 1, "images_exif_rotated": 0, "images_without_objects": 0}
    assert out["format"] == "coconut" and set(out["regions"]) == {"image", "box", "mask"}
    for region in out["regions"].values():
        assert 0.0 <= region["mAP"] <= 1.0 and 0.0 <= region["mean_per_object_auc"] <= 1.0
        assert region["n_attributes_scored"] == 5  # person, furniture, cup, boat, vehicle


def test_evaluate_objects_table_on_coconut(coconut_root, capsys, default_checkpoint) -> None:
    folder = coconut_root / "coconut" / "relabeled_coco_val"
    assert main(["evaluate", "--objects", "--coconut", str(folder), "--coco", str(coconut_root / "coco"),
                 "--limit", "2", "--checkpoint", str(default_checkpoint)]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("3 objects in 2 images (coconut ")  # rows 139 (person) and 285 (table, cup)
    assert lines[1].split() == ["metric", "whole", "image", "box", "mask"]
    assert [line.split()[0] for line in lines[2:7]] == ["mAP", "mean_per_object_auc", "precision_at_1",
                                                       "precision_at_5", "n_attributes_scored"]  # fmt: skip


# ----------------------------------------------------------------------------- COCO Attributes patches


def test_evaluate_objects_on_coco_attributes(tmp_path, capsys, default_checkpoint) -> None:
    """Three patches in two photos. Votes -> labels (>= 0.5 positive, 0 negative, between unknown):
    101 furry+, gray-, wooden-, sitting+; 102 furry-, gray+ (grey 0.67), wooden+, sitting-;
    103 furry ?, gray-, wooden-, sitting-: 4 positives, 7 negatives. Boxes only: no mask column."""
    pkl = write_py2_pickle(tmp_path / "c.pkl", official_like_dict())
    coco2014_tree(tmp_path / "coco")
    args = ["evaluate", "--objects", "--coco-attributes", str(pkl), "--coco", str(tmp_path / "coco"), "--json",
            "--checkpoint", str(default_checkpoint)]  # fmt: skip
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["n_objects"], out["n_images"], out["n_positive_labels"], out["n_negative_labels"]) == (
        3,
        2,
        4,
        7,
    )
    assert out["format"] == "coco-attributes" and set(out["regions"]) == {"image", "box"}


def test_coco_attribute_boxes_are_relative_to_the_photo(tmp_path, vocab) -> None:
    from cocoattr.object_evaluation import cocottributes_object_targets

    pkl = write_py2_pickle(tmp_path / "c.pkl", official_like_dict())
    coco2014_tree(tmp_path / "coco")
    targets, _ = cocottributes_object_targets(pkl, tmp_path / "coco", vocab)
    boxes = sorted(o.box for t in targets for o in t.objects())
    # 200 x 100 photos: bbox (50, 20, 100, 40), (0, 0, 20, 20), (10, 10, 30, 30)
    assert boxes == [(0.0, 0.0, 0.1, 0.2), (0.05, 0.1, 0.2, 0.4), (0.25, 0.2, 0.75, 0.6)]


# ----------------------------------------------------------------------------- mistakes


def _stuff_only_shard(folder: Path) -> None:
    table = write_shard(None, None)
    rows = table.to_pylist()[:1]  # row 139 with its person removed: sky, trees, building, grass
    rows[0]["segments_info"]["segments_info"] = [
        s for s in rows[0]["segments_info"]["segments_info"] if s["id"] != 5
    ]
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, SCHEMA), folder / SHARD)


@pytest.mark.parametrize(
    "make, extra, fragment",
    [
        (None, ["--coconut", "{tmp}/nowhere", "--coco", "{coco}"], "--coconut {tmp}/nowhere: no such folder"),
        (None, ["--coconut", "{folder}", "--coco", "{tmp}/nowhere"], "--coco {tmp}/nowhere: no such folder"),
        (None, ["--coconut", "{folder}"], "--coconut FOLDER takes its photos from --coco ROOT"),
        (None, ["--coco", "{coco}"], "--objects scores either --coconut FOLDER or --coco-attributes PKL"),
        (
            None,
            ["--coconut", "{folder}", "--coco-attributes", "{tmp}/x.pkl", "--coco", "{coco}"],
            "--objects scores either",
        ),  # fmt: skip
        ("empty", ["--coconut", "{tmp}/empty", "--coco", "{coco}"], "no COCONut parquet shards under data/"),
        ("stuff", ["--coconut", "{tmp}/stuff", "--coco", "{coco}"], "no object to score"),
        ("text", ["--coco-attributes", "{tmp}/notes.pkl", "--coco", "{coco}"], "not a readable pickle"),
        (
            None,
            ["--coco-attributes", "{tmp}/x.pkl", "--coco", "{coco}"],
            "--coco-attributes {tmp}/x.pkl: no such file",
        ),
        ("text", ["--coco-attributes", "{tmp}/notes.pkl", "--coco", "{tmp}"], "no instances_train2014.json"),
        (
            None,
            ["--coconut", "{folder}", "--coco", "{coco}", "--heatmaps"],
            "--heatmaps does not go with --objects",
        ),
        (
            None,
            ["--coconut", "{folder}", "--coco", "{coco}", "--split", "val2017"],
            "--split does not go with",
        ),
    ],
)
def test_evaluate_objects_mistakes_are_one_line(
    coconut_root, tmp_path, make, extra, fragment, capsys
) -> None:
    if make == "empty":
        (tmp_path / "empty").mkdir()
    elif make == "stuff":
        _stuff_only_shard(tmp_path / "stuff")
    elif make == "text":
        (tmp_path / "notes.pkl").write_text("these are not the votes you are looking for\n")
        coco2014_tree(tmp_path / "coco14")
    fill = {
        "tmp": tmp_path,
        "folder": coconut_root / "coconut" / "relabeled_coco_val",
        "coco": coconut_root / "coco",
    }
    if make == "text" and "{coco}" in extra:
        fill["coco"] = tmp_path / "coco14"
    assert main(["evaluate", "--objects", *(a.format(**fill) for a in extra)]) == 2
    err = capsys.readouterr().err
    assert fragment.format(**fill) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_coco_attributes_without_objects_is_one_line(tmp_path, capsys) -> None:
    assert main(["evaluate", "--coco-attributes", str(tmp_path / "x.pkl")]) == 2
    assert "--coco-attributes PKL goes with --objects" in capsys.readouterr().err
