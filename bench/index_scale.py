"""Index figures for the README (#13): build img/s with 1 and 2 processes, size on disk per 1k
images, query ms at 5k / 118k (COCO train2017) / 1M simulated images, numpy vs FAISS, memory.

    .venv/bin/python bench/index_scale.py [--images 128] [--sizes 5000,118287,1000000] [--skip build]

Build: N real photos (the bundled gallery's, cropped and resized to 640x480, COCO's usual size,
re-encoded as JPEG q90) in the real COCO layout (captions + instances JSON), indexed through the
CLI exactly as a user runs it (`index build --coco`, with thumbnails and records): once in one
process, then as two processes at once (`--shard 0/2` and `--shard 1/2`) + `index merge`.
img/s is each process's indexing loop as its progress bar times it (start-up excluded; the
one-off ONNX export in the first batch included); wall times with start-up are given too.
Query: `bench/run.py`'s search section (random probabilities stored as the index stores them,
unit embeddings), at each size. Writes bench/index_scale.json and prints the README rows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from run import _search_size, log, machine, peak_rss_mb  # noqa: E402 - bench/run.py's helpers

from cocoattr.index import Index  # noqa: E402

GALLERY = REPO / "cocoattr" / "gallery" / "images"
PY = sys.executable
SIZE = (640, 480)


def write_coco(root: Path, n: int) -> Path:
    """ROOT/coco/{annotations,val2017} with `n` 640x480 JPEGs made from the gallery photos."""
    ann, images = root / "coco" / "annotations", root / "coco" / "val2017"
    ann.mkdir(parents=True)
    images.mkdir(parents=True)
    sources = sorted(GALLERY.glob("*.jpg"))
    imgs, caps, boxes = [], [], []
    for i in range(n):
        src = sources[i % len(sources)]
        name = f"{i + 1:012d}.jpg"
        with Image.open(src) as im:
            photo = ImageOps.fit(ImageOps.exif_transpose(im).convert("RGB"), SIZE)
            # a different crop per copy, so no two files are the same bytes
            photo = ImageOps.mirror(photo) if (i // len(sources)) % 2 else photo
            photo.putpixel((i % SIZE[0], 0), (i % 256, 0, 0))
            photo.save(images / name, quality=90)
        imgs.append({"id": i + 1, "file_name": name, "width": SIZE[0], "height": SIZE[1]})
        caps.append({"id": i + 1, "image_id": i + 1, "caption": f"photo {src.stem}"})
        boxes.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100.0,
                      "iscrowd": 0})  # fmt: skip
    (ann / "captions_val2017.json").write_text(json.dumps({"images": imgs, "annotations": caps}))
    (ann / "instances_val2017.json").write_text(
        json.dumps({"images": imgs, "annotations": boxes, "categories": [{"id": 1, "name": "person"}]})
    )
    return root


def _cmd(root: Path, out: Path, *extra: str) -> list[str]:
    return [PY, "-m", "cocoattr", "index", "build", "--coco", str(root), "--split", "val2017", "--out", str(out),
            "--checkpoint", "default", *extra]  # fmt: skip


def _env() -> dict:
    return os.environ | {"HF_HUB_OFFLINE": "1"}


BAR = re.compile(r"indexing: 100%.*?\| *(\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)<")


def _bar_seconds(stderr: str) -> float:
    """The indexing loop's own time, as the build's progress bar (tqdm) last reports it."""
    found = BAR.findall(stderr.replace("\r", "\n"))
    if not found:
        raise RuntimeError(f"no finished progress bar in: {stderr[-1000:]}")
    _, _, h, m, sec = found[-1]
    return int(h or 0) * 3600 + int(m) * 60 + int(sec)


def _run_all(cmds: list[list[str]]) -> tuple[float, list[float]]:
    """(wall seconds until every command, started together, has finished; each one's indexing
    seconds from its progress bar). Each must succeed."""
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(c, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for c in cmds
    ]
    loops = []
    for p in procs:
        _, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(p.args)} failed: {err.decode()[-2000:]}")
        loops.append(_bar_seconds(err.decode()))
    return time.perf_counter() - t0, loops


def bench_build(n: int) -> dict:
    """img/s of the indexing itself (each process's progress bar: from its first image to its
    last, the one-off ONNX export in the first batch included), and wall time with start-up."""
    from cocoattr.index_shards import part_path

    with tempfile.TemporaryDirectory(prefix="cocoattr-index-scale-") as tmp:
        root = write_coco(Path(tmp) / "data", n)
        one, two = Path(tmp) / "one.npz", Path(tmp) / "two.npz"
        wall1, (loop1,) = _run_all([_cmd(root, one)])
        log(f"build {n} images, 1 process: wall {wall1:.1f} s, indexing {loop1} s")
        wall2, loops2 = _run_all([_cmd(root, two, "--shard", f"{i}/2") for i in range(2)])
        parts = [str(part_path(two, (i, 2))) for i in range(2)]
        t0 = time.perf_counter()
        merged = subprocess.run([PY, "-m", "cocoattr", "index", "merge", *parts, "--out", str(two)], cwd=REPO,
                                env=_env(), capture_output=True, text=True, timeout=600)  # fmt: skip
        merge_s = time.perf_counter() - t0
        assert merged.returncode == 0, merged.stderr
        log(f"build {n} images, 2 processes: wall {wall2:.1f} s, indexing {loops2} s, merge {merge_s:.1f} s")
        a, b = Index.load(one), Index.load(two)
        assert a.paths == b.paths and a.records == b.records and len(a) == n
        max_diff = float(np.abs(a.probs.astype(np.float32) - b.probs.astype(np.float32)).max())
        size = one.stat().st_size
        fixed, bare = Path(tmp) / "fixed.npz", Path(tmp) / "bare.npz"
        _rows_only(Index.load(one), 0).save(fixed)
        plain = Index.load(one)
        plain.records = plain.thumbnails = None
        plain.save(bare)
        thumbs = a.thumbnails or []
        return {
            "images": n, "image_size": list(SIZE),
            "one_process": {"images_per_s": round(n / loop1, 2), "indexing_s": loop1, "wall_s": round(wall1, 2)},
            "two_processes": {"images_per_s": round(n / max(loops2), 2), "indexing_s": loops2,
                              "wall_s": round(wall2, 2), "merge_s": round(merge_s, 2)},
            "merged_equals_single": {"paths_and_records": True, "max_abs_prob_diff": max_diff},
            "fixed_bytes": fixed.stat().st_size,
            "bytes_per_1k_images": {
                "coco_index": round((size - fixed.stat().st_size) / n * 1000),
                "without_thumbnails_and_records": round((bare.stat().st_size - fixed.stat().st_size) / n * 1000),
                "thumbnails_alone": round(sum(map(len, thumbs)) / n * 1000)},
        }  # fmt: skip


def _rows_only(index: Index, n: int) -> Index:
    """The first n rows of an index (n = 0: its fixed part, the metadata and text tensors)."""
    index.paths, index.sizes, index.mtimes = index.paths[:n], index.sizes[:n], index.mtimes[:n]
    index.probs, index.embeddings = index.probs[:n], index.embeddings[:n]
    index.records = None if index.records is None else index.records[:n]
    index.thumbnails = None if index.thumbnails is None else index.thumbnails[:n]
    return index


def bench_query(sizes: list[int]) -> dict:
    from cocoattr.query import parse_query
    from cocoattr.vocab import load_vocabulary

    attributes = load_vocabulary().names
    query = parse_query("red, furry, -indoor", attributes=attributes, use_encoder=False)
    rng = np.random.default_rng(0)
    out = {}
    for n in sizes:
        r = _search_size(n, attributes, query, rng)
        out[str(n)] = {
            "attribute_ms": {"numpy (search API)": r["attribute_query_ms"]["api_numpy"],
                             "faiss (flat IP)": r["attribute_query_ms"]["faiss_flatip_logprob"]},
            "embedding_ms": {"numpy": r["embedding_query_ms"]["numpy_backend"],
                             "faiss": r["embedding_query_ms"]["faiss_backend"]},
            "memory_mb": {"probs_float16": r["attribute_memory_mb"]["probs_float16"],
                          "embeddings_float32": r["embedding_memory_mb_float32"],
                          "search_logprob_copy_float32": r["attribute_memory_mb"]["logprob_float32_each_copy"]},
        }  # fmt: skip
    return out


def rows(result: dict) -> list[str]:
    """The README's index rows."""
    lines = []
    b = result.get("build")
    if b:
        one, two, size = b["one_process"], b["two_processes"], b["bytes_per_1k_images"]
        lines.append(
            f"| index build, {b['images']} COCO-layout 640x480 JPEGs (`index build --coco`, thumbnails), "
            f"1 / 2 processes (`--shard`) | {one['images_per_s']} / {two['images_per_s']} img/s "
            f"(wall with start-up: {one['wall_s']} / {two['wall_s']} s; merge {two['merge_s']} s) |"
        )
        lines.append(
            f"| index size on disk per 1k images (COCO index / without thumbnails and records), + fixed | "
            f"{size['coco_index'] / 2**20:.1f} / {size['without_thumbnails_and_records'] / 2**20:.1f} MB "
            f"+ {b['fixed_bytes'] / 2**20:.1f} MB |"
        )
    q = result.get("query")
    if q:
        names = {5000: "5k", 118287: "118k", 1000000: "1M"}
        keys = sorted(q, key=int)
        label = " / ".join(names.get(int(k), k) for k in keys)
        cell = lambda part, m: " / ".join(f"{q[k][part][m]:.3g}" for k in keys)  # noqa: E731
        lines.append(
            f"| attribute query at {label} images, numpy (`search()`) vs FAISS flat | "
            f"{cell('attribute_ms', 'numpy (search API)')} vs {cell('attribute_ms', 'faiss (flat IP)')} ms |"
        )
        lines.append(
            f"| embedding query (by image / free text) at {label}, numpy vs FAISS flat | "
            f"{cell('embedding_ms', 'numpy')} vs {cell('embedding_ms', 'faiss')} ms |"
        )
        mem = " / ".join(
            f"{(q[k]['memory_mb']['probs_float16'] + q[k]['memory_mb']['embeddings_float32']) / 1024:.2g}"
            for k in keys
        )
        lines.append(f"| index in memory (probabilities + embeddings) at {label} | {mem} GB |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=128, help="photos to index (default 128)")
    parser.add_argument("--sizes", default="5000,118287,1000000", help="simulated index sizes to query")
    parser.add_argument("--skip", default="", help="comma list: build, query")
    parser.add_argument("--out", default=str(REPO / "bench" / "index_scale.json"))
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.is_file() else {}  # sections not re-run are kept
    result: dict = {"machine": machine(), "load_at_start": list(os.getloadavg())}
    t0 = time.perf_counter()
    if "build" not in skip:
        result["build"] = bench_build(args.images)
        result["build"]["load_during"] = list(os.getloadavg())
        log(f"build: {result['build']}")
    elif "build" in old:
        result["build"] = old["build"]
    if "query" not in skip:
        result["query"] = bench_query([int(s) for s in args.sizes.split(",")])
        result["query_load_after"] = list(os.getloadavg())
    elif "query" in old:
        result["query"], result["query_load_after"] = old["query"], old.get("query_load_after")
    result["load_at_end"] = list(os.getloadavg())
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["peak_rss_mb"] = peak_rss_mb()
    result["readme_rows"] = rows(result)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print("\n".join(result["readme_rows"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
