"""cocoattr.index where mutation testing (tests/mutation.py index) found the other index tests
blind: the exact types and dtypes a file round-trips, each shape check of a loaded file, what a
snapshot holds when nothing was computed, the checkpoint identity and the tensors search needs,
what a build passes on (device, records, thumbnails, saves every N) and each line it says."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_index import ATTRS, DIM, FakePredictor, folder  # noqa: F401 - the stand-in predictor and its folder

import cocoattr.index as ix
from cocoattr.data.gallery import gallery_root
from cocoattr.errors import UserError
from cocoattr.index import Index, build_index


def full_index(n: int = 3) -> Index:
    """Every optional part filled, in dtypes other than the file's, so `save` must convert."""
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n, DIM))
    return Index(
        root_spec="/photos", paths=[f"p{i}.jpg" for i in range(n)],
        sizes=np.arange(n, dtype=np.int32) + 10, mtimes=np.arange(n, dtype=np.int32) + 1_000,
        probs=rng.random((n, len(ATTRS))), embeddings=emb / np.linalg.norm(emb, axis=1, keepdims=True),
        attributes=list(ATTRS), checkpoint={"sha256": "ab" * 32, "source": "ckpt"},
        attribute_text=rng.normal(size=(len(ATTRS), 384)),
        text_proj=(rng.normal(size=(DIM, 384)), rng.normal(size=DIM)),
        temperature=0.07, complete=False, records=[{"id": i, "caption": "café"} for i in range(n)],
        thumbnails=[b"\xff\xd8 jpeg %d" % i for i in range(n)], info={"kind": "coco", "split": "val2017"},
    )  # fmt: skip


def arrays_of(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    return json.loads(bytes(data["meta"]).decode()), data


def rewrite(path: Path, meta: dict | None = None, **arrays: np.ndarray | None) -> Path:
    """The index file at `path` with some arrays replaced (None: left out) or its meta changed."""
    old_meta, data = arrays_of(path)
    data["meta"] = np.frombuffer(json.dumps(meta if meta is not None else old_meta).encode(), np.uint8)
    for k, v in arrays.items():
        if v is None:
            data.pop(k)
        else:
            data[k] = v
    with open(path, "wb") as f:
        np.savez(f, **data)
    return path


# --- the file -----------------------------------------------------------------------------


def test_a_saved_index_stores_each_array_in_its_dtype(tmp_path):
    index = full_index()
    index.save(tmp_path / "i.npz")
    meta, data = arrays_of(tmp_path / "i.npz")
    assert meta == {
        "format": "cocoattr-index", "version": 1, "root": "/photos", "attributes": ATTRS,
        "checkpoint": {"sha256": "ab" * 32, "source": "ckpt"}, "temperature": 0.07, "complete": False,
        "info": {"kind": "coco", "split": "val2017"},
    }  # fmt: skip
    dtypes = {k: str(v.dtype) for k, v in data.items() if k not in ("paths", "records", "thumbnails")}
    assert dtypes == {
        "meta": "uint8", "sizes": "int64", "mtimes": "int64", "probs": "float16", "embeddings": "float32",
        "attribute_text": "float32", "text_proj_weight": "float32", "text_proj_bias": "float32",
        "record_offsets": "int64", "thumbnail_offsets": "int64",
    }  # fmt: skip
    assert data["paths"].dtype.kind == "U" and data["paths"].tolist() == ["p0.jpg", "p1.jpg", "p2.jpg"]
    assert "café".encode() in data["records"].tobytes()  # UTF-8, not \\u escapes


def test_an_index_round_trips_every_part(tmp_path):
    index = full_index()
    index.save(tmp_path / "i.npz")
    back = Index.load(tmp_path / "i.npz")
    assert (back.root_spec, back.paths, back.attributes, back.checkpoint) == (
        "/photos", ["p0.jpg", "p1.jpg", "p2.jpg"], ATTRS, {"sha256": "ab" * 32, "source": "ckpt"}
    )  # fmt: skip
    assert (back.temperature, back.complete, back.info) == (0.07, False, {"kind": "coco", "split": "val2017"})
    assert type(back.temperature) is float and type(back.complete) is bool
    assert all(type(p) is str for p in back.paths + back.attributes)
    assert back.sizes.tolist() == [10, 11, 12] and back.mtimes.tolist() == [1000, 1001, 1002]
    np.testing.assert_array_equal(back.probs, index.probs.astype(np.float16))
    assert back.embeddings.dtype == np.float32
    np.testing.assert_allclose(back.embeddings, index.embeddings, rtol=1e-6)
    np.testing.assert_allclose(back.attribute_text, index.attribute_text, rtol=1e-6)
    np.testing.assert_allclose(back.text_proj[0], index.text_proj[0], rtol=1e-6)
    np.testing.assert_allclose(back.text_proj[1], index.text_proj[1], rtol=1e-6)
    assert back.records == index.records and back.thumbnails == index.thumbnails
    assert back.folder is None and back.root is None and back.path(0) is None  # no folder named


def test_an_empty_index_round_trips(tmp_path):
    empty = Index("/photos", [], np.zeros(0), np.zeros(0), np.zeros((0, 4)), np.zeros((0, DIM)), ATTRS, {})
    empty.save(tmp_path / "e.npz")
    back = Index.load(tmp_path / "e.npz")
    assert len(back) == 0 and back.probs.shape == (0, 4) and back.embeddings.shape == (0, DIM)
    assert (back.attribute_text, back.text_proj, back.records, back.thumbnails) == (None, None, None, None)
    assert (back.temperature, back.complete, back.info) == (0.1, True, {})


def test_missing_optional_metadata_takes_the_defaults(tmp_path):
    full_index().save(tmp_path / "i.npz")
    meta, _ = arrays_of(tmp_path / "i.npz")
    for key in ("temperature", "complete", "info"):
        del meta[key]
    back = Index.load(rewrite(tmp_path / "i.npz", meta))
    assert (back.temperature, back.complete, back.info) == (0.1, True, {})


@pytest.mark.parametrize(
    "change",
    [
        {"probs": np.zeros((3, 5), np.float16)},  # another vocabulary size
        {"probs": np.zeros((2, 4), np.float16)},  # fewer rows than paths
        {"embeddings": np.zeros(3 * DIM, np.float32)},  # one flat row
        {"embeddings": np.zeros((2, DIM), np.float32)},
        {"sizes": np.zeros(2, np.int64)},
        {"mtimes": np.zeros((3, 1), np.int64)},
        {"text_proj_weight": np.zeros((DIM + 1, 384), np.float32)},
        {"text_proj_bias": np.zeros(DIM - 1, np.float32)},
        {"attribute_text": np.zeros((5, 384), np.float32)},
        {"thumbnails": np.zeros(0, np.uint8), "thumbnail_offsets": np.zeros(1, np.int64)},
        {"records": np.frombuffer(b"{}{}", np.uint8), "record_offsets": np.array([0, 2, 4])},
        {"records": np.frombuffer(b"[1]{}{}", np.uint8), "record_offsets": np.array([0, 3, 5, 7])},
    ],
    ids=lambda c: "+".join(c),
)
def test_each_shape_check_of_a_loaded_file(tmp_path, change):
    full_index().save(tmp_path / "i.npz")
    with pytest.raises(UserError) as e:
        Index.load(rewrite(tmp_path / "i.npz", **change))
    assert str(e.value) == f"{tmp_path / 'i.npz'}: malformed cocoattr index (array shapes disagree)"


def test_each_way_a_file_is_not_an_index_is_one_line(tmp_path):
    p = tmp_path / "i.npz"
    with pytest.raises(UserError) as e:
        Index.load(p)
    assert str(e.value) == f"{p}: no such index file (build one with `cocoattr index build`)"
    p.write_bytes(b"not a zip")  # numpy takes it for a pickle, and refuses it
    with pytest.raises(UserError) as e:
        Index.load(p)
    assert str(e.value).startswith(f"{p}: not a readable cocoattr index (ValueError: ")
    full_index().save(p)
    p.write_bytes(p.read_bytes()[:100])  # a cut-short file
    with pytest.raises(UserError) as e:
        Index.load(p)
    assert str(e.value) == f"{p}: not a readable cocoattr index (BadZipFile: File is not a zip file)"
    full_index().save(p)
    meta, _ = arrays_of(p)
    with pytest.raises(UserError) as e:
        Index.load(rewrite(p, meta | {"format": "other"}))
    assert str(e.value) == f"{p}: not a cocoattr index"
    with pytest.raises(UserError) as e:
        Index.load(rewrite(p, meta | {"version": 2}))
    assert str(e.value) == f"{p}: index format version 2 (this cocoattr reads 1); rebuild it"
    rewrite(p, meta)
    with pytest.raises(UserError) as e:
        Index.load(rewrite(p, probs=None))
    assert str(e.value) == f"{p}: malformed cocoattr index (KeyError: 'probs')"
    full_index().save(p)
    with pytest.raises(UserError) as e:
        Index.load(rewrite(p, paths=np.array(["a.jpg", "a.jpg", "b.jpg"])))
    assert str(e.value) == f"{p}: malformed cocoattr index (duplicate paths)"
    p.write_bytes(b"")
    with pytest.raises(UserError, match="not a readable cocoattr index"):
        Index.load(p)


# --- the in-memory index ------------------------------------------------------------------


def test_probs_by_column_is_fortran_float32_made_once_per_shape():
    index = full_index()
    cols = index.probs_by_column
    assert cols.dtype == np.float32 and cols.flags.f_contiguous and not cols.flags.c_contiguous
    np.testing.assert_array_equal(cols, index.probs.astype(np.float32))
    assert index.probs_by_column is cols
    index.probs = np.zeros((2, 4))
    assert index.probs_by_column.shape == (2, 4)


def test_serve_from_names_where_hits_are_read(tmp_path):
    index = full_index()
    assert index.serve_from(tmp_path).folder == tmp_path.resolve()
    assert index.path(1) == tmp_path.resolve() / "p1.jpg" and index.root == tmp_path.resolve()
    assert index.serve_from(None).folder is None  # not a gallery index: no local files
    gallery = full_index()
    gallery.root_spec = "gallery"
    assert gallery.serve_from(None).folder == gallery_root() / "images"
    assert index.serve_from("gallery").folder == gallery_root() / "images"


def test_image_set_and_root_of(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ix.image_set("gallery") == "gallery" and ix.root_of("gallery") == gallery_root() / "images"
    assert ix.image_set("~/photos/../photos") == str(tmp_path.resolve() / "photos")
    assert ix.root_of("/x/y") == Path("/x/y")


def test_the_search_backend_is_made_once_per_kind():
    index = full_index()
    numpy = index.backend("numpy")
    assert index.backend("numpy") is numpy and index.backend("auto") is numpy  # 3 images: numpy


def test_incompatible_names_what_changed():
    index = full_index()
    same = {"sha256": "ab" * 32}
    assert index.incompatible(same, ATTRS, "/photos") is None
    assert index.incompatible({"sha256": "cd"}, ATTRS, "/photos") == "the checkpoint changed"
    assert index.incompatible(same, ATTRS[:-1], "/photos") == "the attribute vocabulary changed"
    assert index.incompatible(same, ATTRS, "/other") == "the indexed folder changed (was /photos)"


def test_default_index_path_digests_the_full_folder_path():
    spec = "/data/holiday photos"
    digest = hashlib.sha1(spec.encode()).hexdigest()[:8]
    assert ix.default_index_path(spec) == ix.INDEX_DIR / f"index-holiday photos-{digest}.npz"
    assert ix.default_index_path("gallery") == ix.GALLERY_INDEX == ix.INDEX_DIR / "gallery-index.npz"


# --- the checkpoint and its tensors -------------------------------------------------------


def test_checkpoint_identity_trusts_the_loaded_hash_else_hashes_the_file(tmp_path):
    model = SimpleNamespace(source=tmp_path / "nowhere", weights_sha256="f" * 64)
    assert ix.checkpoint_identity(model) == {"sha256": "f" * 64, "source": str(tmp_path / "nowhere")}
    (tmp_path / "model.safetensors").write_bytes(b"w" * (3 << 19))  # 1.5 MiB: two blocks
    on_disk = SimpleNamespace(source=tmp_path, weights_sha256=None)
    assert ix.checkpoint_identity(on_disk) == {
        "sha256": hashlib.sha256(b"w" * (3 << 19)).hexdigest(), "source": str(tmp_path)
    }  # fmt: skip
    assert ix.file_sha256(tmp_path / "model.safetensors") == hashlib.sha256(b"w" * (3 << 19)).hexdigest()
    for model in (SimpleNamespace(weights_sha256="f" * 64), SimpleNamespace(source=tmp_path / "nowhere")):
        with pytest.raises(UserError) as e:
            ix.checkpoint_identity(model)
        assert str(e.value) == "cannot identify the checkpoint (no model.safetensors behind the loaded model)"


def test_model_extras_are_numpy_float32_with_the_temperature():
    torch = pytest.importorskip("torch")
    proj = torch.nn.Linear(384, DIM)
    text = torch.randn(len(ATTRS), 384, dtype=torch.float64)
    out = ix._model_extras(SimpleNamespace(temperature=0.05, text_embeddings=text, text_proj=proj))
    assert out["temperature"] == 0.05 and out["attribute_text"].dtype == np.float32
    np.testing.assert_allclose(out["attribute_text"], text.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(out["text_proj"][0], proj.weight.detach().numpy())
    np.testing.assert_array_equal(out["text_proj"][1], proj.bias.detach().numpy())
    assert ix._model_extras(SimpleNamespace()) == {"temperature": 0.1}


# --- building -----------------------------------------------------------------------------


def test_a_snapshot_of_nothing_keeps_the_shapes(tmp_path):
    pred = FakePredictor(tmp_path / "c")
    builder = ix._Builder("/photos", pred, None)
    snap = builder.snapshot(complete=False)
    assert snap.probs.shape == (0, len(ATTRS)) and snap.probs.dtype == np.float16
    assert snap.embeddings.shape == (0, 0) and snap.embeddings.dtype == np.float32
    assert (snap.complete, snap.records, snap.thumbnails, snap.folder) == (False, None, None, Path("/photos"))
    assert snap.sizes.dtype == np.int64 and snap.mtimes.dtype == np.int64
    builder.old = full_index()
    assert builder.snapshot(complete=True).embeddings.shape == (0, DIM)


def test_a_snapshot_is_sorted_with_records_thumbnails_and_extras(tmp_path, folder):  # noqa: F811
    pred = FakePredictor(tmp_path / "c")
    pred.model.temperature = 0.2
    records = {"b.jpg": {"id": 2}, "a.jpg": {"id": 1}}
    builder = ix._Builder(str(folder), pred, None, records, thumbnails=True, info={"kind": "coco"})
    result = SimpleNamespace(probs=np.full(4, 0.5), embedding=np.ones(DIM))
    builder.add("b.jpg", (5, 6), result)  # not a real JPEG: no thumbnail, stored as b""
    builder.add("a.jpg", (3, 4), result)
    snap = builder.snapshot(complete=True)
    assert (
        snap.paths == ["a.jpg", "b.jpg"] and snap.sizes.tolist() == [3, 5] and snap.mtimes.tolist() == [4, 6]
    )
    assert snap.records == [{"id": 1}, {"id": 2}] and snap.thumbnails == [b"", b""]
    assert (snap.temperature, snap.info, snap.folder, snap.root_spec) == (
        0.2,
        {"kind": "coco"},
        folder,
        str(folder),
    )
    assert snap.probs.dtype == np.float16 and snap.embeddings.dtype == np.float32
    assert snap.checkpoint == {
        "sha256": hashlib.sha256(b"weights-v1").hexdigest(),
        "source": str(tmp_path / "c"),
    }


def test_a_build_reports_what_it_did_and_says_it_on_stderr(tmp_path, folder, capsys):  # noqa: F811
    (folder / "broken.jpg").write_bytes(b"bad bytes")
    out = tmp_path / "i.npz"
    report = build_index(folder, out, FakePredictor(tmp_path / "c"))
    err = capsys.readouterr().err
    assert (report.full_rebuild, report.reason, report.reused, report.removed) == (True, "new index", 0, [])
    assert f"cocoattr: skipped {folder / 'broken.jpg'}: not an image (unrecognised format)" in err
    assert "indexing: 100%" in err and "5/5" in err and "img/s" in err
    assert report.index.folder == folder and report.index.complete
    (folder / "broken.jpg").unlink()
    again = build_index(folder, out, FakePredictor(tmp_path / "c"))
    assert (again.full_rebuild, again.reason, again.reused) == (False, "", 4)
    assert capsys.readouterr().err == ""  # nothing to compute: no bar
    (folder / "e.jpg").write_bytes(b"image e")
    build_index(folder, out, FakePredictor(tmp_path / "c"), progress=False)
    assert "indexing" not in capsys.readouterr().err


def test_a_build_saves_every_n_images_then_complete(tmp_path, folder, monkeypatch):  # noqa: F811
    saves: list[tuple[int, bool]] = []
    real = Index.save
    monkeypatch.setattr(
        Index, "save", lambda self, p: (saves.append((len(self), self.complete)), real(self, p))
    )
    build_index(folder, tmp_path / "i.npz", FakePredictor(tmp_path / "c"), save_every=2, progress=False)
    assert saves == [(2, False), (4, False), (4, True)]
    saves.clear()
    (folder / "new.jpg").write_bytes(b"image new")
    build_index(folder, tmp_path / "i.npz", FakePredictor(tmp_path / "c"), save_every=1, progress=False)
    assert saves == [(5, False), (5, True)]


def test_a_crash_before_anything_was_computed_writes_nothing(tmp_path, folder):  # noqa: F811
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_index(folder, tmp_path / "i.npz", FakePredictor(tmp_path / "c", fail_after=0), progress=False)
    assert not (tmp_path / "i.npz").exists()


def test_a_build_with_records_indexes_those_that_exist_and_stores_them(tmp_path, folder):  # noqa: F811
    records = {"a.jpg": {"id": 1}, "sub/c.png": {"id": 3}, "gone.jpg": {"id": 9}}
    report = build_index(folder, tmp_path / "i.npz", FakePredictor(tmp_path / "c"), records=records,
                         thumbnails=True, info={"kind": "coco"}, progress=False)  # fmt: skip
    back = Index.load(tmp_path / "i.npz")
    assert back.paths == ["a.jpg", "sub/c.png"] and back.records == [{"id": 1}, {"id": 3}]
    assert back.thumbnails == [b"", b""] and back.info == {"kind": "coco"}
    assert sorted(report.computed) == ["a.jpg", "sub/c.png"]
    report = build_index(folder, tmp_path / "i.npz", FakePredictor(tmp_path / "c"), select=lambda r: r != "a.jpg",
                         progress=False)  # fmt: skip
    assert report.index.paths == ["b.jpg", "d.jpg", "sub/c.png"] and report.removed == ["a.jpg"]


def test_a_build_without_a_predictor_loads_the_checkpoint_on_the_device(tmp_path, folder, monkeypatch):  # noqa: F811
    import cocoattr.predictor as predictor

    asked = []
    fake = FakePredictor(tmp_path / "c")

    def from_checkpoint(checkpoint, batch_size, device):
        asked.append((checkpoint, batch_size, device))
        return fake

    monkeypatch.setattr(predictor.Predictor, "from_checkpoint", staticmethod(from_checkpoint))
    build_index(folder, tmp_path / "i.npz", checkpoint="ck", batch_size=7, device="cuda", progress=False)
    assert asked == [("ck", 7, "cuda")] and len(fake.calls) == 4
    with pytest.raises(UserError) as e:
        build_index(tmp_path / "none", tmp_path / "j.npz", fake)
    assert str(e.value) == f"{tmp_path / 'none'}: not a folder of images"


def test_scan_lists_posix_paths_with_size_and_nanosecond_mtime(folder):  # noqa: F811
    files = ix._scan(folder)
    st = (folder / "sub" / "c.png").stat()
    assert sorted(files) == ["a.jpg", "b.jpg", "d.jpg", "sub/c.png"]
    assert files["sub/c.png"] == (st.st_size, st.st_mtime_ns)
    assert ix._scan(folder, ["a.jpg", "missing.jpg"]) == {"a.jpg": ix._scan(folder)["a.jpg"]}


# --- serving ------------------------------------------------------------------------------


def test_open_or_build_says_each_step(tmp_path, folder):  # noqa: F811
    said: list[str] = []
    path = tmp_path / "i.npz"
    (folder / "broken.jpg").write_bytes(b"bad bytes")
    index = ix.open_or_build(FakePredictor(tmp_path / "c"), folder, path, say=said.append)
    assert said == [
        f"no index at {path}: building it over {folder} (first start only)",
        "1 images could not be read and are not searchable",
    ]
    assert index.folder == folder.resolve()
    said.clear()
    again = ix.open_or_build(FakePredictor(tmp_path / "c"), folder, path, say=said.append)
    assert said == [] and again.folder == folder.resolve() and again.paths == index.paths
    ix.open_or_build(FakePredictor(tmp_path / "v2", weights=b"v2"), folder, path, say=said.append)
    assert said[0] == f"index {path} is stale (the checkpoint changed); updating it"


# --- what the second mutation run found (tests/mutation.py index: 61 survivors, 25 equivalent) --


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Two real gallery photos (thumbnails need decodable JPEGs) and a corrupt one."""
    root = tmp_path / "real"
    root.mkdir()
    for src in sorted((gallery_root() / "images").glob("*.jpg"))[:2]:
        (root / src.name).write_bytes(src.read_bytes())
    return root


def test_thumbnails_are_real_jpegs_made_only_when_asked(tmp_path, photos, monkeypatch):
    from PIL import Image

    made: list[str] = []
    real = ix.thumbnail_jpeg
    monkeypatch.setattr(ix, "thumbnail_jpeg", lambda p: (made.append(Path(p).name), real(p))[1])
    out = tmp_path / "i.npz"
    plain = build_index(photos, out, FakePredictor(tmp_path / "c"), progress=False)
    assert plain.index.thumbnails is None and made == []  # the default: none, and none made
    with_thumbs = build_index(photos, out, FakePredictor(tmp_path / "c"), thumbnails=True, progress=False)
    assert with_thumbs.reused == 2 and sorted(made) == sorted(with_thumbs.index.paths)  # old index had none
    for blob in with_thumbs.index.thumbnails:
        with Image.open(io.BytesIO(blob)) as im:
            assert im.format == "JPEG" and max(im.size) <= 256
    (photos / "fresh.jpg").write_bytes(next(iter(photos.glob("*.jpg"))).read_bytes())
    made.clear()
    fresh = build_index(photos, out, FakePredictor(tmp_path / "c"), thumbnails=True, progress=False)
    assert made == ["fresh.jpg"] and all(b.startswith(b"\xff\xd8") for b in fresh.index.thumbnails)


def test_a_rebuild_keeps_the_stored_thumbnails_of_unchanged_images(tmp_path, photos):
    out = tmp_path / "i.npz"
    build_index(photos, out, FakePredictor(tmp_path / "c"), thumbnails=True, progress=False)
    stored = Index.load(out)
    stored.thumbnails = [b"\xff\xd8 kept %d" % i for i in range(len(stored))]
    stored.save(out)
    again = build_index(photos, out, FakePredictor(tmp_path / "c"), thumbnails=True, progress=False)
    assert again.reused == 2 and again.index.thumbnails == stored.thumbnails


def test_a_failed_image_is_reported_with_its_message(tmp_path, folder):  # noqa: F811
    (folder / "broken.jpg").write_bytes(b"bad bytes")
    report = build_index(folder, tmp_path / "i.npz", FakePredictor(tmp_path / "c"), progress=False)
    assert report.failed == [("broken.jpg", f"{folder / 'broken.jpg'}: not an image (unrecognised format)")]


def test_an_interrupted_build_saves_a_file_marked_incomplete(tmp_path, folder):  # noqa: F811
    out = tmp_path / "i.npz"
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_index(folder, out, FakePredictor(tmp_path / "c", fail_after=2), progress=False)
    meta, data = arrays_of(out)
    assert meta["complete"] is False and len(data["paths"]) == 2


def test_scan_goes_on_past_a_listed_file_that_is_gone(folder):  # noqa: F811
    assert sorted(ix._scan(folder, ["gone.jpg", "a.jpg", "b.jpg"])) == ["a.jpg", "b.jpg"]


def test_a_build_loads_its_checkpoint_with_batch_16_on_the_cpu_by_default(tmp_path, folder, monkeypatch):  # noqa: F811
    import cocoattr.predictor as predictor

    asked = []

    def from_checkpoint(checkpoint, batch_size, device):
        asked.append((checkpoint, batch_size, device))
        return FakePredictor(tmp_path / "c")

    monkeypatch.setattr(predictor.Predictor, "from_checkpoint", staticmethod(from_checkpoint))
    build_index(folder, tmp_path / "i.npz", checkpoint="ck", progress=False)
    assert asked == [("ck", 16, "cpu")]


def test_open_or_build_without_a_path_builds_the_default_file(tmp_path, folder, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setattr(ix, "INDEX_DIR", tmp_path / "indexes")
    said: list[str] = []
    index = ix.open_or_build(FakePredictor(tmp_path / "c"), folder, None, say=said.append)
    expected = ix.default_index_path(str(folder.resolve()))
    assert expected.parent == tmp_path / "indexes" and expected.is_file() and len(index) == 4
    assert said == [f"no index at {expected}: building it over {folder} (first start only)"]
    assert "indexing: 100%" in capsys.readouterr().err


def test_an_entry_outside_the_folder_is_refused_naming_the_index_entry(tmp_path):
    with pytest.raises(UserError) as e:
        ix.safe_relative(tmp_path, "../etc/passwd")
    assert str(e.value) == "index: entry '../etc/passwd' points outside the indexed folder; refusing it"


def test_the_backend_kind_is_honoured_and_auto_by_default():
    from cocoattr.backends import FaissBackend, NumpyBackend

    index = full_index()
    assert isinstance(index.backend(), NumpyBackend) and index.backend() is index.backend("numpy")
    faiss = index.backend("faiss")
    assert isinstance(faiss, FaissBackend) and index.backend("faiss") is faiss
    idx, _ = faiss.top_k(index.embeddings[2], 1)
    assert idx.tolist() == [2]  # each embedding is its own nearest neighbour


def test_a_snapshot_carries_the_checkpoint_text_tensors(tmp_path):
    import torch

    pred = FakePredictor(tmp_path / "c")
    pred.model.text_embeddings = torch.arange(len(ATTRS) * 3, dtype=torch.float32).view(len(ATTRS), 3)
    pred.model.text_proj = torch.nn.Linear(3, DIM)
    snap = ix._Builder("/photos", pred, None).snapshot(complete=True)
    np.testing.assert_array_equal(snap.attribute_text, pred.model.text_embeddings.numpy())
    np.testing.assert_array_equal(snap.text_proj[0], pred.model.text_proj.weight.detach().numpy())
    np.testing.assert_array_equal(snap.text_proj[1], pred.model.text_proj.bias.detach().numpy())
