"""The search index: incremental, crash-safe builds; safe loading; backends; search and its CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import cocoattr.index as ix
from cocoattr.cli import main
from cocoattr.errors import UserError
from cocoattr.index import Index, build_index, make_backend, safe_relative, search
from cocoattr.predictor import Prediction

GALLERY_IMAGES = Path(__file__).resolve().parent.parent / "cocoattr" / "gallery" / "images"
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


def test_numpy_and_faiss_give_the_same_top_k():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(2000, 32)).astype(np.float32)
    a, b = make_backend(emb, "numpy"), make_backend(emb, "faiss")
    assert (a.name, b.name) == ("numpy", "faiss")
    for q in rng.normal(size=(20, 32)).astype(np.float32):
        ia, sa = a.top_k(q, 10)
        ib, sb = b.top_k(q, 10)
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_allclose(sa, sb, atol=1e-5)
    assert len(a.top_k(q, 5000)[0]) == 2000 == len(b.top_k(q, 5000)[0])


def _toy_index(n: int = 6) -> Index:
    rng = np.random.default_rng(1)
    probs = np.array([[0.9, 0.9, 0.1, 0.9], [0.9, 0.1, 0.1, 0.9], [0.1, 0.9, 0.9, 0.9],
                      [0.5, 0.5, 0.5, 0.5], [0.1, 0.1, 0.1, 0.1], [0.9, 0.9, 0.95, 0.9]])[:n]  # fmt: skip
    return Index(
        root_spec="/photos", paths=[f"{i}.jpg" for i in range(n)], sizes=np.zeros(n, np.int64),
        mtimes=np.zeros(n, np.int64), probs=probs.astype(np.float16),
        embeddings=rng.normal(size=(n, DIM)).astype(np.float32), attributes=list(ATTRS),
        checkpoint={"sha256": "x", "source": "x"},
    )  # fmt: skip


def test_search_ranks_by_all_terms(monkeypatch):
    index = _toy_index()
    hits = search(index, "red, furry, -indoor", k=3, use_encoder=False)
    assert [h.image for h in hits] == ["0.jpg", "3.jpg", "1.jpg"]
    assert hits[0].attributes == {"red": pytest.approx(0.9, abs=1e-3), "furry": pytest.approx(0.9, abs=1e-3),
                                  "-indoor": pytest.approx(0.9, abs=1e-3)}  # fmt: skip
    assert hits[0].score > hits[1].score > hits[2].score
    assert [h.image for h in search(index, "-red, -furry", k=1, use_encoder=False)] == ["4.jpg"]
    # same attribute results whichever backend is asked for
    monkeypatch.setattr(ix, "FAISS_MIN_ITEMS", 2)
    assert index.backend("auto").name == "faiss"
    assert [h.image for h in search(index, "red, furry, -indoor", k=3, backend="faiss", use_encoder=False)] == [
        "0.jpg", "3.jpg", "1.jpg"
    ]  # fmt: skip


# ----------------------------------------------------------------------------- with the real default model


@pytest.fixture(scope="module")
def checkpoint(default_checkpoint) -> Path:
    return default_checkpoint


@pytest.fixture(scope="module")
def real_index(tmp_path_factory, checkpoint) -> tuple[Path, Path]:
    """A few gallery photos plus one broken file, indexed through the CLI with the default checkpoint."""
    root = tmp_path_factory.mktemp("real") / "photos"
    root.mkdir()
    for name in (
        "gradio_lion.jpg",
        "skimage_coffee.jpg",
        "foolbox_imagenet_06_609_jeep.jpg",
        "sklearn_flower.jpg",
    ):
        shutil.copy(GALLERY_IMAGES / name, root / name)
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = root.parent / "index.npz"
    code = main(["index", "build", "--images", str(root), "--checkpoint", str(checkpoint), "--out", str(out)])
    assert code == 1  # one unreadable image: reported, skipped, index still written
    return root, out


def test_cli_search_json(real_index, capsys):
    root, out = real_index
    capsys.readouterr()
    assert main(["search", "--index", str(out), "--json", "--top-k", "3", "furry", "animal"]) == 0
    captured = capsys.readouterr()
    hits = json.loads(captured.out)
    assert len(hits) == 3 and all(set(h) == {"image", "score", "attributes"} for h in hits)
    assert hits[0]["image"] == str(root / "gradio_lion.jpg")
    assert set(hits[0]["attributes"]) == {"furry", "animal"}
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert "query: furry animal" in captured.err
    assert main(["search", "--index", str(out), "--top-k", "2", "vehicle"]) == 0
    assert "jeep" in capsys.readouterr().out.splitlines()[0]


def test_cli_search_unknown_query_is_a_clean_error(real_index, capsys):
    _, out = real_index
    assert main(["search", "--index", str(out), "xqzzkv"]) == 2
    assert "nothing in the query matches" in capsys.readouterr().err


def test_query_by_image_and_free_text(real_index):
    root, out = real_index
    index = Index.load(out)
    assert index.attribute_text is not None and index.text_proj is not None
    hits = ix.search_by_image(index, root / "skimage_coffee.jpg", k=2)
    assert hits[0].image == "skimage_coffee.jpg" and hits[0].score == pytest.approx(1.0, abs=1e-3)
    hits = search(index, "a lion resting in the grass", k=4)
    assert hits[0].text_similarity is not None and len(hits) == 4


def test_real_rebuild_is_incremental(real_index, tmp_path, checkpoint):
    root, out = real_index
    copy = tmp_path / "index.npz"
    shutil.copy(out, copy)
    os.utime(root / "sklearn_flower.jpg", ns=(1, 1))  # mtime changed: recompute just that one
    report = build_index(root, copy, checkpoint=checkpoint, progress=False, on_error=lambda *a: None)
    assert sorted(report.computed) == ["sklearn_flower.jpg"] and report.reused == 3
