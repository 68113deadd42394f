"""cocoattr.engine: the onnxruntime graph computes what PyTorch computes, and is cached by the
weights' hash (a checkpoint's own model.onnx is used only when it was made for its weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cocoattr import engine
from cocoattr.data.gallery import load_gallery
from cocoattr.detector import COCO80
from cocoattr.engine import OnnxEngine, TorchEngine, onnx_file, read_metadata
from cocoattr.hub import load_folder
from cocoattr.images import load_image
from cocoattr.predictor import Predictor


@pytest.fixture(scope="module")
def default_model(default_checkpoint, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("COCOATTR_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield load_folder(default_checkpoint)
    mp.undo()


def test_engine_equals_pytorch_on_gallery_photos(default_model):
    """Real photos through onnxruntime and through PyTorch: same probabilities (<= 1e-4), maps,
    embeddings, and the same boxes, categories and per-object attributes."""
    paths = load_gallery().paths[:6]
    predictor = Predictor(default_model, batch_size=4)  # a full and a partial batch
    assert isinstance(predictor.engine, OnnxEngine)
    got = predictor.predict(paths)
    torch_engine = TorchEngine(default_model, "cpu")
    n_objects = 0
    for start in (0, 4):
        chunk = paths[start : start + 4]
        pixels = predictor.pixels([load_image(p, min_side=2 * predictor.size) for p in chunk])
        want, found = torch_engine.with_objects(pixels)
        out, mine = predictor.engine.with_objects(pixels)
        for key, tol in (("probs", 1e-4), ("maps", 1e-5), ("embedding", 1e-5)):
            ref = getattr(want, key).numpy()
            diff = np.abs(np.stack([getattr(p, key) for p in got[start : start + len(chunk)]]) - ref).max()
            assert diff <= tol, f"predict {key}: max difference {diff:.2e} > {tol:.0e}"
        assert float((out.probs - want.probs).abs().max()) <= 1e-4  # the image head beside the objects
        for m, f in zip(mine, found, strict=True):
            assert [COCO80[int(i)] for i in m.labels] == [COCO80[int(i)] for i in f.labels]
            np.testing.assert_allclose(m.boxes.numpy(), f.boxes.numpy(), atol=2e-5)  # relative boxes
            np.testing.assert_allclose(
                torch.sigmoid(m.logits).numpy(), torch.sigmoid(f.logits).numpy(), atol=1e-4
            )
            n_objects += len(m.labels)
    assert n_objects > 0  # the gallery has people, cats, cars...


def test_the_graph_is_cached_by_weights_hash_and_a_stale_folder_graph_is_ignored(
    random_model, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("COCOATTR_CACHE", str(tmp_path / "cache"))
    model = random_model()
    model.weights_sha256, model.source = "ab" * 32, str(tmp_path)
    engine.export_onnx(model, tmp_path / "model.onnx", "cd" * 32)  # made for other weights
    path = onnx_file(model)
    assert path == tmp_path / "cache" / "onnx" / f"{'ab' * 32}-{engine.graph_version()}.onnx"
    meta = read_metadata(path)
    assert meta[engine.META_SHA] == "ab" * 32 and meta[engine.META_OPSET] == str(engine.OPSET)
    onnx_file(model)
    assert capsys.readouterr().err.count("ignored") == 1  # one notice, not one per load
    engine.export_onnx(model, tmp_path / "model.onnx", "ab" * 32)
    assert onnx_file(model) == tmp_path / "model.onnx"  # a valid shipped graph comes first
    assert not model.training  # exporting never leaves the model in training mode


def test_code_of_another_graph_version_keeps_its_own_cache_file(random_model, tmp_path, monkeypatch):
    """Two versions of the code sharing a cache (two worktrees) must not replace each other's
    graph between one's check and its load."""
    monkeypatch.setenv("COCOATTR_CACHE", str(tmp_path / "cache"))
    model = random_model()
    model.weights_sha256 = "ab" * 32
    monkeypatch.setattr(engine, "graph_version", lambda: "old")
    old = onnx_file(model)
    monkeypatch.setattr(engine, "graph_version", lambda: "new")
    new = onnx_file(model)
    assert old != new and read_metadata(old)[engine.META_VERSION] == "old"
    assert read_metadata(new)[engine.META_VERSION] == "new"


def test_the_engine_runs_with_the_threads_asked_for(random_model):
    e = OnnxEngine(random_model(), threads=1)
    out = e.run(np.zeros((2, 96, 96, 3), np.uint8))
    assert out["logits"].shape == (2, 4) and e.session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(ValueError, match=r"takes \(B, 96, 96, 3\) uint8 pixels"):
        e.run(np.zeros((2, 3, 96, 96), np.float32))  # a normalised batch is the torch model's input


def test_a_weight_changed_in_place_is_exported_again(random_model):
    model = random_model()
    e = OnnxEngine(model)
    pixels = np.random.default_rng(0).integers(0, 256, (1, 96, 96, 3), np.uint8)
    before = e(pixels).logits
    with torch.no_grad():
        model.cls_bias.add_(1.0)
    after = e(pixels).logits
    with torch.no_grad():
        want = model(TorchEngine(model, "cpu").normalized(pixels)).logits
    assert torch.allclose(after, want, atol=1e-5) and not torch.allclose(before, after)
