"""`make bench`: cocoattr's performance, each figure measured in the same run as its reference.

Writes bench/results.json and bench/README.md (table + machine info), plus profiles under
bench/profiles/. The machine is shared and noisy, so every comparison interleaves its A and B
repetitions (A, B, A, B, ...) and reports medians; ratios are medians of per-pair ratios.
A run with --skip merges into the existing results.json (the sections it skipped are kept, marked
as from an earlier run); README.md keeps its hand-written `## ` sections on every run.

    .venv/bin/python bench/run.py [--quick] [--skip app,train,...]

Sections: predict (vs the bare backbone), search (numpy vs FAISS at 10k/100k/1M simulated
images), train (head step on cached grids vs a full step), index (build throughput vs image
count), app (`python app.py` start to first HTTP 200), profiles (pyinstrument + torch ops).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Collection
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from cocoattr.allocator import tune_malloc  # noqa: E402
from cocoattr.atomic import atomic_write_bytes, atomic_write_text  # noqa: E402

BENCH = REPO / "bench"
GALLERY_DIR = REPO / "cocoattr" / "gallery" / "images"
COCO_TRAIN = 118_287
ATTR_QUERY = "red, furry, -indoor"
TARGETS = {
    "predict_vs_backbone_ratio": 0.85,
    "predict_vs_engine_backbone_ratio": {"1": 0.6, "16": 0.8},
    "search_ms_at_100k": 30.0,
}
SECTIONS = ("predict", "allocator", "index", "train", "search", "app", "profiles")  # the order they run in
PREDICT_DERIVED = (
    "predict_vs_backbone_ratio",
    "predict_vs_engine_backbone_ratio",
    "engine_backbone_ceiling_ratio",
)
SEARCH_SIZES = ("10k", "100k", "1m")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def interleave(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, np.ndarray]:
    """Seconds per call of each fn, measured round-robin so load spikes hit all of them alike."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: np.array(v) for k, v in times.items()}


def med_ms(t: np.ndarray) -> float:
    return round(float(np.median(t)) * 1000, 3)


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def rss_mb() -> float:
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20, 1)


def machine() -> dict:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        import faiss

        faiss_version = faiss.__version__
    except ImportError:
        faiss_version = None
    import PIL

    return {
        "cpu": cpu, "logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "numpy": np.__version__, "pillow": PIL.__version__, "faiss": faiss_version,
        "python": platform.python_version(), "memory_gb": round(os.sysconf("SC_PAGE_SIZE")
                                                                * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }  # fmt: skip


# ----------------------------------------------------------------------------- checkpoint


def load_predictor(tmp: Path):
    """The default checkpoint; a private fresh build if checkpoints/default is missing or stale."""
    from cocoattr.errors import UserError
    from cocoattr.predictor import Predictor

    try:
        return Predictor.from_checkpoint("default"), "default", None
    except (UserError, OSError, RuntimeError) as e:
        from cocoattr.zeroshot import build_default

        note = f"checkpoints/default unusable ({str(e)[:160]}); benchmarked a fresh build in a temp dir"
        log(note)
        folder = build_default(tmp / "default")
        return Predictor.from_checkpoint(str(folder)), str(folder), note


# ----------------------------------------------------------------------------- 1. predict


class _Bodies(torch.nn.Module):
    """The bare CNN bodies of a FeatureGrid: ImageNet backbone features and the detector."""

    def __init__(self, grid: torch.nn.Module) -> None:
        super().__init__()
        self.grid = grid.eval()
        self.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.grid.body(x)
        if self.grid.detector is None:
            return (feats,)
        d = self.grid.detect(x)
        return (feats, *d.scores, *d.distributions)


def bodies_session(model, threads: int):  # noqa: ANN001, ANN201
    """onnxruntime running only the bare CNN bodies, with the engine's session settings."""
    import io

    import onnxruntime as ort

    from cocoattr.engine import session_options

    buffer = io.BytesIO()
    x = torch.zeros(2, 3, model.image_size, model.image_size)
    with torch.no_grad():
        torch.onnx.export(_Bodies(model.backbone), (x,), buffer, input_names=["images"], opset_version=17,
                          dynamic_axes={"images": {0: "batch"}}, dynamo=False)  # fmt: skip
    model.eval()
    return ort.InferenceSession(
        buffer.getvalue(), session_options(threads), providers=["CPUExecutionProvider"]
    )


def _predict_batch(pred, bodies, files: list[Path], batch: int, quick: bool, eager_predict) -> dict:  # noqa: ANN001
    from cocoattr.images import load_image

    model = pred.model
    reps = (12 if quick else 30) if batch == 1 else (4 if quick else 8)
    groups = [files[(i * batch) % len(files) :][:batch] for i in range(reps + 1)]
    groups = [g if len(g) == batch else (g + files)[:batch] for g in groups]
    x = pred.preprocess([load_image(p) for p in groups[0]]).contiguous()  # NCHW, as torchvision
    x_np = x.numpy()
    turn = {"i": 0}

    def predict() -> None:  # decode from disk -> ... -> numpy maps, a different photo each time
        turn["i"] = (turn["i"] + 1) % len(groups)
        pred.predict(groups[turn["i"]])

    def prepare() -> None:  # predict's work before the engine: decode, resize (the graph normalises)
        pred.load_pixels(groups[0])

    references = {
        "backbone": lambda: model.backbone.body(x),  # the bare CNN as torchvision runs it
        "engine_backbone": lambda: bodies.run(None, {"images": x_np}),  # onnxruntime: bare CNN bodies
        "predict_eager": lambda: eager_predict(groups[0]),  # the training-time function
        "prepare": prepare,
    }
    # each reference alternates with predict alone (A, B, A, B): a third function in the round
    # would evict the caches one of them finds warm
    runs: dict[str, dict[str, np.ndarray]] = {}
    with torch.inference_mode():
        for name, fn in references.items():
            runs[name] = interleave({"predict": predict, name: fn}, reps)
    t = {"predict": runs["backbone"]["predict"], **{name: r[name] for name, r in runs.items()}}

    def vs(name: str) -> float:  # predict's speed / the reference's: median of per-pair time ratios
        return round(float(np.median(runs[name][name] / runs[name]["predict"])), 3)

    body, before = float(np.median(t["engine_backbone"])), float(np.median(t["prepare"]))
    res = {
        "images_per_s": {k: round(batch / float(np.median(v)), 2) for k, v in t.items()},
        "ms_per_batch": {k: med_ms(v) for k, v in t.items()},
        # headline (issue #7): full predict path vs the bare backbone forward, same batch and threads
        "predict_vs_backbone_ratio": vs("backbone"),
        # issue #17: vs onnxruntime running only the bare CNN bodies (ImageNet features + detector)
        "predict_vs_engine_backbone_ratio": vs("engine_backbone"),
        # the most that ratio could be with a free head and evidence channels: body / (body + prepare)
        "engine_backbone_ceiling_ratio": round(body / (body + before), 3),
        "speedup_vs_eager_predict": vs("predict_eager"),
        "reps": reps,
    }
    log(f"predict batch {batch}: {res}")
    return res


def bench_predict(pred, files: list[Path], quick: bool) -> dict:
    from cocoattr.images import load_image

    model = pred.model
    bodies = bodies_session(model, threads=torch.get_num_threads())

    def eager_predict(paths: list[Path]) -> dict[str, np.ndarray]:
        """The training-time function: eager NCHW backbone, nn.MultiheadAttention head (grad on)."""
        with torch.enable_grad():
            o = model(pred.preprocess([load_image(p) for p in paths]).contiguous())
            return {"probs": o.probs.detach().numpy(), "maps": o.maps.detach().numpy(),
                    "embedding": o.embedding.detach().numpy()}  # fmt: skip

    # correctness: the optimised inference path against the training-time function, all photos
    diffs = {"probs": 0.0, "maps": 0.0, "embedding": 0.0}
    for i in range(0, len(files), 16):
        chunk = files[i : i + 16]
        new = pred.predict(chunk)
        for k, ref in eager_predict(chunk).items():
            got = np.stack([getattr(p, k) for p in new])
            diffs[k] = max(diffs[k], float(np.abs(got - ref).max()))
    out: dict = {"max_abs_diff_vs_eager_path": diffs, "batches": {}}

    for batch in (1, 16):
        out["batches"][str(batch)] = _predict_batch(pred, bodies, files, batch, quick, eager_predict)

    # where the remaining time goes (batch 16, medians of interleaved parts)
    paths = files[:16]
    pool = pred._decode_pool()
    pixels = np.stack([pred._prepare(p) for p in paths])
    x_np = np.ascontiguousarray(
        pred.preprocess([load_image(p, min_side=2 * pred.size) for p in paths]).numpy()
    )
    parts = interleave(
        {
            "decode (load_image), serial": lambda: [load_image(p, min_side=2 * pred.size) for p in paths],
            "decode+resize, serial": lambda: [pred._prepare(p) for p in paths],
            f"decode+resize, {pred.decode_workers} threads (as predict)": lambda: list(pool.map(pred._prepare, paths)),
            "onnxruntime: bare CNN bodies (normalised float input)": lambda: bodies.run(None, {"images": x_np}),
            "onnxruntime: the whole graph as predict runs it (uint8 pixels in: normalising, bodies, "
            "evidence channels, head)": lambda: pred.engine(pixels),
            "objects: graph + boxes, NMS, per-object heads in torch": lambda: pred.engine.with_objects(pixels),
        },
        3 if quick else 5,
    )  # fmt: skip
    out["breakdown_ms_batch16"] = {k: med_ms(v) for k, v in parts.items()}
    out["peak_rss_mb"] = peak_rss_mb()
    out["rss_mb_after"] = rss_mb()
    return out


# ----------------------------------------------------------------------------- 2. search


def _search_size(n: int, attributes: list[str], query, rng: np.random.Generator) -> dict:  # noqa: ANN001
    import faiss

    from cocoattr.backends import FaissBackend, NumpyBackend, top_indices
    from cocoattr.index import Index
    from cocoattr.query import P_CLIP
    from cocoattr.search import search

    a, d, k = len(attributes), 384, 10
    cols = [attributes.index(t.attribute) for t in query.terms]
    weights = np.array([t.weight for t in query.terms], np.float32)
    negate = [t.negate for t in query.terms]
    reps = 15 if n <= 100_000 else 5
    res: dict = {}
    probs = (rng.random((n, a), dtype=np.float32) ** 3).astype(np.float16)  # stored like the Index
    root = tempfile.mkdtemp(prefix="cocoattr-bench-")
    index = Index(
        root_spec=root, paths=[f"img{i:07d}.jpg" for i in range(n)], sizes=np.zeros(n, np.int64),
        mtimes=np.zeros(n, np.int64), probs=probs, embeddings=np.zeros((n, 1), np.float32),
        attributes=list(attributes), checkpoint={},
    )  # fmt: skip
    # precomputed at load: [log p | log(1-p)] (N, 2A) float32, row-major (matvec, FAISS) and
    # column-major (a query reads only its terms' columns)
    t0 = time.perf_counter()
    p32 = np.clip(probs.astype(np.float32), P_CLIP, 1 - P_CLIP)
    logs = np.concatenate([np.log(p32), np.log1p(-p32)], axis=1)
    p32 = None
    res["precompute_log_s"] = round(time.perf_counter() - t0, 3)
    logs_f = np.asfortranarray(logs)
    wvec = np.zeros(2 * a, np.float32)
    for c, w, neg in zip(cols, weights, negate, strict=True):
        wvec[c + (a if neg else 0)] += w
    colidx = [c + (a if neg else 0) for c, neg in zip(cols, negate, strict=True)]
    t0 = time.perf_counter()
    fidx = faiss.IndexFlatIP(2 * a)
    fidx.add(logs)
    res["faiss_attr_build_s"] = round(time.perf_counter() - t0, 3)

    def matvec() -> np.ndarray:
        return top_indices(logs @ wvec, k)

    def columns() -> np.ndarray:
        s = weights[0] * logs_f[:, colidx[0]]
        for j in range(1, len(colidx)):
            s += weights[j] * logs_f[:, colidx[j]]
        return top_indices(s, k)

    def faiss_attr() -> np.ndarray:
        return fidx.search(wvec[None], k)[1][0]

    ref = set(matvec())
    assert set(columns()) == ref and set(faiss_attr()) == ref, "attribute scorers disagree"
    assert {int(h.image[3:10]) for h in search(index, query, k, "numpy", False)} == ref, "API disagrees"
    t = interleave(
        {
            "api_numpy": lambda: search(index, query, k, backend="numpy", use_encoder=False),
            "numpy_matvec_logprob": matvec,
            "numpy_logprob_columns": columns,
            "faiss_flatip_logprob": faiss_attr,
        },
        reps,
    )
    res["attribute_query_ms"] = {m: med_ms(v) for m, v in t.items()}
    res["attribute_memory_mb"] = {
        "probs_float16": round(probs.nbytes / 2**20, 1),
        "logprob_float32_each_copy": round(logs.nbytes / 2**20, 1),
    }
    shutil.rmtree(root, ignore_errors=True)
    fidx = logs = logs_f = index = probs = None
    gc.collect()
    # embedding (free-text / image) queries: inner product over unit vectors, D=384
    emb = rng.standard_normal((n, d), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    q = rng.standard_normal(d).astype(np.float32)
    nb = NumpyBackend(emb)
    t0 = time.perf_counter()
    fb = FaissBackend(emb)
    res["faiss_embedding_build_s"] = round(time.perf_counter() - t0, 3)
    emb = None
    assert set(nb.top_k(q, k)[0]) == set(fb.top_k(q, k)[0])
    t = interleave({"numpy_backend": lambda: nb.top_k(q, k), "faiss_backend": lambda: fb.top_k(q, k)}, reps)
    res["embedding_query_ms"] = {m: med_ms(v) for m, v in t.items()}
    res["embedding_memory_mb_float32"] = round(n * d * 4 / 2**20, 1)
    log(f"search n={n}: {res}")
    return res


def bench_search(attributes: list[str], quick: bool) -> dict:
    from cocoattr.query import parse_query

    query = parse_query(ATTR_QUERY, attributes=attributes, use_encoder=False)
    out: dict = {"query": ATTR_QUERY, "terms": [t.key for t in query.terms], "k": 10, "sizes": {}}
    rng = np.random.default_rng(0)
    sizes = (10_000, 100_000) if quick else (10_000, 100_000, 1_000_000)
    for n in sizes:
        out["sizes"][str(n)] = _search_size(n, attributes, query, rng)
    for n, name in ((10_000, "10k"), (100_000, "100k"), (1_000_000, "1m")):
        r = out["sizes"].get(str(n))
        if r:
            attr = r["attribute_query_ms"]
            out[f"search_ms_at_{name}"] = {
                "attribute_api_numpy": attr["api_numpy"],
                "attribute_best": min(attr.values()),
                "attribute_best_method": min(attr, key=attr.get),
                "embedding_numpy": r["embedding_query_ms"]["numpy_backend"],
                "embedding_faiss": r["embedding_query_ms"]["faiss_backend"],
            }
    out["peak_rss_mb"] = peak_rss_mb()
    return out


# ----------------------------------------------------------------------------- 3. training


def bench_train(checkpoint: str, files: list[Path], quick: bool) -> dict:
    from cocoattr.checkpoints import load_model
    from cocoattr.images import load_image
    from cocoattr.training.config import TrainConfig
    from cocoattr.training.data import Preprocess, augment
    from cocoattr.training.model import TrainStep, label_loss, make_optimizer, set_trainable

    cfg = TrainConfig()
    batch = cfg.batch_size
    model = load_model(checkpoint)
    params = set_trainable(model, cfg.finetune_stages)
    optimizer = make_optimizer(model, params, cfg)
    pre = Preprocess(model)
    rng = np.random.default_rng(0)
    a = model.num_attributes
    images = torch.stack([pre(load_image(p)) for p in (files * 2)[:batch]])
    grids16 = rng.standard_normal((batch, model.backbone.channels, *model.grid)).astype(np.float16)
    targets = torch.from_numpy((rng.random((batch, a)) < 0.05).astype(np.float32))
    known = torch.from_numpy(rng.random((batch, a)) < 0.3)
    labels3 = torch.where(known, targets, torch.full_like(targets, -1.0))
    cached_step, full_step = TrainStep(model, True), TrainStep(model, False)

    def step(module: TrainStep, x: torch.Tensor) -> None:
        model.train()
        model.backbone.eval()
        logits, contrastive = module(x, labels3)
        weight = known.float().sum() + (~known).float().sum() * cfg.unknown_weight
        loss = (
            label_loss(logits, targets, known, cfg) / weight.clamp_min(1.0)
            + cfg.contrastive_weight * contrastive
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()

    def cached() -> None:  # GridDataset: float16 grid -> float32 tensor, then the head step
        step(cached_step, torch.from_numpy(grids16.astype(np.float32)))

    t = interleave({"cached_step": cached, "full_step": lambda: step(full_step, images)}, 3 if quick else 5)
    # per-image input cost without the cache: decode + random crop/flip + preprocess (num_workers=0)
    lt = interleave({"load": lambda: [pre(augment(load_image(p), rng)) for p in files[:batch]]}, 3)
    load_s = float(np.median(lt["load"])) / batch
    # one-off cache build: the eval backbone over the data, as cached_grids runs it
    xb = torch.stack([pre(load_image(p)) for p in (files * 2)[: cfg.eval_batch_size]])
    cache_backbone = model.backbone.eval()
    with torch.no_grad():
        ct = interleave({"cache": lambda: cache_backbone(xb)}, 2)
    cache_s = float(np.median(ct["cache"])) / cfg.eval_batch_size + load_s
    cached_s = float(np.median(t["cached_step"])) / batch
    full_s = float(np.median(t["full_step"])) / batch + load_s
    grid_bytes = model.backbone.channels * model.grid[0] * model.grid[1] * 2
    return {
        "batch_size": batch,
        "head_step_cached_images_per_s": round(1 / cached_s, 1),
        "full_step_images_per_s": round(1 / full_s, 2),
        "full_step_compute_only_images_per_s": round(batch / float(np.median(t["full_step"])), 2),
        "decode_augment_preprocess_ms_per_image": round(load_s * 1000, 2),
        "speedup_cached_vs_full": round(full_s / cached_s, 1),
        "coco_train2017_images": COCO_TRAIN,
        "epoch_s_cached": round(COCO_TRAIN * cached_s, 1),
        "epoch_s_full": round(COCO_TRAIN * full_s, 1),
        "cache_build_once_s": round(COCO_TRAIN * cache_s, 1),
        "cache_size_gb": round(COCO_TRAIN * grid_bytes / 1e9, 1),
        "note": "extrapolated from measured steps; the cached epoch excludes reading the float16 "
        "memmap from disk (the cache is larger than RAM here, so disk bandwidth adds to it)",
    }


# ----------------------------------------------------------------------------- 1b. allocator

_ALLOCATOR_CHILD = """
import json, resource, sys, time
import numpy as np
if sys.argv[1] == "tuned":
    from cocoattr.allocator import tune_malloc
    tune_malloc()
from cocoattr.predictor import Predictor
pred = Predictor.from_checkpoint(sys.argv[2])
files, reps, out = json.loads(sys.argv[3]), int(sys.argv[4]), {}
for batch in (1, 16):
    groups = [files[i : i + batch] for i in range(0, len(files) - batch + 1, batch)][:4]
    for g in groups:
        pred.predict(g)
    faults, times = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, []
    for r in range(reps * (15 if batch == 1 else 1)):
        t0 = time.perf_counter()
        pred.predict(groups[r % len(groups)])
        times.append(time.perf_counter() - t0)
    out[batch] = {"images_per_s": batch / float(np.median(times)),
                  "page_faults_per_batch": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / len(times)}
print(json.dumps(out))
"""


def bench_allocator(checkpoint: str, files: list[Path], quick: bool) -> dict:
    """`cocoattr.allocator.tune_malloc` on vs off: it is process-wide and can't be undone, so
    each run is a fresh child process, tuned and stock glibc alternating (ABBA)."""
    ckpt = str(REPO / "checkpoints" / "default") if checkpoint == "default" else checkpoint
    names = json.dumps([str(p) for p in files])
    runs: dict[str, list[dict]] = {"tuned": [], "stock": []}
    for i in range(2 if quick else 4):
        for mode in ("tuned", "stock") if i % 2 == 0 else ("stock", "tuned"):  # ABBA: no order bias
            cmd = [sys.executable, "-c", _ALLOCATOR_CHILD, mode, ckpt, names, "6" if quick else "12"]
            done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True,
                                  env=dict(os.environ, PYTHONPATH=str(REPO)))  # fmt: skip
            runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
    out: dict = {"pairs": len(runs["tuned"]), "batches": {}}
    for b in ("1", "16"):
        tuned = np.array([r[b]["images_per_s"] for r in runs["tuned"]])
        stock = np.array([r[b]["images_per_s"] for r in runs["stock"]])
        out["batches"][b] = {
            "predict_images_per_s": {"tuned": round(float(np.median(tuned)), 1), "stock": round(float(np.median(stock)), 1)},
            "speedup": round(float(np.median(tuned / stock)), 3),
            "page_faults_per_batch": {
                mode: round(float(np.median([r[b]["page_faults_per_batch"] for r in rs]))) for mode, rs in runs.items()
            },
        }  # fmt: skip
    log(f"allocator: {out}")
    return out


# ----------------------------------------------------------------------------- 4. index build


def bench_index(pred, files: list[Path], quick: bool) -> dict:
    from cocoattr.index import build_index

    out: dict = {
        "workers": "2 decode threads ahead of the model (Predictor.predict_files, batch 16)",
        "runs": {},
    }
    counts = (36, 72) if quick else (36, 72, 144)
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            folder = Path(tmp) / f"imgs{n}"
            folder.mkdir()
            for i in range(n):
                src = files[i % len(files)]
                shutil.copyfile(src, folder / f"{i:04d}_{src.name}")
            t0 = time.perf_counter()
            report = build_index(folder, Path(tmp) / f"i{n}.npz", pred, progress=False)
            dt = time.perf_counter() - t0
            assert len(report.computed) == n
            out["runs"][str(n)] = {"seconds": round(dt, 2), "images_per_s": round(n / dt, 2)}
            log(f"index build {n}: {out['runs'][str(n)]}")
    return out


# ----------------------------------------------------------------------------- 5. app start


def bench_app(timeout: float = 240.0) -> dict:
    """`make demo` (the README's command) to the first HTTP 200 on the page, from a warm .venv
    with the default and the gallery index already built (`make index` first, not timed)."""
    if not (REPO / "app.py").is_file():
        return {"skipped": "app.py not present"}
    prepare = subprocess.run(["make", "-s", "index"], cwd=REPO, capture_output=True, text=True)
    if prepare.returncode:
        return {"skipped": f"make index failed: {prepare.stderr[-300:]}"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1",
               GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")  # fmt: skip
    logf = Path(tempfile.mkdtemp(prefix="cocoattr-bench-")) / "demo.log"
    t0 = time.perf_counter()
    with open(logf, "wb") as lf:
        proc = subprocess.Popen(["make", "demo"], cwd=REPO, env=env, stdout=lf, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    result: dict = {}
    try:
        while time.perf_counter() - t0 < timeout:
            if proc.poll() is not None:
                tail = logf.read_text(errors="replace")[-600:]
                return {
                    "skipped": f"make demo exited with {proc.returncode} before serving",
                    "log_tail": tail,
                }
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    if r.status == 200:
                        result = {"seconds_to_first_200": round(time.perf_counter() - t0, 2)}
                        result |= predict_latency(f"http://127.0.0.1:{port}/")
                        break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            result = {"skipped": f"no HTTP 200 within {timeout:.0f}s"}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        shutil.rmtree(logf.parent, ignore_errors=True)
    result["note"] = "`make demo` from a warm .venv, default checkpoint and gallery index built"
    return result


def predict_latency(url: str, calls: int = 12) -> dict:
    """/predict round trips through gradio_client (upload, queue, model, JSON back), one gallery
    photo at a time after two warm-up calls: what an API user waits for."""
    from gradio_client import Client, handle_file

    photos = sorted((REPO / "cocoattr" / "gallery" / "images").glob("*.jpg"))
    client = Client(url, verbose=False)
    for photo in photos[:2]:
        client.predict(handle_file(str(photo)), 5, 0.1, api_name="/predict")
    times = []
    for photo in (photos * 2)[:calls]:
        t0 = time.perf_counter()
        client.predict(handle_file(str(photo)), 5, 0.1, api_name="/predict")
        times.append(1000 * (time.perf_counter() - t0))
    return {"predict_latency_ms": {"median": round(float(np.median(times)), 1),
                                   "p90": round(float(np.percentile(times, 90)), 1), "calls": calls}}  # fmt: skip


# ----------------------------------------------------------------------------- profiles


def write_profiles(pred, files: list[Path], attributes: list[str]) -> dict:
    from pyinstrument import Profiler

    from cocoattr.index import Index
    from cocoattr.query import parse_query
    from cocoattr.search import search

    folder = BENCH / "profiles"
    folder.mkdir(exist_ok=True)
    prof = Profiler(interval=0.002)
    with prof:
        for _ in range(3):
            pred.predict(files[:16])
    (folder / "predict_pyinstrument.txt").write_text(prof.output_text(unicode=False, color=False))
    with torch.profiler.profile() as tp:
        for _ in range(3):
            pred.predict(files[:16])
    table = tp.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    (folder / "predict_torch_ops.txt").write_text(table)
    with torch.profiler.profile(record_shapes=True) as tp:
        for path in files[:20]:
            pred.predict([path])
    table = tp.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=30)
    (folder / "predict_batch1_torch_ops.txt").write_text(table)
    n = 100_000
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as root:
        index = Index(root_spec=root, paths=[f"i{i}.jpg" for i in range(n)], sizes=np.zeros(n, np.int64),
                      mtimes=np.zeros(n, np.int64), probs=rng.random((n, len(attributes)), np.float32).astype(np.float16),
                      embeddings=np.zeros((n, 1), np.float32), attributes=list(attributes), checkpoint={})  # fmt: skip
        query = parse_query(ATTR_QUERY, attributes=attributes, use_encoder=False)
        prof = Profiler(interval=0.0005)
        with prof:
            for _ in range(20):
                search(index, query, 10, backend="numpy", use_encoder=False)
    (folder / "search_100k_pyinstrument.txt").write_text(prof.output_text(unicode=False, color=False))
    return {"files": sorted(str(p.relative_to(REPO)) for p in folder.iterdir())}


# ----------------------------------------------------------------------------- merge a partial run


def machine_summary(m: dict) -> str:
    """One line naming the machine, stored in each section: a section kept from an earlier run says where."""
    return (f"{m.get('cpu')}, {m.get('logical_cores')} logical cores, torch {m.get('torch')} "
            f"with {m.get('torch_threads')} threads")  # fmt: skip


def stamp(section: dict, m: dict) -> dict:
    """Record when and where a section was measured: after a partial run that is no longer the run's own."""
    section["measured_at"] = datetime.now().astimezone().isoformat(timespec="seconds")
    section["measured_on"] = machine_summary(m)
    return section


def kept_sections(results: dict) -> list[str]:
    """The sections this run did not measure but carried over from an earlier results.json."""
    return [
        n for n in SECTIONS if isinstance(results.get(n), dict) and results[n].get("kept_from_earlier_run")
    ]


def derive(results: dict) -> dict:
    """The top-level headline figures, recomputed from the sections the results hold now, never carried."""
    out = {k: v for k, v in results.items() if k not in PREDICT_DERIVED and not k.startswith("search_ms_at_")}
    search = out.get("search")
    if isinstance(search, dict):
        for key in SEARCH_SIZES:
            r = search.get(f"search_ms_at_{key}")
            if isinstance(r, dict) and "attribute_api_numpy" in r:
                out[f"search_ms_at_{key}"] = r["attribute_api_numpy"]
    predict = out.get("predict")
    if isinstance(predict, dict) and isinstance(predict.get("batches"), dict):
        for key in PREDICT_DERIVED:
            out[key] = {b: r[key] for b, r in predict["batches"].items() if key in r}
    return out


def load_previous(path: Path) -> tuple[dict | None, str | None]:
    """The committed results a partial run merges into, or None and why they cannot be used."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"no {path.name} to merge into: writing only this run's sections"
    except (OSError, ValueError) as e:  # ValueError: bad JSON or not UTF-8
        why = f"is unreadable or not valid JSON ({type(e).__name__}: {e})"
    else:
        if isinstance(old, dict):
            return old, None
        why = f"holds a JSON {type(old).__name__}, not an object"
    return None, f"{path.name} {why}; writing only this run's sections"


def merge_results(new: dict, old: dict, ran: Collection[str]) -> dict:
    """Fold a partial run into the previous results, so skipping a section does not lose its figures.

    A section this run measured replaces the old one; any other old section is kept, marked
    `kept_from_earlier_run` (a section that ran and failed keeps its old figures too, beside the new
    error). Errors of sections that ran are dropped, those of skipped ones stay. The run's own
    top-level keys (machine, checkpoint, ...) win and old hand-added ones are dropped; the headline
    figures are recomputed from the merged sections. `new` and `old` are not modified.
    """
    merged = {k: v for k, v in new.items() if k not in SECTIONS}
    old_machine = old.get("machine")
    for name in SECTIONS:
        if name in new:
            merged[name] = new[name]
        elif isinstance(old.get(name), dict):
            kept = {**old[name], "kept_from_earlier_run": True}
            if "measured_on" not in kept and isinstance(old_machine, dict):
                kept["measured_on"] = machine_summary(old_machine)  # sections from before the stamp
            merged[name] = kept
    old_errors = old.get("errors") if isinstance(old.get("errors"), dict) else {}
    merged["errors"] = {k: v for k, v in old_errors.items() if k not in ran} | dict(new.get("errors", {}))
    return derive(merged)


def readme_with_history(generated: str, existing: bytes | None) -> bytes:
    """The generated top, then the existing README from its first `## ` line on, byte for byte.

    Those sections are the hand-written history of each measurement; regenerating must not lose them.
    """
    found = re.search(rb"^## ", existing or b"", re.MULTILINE)
    if found is None:
        return generated.encode("utf-8")
    return generated.rstrip("\n").encode("utf-8") + b"\n\n" + existing[found.start() :]


def combine(results: dict, skip: Collection[str], previous: Path) -> dict:
    """The results to write: a full run's alone, a partial run's merged into `previous`."""
    old = None
    if skip:  # a partial run: merge into the committed figures rather than drop the skipped sections
        old, problem = load_previous(previous)
        if problem:
            log(problem)
    if old is None:
        return derive(results)
    merged = merge_results(results, old, [n for n in SECTIONS if n not in skip])
    dropped = [k for k in old if k not in merged]
    log(f"merged into {previous.name}: kept {kept_sections(merged) or 'nothing'} from the earlier run"
        + (f", dropped its top-level {dropped}" if dropped else ""))  # fmt: skip
    return merged


def write_report(results: dict, folder: Path) -> None:
    """Write results.json and README.md atomically (a crash leaves the old ones); the README keeps its history."""
    atomic_write_text(folder / "results.json", json.dumps(results, indent=1) + "\n")
    readme_path = folder / "README.md"
    existing = readme_path.read_bytes() if readme_path.exists() else None
    atomic_write_bytes(readme_path, readme_with_history(readme(results), existing))


# ----------------------------------------------------------------------------- report


def fmt(v: object) -> str:
    return "n/a" if v is None else (f"{v:,.3g}" if isinstance(v, float) else str(v))


def readme(results: dict) -> str:
    """The generated top of bench/README.md: text, machine, table, breakdown (never a `## ` line)."""
    m = results["machine"]
    kept = kept_sections(results)
    lines = [
        "# cocoattr benchmarks",
        "",
        "Regenerated by `make bench` (`.venv/bin/python bench/run.py`); raw numbers in `results.json`,",
        "profiles in `profiles/`. Each figure is measured in the same run as its reference, with A/B",
        "repetitions interleaved; ratios are medians of per-pair ratios (robust on a shared, noisy machine).",
        "",
        "`predict_vs_engine_backbone_ratio` (issue #17) is the whole predict path (decode from disk, resize,",
        "backbone, detector, concept, colour and object channels, attribute head, maps as numpy; onnxruntime",
        "on the CPU; the graph takes the uint8 pixels and normalises them itself) against onnxruntime running",
        "only the bare CNN bodies (MobileNetV2 features + NanoDet) on the normalised float batch, same batch,",
        "threads and images. Its ceiling is what it would be with free evidence channels and head,",
        "since on 2 cores decoding cannot overlap the CNN. `predict_vs_backbone_ratio` (issue #7) compares",
        "with the torchvision MobileNetV2 body alone in eager torch.",
        "",
        f"Machine{' of this run' if kept else ''}: {m['cpu']}, {m['logical_cores']} logical cores, "
        f"{m['memory_gb']} GiB, torch {m['torch']} "
        f"with {m['torch_threads']} threads, numpy {m['numpy']}, faiss {m['faiss']}, Python {m['python']}. "
        f"Load average at start {m['loadavg_start']}, at end {m.get('loadavg_end')}. Run took "
        f"{results.get('seconds_total')} s.",
        "",
    ]
    if results.get("checkpoint_note"):
        lines += [f"Note: {results['checkpoint_note']}", ""]
    lines += ["| figure | value | reference / target |", "|---|---|---|"]
    p = results.get("predict")
    if p and "batches" in p:
        for b, r in p["batches"].items():
            ips = r["images_per_s"]
            lines.append(
                f"| predict_vs_backbone_ratio, batch {b} | **{r['predict_vs_backbone_ratio']}** | >= 0.85; predict "
                f"{fmt(ips['predict'])} img/s vs bare backbone forward {fmt(ips['backbone'])} img/s (torchvision "
                f"MobileNetV2 features, eval, inference_mode) |"
            )
            lines.append(
                f"| predict_vs_engine_backbone_ratio, batch {b} | **{r['predict_vs_engine_backbone_ratio']}** "
                f"(ceiling {r['engine_backbone_ceiling_ratio']}) | >= {TARGETS['predict_vs_engine_backbone_ratio'][b]}; "
                f"predict {fmt(ips['predict'])} img/s vs onnxruntime bare CNN bodies {fmt(ips['engine_backbone'])} "
                f"img/s; ceiling = bodies / (bodies + decode, resize) |"
            )
            lines.append(
                f"| predict vs the eager training-time path, batch {b} | {r['speedup_vs_eager_predict']}x | "
                f"eager NCHW backbone + nn.MultiheadAttention head, autograd on: {fmt(ips['predict_eager'])} img/s |"
            )
        lines.append(f"| peak RSS after predict | {fmt(p['peak_rss_mb'])} MB | |")
        d = p["max_abs_diff_vs_eager_path"]
        lines.append(
            f"| max abs diff vs eager path | probs {d['probs']:.1e}, maps {d['maps']:.1e}, "
            f"embedding {d['embedding']:.1e} | 36 gallery photos |"
        )
    al = results.get("allocator")
    if al and "batches" in al:
        for b, r in al["batches"].items():
            ips, faults = r["predict_images_per_s"], r["page_faults_per_batch"]
            lines.append(
                f"| `tune_malloc` speed-up of predict, batch {b} | **{r['speedup']}x** | {ips['tuned']} vs "
                f"{ips['stock']} img/s with stock glibc; page faults per batch {faults['tuned']} vs "
                f"{faults['stock']} ({al['pairs']} fresh processes each, ABBA) |"
            )
    s = results.get("search")
    if s and "sizes" in s:
        for name in ("10k", "100k", "1m"):
            r = s.get(f"search_ms_at_{name}")
            if r:
                lines.append(
                    f"| search_ms_at_{name} (attribute query, `search()` API) | **{r['attribute_api_numpy']}** ms "
                    f"| target <= 30 ms at 100k; scoring alone ({r['attribute_best_method']}) {r['attribute_best']} ms |"
                )
                lines.append(
                    f"| search_ms_at_{name} (embedding query) | numpy {r['embedding_numpy']} ms | FAISS "
                    f"{r['embedding_faiss']} ms |"
                )
    t = results.get("train")
    if t and "epoch_s_cached" in t:
        lines += [
            f"| train: head step on cached grids | {fmt(t['head_step_cached_images_per_s'])} img/s | "
            f"epoch (118,287 imgs) {fmt(t['epoch_s_cached'])} s + one-off cache build {fmt(t['cache_build_once_s'])} s, "
            f"{t['cache_size_gb']} GB float16 |",
            f"| train: full step (frozen backbone) | {fmt(t['full_step_images_per_s'])} img/s | "
            f"epoch {fmt(t['epoch_s_full'])} s; cache speed-up {t['speedup_cached_vs_full']}x |",
        ]
    i = results.get("index")
    if i and "runs" in i:
        lines.append(
            "| index build | "
            + ", ".join(f"{n}: {r['images_per_s']} img/s" for n, r in i["runs"].items())
            + f" | {i['workers']} |"
        )
    a = results.get("app")
    if a:
        lines.append(f"| `make demo` -> first HTTP 200 | {a.get('seconds_to_first_200', 'skipped')} s | "
                     f"{a.get('skipped') or a.get('note')} |")  # fmt: skip
        if "predict_latency_ms" in a:
            lat = a["predict_latency_ms"]
            lines.append(f"| `/predict` latency through gradio_client | median {lat['median']} ms, p90 "
                         f"{lat['p90']} ms | {lat['calls']} calls, one gallery photo each, after 2 warm-up calls |")  # fmt: skip
    for k, v in results.get("errors", {}).items():
        lines.append(f"| {k} | error | {v[:200]} |")
    if kept:
        when = "; ".join(
            f"{n} measured {results[n].get('measured_at', 'at an unrecorded time')} on "
            f"{results[n].get('measured_on', 'an unrecorded machine')}"
            for n in kept
        )
        lines += ["", f"Kept from an earlier run (this run did not measure them): {when}."]
    if p and "breakdown_ms_batch16" in p:
        lines += ["", "Batch-16 predict breakdown (ms, medians):", ""]
        lines += [f"- {k}: {v}" for k, v in p["breakdown_ms_batch16"].items()]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer repetitions, no 1M search, smaller index runs"
    )
    parser.add_argument(
        "--skip", default="", help=f"comma-separated: {','.join(SECTIONS)}; the rest of results.json is kept"
    )
    args = parser.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    tune_malloc()  # as the CLI and the app do: every figure is for the process users run
    t_start = time.perf_counter()
    results: dict = {"machine": machine(), "targets": TARGETS, "errors": {}}
    files = sorted(p for p in GALLERY_DIR.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    with tempfile.TemporaryDirectory() as tmp:
        pred, checkpoint, note = load_predictor(Path(tmp))
        results["checkpoint"] = checkpoint
        results["checkpoint_note"] = note
        sections: dict[str, Callable[[], dict]] = {
            "predict": lambda: bench_predict(pred, files, args.quick),
            "allocator": lambda: bench_allocator(checkpoint, files, args.quick),
            "index": lambda: bench_index(pred, files, args.quick),
            "train": lambda: bench_train(checkpoint, files, args.quick),
            "search": lambda: bench_search(pred.attributes, args.quick),
            "app": bench_app,
            "profiles": lambda: write_profiles(pred, files, pred.attributes),
        }
        assert tuple(sections) == SECTIONS
        for name, fn in sections.items():
            if name in skip:
                continue
            log(f"{name} ...")
            t0 = time.perf_counter()
            try:
                results[name] = fn()
                results[name]["section_seconds"] = round(time.perf_counter() - t0, 1)
                results[name]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
                stamp(results[name], results["machine"])
            except Exception as e:  # one broken section (code in flux) must not lose the others
                results["errors"][name] = f"{type(e).__name__}: {e}"
                log(f"{name} failed: {type(e).__name__}: {e}")
            gc.collect()
    run_failed = bool(results["errors"])
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["seconds_total"] = round(time.perf_counter() - t_start, 1)
    results = combine(results, skip, BENCH / "results.json")
    write_report(results, BENCH)
    log(f"wrote bench/results.json and bench/README.md in {results['seconds_total']} s")
    return 1 if run_failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
