"""The cached COCO set (#13): `index build --coco ROOT --split val2017` over COCO-format fixtures in
the real layout (ROOT/coco/annotations/{captions,instances}_val2017.json, ROOT/coco/val2017/*.jpg,
real photos from the gallery), `search --json` with COCO ids and captions, `index push` to the
fake Hub on 127.0.0.1 (tests/conftest.py) and loading `hf://datasets/USER/NAME` back, offline
fallback, a checkpoint mismatch said once, interrupted builds resumed, old index files."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cocoattr.cli import main
from cocoattr.coco_index import build_coco_index
from cocoattr.data.gallery import load_gallery
from cocoattr.index import Index
from cocoattr.predictor import Prediction

GALLERY = Path(__file__).resolve().parent.parent / "cocoattr" / "gallery" / "images"
PHOTOS = {  # COCO id -> (gallery photo, captions, categories of its boxes)
    139: ("gradio_lion.jpg", ["A lion resting in the grass.", "A big cat lying on a lawn."], ["cat"]),
    285: ("skimage_coffee.jpg", ["A cup of coffee on a saucer."], ["cup", "dining table"]),
    632: (
        "foolbox_imagenet_06_609_jeep.jpg",
        ["A jeep parked outside.", "An off-road car."],
        ["car", "person"],
    ),
    724: ("sklearn_flower.jpg", ["A close up of a flower."], []),
}
MISSING_ID = 999  # annotated, but its file is not on disk
CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 17, "name": "cat"},
              {"id": 47, "name": "cup"}, {"id": 67, "name": "dining table"}]  # fmt: skip


def write_coco(root: Path) -> Path:
    """A COCO root exactly as `cocoattr data download coco-captions coco-instances coco-images-val` lays it out."""
    ann, images = root / "coco" / "annotations", root / "coco" / "val2017"
    ann.mkdir(parents=True)
    images.mkdir(parents=True)
    imgs, caps, boxes = [], [], []
    cat_id = {c["name"]: c["id"] for c in CATEGORIES}
    for coco_id, (photo, captions, cats) in PHOTOS.items():
        name = f"{coco_id:012d}.jpg"
        shutil.copy(GALLERY / photo, images / name)
        w, h = Image.open(images / name).size
        imgs.append({"id": coco_id, "file_name": name, "width": w, "height": h,
                     "coco_url": f"http://images.cocodataset.org/val2017/{name}"})  # fmt: skip
        caps += [{"id": len(caps) + k, "image_id": coco_id, "caption": c} for k, c in enumerate(captions, 1)]
        for c in cats + cats[:1]:  # the first category twice: stored once
            boxes.append({"id": len(boxes) + 1, "image_id": coco_id, "category_id": cat_id[c],
                          "bbox": [1.0, 2.0, 30.0, 40.0], "area": 1200.0, "iscrowd": 0})  # fmt: skip
    imgs.append({"id": MISSING_ID, "file_name": f"{MISSING_ID:012d}.jpg", "width": 10, "height": 10})
    caps.append({"id": len(caps) + 1, "image_id": MISSING_ID, "caption": "Not downloaded."})
    (ann / "captions_val2017.json").write_text(json.dumps({"images": imgs, "annotations": caps}))
    (ann / "instances_val2017.json").write_text(
        json.dumps({"images": imgs, "annotations": boxes, "categories": CATEGORIES})
    )
    return root


@pytest.fixture(scope="module")
def coco(tmp_path_factory, default_checkpoint) -> tuple[Path, Path, str]:
    """(COCO root, index built through the CLI with the embedded default, the build's stderr)."""
    root = write_coco(tmp_path_factory.mktemp("coco") / "data")
    out = root.parent / "val2017.npz"
    args = ["index", "build", "--coco", str(root), "--split", "val2017", "--out", str(out),
            "--checkpoint", str(default_checkpoint)]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        import sys

        err = io.StringIO()
        mp.setattr(sys, "stderr", err)
        assert main(args) == 0
    return root, out, err.getvalue()


def test_coco_build_stores_ids_captions_categories_and_thumbnails(coco):
    root, out, stderr = coco
    index = Index.load(out)
    assert index.complete and index.root_spec == str((root / "coco" / "val2017").resolve())  # recorded
    assert index.root is None, "a loaded index reads no files until a folder is named"
    assert index.paths == [f"{i:012d}.jpg" for i in sorted(PHOTOS)]  # the missing one is left out
    assert "1 images of val2017 listed in the annotations are not on disk" in stderr
    assert index.info == {"kind": "coco", "split": "val2017", "images": 4,
                          "annotations": ["captions_val2017.json", "instances_val2017.json"]}  # fmt: skip
    for rec, thumb, rel in zip(index.records, index.thumbnails, index.paths, strict=True):
        coco_id = int(rel[:-4])
        photo, captions, cats = PHOTOS[coco_id]
        w, h = Image.open(GALLERY / photo).size
        assert rec == {"coco_id": coco_id, "file_name": rel,
                       "coco_url": f"http://images.cocodataset.org/val2017/{rel}", "width": w, "height": h,
                       "captions": captions, "categories": sorted(cats)}  # fmt: skip
        small = Image.open(io.BytesIO(thumb))
        assert small.format == "JPEG" and max(small.size) == 256
        assert abs(small.size[0] / small.size[1] - w / h) < 0.02  # aspect kept
    assert index.probs.shape == (4, len(index.attributes)) and np.all(np.isfinite(index.embeddings))


def test_rebuild_is_incremental_and_keeps_records(coco, default_checkpoint, capsys):
    root, out, _ = coco
    copy = out.parent / "again.npz"
    shutil.copy(out, copy)
    args = [
        "index",
        "build",
        "--coco",
        str(root),
        "--out",
        str(copy),
        "--checkpoint",
        str(default_checkpoint),
    ]
    assert main(args) == 0
    assert "0 computed, 4 unchanged" in capsys.readouterr().err
    again, first = Index.load(copy), Index.load(out)
    assert again.records == first.records and again.thumbnails == first.thumbnails


def test_search_json_carries_coco_ids_urls_and_captions(coco, capsys):
    _, out, _ = coco
    assert main(["search", "--index", str(out), "--json", "--top-k", "4", "animal"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 4
    for hit in hits:
        coco_id = int(Path(hit["image"]).stem)
        assert hit["coco_id"] == coco_id
        assert hit["coco_url"] == f"http://images.cocodataset.org/val2017/{coco_id:012d}.jpg"
        assert hit["captions"] == PHOTOS[coco_id][1] and hit["categories"] == sorted(PHOTOS[coco_id][2])
    assert hits[0]["coco_id"] == 139  # the lion is the most "animal" of the four


@pytest.mark.parametrize(
    "layout, fragment",
    [("empty", "not a COCO root for val2017"), ("nothing", "no such folder"),
     ("no-images", "the image folder")],
)  # fmt: skip
def test_wrong_root_is_one_clear_line(tmp_path, capsys, layout, fragment):
    root = tmp_path / "root"
    if layout != "nothing":
        root.mkdir()
    if layout == "no-images":
        write_coco(root)
        shutil.rmtree(root / "coco" / "val2017")
    assert main(["index", "build", "--coco", str(root), "--out", str(tmp_path / "i.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cocoattr: error: ") and fragment in err[0], err
    assert "coco-images-val" in err[0] or layout == "nothing"
    assert not (tmp_path / "i.npz").exists()


class CrashingPredictor:
    """Stand-in predictor (hash of the bytes) that dies after `fail_after` images, like a kill."""

    def __init__(self, folder: Path, fail_after: int | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_bytes(b"weights")
        from types import SimpleNamespace

        self.attributes, self.model = ["red", "animal"], SimpleNamespace(source=str(folder), temperature=0.1)
        self.calls: list[str] = []
        self.fail_after = fail_after

    def predict_files(self, paths):
        for p in paths:
            if self.fail_after is not None and len(self.calls) >= self.fail_after:
                raise KeyboardInterrupt
            self.calls.append(Path(p).name)
            rng = np.random.default_rng(
                int.from_bytes(hashlib.sha256(Path(p).read_bytes()).digest()[:4], "little")
            )
            emb = rng.normal(size=4).astype(np.float32)
            yield (
                str(p),
                Prediction(rng.random(2).astype(np.float32), np.zeros((2, 1, 1)), emb / np.linalg.norm(emb)),
            )


def test_interrupted_coco_build_resumes_with_records_and_thumbnails(tmp_path):
    root = write_coco(tmp_path / "data")
    out = tmp_path / "i.npz"
    with pytest.raises(KeyboardInterrupt):
        build_coco_index(root, "val2017", out, CrashingPredictor(tmp_path / "c", fail_after=3), save_every=2,
                         progress=False)  # fmt: skip
    partial = Index.load(out)
    assert not partial.complete and len(partial) == 3
    assert [r["coco_id"] for r in partial.records] == sorted(PHOTOS)[:3] and all(partial.thumbnails)
    pred = CrashingPredictor(tmp_path / "c")
    report, missing = build_coco_index(root, "val2017", out, pred, progress=False)
    assert pred.calls == ["000000000724.jpg"] and report.reused == 3 and missing == 1
    final = Index.load(out)
    assert final.complete and [r["coco_id"] for r in final.records] == sorted(PHOTOS)
    assert len(final.thumbnails) == 4 and all(t.startswith(b"\xff\xd8") for t in final.thumbnails)


def test_an_index_file_without_records_still_loads_and_searches(coco, tmp_path, capsys):
    """Files written before #13 have no records / thumbnails arrays and no 'info' in their metadata."""
    _, out, _ = coco
    with np.load(out, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k not in ("records", "record_offsets", "thumbnails",
                                                         "thumbnail_offsets")}  # fmt: skip
    meta = json.loads(bytes(arrays["meta"]).decode())
    del meta["info"]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    old = tmp_path / "old.npz"
    with open(old, "wb") as f:
        np.savez(f, **arrays)
    index = Index.load(old)
    assert index.records is None and index.thumbnails is None and index.info == {} and len(index) == 4
    assert main(["search", "--index", str(old), "--json", "--top-k", "1", "animal"]) == 0
    (hit,) = json.loads(capsys.readouterr().out)
    assert "coco_id" not in hit and Path(hit["image"]).name == "000000000139.jpg"


# ----------------------------------------------------------------------------- the Hub


def test_push_then_search_from_the_hub_then_offline_from_the_cache(coco, fake_hub, hub_cli, tmp_path):
    import pandas as pd

    _, out, _ = coco
    home = tmp_path / "hf"
    proc = hub_cli(["index", "push", "--index", str(out), "--repo", "user/coco-val2017-index"], fake_hub.url,
                   home, HF_TOKEN="hf_fake_token_for_the_local_server")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "/user/coco-val2017-index/commit/" in proc.stdout
    files = fake_hub.datasets["user/coco-val2017-index"]
    assert set(files) == {"README.md", "index.json", "text.npz", "data/val2017-00000-of-00001.parquet"}
    index = Index.load(out)
    card = files["README.md"].decode()
    assert index.checkpoint["sha256"] in card and "data/val2017-*.parquet" in card and "cc-by-4.0" in card
    frame = pd.read_parquet(io.BytesIO(files["data/val2017-00000-of-00001.parquet"]))
    assert list(frame["coco_id"]) == sorted(PHOTOS)
    assert [list(c) for c in frame["captions"]] == [PHOTOS[i][1] for i in sorted(PHOTOS)]
    assert frame["image"][0]["bytes"] == index.thumbnails[0] and len(frame["probs"][0]) == len(
        index.attributes
    )

    local = hub_cli(["search", "--index", str(out), "--json", "animal"], fake_hub.url, home)
    spec = "hf://datasets/user/coco-val2017-index"
    remote = hub_cli(["search", "--index", spec, "--json", "animal"], fake_hub.url, home)
    assert remote.returncode == 0, remote.stderr
    assert json.loads(remote.stdout) == json.loads(local.stdout)  # same hits, scores, COCO fields
    assert json.loads(remote.stdout)[0]["coco_id"] == 139
    assert any(r.startswith("GET /datasets/user/coco-val2017-index/resolve/") for r in fake_hub.requests)

    n = len(fake_hub.requests)
    offline = hub_cli(["search", "--index", spec, "--json", "animal"], fake_hub.url, home, HF_HUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout) == json.loads(local.stdout) and len(fake_hub.requests) == n  # the cache


def test_unknown_hub_index_is_one_line(fake_hub, hub_cli, tmp_path):
    proc = hub_cli(["search", "--index", "hf://datasets/user/nope", "cat"], fake_hub.url, tmp_path / "hf")
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("cocoattr")]
    assert "Traceback" not in proc.stderr and "'user/nope'" in lines[0]


def test_app_serves_a_hub_index_and_says_a_checkpoint_mismatch_once(
    coco, app_predictor, tmp_path, monkeypatch
):
    import app
    import cocoattr.index_hub as ih

    index = Index.load(coco[1])
    index.checkpoint = {"sha256": "0" * 64, "source": "someone/else"}
    index.root_spec = str(tmp_path / "the-builders-machine")  # a Space has the index, not the photos
    ih.write_dataset(index, tmp_path / "repo")
    monkeypatch.setattr(ih, "download_index", lambda repo: tmp_path / "repo")
    monkeypatch.setenv("COCOATTR_INDEX", "hf://datasets/user/other")
    said: list[str] = []
    monkeypatch.setattr(app, "log", said.append)
    served = app.open_index(app_predictor)
    assert served.records == index.records and served.thumbnails == index.thumbnails
    assert [s for s in said if "serving it anyway" in s] == [said[0]] and len(said) == 1
    assert "someone/else" in said[0]
    s = app.Service(app_predictor, served)
    from cocoattr.serving import search_tile
    from cocoattr.ui import search_view

    result = s.search("animal", 2, cutoff=True)
    image, _ = search_tile(result.hits[0], 0)
    assert isinstance(image, Image.Image) and max(image.size) == 256  # drawn from the thumbnail
    table, card = search_view.table_html(result.hits), search_view.hit_card(result.hits[0], 1)
    assert "COCO categories" in table and '<td><span class="label">COCO: </span>cat</td>' in table
    assert "A lion resting in the grass." in table and "COCO categories: cat" in card
    assert "of 4 images" in search_view.results_note(result, "animal", None, False)


def test_app_offline_without_a_cache_falls_back_to_the_gallery(app_predictor, tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    import app
    import cocoattr.index

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(cocoattr.index, "GALLERY_INDEX", tmp_path / "gallery-index.npz")
    monkeypatch.setenv("COCOATTR_INDEX", "hf://datasets/cocoattr/coco-val2017-index")
    said: list[str] = []
    monkeypatch.setattr(app, "log", said.append)
    served = app.open_index(app_predictor)
    assert served.root_spec == "gallery" and len(served) == len(load_gallery()) and served.records is None
    fallback = [s for s in said if "serving the bundled gallery instead" in s]
    assert len(fallback) == 1 and "is not cached and the Hub cannot be reached" in fallback[0]


# ----------------------------------------------------------------------------- ground-truth evaluation


def test_coco_category_retrieval_counts_precision_and_ap_by_hand():
    from cocoattr.evaluation import coco_category_retrieval

    attributes = ["dog", "red", "bus", "teddy"]  # "teddy" is no COCO-80 name; "teddy bear" is
    scores = np.zeros((20, 4), np.float32)
    scores[:, 0] = np.linspace(1, 0, 20)  # images ranked 0..19 by "dog"
    cats = [[] for _ in range(20)]
    for i in (0, 1, 4, 12):  # dogs at ranks 1, 2, 5, 13
        cats[i].append("dog")
    cats[3].append("teddy bear")
    r = coco_category_retrieval(scores, attributes, cats)
    assert r["categories_named_by_the_vocabulary"] == 2 and r["categories_scored"] == 1  # bus: no instances
    (row,) = r["per_category"]
    assert row == {"category": "dog", "relevant": 4, "precision_at_10": 0.3,
                   "AP": pytest.approx((1 / 1 + 2 / 2 + 3 / 5 + 4 / 13) / 4)}  # fmt: skip
    assert r["precision_at_10"] == 0.3 and r["mAP"] == pytest.approx(row["AP"])


def test_evaluate_coco_scores_the_index_against_the_instances(coco, default_checkpoint, tmp_path, capsys):
    root, out, _ = coco
    kept, report = tmp_path / "kept.npz", tmp_path / "metrics.json"
    shutil.copy(out, kept)
    args = ["evaluate", "--coco", str(root), "--split", "val2017", "--index", str(kept),
            "--checkpoint", str(default_checkpoint), "--out", str(report)]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    result = json.loads(report.read_text())
    index = Index.load(out)
    assert Index.load(kept).paths == index.paths and result["n_images"] == 4  # the kept index, reused
    expected = [
        c for c in ("person", "car", "cat", "cup", "dining table") if c in index.attributes
    ]  # COCO-80 order
    assert [r["category"] for r in result["per_category"]] == expected and "cat" in expected
    for row in result["per_category"]:  # one relevant image each: AP = 1 / its rank, P@10 over 4 images
        col = index.probs[:, index.attributes.index(row["category"])].astype(np.float32)
        owner = [i for i, r in enumerate(index.records) if row["category"] in r["categories"]]
        assert row["relevant"] == len(owner) == 1
        rank = 1 + int((col > col[owner[0]]).sum())
        assert row["AP"] == pytest.approx(1 / rank) and row["precision_at_10"] == pytest.approx(1 / 4)
    assert result["mAP"] == pytest.approx(np.mean([r["AP"] for r in result["per_category"]]))
    assert result["checkpoint_sha256"] == index.checkpoint["sha256"] and result["split"] == "val2017"
    assert "mean" in captured.out and f"{result['mAP']:7.3f}" in captured.out.splitlines()[-1]


@pytest.mark.parametrize(
    "extra, fragment",
    [(["--split", "val"], "--split 'val': expected one of val2017"),
     (["--baseline"], "--baseline: only for the hand-labelled gallery")],
)  # fmt: skip
def test_evaluate_coco_bad_input_is_one_line(tmp_path, capsys, extra, fragment):
    root = write_coco(tmp_path / "data")
    assert main(["evaluate", "--coco", str(root), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
