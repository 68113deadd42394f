"""A/B of the serving graph (issue #17): predict as it was at REV (its graph, exported by its own
code, fed the normalised float batch as it was: torch.addcmul + NCHW copy, and the walk over the
model's tensors that its engine made on every call) against predict here
(uint8 pixels into the graph), each paired with onnxruntime running the bare CNN bodies, in one
process, interleaved in a shuffled order, medians. Decode and resize are today's code in both.

    .venv/bin/python bench/graph_ab.py [REV] [--reps16 N] [--reps1 N]   (default REV: 7352ba8)
"""

# ruff: noqa: B023 - each lambda runs inside its own loop iteration
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402
from run import GALLERY_DIR, bodies_session  # noqa: E402

EXPORT = """import sys, warnings
warnings.simplefilter("ignore")
from cocoattr.checkpoints import load_model
from cocoattr.engine import export_onnx
export_onnx(load_model(sys.argv[1]), sys.argv[2])
"""


def old_graph(rev: str, folder: Path) -> Path:
    """REV's serving graph of the default checkpoint, exported by REV's own code."""
    code = folder / "code"
    code.mkdir()
    archive = subprocess.run(["git", "archive", rev], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
    out = folder / "old.onnx"
    subprocess.run([sys.executable, "-c", EXPORT, str(REPO / "checkpoints" / "default"), str(out)], cwd=code,
                   check=True, env=dict(os.environ, PYTHONPATH=str(code)))  # fmt: skip
    return out


def shuffled(fns: dict, reps: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Wall and process CPU seconds (all threads) per call of each fn; every round runs them
    all, in a fresh random order. CPU time is what a shared, loaded machine disturbs least."""
    for f in fns.values():
        f()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    order, rng = list(fns), random.Random(0)
    for _ in range(reps):
        rng.shuffle(order)
        for k in order:
            t0, c0 = time.perf_counter(), time.process_time()
            fns[k]()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return {k: np.array(v) for k, v in wall.items()}, {k: np.array(v) for k, v in cpu.items()}


def main() -> None:
    import onnxruntime as ort

    from cocoattr.allocator import tune_malloc
    from cocoattr.engine import _weights_key, session_options
    from cocoattr.images import load_image
    from cocoattr.predictor import Predictor
    from cocoattr.transforms import normalize

    parser = argparse.ArgumentParser()
    parser.add_argument("rev", nargs="?", default="7352ba8")
    parser.add_argument("--reps16", type=int, default=10)
    parser.add_argument("--reps1", type=int, default=60)
    args = parser.parse_args()
    tune_malloc()
    torch.set_num_threads(2)
    pred = Predictor.from_checkpoint("default", threads=2)
    bodies = bodies_session(pred.model, threads=2)
    with tempfile.TemporaryDirectory() as tmp:
        old = ort.InferenceSession(str(old_graph(args.rev, Path(tmp))), session_options(2),
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    names = [o.name for o in old.get_outputs()]
    scale = torch.from_numpy((1.0 / (255.0 * pred.std)).astype(np.float32)).view(1, 3, 1, 1)
    shift = torch.from_numpy((-pred.mean / pred.std).astype(np.float32)).view(1, 3, 1, 1)

    def old_predict(paths: list) -> list:
        _weights_key(pred.model)  # the engine walked the model's tensors on every call
        x = torch.addcmul(shift, torch.from_numpy(pred.load_pixels(paths)).permute(0, 3, 1, 2).float(), scale)
        out = dict(zip(names, old.run(None, {"images": np.ascontiguousarray(x.numpy())}), strict=True))
        probs = torch.sigmoid(torch.from_numpy(out["logits"])).numpy()
        return [(probs[i], out["maps"][i], out["embedding"][i]) for i in range(len(probs))]

    files = sorted(p for p in GALLERY_DIR.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    got, want = pred.predict(files[:16]), old_predict(files[:16])
    diff = max(float(np.abs(p.probs - w[0]).max()) for p, w in zip(got, want, strict=True))
    x = np.ascontiguousarray(normalize(pred.load_pixels(files[:16]), pred.mean, pred.std).numpy())
    same_x = torch.sigmoid(torch.from_numpy(old.run(["logits"], {"images": x})[0])).numpy()
    diff_x = float(np.abs(np.stack([p.probs for p in got]) - same_x).max())
    print(f"{args.rev} vs here: max probability difference {diff:.1e} ({diff_x:.1e} when {args.rev}'s graph gets "
          f"today's normalize: the rest is colour thresholds meeting 1-ulp input changes); load {os.getloadavg()}",
          flush=True)  # fmt: skip
    for batch, reps in ((16, args.reps16), (1, args.reps1)):
        paths = files[:batch]
        x = np.ascontiguousarray(
            pred.preprocess([load_image(p, min_side=2 * pred.size) for p in paths]).numpy()
        )
        with torch.inference_mode():
            wall, cpu = shuffled({"old": lambda: old_predict(paths), "new": lambda: pred.predict(paths),
                                  "bodies": lambda: bodies.run(None, {"images": x})}, reps)  # fmt: skip
        for what, t in (("wall", wall), ("cpu", cpu)):
            ms = {k: round(float(np.median(v)) * 1000, 1) for k, v in t.items()}
            print(f"batch {batch} {what} ms {ms}: bodies/predict {args.rev} {ms['bodies'] / ms['old']:.3f}, "
                  f"here {ms['bodies'] / ms['new']:.3f}; predict here/{args.rev} "
                  f"{np.median(t['new'] / t['old']):.3f}", flush=True)  # fmt: skip
    print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
