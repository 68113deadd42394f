"""Reliability, crashes lose nothing: SIGKILL a real CLI process at a seeded random point, run the
same command again, and the result is complete and identical to an uninterrupted run.

(a) `cocoattr index build` over 40 images (partial saves every 4 images via the
    COCOATTR_INDEX_SAVE_EVERY knob; the default is every 500);
(b) `cocoattr data download` from a slow 127.0.0.1 mirror (the rerun resumes with a Range request);
(c) training: tests/test_training_loop.py::test_kill_and_resume_matches_uninterrupted (not repeated here).

SIGKILL gives the process no chance to clean up, so what survives is only what was already
atomically on disk. Every wait below is bounded in time.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from cocoattr.data.gallery import gallery_root
from cocoattr.index import Index

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
N_IMAGES = 40
SAVE_EVERY = 4
KILL_SEEDS = (7, 2024)  # each picks a different kill point (reproducibly)


def _env(**extra: str) -> dict:
    return os.environ | {"HF_HUB_OFFLINE": "1", "COCOATTR_CHECKPOINT": "default"} | extra


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _build_killed_at(cmd: list[str], out: Path, entries: int) -> int:
    """Run an `index build` command and SIGKILL it once `out` holds `entries` saved images (or it
    ends, or 300 s pass); returns its exit code (-SIGKILL when the kill landed)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(COCOATTR_INDEX_SAVE_EVERY=str(SAVE_EVERY)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and _entries(out) < entries and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        _kill(proc)
    return proc.returncode


# ----------------------------------------------------------------------------- (a) index build


@pytest.fixture(scope="module")
def photos(tmp_path_factory, default_checkpoint) -> Path:
    """40 copies of the gallery photos under new names (the same bytes under different names is fine)."""
    root = tmp_path_factory.mktemp("crash") / "photos"
    root.mkdir()
    sources = sorted((gallery_root() / "images").glob("*.jpg"))
    for i in range(N_IMAGES):
        src = sources[i % len(sources)]
        shutil.copy(src, root / f"photo_{i:02d}_{src.name}")
    return root


def _build_cmd(photos: Path, out: Path) -> list[str]:
    return [PY, "-m", "cocoattr", "index", "build", "--images", str(photos), "--out", str(out),
            "--batch-size", "4"]  # fmt: skip


@pytest.fixture(scope="module")
def clean_index(photos: Path) -> Index:
    out = photos.parent / "clean.npz"
    proc = subprocess.run(_build_cmd(photos, out), cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    index = Index.load(out)
    assert len(index) == N_IMAGES and index.complete
    return index


def _entries(path: Path) -> int:
    """Images in the (partial) index at `path`, 0 while there is none yet."""
    try:
        return len(Index.load(path))
    except Exception:  # noqa: BLE001 - not written yet
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_killed_index_build_resumes_to_the_same_index(photos, clean_index, tmp_path, seed):
    target = random.Random(seed).randrange(SAVE_EVERY, N_IMAGES - SAVE_EVERY, SAVE_EVERY)
    out = tmp_path / "killed.npz"
    code = _build_killed_at(_build_cmd(photos, out), out, target)
    assert code == -signal.SIGKILL, "the build finished before it could be killed"

    partial = Index.load(out)  # whatever was on disk at the kill is a valid, loadable index
    assert not partial.complete and target <= len(partial) < N_IMAGES
    assert len(partial) % SAVE_EVERY == 0

    rerun = subprocess.run(_build_cmd(photos, out), cwd=ROOT, env=_env(), capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert f"{N_IMAGES - len(partial)} computed, {len(partial)} unchanged" in rerun.stderr, rerun.stderr

    final = Index.load(out)
    assert final.complete and final.paths == clean_index.paths
    np.testing.assert_array_equal(final.sizes, clean_index.sizes)
    np.testing.assert_array_equal(final.mtimes, clean_index.mtimes)
    np.testing.assert_array_equal(final.probs, clean_index.probs)  # bit-identical (same batches)
    np.testing.assert_array_equal(final.embeddings, clean_index.embeddings)
    assert final.checkpoint == clean_index.checkpoint and final.attributes == clean_index.attributes


# ----------------------------------------------------------------------------- (b) download


def _payload_zip() -> bytes:
    """A ~6 MB annotations zip in the real layout; the padding is incompressible and stored."""
    captions = {
        "images": [{"id": 1, "file_name": "000000000001.jpg", "height": 10, "width": 10}],
        "annotations": [{"image_id": 1, "id": 1, "caption": "A cat on a red sofa."}],
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("annotations/captions_val2017.json", json.dumps(captions))
        zf.writestr("annotations/padding.bin", np.random.default_rng(0).bytes(6 << 20), zipfile.ZIP_STORED)
    return buf.getvalue()


ZIP = _payload_zip()
ZIP_PATH = "/annotations/annotations_trainval2017.zip"


class SlowMirror:
    """127.0.0.1 server for one file with Range support; sends 64 KiB pieces with a pause while `slow`."""

    def __init__(self, body: bytes, path: str) -> None:
        self.body, self.path, self.slow = body, path, True
        self.requests: list[str | None] = []  # the Range header of each GET
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path != mirror.path:
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                mirror.requests.append(rng)
                total, start = len(mirror.body), 0
                if rng:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(total - start))
                self.end_headers()
                try:
                    for i in range(start, total, 64 << 10):
                        self.wfile.write(mirror.body[i : i + (64 << 10)])
                        if mirror.slow:
                            time.sleep(0.03)
                except OSError:  # the client was killed
                    self.close_connection = True

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# The CLI, with the coco-captions registry entry pointed at the test zip (the real entry pins the
# real files' sizes and md5s, which a test mirror cannot serve).
_CLI_WITH_TEST_REGISTRY = """
import sys
from cocoattr.data import download as dl
from cocoattr.data import resources
resources.RESOURCES["coco-captions"] = resources.Resource(
    "coco-captions", "test", (resources.RemoteFile(resources.COCO_BASE, "annotations/annotations_trainval2017.zip",
    size={size}, md5="{md5}"),), "coco", ("coco/annotations/captions_val2017.json",))
from cocoattr.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def mirror():
    server = SlowMirror(ZIP, ZIP_PATH)
    yield server
    server.close()


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_killed_download_resumes_with_range_and_extracts(mirror, tmp_path, seed):
    code = _CLI_WITH_TEST_REGISTRY.format(size=len(ZIP), md5=hashlib.md5(ZIP).hexdigest())
    cmd = [
        PY,
        "-c",
        code,
        "data",
        "download",
        "coco-captions",
        "--root",
        str(tmp_path),
        "--base-url",
        mirror.url,
    ]
    part = tmp_path / "downloads" / "annotations_trainval2017.zip.part"
    target = random.Random(seed).randrange(1, 5) << 20  # kill after 1-4 MiB of ~6 MiB
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if part.is_file() and part.stat().st_size >= target:
                break
            time.sleep(0.01)
    finally:
        _kill(proc)
    assert proc.returncode == -signal.SIGKILL, "the download finished before it could be killed"
    kept = part.stat().st_size
    assert target <= kept < len(ZIP)
    assert ZIP.startswith(part.read_bytes()), "what was kept is a prefix of the file"
    assert not (tmp_path / "downloads" / "annotations_trainval2017.zip").exists()
    assert not (tmp_path / "coco" / "annotations").exists()

    mirror.slow = False
    rerun = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "coco-captions: ready at" in rerun.stdout
    assert mirror.requests == [None, f"bytes={kept}-"], "the second run resumed where the first stopped"
    archive = tmp_path / "downloads" / "annotations_trainval2017.zip"
    assert archive.read_bytes() == ZIP and not part.exists()
    sidecar = archive.with_name(archive.name + ".sha256").read_text().split()[0]
    assert sidecar == hashlib.sha256(ZIP).hexdigest()
    with zipfile.ZipFile(io.BytesIO(ZIP)) as zf:
        for name in zf.namelist():
            assert (tmp_path / "coco" / name).read_bytes() == zf.read(name), name
    assert not list((tmp_path / "coco").glob(".extract-*"))
