"""Heatmap faithfulness (#16): mass in mask and the pointing game on hand-built maps with known
answers, COCO instances -> masks, the gallery's hand-drawn boxes checked, and `evaluate --heatmaps`
end to end on a COCO-format root in the real layout (real gallery photos) and on the gallery."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cocoattr.cli import main
from cocoattr.data.gallery import gallery_root, load_gallery
from cocoattr.errors import UserError
from cocoattr.faithfulness import (
    POINTING_TOLERANCE_PX,
    RegionScore,
    box_mask,
    category_attributes,
    centre_gaussian,
    instance_mask,
    mass_in_mask,
    pointing_hit,
    read_boxes,
    score_region,
    summarise,
)
from cocoattr.vocab import load_vocabulary

GALLERY = gallery_root()
VOCAB = load_vocabulary()


# --------------------------------------------------------------------------- the two numbers


def test_all_mass_inside_is_one_none_is_zero_half_is_half():
    mask = np.zeros((40, 60), bool)
    mask[10:20, 10:30] = True
    inside = np.where(mask, 1.0, 0.0)
    assert mass_in_mask(inside, mask) == 1.0
    assert mass_in_mask(1.0 - inside, mask) == 0.0
    half = inside.copy()
    half[0, 0] = inside.sum()  # as much outside as inside
    assert mass_in_mask(half, mask) == pytest.approx(0.5)


def test_a_flat_map_scores_the_area_fraction_and_points_nowhere():
    mask = np.zeros((10, 10), bool)
    mask[:, :3] = True
    assert mass_in_mask(np.ones((10, 10)), mask) == pytest.approx(0.3)
    assert mass_in_mask(np.zeros((10, 10)), mask) == pytest.approx(0.3)
    assert not pointing_hit(np.ones((10, 10)), mask)


@pytest.mark.parametrize(("gap", "hit"), [(0, True), (POINTING_TOLERANCE_PX, True), (POINTING_TOLERANCE_PX + 1, False),
                                          (40, False)])  # fmt: skip
def test_pointing_game_counts_a_peak_within_the_tolerance(gap, hit):
    mask = np.zeros((100, 200), bool)
    mask[:, :50] = True  # columns 0..49
    field = np.zeros((100, 200))
    field[60, 49 + gap] = 1.0  # `gap` pixels right of the mask's last column
    assert pointing_hit(field, mask) is hit


def test_pointing_tolerance_is_a_disc_not_a_square():
    mask = np.zeros((100, 100), bool)
    mask[50, 50] = True
    field = np.zeros((100, 100))
    field[50 + 11, 50 + 11] = 1.0  # 15.6 px away diagonally, inside the 15 px square
    assert not pointing_hit(field, mask)
    field[:] = 0
    field[50 + 10, 50 + 10] = 1.0  # 14.1 px
    assert pointing_hit(field, mask)


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="same"):
        mass_in_mask(np.ones((4, 4)), np.ones((4, 5), bool))


def test_centre_gaussian_peaks_at_the_centre_and_beats_uniform_on_a_centred_box():
    g = centre_gaussian((200, 100))
    assert g.shape == (100, 200) and g.max() == 1.0 and g.min() == 0.0
    y, x = np.unravel_index(np.argmax(g), g.shape)
    assert (y, x) in {(49, 99), (49, 100), (50, 99), (50, 100)}
    centred = box_mask([(50, 25, 150, 75)], (200, 100))
    corner = box_mask([(0, 0, 50, 25)], (200, 100))
    assert mass_in_mask(g, centred) > 2 * centred.mean()
    assert mass_in_mask(g, corner) < corner.mean()
    assert pointing_hit(g, centred) and not pointing_hit(g, corner)


def test_score_region_upsamples_the_grid_to_the_mask():
    attn = np.zeros((4, 4), np.float32)
    attn[0, 3] = 1.0  # the model looks at the top-right cell (row 0, column 3)
    mask = box_mask([(192, 0, 256, 64)], (256, 128))  # the top-right quarter-width, half-height
    s = score_region(attn, mask, image="x.jpg", attribute="dog", type_="category")
    assert s.hit and s.area == pytest.approx(64 * 64 / (256 * 128))
    # bilinear: the 64 x 32 px cell is flat to its centre (224, 16), then falls to 0 at the next
    # centres (160, 48): all of it inside in y, (32 + 24) / 64 of it inside x >= 192
    assert s.mass == pytest.approx(0.875, abs=2e-3)
    assert not s.baseline_hit and s.baseline_mass < s.area
    for box in [(0, 0, 64, 64), (0, 64, 64, 128)]:  # top-left, bottom-left (a transposed map's spot)
        far = score_region(
            attn, box_mask([box], (256, 128)), image="x.jpg", attribute="dog", type_="category"
        )
        assert not far.hit and far.mass == pytest.approx(0.0)


def test_summarise_means_per_type_and_attribute():
    def s(image, attr, type_, mass, hit):
        return RegionScore(
            image, attr, type_, area=0.25, mass=mass, hit=hit, baseline_mass=0.5, baseline_hit=False
        )

    scores = [s("a", "dog", "category", 1.0, True), s("b", "dog", "category", 0.5, False),
              s("a", "furry", "texture", 0.0, False)]  # fmt: skip
    out = summarise(scores)
    assert out["overall"] == {"n": 3, "images": 2, "mass_in_mask": 0.5, "mass_in_mask_baseline": 0.5,
                              "area_fraction": 0.25, "pointing": 0.3333, "pointing_baseline": 0.0}  # fmt: skip
    assert list(out["by_type"]) == ["texture", "category"]  # vocabulary order
    assert (
        out["by_type"]["category"]["mass_in_mask"] == 0.75 and out["by_type"]["category"]["pointing"] == 0.5
    )
    assert list(out["by_attribute"]) == ["dog", "furry"] and out["by_attribute"]["furry"]["type"] == "texture"
    with pytest.raises(UserError, match="no"):
        summarise([])


# --------------------------------------------------------------------------- regions


def test_box_mask_takes_pixels_whose_centre_is_inside_and_clips():
    m = box_mask([(0, 0, 2, 3)], (4, 4))
    assert m.sum() == 6 and m[:3, :2].all()
    m = box_mask([(0.6, 0, 2, 1), (3, 3, 10, 10)], (4, 4))  # column 0's centre is outside; clipped
    assert m.sum() == 2 and m[0, 1] and m[3, 3]


def test_instance_masks_from_polygons_rle_and_bare_boxes():
    size = (40, 30)
    square = {"segmentation": [[10, 10, 20, 10, 20, 20, 10, 20]], "bbox": [10, 10, 10, 10]}
    assert abs(int(instance_mask(square, size).sum()) - 100) <= 21  # pycocotools rasterises the edges
    bare = {"bbox": [5, 5, 10, 4]}
    assert instance_mask(bare, size).sum() == 40
    from pycocotools import mask as mask_utils

    truth = np.zeros((30, 40), np.uint8, order="F")
    truth[3:7, 2:12] = 1
    rle = mask_utils.encode(truth)
    assert (instance_mask({"segmentation": rle, "bbox": [0, 0, 1, 1]}, size) == truth.astype(bool)).all()
    uncompressed = {"counts": [int(v) for v in _rle_counts(truth)], "size": [30, 40]}
    assert (instance_mask({"segmentation": uncompressed}, size) == truth.astype(bool)).all()


def _rle_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE (column-major runs, starting with zeros), as crowd annotations store it."""
    flat, counts, current, run = mask.flatten(order="F"), [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    return [*counts, run]


def test_category_attributes_are_the_weight_one_entries_without_scene():
    m = category_attributes(VOCAB)
    assert m["dog"] == ["dog"] and m["cow"] == ["cattle"] and m["zebra"] == ["zebra", "striped"]
    assert m["bed"] == ["furniture"]  # not `indoor`: the bed's mask is not where `indoor` is
    assert m["toilet"] == [] and len(m) == 80


# --------------------------------------------------------------------------- the gallery's boxes


def _sizes() -> dict[str, tuple[int, int]]:
    return {p.name: Image.open(p).size for p in load_gallery().paths}


def test_the_shipped_boxes_are_valid_and_box_only_hand_labelled_positives():
    sizes = _sizes()
    boxes = read_boxes(GALLERY / "boxes.json", VOCAB, sizes)
    gallery = load_gallery()
    positives = {p.name: {VOCAB.names[j] for j in np.flatnonzero(gallery.labels[i] == 1)}
                 for i, p in enumerate(gallery.paths)}  # fmt: skip
    assert len(boxes) >= 20, "most photos have boxes"
    for name, attrs in boxes.items():
        assert set(attrs) <= positives[name], (name, set(attrs) - positives[name])
    n_category = sum(VOCAB[a].type == "category" for attrs in boxes.values() for a in attrs)
    assert n_category >= 40


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [({"skimage_chelsea.jpg": {"cat": [[10, 10, 5, 50]]}}, "box [10, 10, 5, 50] is not [x0, y0, x1, y1]"),
     ({"skimage_chelsea.jpg": {"cat": [[0, 0, 452, 50]]}}, "x1 <= 451"),
     ({"skimage_chelsea.jpg": {"cat": [[0, 0, "9", 50]]}}, "is not [x0, y0, x1, y1]"),
     ({"skimage_chelsea.jpg": {"cat": [[0, 0, 9]]}}, "is not [x0, y0, x1, y1]"),
     ({"skimage_chelsea.jpg": {"cat": []}}, "non-empty list"),
     ({"skimage_chelsea.jpg": {"kitty": [[0, 0, 9, 9]]}}, "'kitty' is not a vocabulary attribute"),
     ({"nope.jpg": {"cat": [[0, 0, 9, 9]]}}, "'nope.jpg' is not a gallery image")],
)  # fmt: skip
def test_a_bad_box_is_one_line_naming_it(tmp_path, entry, fragment, capsys, default_checkpoint):
    root = tmp_path / "gallery"  # a folder in the gallery layout, with its own boxes.json
    shutil.copytree(GALLERY, root)
    (root / "boxes.json").write_text(json.dumps({"images": entry}))
    with pytest.raises(UserError, match="boxes.json: ") as e:
        read_boxes(root / "boxes.json", VOCAB, _sizes())
    assert fragment in str(e.value) and "\n" not in str(e.value)
    assert main(["evaluate", "--heatmaps", "--data", str(root), "--checkpoint", str(default_checkpoint)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cocoattr: error: ") and fragment in err[0]


def test_malformed_boxes_file(tmp_path):
    (tmp_path / "boxes.json").write_text("{nope")
    with pytest.raises(UserError, match="malformed JSON at line 1"):
        read_boxes(tmp_path / "boxes.json", VOCAB, {})
    (tmp_path / "boxes.json").write_text("[]")
    with pytest.raises(UserError, match="expected"):
        read_boxes(tmp_path / "boxes.json", VOCAB, {})


# --------------------------------------------------------------------------- end to end

# fmt: off
PHOTOS = {  # COCO id -> (gallery photo, [(category, polygon or None for a bare box, bbox)])
    139: ("gradio_lion.jpg", [("cat", [[40, 60, 220, 60, 220, 200, 40, 200]], [40, 60, 180, 140]),
                              ("cat", None, [150, 200, 50, 40])]),  # two cats: one region, their union
    285: ("skimage_coffee.jpg", [("cup", None, [100, 50, 300, 250]), ("dining table", None, [0, 300, 600, 100]),
                                 ("toilet", None, [0, 0, 10, 10])]),
    632: ("foolbox_imagenet_06_609_jeep.jpg", [("car", [[100, 150, 400, 400, 100, 400]],  # a triangle
                                                [100, 150, 300, 250])]),
    724: ("sklearn_flower.jpg", []),  # no instances: not a target
}
# fmt: on
CATEGORIES = [
    {"id": 3, "name": "car"},
    {"id": 17, "name": "cat"},
    {"id": 47, "name": "cup"},
    {"id": 67, "name": "dining table"},
    {"id": 70, "name": "toilet"},
]  # fmt: skip


def write_coco_instances(root: Path) -> Path:
    """ROOT/coco/annotations/instances_val2017.json and ROOT/coco/val2017/*.jpg, as `data download` lays
    them out; one annotated image is not on disk, one is stored EXIF-rotated and one crowd
    annotation is left out."""
    ann, images = root / "coco" / "annotations", root / "coco" / "val2017"
    ann.mkdir(parents=True)
    images.mkdir(parents=True)
    cat_id = {c["name"]: c["id"] for c in CATEGORIES}
    imgs, anns = [], []
    for coco_id, (photo, objects) in PHOTOS.items():
        name = f"{coco_id:012d}.jpg"
        shutil.copy(GALLERY / "images" / photo, images / name)
        w, h = Image.open(images / name).size
        imgs.append({"id": coco_id, "file_name": name, "width": w, "height": h})
        for cat, poly, bbox in objects:
            a = {"id": len(anns) + 1, "image_id": coco_id, "category_id": cat_id[cat], "bbox": bbox,
                 "area": bbox[2] * bbox[3], "iscrowd": 0}  # fmt: skip
            if poly is not None:
                a["segmentation"] = poly
            anns.append(a)
    anns.append({"id": 99, "image_id": 139, "category_id": cat_id["car"], "bbox": [0, 0, 5, 5], "iscrowd": 1,
                 "segmentation": {"counts": [0, 25], "size": [256, 256]}, "area": 25})  # fmt: skip
    rotated = Image.open(GALLERY / "images" / "gradio_lion.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: the annotations' frame is not the upright photo's
    rotated.save(images / "000000000777.jpg", exif=exif)
    imgs.append({"id": 777, "file_name": "000000000777.jpg", "width": 256, "height": 256})
    anns.append(
        {"id": 101, "image_id": 777, "category_id": cat_id["cat"], "bbox": [0, 0, 50, 50], "iscrowd": 0}
    )
    imgs.append({"id": 999, "file_name": "000000000999.jpg", "width": 10, "height": 10})
    anns.append(
        {"id": 100, "image_id": 999, "category_id": cat_id["cat"], "bbox": [0, 0, 5, 5], "iscrowd": 0}
    )
    (ann / "instances_val2017.json").write_text(json.dumps({"images": imgs, "annotations": anns,
                                                            "categories": CATEGORIES}))  # fmt: skip
    return root


def test_evaluate_heatmaps_on_a_coco_root_json(tmp_path, capsys, default_checkpoint):
    root = write_coco_instances(tmp_path / "data")
    args = ["evaluate", "--heatmaps", "--coco", str(root), "--split", "val2017", "--json",
            "--checkpoint", str(default_checkpoint)]  # fmt: skip
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images_not_on_disk"] == 1 and out["images_exif_rotated"] == 1 and out["failed_images"] == []
    # lion/cat, coffee/cup + dining table -> furniture (toilet maps to no region attribute), jeep/car
    assert set(out["by_attribute"]) == {"cat", "cup", "furniture", "car"}
    assert out["overall"]["n"] == 4 and out["overall"]["images"] == 3
    assert list(out["by_type"]) == ["category"]
    cup = out["by_attribute"]["cup"]
    # COCO boxes are x, y, w, h
    assert cup["area_fraction"] == pytest.approx(300 * 250 / (600 * 400), abs=1e-4)
    assert cup["pointing_baseline"] == 1.0  # the box holds the centre (300, 200)
    furniture = out["by_attribute"]["furniture"]
    assert furniture["area_fraction"] == pytest.approx(100 * 600 / (600 * 400), abs=1e-4)
    assert furniture["pointing_baseline"] == 0.0  # the bottom strip is far from the centre
    assert out["by_attribute"]["cat"]["area_fraction"] == pytest.approx(
        (180 * 140 + 50 * 40) / 256**2, abs=2e-3
    )
    # the polygon, not its box: half of the 300 x 250 box
    assert out["by_attribute"]["car"]["area_fraction"] == pytest.approx(300 * 250 / 2 / 512**2, abs=2e-3)
    for m in out["by_attribute"].values():
        assert 0.0 <= m["mass_in_mask"] <= 1.0 and m["pointing"] in (0.0, 1.0)
    assert out["protocol"]["pointing_tolerance_px"] == 15
    # the table, and --limit
    assert main([a for a in args if a != "--json"] + ["--limit", "1"]) == 0
    table = capsys.readouterr().out
    assert "heatmap faithfulness (1 images)" in table and "type category" in table and "cat" in table


def test_evaluate_heatmaps_on_the_gallery_boxes(capsys, default_checkpoint):
    assert main(["evaluate", "--heatmaps", "--json", "--checkpoint", str(default_checkpoint)]) == 0
    out = json.loads(capsys.readouterr().out)
    boxes = json.loads((GALLERY / "boxes.json").read_text())["images"]
    assert out["overall"]["n"] == sum(len(a) for a in boxes.values())
    assert out["overall"]["images"] == len(boxes)
    assert out["attributes_not_in_checkpoint"] == []


def test_a_box_over_the_whole_photo_holds_all_the_mass(tmp_path, capsys, default_checkpoint):
    root = tmp_path / "gallery"
    shutil.copytree(GALLERY, root)
    (root / "boxes.json").write_text(
        json.dumps({"images": {"skimage_chelsea.jpg": {"cat": [[0, 0, 451, 300]]}}})
    )
    assert (
        main(
            ["evaluate", "--heatmaps", "--data", str(root), "--json", "--checkpoint", str(default_checkpoint)]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["overall"] == {
        "n": 1,
        "images": 1,
        "mass_in_mask": 1.0,
        "mass_in_mask_baseline": 1.0,
        "area_fraction": 1.0,
        "pointing": 1.0,
        "pointing_baseline": 1.0,
    }


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(["--heatmaps", "--coco", "/nonexistent/x"], "no such folder"),
     (["--heatmaps", "--split", "val2017"], "--split goes with --coco"),
     (["--heatmaps", "--baseline"], "does not apply"),
     (["--heatmaps", "--data", "x", "--coco", "y"], "not both"),
     (["--json"], "go with --heatmaps"),
     (["--split", "val2017"], "expected one of all, train, val, test")],
)  # fmt: skip
def test_evaluate_heatmaps_bad_arguments_are_one_line(args, fragment, capsys, default_checkpoint):
    assert main(["evaluate", *args, "--checkpoint", str(default_checkpoint)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err


def test_a_coco_root_without_instances_is_one_line(tmp_path, capsys, default_checkpoint):
    (tmp_path / "coco" / "val2017").mkdir(parents=True)
    assert (
        main(["evaluate", "--heatmaps", "--coco", str(tmp_path), "--checkpoint", str(default_checkpoint)])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "instances_val2017.json" in err[0], err
