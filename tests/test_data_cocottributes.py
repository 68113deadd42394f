"""COCO Attributes: restricted unpickling of Python 2 and 3 pickles, vote rule, vocabulary mapping,
join with COCO-2014 instances and context crops."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cocoattr.data import cocottributes as ca
from cocoattr.errors import UserError
from cocoattr.vocab import load_vocabulary

COLUMNS = ["Furry/Fur", "gray", "grey", "Wooden", "sitting", "made of unobtainium"]
VOTES = {
    # patch id: votes in column order
    101: [1.0, 0.0, 0.0, 0.0, 0.6666667, 0.0],
    102: [0.0, 0.3333333, 0.6666667, 0.5, 0.0, 1.0],
    103: [0.3333333, 0.0, 0.0, 0.0, 0.0, 0.0],
}


def official_like_dict() -> dict:
    """The structure of cocottributes_eccv_version.pkl with 3 patches and 6 columns."""
    return {
        "ann_vecs": {p: np.array(v, dtype=np.float64) for p, v in VOTES.items()},
        "patch_id_to_ann_id": {101: 5001, 102: 5002, 103: 6001},
        "split": {101: "train2014", 102: "train2014", 103: "val2014"},
        "attributes": [{"id": 900 + i, "name": n} for i, n in enumerate(COLUMNS)],
    }


class Py2Pickler(pickle._Pickler):
    """Writes str/bytes as Python 2 `str` (BINSTRING) the way the Brown-hosted Python 2 pickle does."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def write_py2_pickle(path: Path, obj) -> Path:
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)
    # numpy 1.x (what Python 2 had) names its reconstructor numpy.core.multiarray
    path.write_bytes(path.read_bytes().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    return path


def test_python2_pickle_loads_through_the_restricted_unpickler(tmp_path):
    path = write_py2_pickle(tmp_path / "cocottributes_eccv_version.pkl", official_like_dict())
    raw = path.read_bytes()
    assert b"cnumpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw
    data = ca.load_cocottributes(path)
    assert data.patch_ids.tolist() == [101, 102, 103]
    assert data.ann_ids.tolist() == [5001, 5002, 6001]
    assert data.splits == ["train2014", "train2014", "val2014"]
    assert data.columns == COLUMNS
    np.testing.assert_allclose(data.votes[1], VOTES[102], rtol=1e-6)


def test_python3_protocol2_pickle_loads(tmp_path):
    path = tmp_path / "p3.pkl"
    with open(path, "wb") as f:
        pickle.dump(official_like_dict(), f, protocol=2)
    assert b"_codecs\nencode" in path.read_bytes()  # how Python 3 writes bytes at protocol 2
    data = ca.load_cocottributes(path)
    np.testing.assert_allclose(data.votes[0], VOTES[101], rtol=1e-6)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvilPopen:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.Popen, (["touch", str(self.marker)],))


@pytest.mark.parametrize("make", [_Evil, _EvilPopen])
def test_malicious_pickle_is_refused_without_running(tmp_path, make):
    marker = tmp_path / "pwned"
    payload = official_like_dict()
    payload["attributes"] = [make(marker)]
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(
        UserError, match=r"refusing to unpickle (posix\.system|subprocess\.Popen) from .*evil\.pkl"
    ):
        ca.load_cocottributes(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "module,name", [("builtins", "eval"), ("copyreg", "_reconstructor"), ("numpy", "load"), ("os", "system")]
)
def test_only_data_globals_are_allowed(tmp_path, module, name):
    path = tmp_path / "g.pkl"
    path.write_bytes(b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"q\x00.")
    with pytest.raises(UserError, match=f"refusing to unpickle {module}.{name} from {path}"):
        ca.safe_load_pickle(path)


def test_broken_and_wrong_pickles_are_user_errors(tmp_path):
    truncated = tmp_path / "t.pkl"
    truncated.write_bytes(pickle.dumps(official_like_dict(), protocol=2)[:200])
    with pytest.raises(UserError, match="t.pkl: not a readable pickle"):
        ca.load_cocottributes(truncated)
    wrong = tmp_path / "w.pkl"
    wrong.write_bytes(pickle.dumps({"ann_vecs": {}}, protocol=2))
    with pytest.raises(UserError, match=r"w.pkl: not a COCO Attributes pickle \(missing keys"):
        ca.load_cocottributes(wrong)
    d = official_like_dict()
    d["ann_vecs"][101] = np.zeros(5)
    bad = tmp_path / "b.pkl"
    bad.write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(UserError, match="patch 101 has 5 votes but the file lists 6 attributes"):
        ca.load_cocottributes(bad)
    with pytest.raises(UserError, match="file not found"):
        ca.load_cocottributes(tmp_path / "missing.pkl")


def test_vote_rule():
    labels = ca.votes_to_labels(np.array([0.0, 0.2, 1 / 3, 0.5, 2 / 3, 1.0]))
    assert labels.dtype == np.int8
    assert labels.tolist() == [0, -1, -1, 1, 1, 1]


def test_columns_map_to_vocabulary_case_insensitively_with_alternatives():
    vocab = load_vocabulary()
    mapping = ca.map_columns(COLUMNS, vocab)
    assert mapping.columns["furry"] == [0]  # "Furry/Fur"
    assert mapping.columns["gray"] == [1, 2]  # both spellings
    assert mapping.columns["wooden"] == [3]
    assert mapping.columns["sitting"] == [4]
    assert mapping.unmatched_columns == ["made of unobtainium"]
    assert "red" in mapping.unmapped_attributes
    assert "1 columns unused: made of unobtainium" in mapping.summary()


def test_vocab_labels_merge_columns_by_highest_vote(tmp_path):
    vocab = load_vocabulary()
    data = ca.load_cocottributes(write_py2_pickle(tmp_path / "c.pkl", official_like_dict()))
    labels = ca.vocab_labels(data, vocab)
    assert labels.shape == (3, len(vocab)) and labels.dtype == np.int8
    col = {n: vocab.index(n) for n in ("furry", "gray", "wooden", "sitting", "red")}
    assert labels[0, [col["furry"], col["gray"], col["wooden"], col["sitting"], col["red"]]].tolist() == [
        1,
        0,
        0,
        1,
        -1,
    ]
    # patch 102: gray 0.33 / grey 0.67 -> 0.67 positive; wooden exactly 0.5 -> positive
    assert labels[1, [col["furry"], col["gray"], col["wooden"]]].tolist() == [0, 1, 1]
    assert labels[2, col["furry"]] == -1  # a minority vote stays unknown


def instances_2014(split: str, anns: list[dict]) -> dict:
    """A tiny instances_{split}.json in the real COCO layout."""
    ids = sorted({a["image_id"] for a in anns})
    return {
        "info": {"year": 2014},
        "licenses": [],
        "images": [
            {"id": i, "file_name": f"COCO_{split}_{i:012d}.jpg", "width": 200, "height": 100} for i in ids
        ],
        "annotations": [
            {"segmentation": [[0, 0, 1, 1, 2, 2]], "area": 1.0, "iscrowd": 0, "category_id": 18, **a}
            for a in anns
        ],
        "categories": [{"supercategory": "animal", "id": 18, "name": "dog"}],
    }


def coco2014_tree(root: Path, with_val_image: bool = True) -> tuple[dict, dict]:
    train = instances_2014(
        "train2014",
        [
            {"id": 5001, "image_id": 9, "bbox": [50.0, 20.0, 100.0, 40.0]},
            {"id": 5002, "image_id": 9, "bbox": [0.0, 0.0, 20.0, 20.0]},
        ],
    )
    val = instances_2014("val2014", [{"id": 6001, "image_id": 42, "bbox": [10.0, 10.0, 30.0, 30.0]}])
    (root / "annotations").mkdir(parents=True)
    for split, data in (("train2014", train), ("val2014", val)):
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
        (root / split).mkdir()
    Image.new("RGB", (200, 100), (10, 200, 30)).save(root / "train2014" / "COCO_train2014_000000000009.jpg")
    if with_val_image:
        Image.new("RGB", (200, 100)).save(root / "val2014" / "COCO_val2014_000000000042.jpg")
    instances = {s: root / "annotations" / f"instances_{s}.json" for s in ("train2014", "val2014")}
    return instances, {s: root / s for s in ("train2014", "val2014")}


def test_join_with_instances_and_report_missing(tmp_path):
    data = ca.load_cocottributes(write_py2_pickle(tmp_path / "c.pkl", official_like_dict()))
    instances, dirs = coco2014_tree(tmp_path / "coco", with_val_image=False)
    patches, report = ca.join_instances(data, instances, dirs)
    assert patches[0].image_id == 9 and patches[0].box.bbox == (50.0, 20.0, 100.0, 40.0)
    assert patches[0].box.category == "dog" and patches[0].split == "train2014"
    assert patches[0].image_path == dirs["train2014"] / "COCO_train2014_000000000009.jpg"
    assert patches[1].box.ann_id == 5002
    assert patches[2] is None
    assert report.count == 1 and "1 missing image files" in report.summary()


def test_unknown_annotation_ids_are_reported(tmp_path):
    d = official_like_dict()
    d["patch_id_to_ann_id"][102] = 777777
    data = ca.load_cocottributes(write_py2_pickle(tmp_path / "c.pkl", d))
    instances, dirs = coco2014_tree(tmp_path / "coco")
    patches, report = ca.join_instances(data, instances, dirs)
    assert patches[1] is None and patches[0] is not None and patches[2] is not None
    assert (
        "1 annotation ids not in the instances file instances_train2014.json (e.g. 777777)"
        in report.summary()
    )


def test_nothing_joinable_is_an_error(tmp_path):
    data = ca.load_cocottributes(write_py2_pickle(tmp_path / "c.pkl", official_like_dict()))
    with pytest.raises(UserError, match="no patch could be joined"):
        ca.join_instances(data, {}, {})


def test_context_crop_is_enlarged_and_clipped():
    assert ca.context_box((50, 20, 100, 40), 200, 100, context=0.2) == (30, 12, 170, 68)
    assert ca.context_box((0, 0, 20, 20), 200, 100, context=0.25) == (0, 0, 25, 25)
    assert ca.context_box((190, 90, 20, 20), 200, 100) == (186, 86, 200, 100)
    image = Image.new("RGB", (200, 100))
    crop = ca.crop_with_context(image, (50, 20, 100, 40), context=0.2)
    assert crop.size == (140, 56)
