"""One-off A/B of issue #17: the torch serving path this repo had before the ONNX engine
(`cocoattr/inference.py` at REV, with its BatchNorm folding, oneDNN conv+ReLU6 fusion and
channels_last copy) against onnxruntime, in one process, interleaved, medians.

    .venv/bin/python bench/engine_ab.py [REV]   (REV: a commit before the engine; default 106b139)
"""

# ruff: noqa: B023 - each lambda runs inside its own loop iteration (interleave)
from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402
from run import GALLERY_DIR, bodies_session, interleave  # noqa: E402


def old_inference(rev: str):  # noqa: ANN201 - the pre-engine module
    source = subprocess.run(["git", "show", f"{rev}:cocoattr/inference.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "old_inference.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_inference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(rev: str = "106b139") -> None:
    from cocoattr.images import load_image
    from cocoattr.predictor import Predictor
    from cocoattr.transforms import normalize

    old = old_inference(rev)
    torch.set_num_threads(2)
    ort_pred = Predictor.from_checkpoint("default", threads=2)
    torch_pred = Predictor(ort_pred.model, threads=2)
    old_head = old.InferenceModel(ort_pred.model)  # the full torch path as it was
    torch_pred.engine = lambda pixels: old_head(normalize(pixels, ort_pred.mean, ort_pred.std))
    grid = ort_pred.model.backbone
    folded = old.fold_batchnorm(copy.deepcopy(grid).eval())
    fused = old.inference_copy(grid)
    session = bodies_session(ort_pred.model, threads=2)
    files = sorted(p for p in GALLERY_DIR.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))

    def bodies(g: torch.nn.Module):  # noqa: ANN202
        return lambda x: (g.body(x), g.detect(x))

    report: dict = {}
    for batch in (1, 16):
        reps = 20 if batch == 1 else 6
        paths = files[:batch]
        x = ort_pred.preprocess([load_image(p, min_side=2 * ort_pred.size) for p in paths]).contiguous()
        x_cl, x_np = x.contiguous(memory_format=torch.channels_last), x.numpy()
        with torch.inference_mode():
            t = interleave({"predict_torch": lambda: torch_pred.predict(paths),
                            "predict_onnxruntime": lambda: ort_pred.predict(paths)}, reps)  # fmt: skip
            b = interleave({
                "bodies_eager_nchw": lambda: bodies(grid)(x),
                "bodies_bn_folded": lambda: bodies(folded)(x),
                "bodies_folded_fused_channels_last": lambda: bodies(fused)(x_cl),
                "bodies_onnxruntime": lambda: session.run(None, {"images": x_np}),
            }, reps)  # fmt: skip
        report[batch] = {k: round(batch / float(np.median(v)), 2) for k, v in {**t, **b}.items()}
        print(f"batch {batch} img/s (medians, interleaved): {report[batch]}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
