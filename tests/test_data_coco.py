"""COCO captions/instances loaders on tiny files in the real 2014 and 2017 layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from cocoattr.data import coco as cc
from cocoattr.errors import UserError


def captions_2017() -> dict:
    return {
        "info": {"description": "COCO 2017 Dataset", "year": 2017},
        "licenses": [
            {"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1, "name": "BY-NC-SA"}
        ],
        "images": [
            {"license": 1, "file_name": "000000000139.jpg", "height": 426, "width": 640, "id": 139},
            {"license": 1, "file_name": "000000000285.jpg", "height": 640, "width": 586, "id": 285},
            {"license": 1, "file_name": "000000000632.jpg", "height": 483, "width": 640, "id": 632},
        ],
        "annotations": [
            {"image_id": 139, "id": 2, "caption": "A woman stands in the dining area at the table."},
            {"image_id": 139, "id": 1, "caption": "A room with chairs, a table, and a woman in it. "},
            {
                "image_id": 285,
                "id": 3,
                "caption": "A big burly grizzly bear is show with grass in the background.",
            },
            {
                "image_id": 632,
                "id": 4,
                "caption": "Bedroom scene with a bookcase, blue comforter and window.",
            },
        ],
    }


def instances_2014() -> dict:
    return {
        "info": {"year": 2014},
        "licenses": [],
        "images": [{"file_name": "COCO_val2014_000000000042.jpg", "height": 100, "width": 200, "id": 42}],
        "annotations": [
            {
                "segmentation": [[1, 1, 2, 2, 3, 1]],
                "area": 9.0,
                "iscrowd": 0,
                "image_id": 42,
                "bbox": [10, 20, 30, 40],
                "category_id": 18,
                "id": 1001,
            },
            {
                "segmentation": {"counts": [0, 5], "size": [100, 200]},
                "area": 5.0,
                "iscrowd": 1,
                "image_id": 42,
                "bbox": [0, 0, 5, 1],
                "category_id": 1,
                "id": 1002,
            },
        ],  # fmt: skip
        "categories": [
            {"supercategory": "animal", "id": 18, "name": "dog"},
            {"supercategory": "person", "id": 1, "name": "person"},
        ],  # fmt: skip
    }


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_captions_2017_layout(tmp_path):
    ann, image_dir = cc.coco_paths(tmp_path, "captions", "val2017")
    assert ann == tmp_path / "annotations" / "captions_val2017.json" and image_dir == tmp_path / "val2017"
    write(ann, captions_2017())
    image_dir.mkdir()
    for name in ("000000000139.jpg", "000000000632.jpg"):
        Image.new("RGB", (8, 8)).save(image_dir / name)
    coco = cc.load_coco(ann, "captions")
    records, report = cc.image_records(coco, image_dir)
    assert [(r.id, r.path.name, r.width, r.height) for r in records] == [
        (139, "000000000139.jpg", 640, 426),
        (632, "000000000632.jpg", 640, 483),
    ]
    assert report.count == 1 and "1 missing image files" in report.summary()
    caps = cc.captions_by_image(coco)
    assert caps[139] == [
        "A room with chairs, a table, and a woman in it.",
        "A woman stands in the dining area at the table.",
    ]
    assert caps[285] == ["A big burly grizzly bear is show with grass in the background."]


def test_instances_2014_layout(tmp_path):
    (tmp_path / "coco").mkdir()
    ann, image_dir = cc.coco_paths(tmp_path, "instances", "val2014")
    assert ann == tmp_path / "coco" / "annotations" / "instances_val2014.json"
    coco = cc.load_coco(write(ann, instances_2014()), "instances")
    boxes = cc.boxes_by_image(coco)
    assert boxes[42] == [cc.Box(1001, 42, "dog", (10.0, 20.0, 30.0, 40.0))]
    assert [b.ann_id for b in cc.boxes_by_image(coco, include_crowd=True)[42]] == [1001, 1002]
    found, report = cc.boxes_by_ann_id(coco, [1001, 99])
    assert list(found) == [1001] and report.skipped["annotation ids not in the instances file"] == [99]


def test_all_images_missing_is_an_error(tmp_path):
    coco = cc.load_coco(write(tmp_path / "c.json", captions_2017()), "captions")
    with pytest.raises(UserError, match="none of the 3 images .* are there"):
        cc.image_records(coco, tmp_path / "nowhere")


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"images": [', "malformed JSON at line 1"),
        ("[]", "expected a JSON object"),
        ('{"images": []}', "not a COCO annotation file \\(no 'annotations' list\\)"),
        ('{"images": [{"id": 1}], "annotations": []}', "images\\[0\\] lacks 'id' or 'file_name'"),
    ],
)
def test_malformed_files(tmp_path, content, message):
    with pytest.raises(UserError, match=message):
        cc.load_coco(write(tmp_path / "bad.json", content))


def test_wrong_kind_and_dangling_image_ids(tmp_path):
    path = write(tmp_path / "captions_val2017.json", captions_2017())
    with pytest.raises(
        UserError, match="captions_val2017.json: annotations\\[0\\] lacks .*is this a captions file"
    ):
        cc.load_coco(path, "instances")
    data = captions_2017()
    data["annotations"].append({"image_id": 7, "id": 9, "caption": "x"})
    with pytest.raises(
        UserError, match="1 annotations refer to image ids that are not in 'images' \\(e.g. \\[7\\]\\)"
    ):
        cc.load_coco(write(tmp_path / "d.json", data), "captions")
    with pytest.raises(UserError, match="missing.json: file not found"):
        cc.load_coco(tmp_path / "missing.json")


@pytest.mark.parametrize("bad", ["../secret.jpg", "/etc/hostname", "a/../../b.jpg", "C:evil.jpg"])
def test_image_file_names_outside_the_folder_are_refused(tmp_path, bad):
    data = captions_2017()
    data["images"][0]["file_name"] = bad
    ann = tmp_path / "captions.json"
    write(ann, data)
    with pytest.raises(UserError, match="points outside"):
        cc.image_records(cc.load_coco(ann, "captions"), tmp_path / "val2017", check_files=False)
