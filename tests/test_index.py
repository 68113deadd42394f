"""The search index: incremental, crash-safe builds; safe loading; where a server's index lives and
when it is rebuilt (`open_or_build`). Searching it is tests/test_search.py."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import cocoattr.index as ix
from cocoattr.errors import UserError
from cocoattr.index import Index, build_index, default_index_path, open_or_build, safe_relative
from cocoattr.predictor import Prediction

ATTRS = ["red", "furry", "indoor", "animal"]
DIM = 8


class FakePredictor:
    """Deterministic stand-in for Predictor: predictions are a hash of the file's bytes (and of the
    "checkpoint"), and `calls` records exactly which files the model was run on."""

    def __init__(self, folder: Path, weights: bytes = b"weights-v1", fail_after: int | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_bytes(weights)
        self.attributes = list(ATTRS)
        self.model = SimpleNamespace(source=str(folder), temperature=0.1)
        self.weights = weights
        self.calls: list[str] = []
        self.fail_after = fail_after

    def predict_files(self, paths):
        for p in paths:
            if self.fail_after is not None and len(self.calls) >= self.fail_after:
                raise RuntimeError("simulated crash")
            self.calls.append(Path(p).name)
            data = Path(p).read_bytes()
            if data.startswith(b"bad"):
                yield str(p), UserError(f"{p}: not an image (unrecognised format)")
                continue
            seed = int.from_bytes(hashlib.sha256(data + self.weights).digest()[:8], "little")
            rng = np.random.default_rng(seed)
            emb = rng.normal(size=DIM).astype(np.float32)
            probs = rng.random(len(ATTRS)).astype(np.float32)
            yield str(p), Prediction(probs, np.zeros((len(ATTRS), 1, 1)), emb / np.linalg.norm(emb))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg", "sub/c.png", "d.jpg"):
        (root / name).write_bytes(f"image {name}".encode())
    (root / "notes.txt").write_text("not an image")
    return root


def test_build_then_incremental_update(tmp_path, folder):
    out = tmp_path / "index.npz"
    pred = FakePredictor(tmp_path / "ckpt")
    report = build_index(folder, out, pred, progress=False)
    assert sorted(report.computed) == ["a.jpg", "b.jpg", "d.jpg", "sub/c.png"]
    index = Index.load(out)
    assert index.paths == ["a.jpg", "b.jpg", "d.jpg", "sub/c.png"] and index.complete
    assert index.probs.shape == (4, len(ATTRS)) and index.embeddings.shape == (4, DIM)
    assert index.checkpoint["sha256"] == hashlib.sha256(b"weights-v1").hexdigest()

    pred.calls.clear()
    report = build_index(folder, out, pred, progress=False)
    assert report.computed == [] and pred.calls == [] and report.reused == 4

    (folder / "e.jpg").write_bytes(b"image new")
    (folder / "a.jpg").write_bytes(b"image a, edited")
    (folder / "d.jpg").unlink()
    report = build_index(folder, out, pred, progress=False)
    assert sorted(pred.calls) == ["a.jpg", "e.jpg"] and sorted(report.computed) == ["a.jpg", "e.jpg"]
    assert report.removed == ["d.jpg"] and report.reused == 2 and not report.full_rebuild
    after = Index.load(out)
    assert after.paths == ["a.jpg", "b.jpg", "e.jpg", "sub/c.png"]
    np.testing.assert_array_equal(after.probs[1], index.probs[1])  # b.jpg untouched
    assert not np.array_equal(after.probs[0], index.probs[0])  # a.jpg recomputed


def test_checkpoint_or_vocabulary_change_rebuilds_everything(tmp_path, folder):
    out = tmp_path / "index.npz"
    build_index(folder, out, FakePredictor(tmp_path / "v1"), progress=False)
    report = build_index(folder, out, FakePredictor(tmp_path / "v2", weights=b"weights-v2"), progress=False)
    assert report.full_rebuild and "checkpoint" in report.reason and len(report.computed) == 4
    other = FakePredictor(tmp_path / "v3", weights=b"weights-v2")
    other.attributes = ATTRS[::-1]
    report = build_index(folder, out, other, progress=False)
    assert report.full_rebuild and "vocabulary" in report.reason and len(report.computed) == 4


def test_bad_images_are_reported_and_skipped(tmp_path, folder):
    (folder / "broken.jpg").write_bytes(b"bad bytes")
    errors = []
    report = build_index(folder, tmp_path / "i.npz", FakePredictor(tmp_path / "c"), progress=False,
                         on_error=lambda rel, msg: errors.append(rel))  # fmt: skip
    assert report.failed and report.failed[0][0] == "broken.jpg" and errors == ["broken.jpg"]
    assert "broken.jpg" not in Index.load(tmp_path / "i.npz").paths


def test_interrupted_build_resumes(tmp_path, folder):
    out = tmp_path / "index.npz"
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_index(folder, out, FakePredictor(tmp_path / "c", fail_after=3), save_every=2, progress=False)
    partial = Index.load(out)
    assert not partial.complete and len(partial) == 3  # saved at 2, and again on the way out
    pred = FakePredictor(tmp_path / "c")
    report = build_index(folder, out, pred, progress=False)
    assert len(pred.calls) == 1 and report.reused == 3 and Index.load(out).complete


def test_write_is_atomic(tmp_path, folder, monkeypatch):
    out = tmp_path / "index.npz"
    build_index(folder, out, FakePredictor(tmp_path / "c"), progress=False)
    before = out.read_bytes()

    def failing_savez(f, **arrays):
        f.write(b"PK\x03\x04 half an index")
        raise OSError("disk full")

    monkeypatch.setattr(ix.np, "savez", failing_savez)
    (folder / "new.jpg").write_bytes(b"image new")
    with pytest.raises(OSError, match="disk full"):
        build_index(folder, out, FakePredictor(tmp_path / "c"), progress=False)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "index.npz", "photos"]  # no temp file left


def test_existing_non_index_file_is_never_overwritten(tmp_path, folder):
    out = tmp_path / "precious.npz"
    out.write_bytes(b"my thesis")
    with pytest.raises(UserError, match="not a readable cocoattr index"):
        build_index(folder, out, FakePredictor(tmp_path / "c"), progress=False)
    assert out.read_bytes() == b"my thesis"


@pytest.mark.parametrize("bad", ["../evil.jpg", "/etc/passwd", "sub/../../x.jpg", "C:/x.jpg", "a//b.jpg", ""])
def test_paths_outside_the_root_are_refused(tmp_path, folder, bad):
    out = tmp_path / "index.npz"
    build_index(folder, out, FakePredictor(tmp_path / "c"), progress=False)
    index = Index.load(out)
    index.paths[0] = bad
    index.save(out)
    with pytest.raises(UserError, match="outside the indexed folder"):
        Index.load(out)


def test_safe_relative_accepts_plain_paths(tmp_path):
    assert safe_relative(tmp_path, "sub/a b.jpg") == tmp_path / "sub" / "a b.jpg"


def test_index_never_unpickles(tmp_path):
    out = tmp_path / "evil.npz"
    np.savez(out, meta=np.array([{"format": "cocoattr-index"}], dtype=object), paths=np.array(["a"], object))
    with pytest.raises(UserError):
        Index.load(out)


# ----------------------------------------------------------------------------- open_or_build


def test_open_or_build_builds_a_missing_index_then_loads_it_as_is(tmp_path, folder):
    out, said = tmp_path / "served.npz", []
    pred = FakePredictor(tmp_path / "c")
    index = open_or_build(pred, folder, out, say=said.append)
    assert len(index) == 4 and out.is_file() and sorted(pred.calls) == ["a.jpg", "b.jpg", "c.png", "d.jpg"]
    assert len(said) == 1 and said[0].startswith(f"no index at {out}")
    pred.calls.clear()
    before = out.stat().st_mtime_ns
    (folder / "new.jpg").write_bytes(b"image new")  # an up-to-date index is not rescanned (read-only disks)
    again = open_or_build(pred, folder, out, say=said.append)
    assert pred.calls == [] and len(said) == 1 and out.stat().st_mtime_ns == before
    assert again.paths == index.paths


def test_open_or_build_rebuilds_for_another_checkpoint_or_an_interrupted_build(tmp_path, folder):
    out, said = tmp_path / "served.npz", []
    open_or_build(FakePredictor(tmp_path / "v1"), folder, out, say=said.append)
    other = FakePredictor(tmp_path / "v2", weights=b"weights-v2")
    index = open_or_build(other, folder, out, say=said.append)
    assert "stale (the checkpoint changed)" in said[-1] and len(other.calls) == 4
    assert index.checkpoint["sha256"] == hashlib.sha256(b"weights-v2").hexdigest()
    out.unlink()
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_index(folder, out, FakePredictor(tmp_path / "v2", fail_after=2), save_every=1, progress=False)
    resumed = FakePredictor(tmp_path / "v2")
    index = open_or_build(resumed, folder, out, say=said.append)
    assert "stale (an interrupted build)" in said[-1] and len(resumed.calls) == 2 and index.complete


def test_open_or_build_refuses_an_index_of_another_folder_by_rebuilding(tmp_path, folder):
    out, said = tmp_path / "served.npz", []
    open_or_build(FakePredictor(tmp_path / "c"), folder, out, say=said.append)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(folder, elsewhere)
    index = open_or_build(FakePredictor(tmp_path / "c"), elsewhere, out, say=said.append)
    assert "the indexed folder changed" in said[-1] and index.root_spec == str(elsewhere.resolve())


def test_default_index_path_is_one_file_per_image_set(tmp_path):
    assert default_index_path("gallery") == ix.GALLERY_INDEX
    a, b = (
        default_index_path(str(tmp_path / "x" / "photos")),
        default_index_path(str(tmp_path / "y" / "photos")),
    )
    assert a.parent == b.parent == ix.INDEX_DIR and a != b
    assert a.name.startswith("index-photos-") and a.suffix == ".npz"


# ----------------------------------------------------------------------------- with the real default model


def test_real_rebuild_is_incremental(real_index, tmp_path, default_checkpoint):
    root, out = real_index
    copy = tmp_path / "index.npz"
    shutil.copy(out, copy)
    os.utime(root / "sklearn_flower.jpg", ns=(1, 1))  # mtime changed: recompute just that one
    report = build_index(root, copy, checkpoint=default_checkpoint, progress=False, on_error=lambda *a: None)
    assert sorted(report.computed) == ["sklearn_flower.jpg"] and report.reused == 3
