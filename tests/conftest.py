"""Shared pytest fixtures. Each block below belongs to one area; keep them separate."""

from __future__ import annotations

import atexit
import base64
import hashlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import pytest

# ============================================================================ caches
# Graphs the tests export (of checkpoints they train and save) go to a cache of this session, not
# into the user's ~/.cache/cocoattr/onnx, where each run would leave new ones; the npm tarballs
# that `make default` fetched are shared through a link. A COCOATTR_CACHE set by the caller wins.


def _session_cache() -> None:
    if os.environ.get("COCOATTR_CACHE"):
        return
    user = Path.home() / ".cache" / "cocoattr"
    root = Path(tempfile.mkdtemp(prefix="cocoattr-test-cache-"))
    if (user / "npm").is_dir():
        (root / "npm").symlink_to(user / "npm", target_is_directory=True)
    os.environ["COCOATTR_CACHE"] = str(root)
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # removes the link, not the tarballs


_session_cache()

# ============================================================================ checkpoints
# The embedded default is built by an explicit step (`make default`, which `make test` runs
# first); tests read it and never build into the source tree. Tests that need other
# checkpoints save them under tmp_path.


@pytest.fixture(scope="session")
def default_checkpoint() -> Path:
    """checkpoints/default, which `make test` builds first; a clear failure when it is missing."""
    from cocoattr.checkpoints import default_dir
    from cocoattr.errors import UserError

    try:
        return default_dir()
    except UserError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def random_model():
    """A factory: a small AttributeModel with random weights everywhere, BatchNorm statistics
    included (so folding them is tested); `zero_features` zeroes the raw-CNN token block."""
    import torch

    from cocoattr.model import AttributeModel

    def make(zero_features: bool = False) -> AttributeModel:
        torch.manual_seed(0)
        model = AttributeModel(["red", "furry", "outdoor", "wooden"], ["color", "texture", "scene", "material"],
                               image_size=96, dim=64, heads=8, embed_dim=32)  # fmt: skip
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.05)
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
            if zero_features:
                model.token_proj.weight[:, : model.backbone.feature_channels] = 0
        return model.eval()

    return make


# ============================================================================ app fixtures
# Used by tests/test_app.py and tests/test_app_browser.py: one app server per test session,
# launched in a background thread on a free 127.0.0.1 port with the embedded default model
# and a gallery index built at start-up into a temporary file (exercising that code path).
APP_GALLERY = Path(__file__).resolve().parent.parent / "cocoattr" / "gallery" / "images"
APP_ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@dataclass
class AppServer:
    url: str
    demo: Any  # gradio.Blocks
    index_file: Path
    startup_s: float  # build_demo (model + index build) + launch, until the page is served


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_served(url: str, timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


@pytest.fixture(scope="session")
def app_predictor(default_checkpoint):
    """COCOATTR_CHECKPOINT if set, else the embedded default (no Hub attempt in tests)."""
    from cocoattr.predictor import Predictor

    return Predictor.from_checkpoint(os.environ.get("COCOATTR_CHECKPOINT") or default_checkpoint)


@pytest.fixture(scope="session")
def app_server(app_predictor, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """The app, serving on 127.0.0.1:<free port>; closed at the end of the session."""
    import app  # an import error in app.py is a failure, never a skip

    index_file = tmp_path_factory.mktemp("app-index") / "gallery-index.npz"
    t0 = time.perf_counter()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COCOATTR_INDEX", str(index_file))
        mp.delenv("COCOATTR_IMAGES", raising=False)
        demo = app.build_demo(predictor=app_predictor)
    last: Exception | None = None
    for _ in range(5):  # the free port can be taken between probing and binding: retry
        port = _free_port()
        try:
            demo.launch(
                server_name="127.0.0.1",
                server_port=port,
                prevent_thread_lock=True,
                quiet=True,
                **app.LAUNCH_KWARGS,
            )
            break
        except OSError as e:
            last = e
    else:
        raise RuntimeError(f"could not bind a port for the app: {last}")
    url = f"http://127.0.0.1:{port}/"
    _wait_served(url)
    server = AppServer(url, demo, index_file, time.perf_counter() - t0)
    try:
        yield server
    finally:
        demo.close()


@pytest.fixture(scope="session")
def app_client(app_server: AppServer, tmp_path_factory: pytest.TempPathFactory):
    """A gradio_client.Client for the session's app server (downloads into a temp folder)."""
    from gradio_client import Client

    return Client(app_server.url, verbose=False, download_files=str(tmp_path_factory.mktemp("app-downloads")))


@pytest.fixture(scope="session")
def app_bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files a user might upload by mistake: a PDF renamed .jpg, a 20000x20000 PNG (header only)."""
    root = tmp_path_factory.mktemp("app-bad-files")
    pdf = root / "report.jpg"
    pdf.write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n")

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    huge = root / "huge.png"  # a valid PNG header claiming 400 MP; never decoded
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    huge.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    return {"pdf": pdf, "huge": huge}


@pytest.fixture(scope="session")
def app_artifacts() -> Path:
    """Where browser screenshots go (tests/artifacts/, gitignored)."""
    APP_ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return APP_ARTIFACTS


os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phone-home from test servers
# ============================================================================ end of app fixtures


# ============================================================================ index fixtures
# Used by tests/test_index.py, tests/test_search.py and tests/test_cli.py: a small real index
# built through `cocoattr index build` with the embedded default, once per session.


@pytest.fixture(scope="session")
def real_index(tmp_path_factory: pytest.TempPathFactory, default_checkpoint: Path) -> tuple[Path, Path]:
    """A few gallery photos plus one broken file, indexed through the CLI with the default checkpoint."""
    from cocoattr.cli import main

    root = tmp_path_factory.mktemp("real") / "photos"
    root.mkdir()
    for name in (
        "gradio_lion.jpg",
        "skimage_coffee.jpg",
        "foolbox_imagenet_06_609_jeep.jpg",
        "sklearn_flower.jpg",
    ):
        shutil.copy(APP_GALLERY / name, root / name)
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = root.parent / "index.npz"
    code = main(
        ["index", "build", "--images", str(root), "--checkpoint", str(default_checkpoint), "--out", str(out)]
    )
    assert code == 1  # one unreadable image: reported, skipped, index still written
    return root, out


# ============================================================================ end of index fixtures


# ============================================================================ fake Hub fixtures
# Used by tests/test_hub.py (model repos) and tests/test_coco_index.py (dataset repos): the real
# huggingface_hub code paths (snapshot_download, create_repo, upload_folder) against a local
# stand-in for the Hub on 127.0.0.1. The CLI runs in a subprocess with HF_ENDPOINT set, because
# huggingface_hub reads its endpoint once, at import time.


class FakeHub:
    """Just enough of the Hub's HTTP API for snapshot_download and upload_folder (regular uploads),
    for model repos (`repos`) and dataset repos (`datasets`)."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.datasets: dict[str, dict[str, bytes]] = {}
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self.url = ""

    def store(self, kind: str | None) -> dict[str, dict[str, bytes]]:
        return self.datasets if kind in ("datasets", "dataset") else self.repos

    def sha(self, files: dict[str, bytes]) -> str:
        h = hashlib.sha1()
        for name, data in sorted(files.items()):
            h.update(name.encode() + hashlib.sha1(data).digest())
        return h.hexdigest()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        return _fake_hub_handler(self)


def _fake_hub_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:  # noqa: C901 - one small HTTP API
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
            self.send_response(status)
            for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
                self.send_header(k, v)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def send_json(self, obj, status: int = 200) -> None:
            self.send(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})

        def not_found(self, code: str = "RepoNotFound", head: bool = False) -> None:
            body = json.dumps({"error": f"{code}"}).encode()
            self.send(404, body, {"X-Error-Code": code, "X-Error-Message": code,
                                  "Content-Type": "application/json"}, head)  # fmt: skip

        def route(self, head: bool = False) -> None:
            path = unquote(urlparse(self.path).path)
            with hub.lock:
                hub.requests.append(f"{self.command} {path}")
            m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/(revision|tree)/([^/]+)(/.*)?", path)
            if m:
                kind, repo = m.group(1), m.group(2)
                if repo not in hub.store(kind):
                    return self.not_found()
                files = hub.store(kind)[repo]
                if m.group(3) == "revision":
                    return self.send_json({"id": repo, "modelId": repo, "sha": hub.sha(files), "private": False,
                                           "siblings": [{"rfilename": f} for f in sorted(files)]})  # fmt: skip
                if parse_qs(urlparse(self.path).query).get("recursive") != ["true"]:  # the top level only
                    folders = sorted({f.split("/")[0] for f in files if "/" in f})
                    top = [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest()}
                           for d in folders]  # fmt: skip
                    files = {f: d for f, d in files.items() if "/" not in f}
                else:
                    top = []
                return self.send_json(top + [  # large files are LFS on the Hub: their entry carries the sha256
                    {"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                    | ({"lfs": {"oid": hashlib.sha256(d).hexdigest(), "size": len(d), "pointerSize": 134}}
                       if f.endswith(".parquet") else {})
                    for f, d in sorted(files.items())
                ])  # fmt: skip
            m = re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m:
                store, repo, _, name = (
                    hub.store(m.group(1) and "datasets"),
                    m.group(2),
                    m.group(3),
                    m.group(4),
                )
                if repo not in store:
                    return self.not_found(head=head)
                if name not in store[repo]:
                    return self.not_found("EntryNotFound", head=head)
                data = store[repo][name]
                headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": hub.sha(store[repo]),
                           "Content-Type": "application/octet-stream"}  # fmt: skip
                return self.send(200, data, headers, head)
            self.send(404, b"", head=head)

        def do_HEAD(self) -> None:  # noqa: N802
            self.route(head=True)

        def do_GET(self) -> None:  # noqa: N802
            self.route()

        def do_POST(self) -> None:  # noqa: N802
            path = unquote(urlparse(self.path).path)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with hub.lock:
                hub.requests.append(f"POST {path}")
            if path == "/api/validate-yaml":  # card metadata check before a README upload
                return self.send_json({"errors": [], "warnings": []})
            if path == "/api/repos/create":
                payload = json.loads(body)
                repo = f"{payload.get('organization') or 'user'}/{payload['name']}"
                if "/" in payload["name"]:
                    repo = payload["name"]
                with hub.lock:
                    hub.store(payload.get("type")).setdefault(repo, {})
                return self.send_json({"url": f"http://{self.headers['Host']}/{repo}", "name": repo})
            m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/(preupload|commit)/([^/]+)", path)
            if not m or m.group(2) not in hub.store(m.group(1)):
                return self.not_found()
            files = hub.store(m.group(1))[m.group(2)]
            if m.group(3) == "preupload":
                listed = json.loads(body)["files"]
                return self.send_json({"files": [{"path": f["path"], "uploadMode": "regular",
                                                  "shouldIgnore": False} for f in listed]})  # fmt: skip
            with hub.lock:
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                sha = hub.sha(files)
            host = self.headers["Host"]
            return self.send_json({"commitUrl": f"http://{host}/{m.group(2)}/commit/{sha}", "commitOid": sha})

    return Handler


@pytest.fixture(scope="module")
def fake_hub() -> Iterator[FakeHub]:
    """An empty FakeHub serving on 127.0.0.1:<free port> (`.url`) for one test module."""
    fake = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()


def _hub_cli(args: list[str], endpoint: str, home: Path, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "COCOATTR_"))}
    clean.update(HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_CACHE=str(home / "hub"),
                 HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_ETAG_TIMEOUT="5",
                 HF_HUB_DOWNLOAD_TIMEOUT="10", **env)  # fmt: skip
    return subprocess.run([sys.executable, "-m", "cocoattr", *args], capture_output=True, text=True,
                          env=clean, cwd=Path(__file__).resolve().parent.parent, timeout=300)  # fmt: skip


@pytest.fixture(scope="session")
def hub_cli():
    """`hub_cli(args, endpoint, hf_home, **env)`: `python -m cocoattr ARGS` in a subprocess with
    HF_ENDPOINT=endpoint and a private HF cache under hf_home (no HF_/COCOATTR_ variables leak in)."""
    return _hub_cli


@pytest.fixture
def at_hub(fake_hub, tmp_path, monkeypatch):
    """huggingface_hub in this process talking to the fake Hub, with an empty private cache."""
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "ENDPOINT", fake_hub.url)
    monkeypatch.setattr(
        hc, "HUGGINGFACE_CO_URL_TEMPLATE", fake_hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(hc, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return fake_hub


# ============================================================================ end of fake Hub fixtures


# ============================================================================ download fixtures
# Used by tests/test_data_download.py and tests/test_data_download_lying.py.


@pytest.fixture
def unpinned(monkeypatch):
    """coco-attributes as it was: no recorded size or sha256 (a mirror of another pickle)."""
    from cocoattr.data import resources

    entry = resources.Resource(
        "coco-attributes",
        "test",
        (resources.RemoteFile(resources.COCOTTRIBUTES_BASE, "data/cocottributes_eccv_version.pkl"),),
        None,
        ("cocottributes/cocottributes_eccv_version.pkl",),
    )
    monkeypatch.setitem(resources.RESOURCES, "coco-attributes", entry)
    return "/data/cocottributes_eccv_version.pkl"
