"""COCONut (#16): a tiny parquet shard in the exact schema of the Hub repos' dataset cards (mask PNG
as the `datasets` Image struct, segments_info, image_info), real gallery photos in the COCO layout
and hand-painted panoptic PNGs; `data download coconut-val` through huggingface_hub against the
fake Hub on 127.0.0.1 (tests/conftest.py), cut off and resumed; offline in one line; the labels
(positive / negative / unknown), the masks, and `train_labels: coconut` in the training config."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cocoattr.data import coconut
from cocoattr.data.coconut import coconut_masks, coconut_samples, image_labels, load_mapping, parse_row
from cocoattr.data.splits import split_of
from cocoattr.errors import UserError
from cocoattr.training.config import config_from_dict
from cocoattr.vocab import load_vocabulary

GALLERY = Path(__file__).resolve().parent.parent / "cocoattr" / "gallery" / "images"
REPO = "xdeng77/relabeled_coco_val"
SHARD = "data/train-00000-of-00001.parquet"
CATEGORY = {"person": 1, "cup": 47, "dining table": 67, "wine glass": 46, "flower": 119, "playingfield": 145,
            "tree-merged": 184, "boat": 9, "sky-other-merged": 187, "grass-merged": 193, "building-other-merged": 197,
            "wall-other-merged": 199}  # fmt: skip
# The card's features (relabeled_coco_val/README.md, 2026-12), field order included.
SEGMENT = pa.struct([("area", pa.int64()), ("category_id", pa.int64()), ("id", pa.int64()),
                     ("iscrowd", pa.int64()), ("isthing", pa.int64())])  # fmt: skip
SCHEMA = pa.schema([
    ("mask", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    ("segments_info", pa.struct([("file_name", pa.string()), ("image_id", pa.int64()),
                                 ("segments_info", pa.list_(SEGMENT))])),
    ("image_info", pa.struct([("coco_url", pa.string()), ("date_captured", pa.string()), ("file_name", pa.string()),
                              ("height", pa.int64()), ("id", pa.int64()), ("license", pa.int64()), ("width", pa.int64())])),
])  # fmt: skip


def paint(
    size: tuple[int, int], regions: list[tuple[int, str, tuple[int, int, int, int]]]
) -> tuple[bytes, list]:
    """A panoptic PNG (id = R + 256 G + 256^2 B) of (segment id, category, (x0, y0, x1, y1)) boxes,
    painted in order, and its segments_info with the areas counted from the pixels."""
    w, h = size
    ids = np.zeros((h, w), np.int64)
    for seg_id, _, (x0, y0, x1, y1) in regions:
        ids[y0:y1, x0:x1] = seg_id
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    info = [{"area": int((ids == s).sum()), "category_id": CATEGORY[c], "id": s, "iscrowd": 0,
             "isthing": int(CATEGORY[c] < 92)} for s, c, _ in regions]  # fmt: skip
    return buf.getvalue(), info


# COCO id -> (gallery photo, split, painted segments). Segment ids above 255 check G and B.
IMAGES = {
    139: (
        "sklearn_china.jpg",
        "val2017",
        [  # 640 x 427: sky over a building in trees, grass, a tiny person
            (1, "sky-other-merged", (0, 0, 640, 150)),
            (300, "tree-merged", (0, 150, 640, 300)),
            (70000, "building-other-merged", (200, 150, 440, 300)),
            (4, "grass-merged", (0, 300, 640, 427)),
            (5, "person", (20, 310, 30, 320)),
        ],
    ),
    285: (
        "skimage_coffee.jpg",
        "val2017",
        [  # 600 x 400: a cup on a table under a wall
            (1, "wall-other-merged", (0, 0, 600, 100)),
            (2, "dining table", (0, 100, 600, 400)),
            (3, "cup", (200, 150, 400, 310)),
        ],
    ),
    724: (
        "sklearn_flower.jpg",
        "val2017",
        [(1, "flower", (220, 110, 420, 310)), (2, "boat", (0, 0, 100, 100))],
    ),  # the rest void
    999: (
        "skimage_coffee.jpg",
        "train2017",
        [  # listed, never downloaded: a playing field and a wine glass
            (1, "playingfield", (0, 0, 600, 400)),
            (2, "wine glass", (10, 10, 50, 90)),
            (3, "boat", (100, 100, 200, 200)),
        ],
    ),
}


def write_shard(path: Path | None, gallery_root: Path | None, pad: int = 0) -> pa.Table:
    """The shard (written to `path` unless None), and the photos under gallery_root/coco/<split>/
    (unless None) except id 999's. `pad` random bytes after the last PNG's end (which PNG readers
    ignore) make the file big enough for huggingface_hub to keep part of it when a transfer breaks."""
    rows = []
    for coco_id, (photo, split, regions) in IMAGES.items():
        name = f"{coco_id:012d}.jpg"
        size = Image.open(GALLERY / photo).size
        if gallery_root is not None and coco_id != 999:
            (gallery_root / "coco" / split).mkdir(parents=True, exist_ok=True)
            shutil.copy(GALLERY / photo, gallery_root / "coco" / split / name)
        png, info = paint(size, regions)
        if coco_id == 999 and pad:
            png += np.random.default_rng(0).bytes(pad)
        rows.append({
            "mask": {"bytes": png, "path": None},
            "segments_info": {"file_name": f"{coco_id:012d}.png", "image_id": coco_id, "segments_info": info},
            "image_info": {"coco_url": f"http://images.cocodataset.org/{split}/{name}", "date_captured": "2013-11-14 17:02:52",
                           "file_name": name, "height": size[1], "id": coco_id, "license": 4, "width": size[0]},
        })  # fmt: skip
    features = {"mask": {"_type": "Image"}, "segments_info": {}, "image_info": {}}
    table = pa.Table.from_pylist(rows, SCHEMA).replace_schema_metadata(
        {"huggingface": json.dumps({"info": {"features": features}})}
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
    return table


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A --root as `data download coconut-val coco-images-val` leaves it (three of four photos there)."""
    root = tmp_path_factory.mktemp("coconut") / "data"
    write_shard(root / "coconut" / "relabeled_coco_val" / SHARD, root)
    return root


@pytest.fixture(scope="module")
def vocab():
    return load_vocabulary()


@pytest.fixture(scope="module")
def rows() -> dict[int, dict]:
    """The shard's rows as pyarrow gives them, by COCO id."""
    return {r["image_info"]["id"]: r for r in write_shard(None, None).to_pylist()}


# ----------------------------------------------------------------------------- labels and masks


def test_segment_ids_are_r_plus_256g_plus_65536b() -> None:
    png, _ = paint((4, 2), [(1, "sky-other-merged", (0, 0, 1, 1)), (300, "cup", (1, 0, 2, 1)),
                            (70000, "flower", (2, 0, 4, 2))])  # fmt: skip
    assert coconut.segment_ids(png).tolist() == [[1, 300, 70000, 70000], [0, 0, 70000, 70000]]


def test_mapping_covers_the_133_panoptic_categories(vocab) -> None:
    mapping = load_mapping(vocab)
    assert len(mapping.categories) == 133
    assert sum(c.isthing for c in mapping.categories.values()) == 80
    assert mapping.categories[187].name == "sky-other-merged" and "sky" in mapping.categories[187].implies
    # not a recipe file: the embedded default does not change with it
    from cocoattr.zeroshot import RECIPE_FILES

    assert coconut.MAPPING_FILE not in RECIPE_FILES


def test_outdoor_labels_positive_negative_unknown(data_root, vocab) -> None:
    dense, _, _ = coconut_samples(data_root / "coconut" / "relabeled_coco_val", data_root / "coco", vocab)
    lab = {s.image_id: s.labels for s in dense}[139]
    get = {n: int(lab[vocab.index(n)]) for n in vocab.names}
    # positives: segments over 1 % of the image, spread by the vocabulary (sky -> outdoor, grass -> green)
    for name in ("sky", "outdoor", "trees", "plant", "building", "grass", "green"):
        assert get[name] == 1, name
    # negatives: exhaustive attributes with no segment (panoptic labels cover every pixel)
    for name in ("water", "sea", "river", "snow", "sand", "road", "dog", "car", "cup", "bridge"):
        assert get[name] == 0, name
    # unknown: a person is there but tiny (100 px < 1 %), so neither it nor man/woman are ruled out;
    # sky is there, so clouds are not ruled out either; indoor is never decided by absence
    for name in ("person", "man", "woman", "crowded", "clouds", "indoor", "kitchen", "red"):
        assert get[name] == -1, name


def test_indoor_labels_rule_out_people_and_sky(data_root, vocab) -> None:
    dense, _, _ = coconut_samples(data_root / "coconut" / "relabeled_coco_val", data_root / "coco", vocab)
    get = {n: int({s.image_id: s.labels for s in dense}[285][vocab.index(n)]) for n in vocab.names}
    assert (get["cup"], get["furniture"]) == (1, 1)
    for name in ("person", "man", "woman", "child", "crowded", "sky", "clouds", "trees", "forest", "dog"):
        assert get[name] == 0, name
    assert get["outdoor"] == get["indoor"] == -1


def test_mostly_void_image_gives_no_negatives(data_root, vocab) -> None:
    dense, _, _ = coconut_samples(data_root / "coconut" / "relabeled_coco_val", data_root / "coco", vocab)
    lab = {s.image_id: s.labels for s in dense}[724]  # 85 % of the pixels unlabelled
    assert lab[vocab.index("flower")] == 1 and lab[vocab.index("plant")] == 1
    assert not (lab == 0).any()
    assert lab[vocab.index("boat")] == 1 and lab[vocab.index("water")] == -1  # boat -> water is no evidence


def test_unless_categories_keep_an_attribute_unknown(rows, vocab) -> None:
    lab = image_labels(parse_row(rows[999]), vocab, load_mapping(vocab))
    get = {n: int(lab[vocab.index(n)]) for n in vocab.names}
    assert get["sports"] == 1  # playingfield's context
    assert get["grass"] == get["sand"] == get["snow"] == -1  # a playing field may be any of them
    assert get["cup"] == get["glass"] == 1  # a wine glass is both (its `implies`)
    assert get["boat"] == get["vehicle"] == 1
    assert get["water"] == get["person"] == 0  # the vocabulary's boat -> water does not beat the masks


def test_missing_images_are_skipped_and_reported(data_root, vocab) -> None:
    dense, merged, report = coconut_samples(
        data_root / "coconut" / "relabeled_coco_val", data_root / "coco", vocab
    )
    assert sorted(s.image_id for s in dense) == [139, 285, 724] and merged is None
    assert [p.name for p in report.skipped["missing image files"]] == ["000000000999.jpg"]
    assert all(s.path.is_file() and s.path.parent.name == "val2017" for s in dense)


def test_masks_are_the_segments_of_each_attribute(rows, vocab) -> None:
    masks = coconut_masks(rows[139], vocab=vocab)
    assert all(m.dtype == bool and m.shape == (427, 640) for m in masks.values())
    expected = np.zeros((427, 640), bool)
    expected[:150] = True
    assert (masks["sky"] == expected).all()
    trees = np.zeros((427, 640), bool)
    trees[150:300] = True
    trees[150:300, 200:440] = False  # the building painted over them
    assert (masks["trees"] == trees).all() and (masks["plant"] == trees).all()
    assert masks["building"].sum() == 240 * 150 and masks["person"].sum() == 100
    assert "outdoor" not in masks and "green" not in masks  # spread labels have no region


def test_a_shard_without_the_columns_is_one_line(tmp_path) -> None:
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"image": [b"x"]}), tmp_path / "data" / "train-00000-of-00001.parquet")
    with pytest.raises(UserError, match="not a COCONut shard"):
        coconut.read_images(tmp_path)
    with pytest.raises(UserError, match="no COCONut parquet shards"):
        coconut.read_images(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- the training config


def test_train_labels_coconut_alone_and_with_captions(data_root, tmp_path) -> None:
    from cocoattr.training.data import load_splits

    ann = data_root / "coco" / "annotations"
    ann.mkdir(exist_ok=True)
    caps = [{"id": 1, "image_id": 139, "caption": "A man walks past a temple by a lake."},
            {"id": 2, "image_id": 285, "caption": "A cup of coffee on a wooden table."}]  # fmt: skip
    imgs = [{"id": i, "file_name": f"{i:012d}.jpg"} for i in (139, 285, 724)]
    (ann / "captions_val2017.json").write_text(json.dumps({"images": imgs, "annotations": caps}))
    ids = (139, 285, 724)
    fractions = [0.5, 0.5, 0.0]
    where = {s: [split_of(i, fractions, s) for i in ids] for s in range(200)}
    seed = next(s for s, w in where.items() if w == ["train", "train", "val"])  # 139, 285 train; 724 val
    base = {"source": "coconut", "root": str(data_root), "split": fractions, "split_seed": seed,
            "captions_json": "coco/annotations/captions_val2017.json"}  # fmt: skip
    vocab = load_vocabulary()
    dense = load_splits(
        config_from_dict({"data": {**base, "train_labels": "coconut", "eval_labels": "coconut"}}).data
    )
    both = load_splits(config_from_dict({"data": {**base, "train_labels": "coconut+captions",
                                                  "eval_labels": "coconut"}}).data)  # fmt: skip
    assert {s.image_id for v in dense.values() for s in v} == set(ids)
    assert [s.image_id for s in dense["val"]] == [s.image_id for s in both["val"]]
    assert all(s.source == "coconut" for s in both["val"]) and all(
        s.source == "coconut+captions" for s in both["train"]
    )
    merged = {s.image_id: s.labels for s in both["train"]}
    plain = {s.image_id: s.labels for s in dense["train"]}
    for image_id, labels in merged.items():
        known = plain[image_id] != -1
        assert (labels[known] == plain[image_id][known]).all()  # COCONut decides where it can
    # captions fill what COCONut leaves unknown; "lake" cannot overrule the masks
    assert merged[139][vocab.index("man")] == 1 and plain[139][vocab.index("man")] == -1
    assert merged[139][vocab.index("water")] == plain[139][vocab.index("water")] == 0
    assert merged[285][vocab.index("wooden")] == 1 and plain[285][vocab.index("wooden")] == -1


@pytest.mark.parametrize(
    ("data", "message"),
    [({"source": "coconut", "train_labels": "coconut"}, "coconut has coconut, coconut+captions or "
      "coconut-objects labels"),
     ({"source": "coco_captions", "train_labels": "coconut", "eval_labels": "captions"}, "need 'data.source': coconut"),
     ({"source": "coconut", "train_labels": "masks", "eval_labels": "coconut"}, "'data.train_labels': must be one of")],
)  # fmt: skip
def test_coconut_config_mistakes_are_one_line(data: dict, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        config_from_dict({"data": data}, "config.yaml")
    ok = config_from_dict(
        {"data": {"source": "coconut", "train_labels": "coconut", "eval_labels": "coconut"}}
    )
    assert (ok.data.coconut, ok.data.coconut_images) == ("coconut/relabeled_coco_val", "coco")


# ----------------------------------------------------------------------------- downloading from the Hub


class CutHub:
    """The fake Hub's handler, except that the shard's bytes follow `plan`: each GET takes the
    next entry, 'half' (send the headers of the whole file, then half of it, then hang up),
    'nothing' (headers, no body) or 'full'; Range requests are answered 206 from their offset."""

    def __init__(self, fake_hub) -> None:
        self.plan: list[str] = []
        self.ranges: list[str | None] = []
        self.sent = 0
        self.tamper = False  # serve the shard with its last byte flipped
        base, cut = fake_hub.handler(), self

        class Handler(base):
            def do_GET(self) -> None:  # noqa: N802
                path = unquote(urlparse(self.path).path)
                if not path.endswith("/" + SHARD):
                    return base.do_GET(self)
                data = fake_hub.datasets[REPO][SHARD]
                if cut.tamper:
                    data = data[:-1] + bytes([data[-1] ^ 1])
                rng = self.headers.get("Range")
                cut.ranges.append(rng)
                start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1]) if rng else 0
                mode = cut.plan.pop(0) if cut.plan else "full"
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", fake_hub.sha(fake_hub.datasets[REPO]))
                self.end_headers()
                part = {
                    "half": body[: len(data) // 2 - start] if start < len(data) // 2 else b"",
                    "nothing": b"",
                }
                chunk = part.get(mode, body)
                self.wfile.write(chunk)
                cut.sent += len(chunk)
                if mode != "full":
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture(scope="module")
def hub(fake_hub, tmp_path_factory) -> CutHub:
    path = tmp_path_factory.mktemp("shard") / SHARD
    write_shard(path, None, pad=4 << 20)  # a shard big enough to be cut part way
    fake_hub.datasets[REPO] = {SHARD: path.read_bytes(), "README.md": b"---\nlicense: cc\n---\n"}
    cut = CutHub(fake_hub)
    yield cut
    cut.server.shutdown()
    cut.server.server_close()


def one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("cocoattr: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_download_given_up_then_run_again_then_offline(hub, fake_hub, hub_cli, tmp_path) -> None:
    root, home = tmp_path / "data", tmp_path / "hf"
    dest = root / "coconut" / "relabeled_coco_val"
    data = fake_hub.datasets[REPO][SHARD]
    half = len(data) // 2

    def readme_gets() -> int:
        return sum(
            r.startswith(f"GET /datasets/{REPO}/resolve/") and r.endswith("/README.md")
            for r in fake_hub.requests
        )

    # the connection drops half way and the server then sends nothing: the run gives up
    hub.plan, hub.ranges, hub.sent = ["half"] + ["nothing"] * 8, [], 0
    first = hub_cli(
        ["data", "download", "coconut-val", "--root", str(root)], hub.url, home, COCOATTR_FAST_RETRY="1"
    )
    line = one_line_error(first)
    assert "was interrupted after" in line and "run the same command again to resume" in line
    assert not (dest / SHARD).exists() and (dest / "README.md").is_file()  # nothing half-written in place
    assert (dest / (SHARD + ".part")).read_bytes() == data[:half]  # what arrived is kept
    assert hub.ranges == [None] + [f"bytes={half}-"] * 3
    # offline now, the half download is one line, not a folder without its shard
    cut = hub_cli(["data", "download", "coconut-val", "--root", str(root)], hub.url, home, HF_HUB_OFFLINE="1")
    assert "is not (completely) downloaded" in one_line_error(cut), cut.stderr
    # the next run resumes from the kept bytes: only the missing half crosses the wire
    before = readme_gets()
    hub.plan, hub.ranges, hub.sent = [], [], 0
    second = hub_cli(["data", "download", "coconut-val", "--root", str(root)], hub.url, home)
    assert second.returncode == 0, second.stderr
    assert f"coconut-val: ready at {dest}" in second.stdout
    assert hub.ranges == [f"bytes={half}-"] and hub.sent == len(data) - half
    assert (dest / SHARD).read_bytes() == data and not (dest / (SHARD + ".part")).exists()
    assert (dest / (SHARD + ".sha256")).read_text().split()[0] == hashlib.sha256(data).hexdigest()
    assert readme_gets() == before  # a finished file is kept
    # cached: offline, the same command is served from --root without a request
    n = len(fake_hub.requests) + len(hub.ranges)
    offline = hub_cli(
        ["data", "download", "coconut-val", "--root", str(root)], hub.url, home, HF_HUB_OFFLINE="1"
    )
    assert offline.returncode == 0, offline.stderr
    assert f"coconut-val: ready at {dest}" in offline.stdout and len(fake_hub.requests) + len(hub.ranges) == n
    dense, _, _ = coconut_samples(dest, tmp_path / "no-images", check_files=False)
    assert sorted(s.image_id for s in dense) == sorted(IMAGES)


def test_a_cut_within_one_run_is_resumed(hub, fake_hub, hub_cli, tmp_path) -> None:
    data = fake_hub.datasets[REPO][SHARD]
    hub.plan, hub.ranges, hub.sent = ["half"], [], 0
    proc = hub_cli(["data", "download", "coconut-val", "--root", str(tmp_path)], hub.url, tmp_path / "hf",
                   COCOATTR_FAST_RETRY="1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert hub.ranges == [None, f"bytes={len(data) // 2}-"] and hub.sent == len(data)
    assert (tmp_path / "coconut" / "relabeled_coco_val" / SHARD).read_bytes() == data


def test_a_shard_that_does_not_match_the_hubs_sha256_is_refused(hub, fake_hub, hub_cli, tmp_path) -> None:
    """The listing's LFS sha256 is checked: bytes that differ from it (same length) are refused, not kept."""
    hub.plan, hub.ranges, hub.tamper = [], [], True
    try:
        proc = hub_cli(["data", "download", "coconut-val", "--root", str(tmp_path)], hub.url, tmp_path / "hf")
    finally:
        hub.tamper = False
    assert "checksum mismatch (sha256" in one_line_error(proc)
    dest = tmp_path / "coconut" / "relabeled_coco_val"
    assert not (dest / SHARD).exists() and not (dest / (SHARD + ".part")).exists()


def test_offline_without_a_download_is_one_line(hub, hub_cli, tmp_path) -> None:
    proc = hub_cli(["data", "download", "coconut-val", "--root", str(tmp_path)], hub.url, tmp_path / "hf",
                   HF_HUB_OFFLINE="1")  # fmt: skip
    line = one_line_error(proc)
    assert "'xdeng77/relabeled_coco_val' is not (completely) downloaded" in line and "offline?" in line


def test_unknown_repo_is_one_line(hub, fake_hub, hub_cli, tmp_path, monkeypatch) -> None:
    from cocoattr.data import resources

    saved = fake_hub.datasets.pop(REPO)
    try:
        proc = hub_cli(["data", "download", "coconut-val", "--root", str(tmp_path)], hub.url, tmp_path / "hf")
    finally:
        fake_hub.datasets[REPO] = saved
    assert "not found" in one_line_error(proc)
    assert resources.RESOURCES["coconut-s"].hub.repo == "xdeng77/coconut_s"
    assert resources.RESOURCES["coconut-b"].hub.repo == "xdeng77/coconut_b"


def test_coverage_command_writes_the_table(tmp_path, capsys) -> None:
    from cocoattr.cli import main

    assert main(["data", "coconut-coverage", "--out", str(tmp_path / "c.md")]) == 0
    text = (tmp_path / "c.md").read_text()
    assert "| 187 | sky-other-merged | stuff | sky |" in text
    assert "| sky | scene | positive + negative | sky-other-merged |" in text
    assert len(re.findall(r"^\| \d+ \| ", text, re.M)) == 133
    assert capsys.readouterr().out == f"wrote {tmp_path / 'c.md'}\n"


def test_docs_carry_the_current_coverage_table() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "coconut.md").read_text("utf-8")
    assert doc.endswith(coconut.coverage()), "regenerate: python -m cocoattr data coconut-coverage"


@pytest.mark.parametrize(
    "listing, message",
    [
        ([("README.md", 5)], r"the repo has no data/\*\.parquet"),
        (
            [("data/../../evil.parquet", 5)],
            r"lists a file outside the dataset folder \('data/../../evil.parquet'\)",
        ),
    ],
)
def test_a_listing_without_shards_or_with_a_path_outside_is_one_line(tmp_path, monkeypatch, listing, message):
    """What the Hub lists decides what is fetched: a repo with no shards, or a lying name that
    would land outside the folder, is one line, and nothing is written outside."""
    from types import SimpleNamespace

    import huggingface_hub

    from cocoattr.data import download
    from cocoattr.data.resources import RESOURCES

    files = [SimpleNamespace(path=p, size=n, lfs=None) for p, n in listing]
    monkeypatch.setattr(
        huggingface_hub.HfApi, "dataset_info", lambda self, repo, revision: SimpleNamespace(sha="abc")
    )
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree", lambda self, *a, **k: iter(files))
    fetched = []
    monkeypatch.setattr(download, "fetch", lambda url, dest, **k: fetched.append(dest) or (dest.parent.mkdir(parents=True, exist_ok=True), dest.write_text("x")))  # fmt: skip
    dest = tmp_path / "coconut" / "relabeled_coco_val"
    with pytest.raises(UserError, match=message):
        download.fetch_hub_dataset(RESOURCES["coconut-val"].hub, dest)
    assert all(f.resolve().is_relative_to(dest.resolve()) for f in fetched)
    assert not (tmp_path / "evil.parquet").exists()


def test_coconut_b_float_areas_read_the_same(rows, vocab) -> None:
    """coconut_b's card types `area` as float64 (the other two as int64)."""
    row = json.loads(json.dumps(rows[139], default=lambda b: None))
    as_float = {**row, "segments_info": {**row["segments_info"], "segments_info": [
        {**s, "area": float(s["area"])} for s in row["segments_info"]["segments_info"]]}}  # fmt: skip
    mapping = load_mapping(vocab)
    a = image_labels(parse_row(rows[139]), vocab, mapping)
    assert (image_labels(parse_row(as_float), vocab, mapping) == a).all() and (a == 1).sum() > 5


def test_photo_rows_give_masks_the_size_of_each_photo(data_root, vocab) -> None:
    seen, left_out = {}, {}
    mapping = coconut.load_mapping(vocab)
    for row, image, path in coconut.photo_rows(data_root / "coconut" / "relabeled_coco_val", data_root / "coco",
                                               left_out):  # fmt: skip
        masks = coconut.coconut_masks(row, mapping)
        w, h = Image.open(path).size
        assert all(m.shape == (h, w) for m in masks.values()) and (image.width, image.height) == (w, h)
        seen[image.image_id] = sorted(masks)
    assert seen == {139: ["building", "grass", "person", "plant", "sky", "trees"],
                    285: ["cup", "furniture"], 724: ["boat", "flower", "plant", "vehicle"]}  # fmt: skip
    assert left_out == {"images_not_on_disk": 1, "images_exif_rotated": 0}  # 999's photo is not there


def test_a_mapping_naming_unknown_attributes_is_one_line(tmp_path, vocab) -> None:
    raw = json.loads((Path(coconut.__file__).parent.parent / coconut.MAPPING_FILE).read_text("utf-8"))
    raw["categories"][0]["implies"] = ["person", "humanoid"]
    (tmp_path / "m.json").write_text(json.dumps(raw))
    with pytest.raises(
        UserError, match=r"m\.json: names attributes the vocabulary does not have: \['humanoid'\]"
    ):
        load_mapping(vocab, tmp_path / "m.json")
    raw["categories"][0]["implies"] = []  # person is exhaustive: something must imply it
    (tmp_path / "m.json").write_text(json.dumps(raw))
    with pytest.raises(UserError, match=r"exhaustive attributes no category implies: \['person'\]"):
        load_mapping(vocab, tmp_path / "m.json")
    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(UserError, match="not a COCONut category mapping"):
        load_mapping(vocab, tmp_path / "m.json")


# ----------------------------------------------------------------------------- heatmaps on the masks


def test_evaluate_heatmaps_on_coconut_segments(data_root, capsys, default_checkpoint) -> None:
    """`evaluate --heatmaps --coconut FOLDER --coco ROOT`: every painted segment an attribute's
    region (stuff included), the photo not on disk counted, the areas those of the painted boxes."""
    from cocoattr.cli import main

    folder = data_root / "coconut" / "relabeled_coco_val"
    args = ["evaluate", "--heatmaps", "--coconut", str(folder), "--coco", str(data_root / "coco"), "--json",
            "--checkpoint", str(default_checkpoint)]  # fmt: skip
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images_not_on_disk"] == 1 and out["overall"]["images"] == 3 and out["failed_images"] == []
    by = out["by_attribute"]
    assert by["sky"]["area_fraction"] == pytest.approx(150 / 427, abs=1e-4)
    assert by["cup"]["area_fraction"] == pytest.approx(200 * 160 / (600 * 400), abs=1e-4)
    # the grass strip less the 10 x 10 person painted over it
    assert by["grass"]["area_fraction"] == pytest.approx((127 * 640 - 100) / (427 * 640), abs=1e-4)
    assert "boat" in by and "person" in by  # things, tiny ones too: a region is a region
    assert {"scene", "category"} <= set(out["by_type"])
    for m in by.values():
        assert 0.0 <= m["mass_in_mask"] <= 1.0


@pytest.mark.parametrize(
    "extra, fragment",
    [
        ([], "--coconut FOLDER takes its photos from --coco ROOT"),
        (["--coco", "nowhere-at-all"], "--coco nowhere-at-all: no such folder"),
    ],
)
def test_evaluate_heatmaps_coconut_mistakes_are_one_line(data_root, extra, fragment, capsys) -> None:
    from cocoattr.cli import main

    folder = data_root / "coconut" / "relabeled_coco_val"
    assert main(["evaluate", "--heatmaps", "--coconut", str(folder), *extra]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
