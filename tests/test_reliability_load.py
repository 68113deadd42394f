"""Reliability under load: 20 concurrent clients on the running app's named API for a bounded time.

The app runs as its own process (`python app.py` on 127.0.0.1, embedded default model, gallery
index, COCOATTR_CONCURRENCY default 2), so its memory is measured alone: 20 gradio_client
clients in this process keep job histories of their own and once made an in-process server
look like it leaked. Each client is a thread that alternates /predict on a freshly generated
photo (a guaranteed model run: the app caches by content), /search with a query from a fixed
list, /predict on a gallery photo, and /search again.

Figures go to stdout and tests/artifacts/load.json; docs/reliability.md quotes them.
COCOATTR_LOAD_SECONDS (default 30) sets the measured duration.
"""

from __future__ import annotations

import gc
import io
import json
import os
import platform
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from gradio_client import Client, handle_file  # a missing client is a failure, not a skip
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")]

CLIENTS = 20
SECONDS = float(os.environ.get("COCOATTR_LOAD_SECONDS", "30"))
WARMUP_SECONDS = 15.0
ROOT = Path(__file__).resolve().parent.parent
MAX_RSS_GROWTH_MB = 60.0  # server only, after warm-up: observed +1 to +7 MB over 30-85 s
GALLERY = Path(__file__).resolve().parent.parent / "cocoattr" / "gallery" / "images"
QUERIES = ("furry animal", "red, -indoor", "striped^2, animal", "a cup of coffee on a table", "metal, vehicle",
           "kitty", "-person, -indoor", "wooden, furniture", "sky, outdoor", "bird^3")  # fmt: skip


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    a = np.asarray(values) * 1000
    return {"n": len(values), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p90_ms": round(float(np.percentile(a, 90)), 1), "p99_ms": round(float(np.percentile(a, 99)), 1),
            "max_ms": round(float(a.max()), 1)}  # fmt: skip


def fresh_photo(folder: Path, rng: random.Random, n: int) -> Path:
    """A small JPEG no other call has sent (so the prediction cache cannot answer it)."""
    g = np.random.default_rng(rng.getrandbits(32))
    base = Image.open(GALLERY / rng.choice(sorted(p.name for p in GALLERY.glob("*.jpg")))).convert("RGB")
    base = base.resize((224, 224))
    noise = g.integers(-20, 20, (224, 224, 3))
    img = Image.fromarray(np.clip(np.asarray(base, np.int16) + noise, 0, 255).astype(np.uint8))
    path = folder / f"fresh_{n}.jpg"
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(scope="module")
def app_process(tmp_path_factory: pytest.TempPathFactory, default_checkpoint):
    """`python app.py` as a separate process on a free 127.0.0.1 port; yields (url, pid)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = os.environ | {
        "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1",
        "COCOATTR_CHECKPOINT": "default", "COCOATTR_INDEX": str(tmp_path_factory.mktemp("load") / "index.npz"),
    }  # fmt: skip
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                Client(url, verbose=False)
                break
            except Exception:  # noqa: BLE001 - not up yet
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"app.py did not start (exit code {server.poll()})") from None
                time.sleep(1)
        yield url, server.pid
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_twenty_clients_predict_and_search(app_process, app_artifacts, tmp_path):
    url, server_pid = app_process
    clients = [Client(url, verbose=False, download_files=str(tmp_path / f"dl{i}")) for i in range(CLIENTS)]
    gallery = sorted(GALLERY.glob("*.jpg"))
    latencies: dict[str, list[float]] = {"/predict": [], "/search": []}
    errors: list[str] = []
    lock = threading.Lock()

    def call(client: Client, endpoint: str, *args) -> None:
        t0 = time.perf_counter()
        try:
            out = client.predict(*args, api_name=endpoint)
            assert out, f"{endpoint} returned nothing"
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            with lock:
                errors.append(f"{endpoint}: {type(e).__name__}: {str(e)[:200]}")
            return
        with lock:
            latencies[endpoint].append(time.perf_counter() - t0)

    def worker(i: int, stop_at: float, seed: int) -> None:
        rng = random.Random(seed)
        folder = tmp_path / f"client{i}-{seed}"
        folder.mkdir()
        n = 0
        while time.monotonic() < stop_at:
            step = n % 4
            if step == 0:
                call(clients[i], "/predict", handle_file(str(fresh_photo(folder, rng, n))), 5)
            elif step == 2:
                call(clients[i], "/predict", handle_file(str(rng.choice(gallery))), 5)
            else:
                call(clients[i], "/search", rng.choice(QUERIES), 5)
            n += 1

    def phase(seconds: float, seed: int) -> tuple[float, int]:
        stop_at = time.monotonic() + seconds
        t0 = time.perf_counter()
        threads = [
            threading.Thread(target=worker, args=(i, stop_at, seed + i), daemon=True) for i in range(CLIENTS)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=seconds + 120)  # a call in flight at stop_at may still finish
        return time.perf_counter() - t0, sum(t.is_alive() for t in threads)

    # Warm-up under the same load: torch, gradio's worker threads (each gets its own OpenMP team)
    # and the allocator reach their working set here; RSS is measured from its end.
    _, hung = phase(WARMUP_SECONDS, seed=0)
    assert not errors and not hung, errors[:10]
    latencies = {k: [] for k in latencies}
    gc.collect()
    proc = psutil.Process(server_pid)
    rss_before = proc.memory_info().rss / 2**20
    wall, hung = phase(SECONDS, seed=1000)
    for c in clients:
        c.close()
    gc.collect()
    rss_after = proc.memory_info().rss / 2**20

    calls = sum(len(v) for v in latencies.values())
    result = {
        "clients": CLIENTS, "warmup_s": WARMUP_SECONDS, "seconds": SECONDS, "wall_s": round(wall, 1), "calls": calls,
        "throughput_per_s": round(calls / wall, 2), "errors": len(errors), "hung_clients": hung,
        "overall": percentiles(latencies["/predict"] + latencies["/search"]),
        "/predict": percentiles(latencies["/predict"]), "/search": percentiles(latencies["/search"]),
        "rss_before_mb": round(rss_before, 1), "rss_after_mb": round(rss_after, 1),
        "rss_growth_mb": round(rss_after - rss_before, 1), "rss_measured": "the app.py process alone",
        "app_concurrency": int(os.environ.get("COCOATTR_CONCURRENCY", "2") or 2),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": ".venv/bin/pytest tests/test_reliability_load.py -s",
    }  # fmt: skip
    (app_artifacts / "load.json").write_text(json.dumps(result, indent=1) + "\n")
    print("\nload:", json.dumps(result, indent=1))

    assert not errors, errors[:10]
    assert hung == 0, f"{hung} clients still waiting {SECONDS + 120:.0f} s after the end"
    assert len(latencies["/predict"]) >= CLIENTS and len(latencies["/search"]) >= CLIENTS
    assert rss_after - rss_before < MAX_RSS_GROWTH_MB, result
