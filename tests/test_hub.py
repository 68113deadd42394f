"""The real Hub code path (huggingface_hub's snapshot_download / upload_folder) against a local
stand-in for the Hub on 127.0.0.1. The CLI runs in a subprocess with HF_ENDPOINT set, because
huggingface_hub reads its endpoint once, at import time."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from cocoattr.hub import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE = REPO_ROOT / "cocoattr" / "gallery" / "images" / "gradio_lion.jpg"


class FakeHub:
    """Just enough of the Hub's HTTP API for snapshot_download and upload_folder (regular uploads)."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.requests: list[str] = []
        self.lock = threading.Lock()

    def sha(self, repo: str) -> str:
        h = hashlib.sha1()
        for name, data in sorted(self.repos[repo].items()):
            h.update(name.encode() + hashlib.sha1(data).digest())
        return h.hexdigest()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

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
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)(/.*)?", path)
                if m:
                    repo = m.group(1)
                    if repo not in hub.repos:
                        return self.not_found()
                    files = hub.repos[repo]
                    if m.group(2) == "revision":
                        return self.send_json({"id": repo, "modelId": repo, "sha": hub.sha(repo), "private": False,
                                               "siblings": [{"rfilename": f} for f in sorted(files)]})  # fmt: skip
                    return self.send_json([
                        {"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                        for f, d in sorted(files.items())
                    ])  # fmt: skip
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if m:
                    repo, _, name = m.groups()
                    if repo not in hub.repos:
                        return self.not_found(head=head)
                    if name not in hub.repos[repo]:
                        return self.not_found("EntryNotFound", head=head)
                    data = hub.repos[repo][name]
                    headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": hub.sha(repo),
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
                if path == "/api/validate-yaml":  # model card metadata check before a README upload
                    return self.send_json({"errors": [], "warnings": []})
                if path == "/api/repos/create":
                    payload = json.loads(body)
                    repo = f"{payload.get('organization') or 'user'}/{payload['name']}"
                    if "/" in payload["name"]:
                        repo = payload["name"]
                    with hub.lock:
                        hub.repos.setdefault(repo, {})
                    return self.send_json({"url": f"http://{self.headers['Host']}/{repo}", "name": repo})
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/]+)", path)
                if not m or m.group(1) not in hub.repos:
                    return self.not_found()
                repo = m.group(1)
                if m.group(2) == "preupload":
                    files = json.loads(body)["files"]
                    return self.send_json({"files": [{"path": f["path"], "uploadMode": "regular",
                                                      "shouldIgnore": False} for f in files]})  # fmt: skip
                with hub.lock:
                    for line in body.splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            hub.repos[repo][item["value"]["path"]] = base64.b64decode(
                                item["value"]["content"]
                            )
                    sha = hub.sha(repo)
                host = self.headers["Host"]
                return self.send_json({"commitUrl": f"http://{host}/{repo}/commit/{sha}", "commitOid": sha})

        return Handler


@pytest.fixture(scope="module")
def checkpoint(default_checkpoint) -> Path:
    return default_checkpoint


@pytest.fixture(scope="module")
def hub(checkpoint):
    fake = FakeHub()
    files = {n: (checkpoint / n).read_bytes() for n in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)}
    fake.repos["user/good"] = dict(files)
    weights = files[WEIGHTS_NAME]
    fake.repos["user/truncated"] = {**files, WEIGHTS_NAME: weights[: len(weights) // 2]}
    config = json.loads(files[CONFIG_NAME])
    config["attributes"], config["attribute_types"] = (
        config["attributes"][:-1],
        config["attribute_types"][:-1],
    )
    fake.repos["user/mismatch"] = {**files, CONFIG_NAME: json.dumps(config).encode()}
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()


def run_cli(args: list[str], endpoint: str, home: Path, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "COCOATTR_"))}
    clean.update(HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_CACHE=str(home / "hub"),
                 HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_ETAG_TIMEOUT="5",
                 HF_HUB_DOWNLOAD_TIMEOUT="10", **env)  # fmt: skip
    return subprocess.run([sys.executable, "-m", "cocoattr", *args], capture_output=True, text=True,
                          env=clean, cwd=REPO_ROOT, timeout=300)  # fmt: skip


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("cocoattr: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def predict_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    out = json.loads(proc.stdout)
    assert len(out) == 1 and len(out[0]["attributes"]) > 100
    return out[0]["attributes"]


def test_download_then_offline_from_cache(hub, tmp_path):
    home = tmp_path / "hf"
    first = predict_json(
        run_cli(["predict", "--checkpoint", "user/good", "--json", str(IMAGE)], hub.url, home)
    )
    assert any(r.startswith("GET /user/good/resolve/") for r in hub.requests)
    snapshots = list((home / "hub" / "models--user--good" / "snapshots").iterdir())
    assert (
        len(snapshots) == 1
        and (snapshots[0] / WEIGHTS_NAME).read_bytes() == hub.repos["user/good"][WEIGHTS_NAME]
    )

    n = len(hub.requests)
    offline = run_cli(["predict", "--checkpoint", "user/good", "--json", str(IMAGE)], hub.url, home,
                      HF_HUB_OFFLINE="1")  # fmt: skip
    assert predict_json(offline) == first
    assert len(hub.requests) == n  # served from the cache: no request reached the "Hub"


def test_offline_without_cache_is_one_line_error(hub, tmp_path):
    proc = run_cli(
        ["predict", "--checkpoint", "user/good", str(IMAGE)], hub.url, tmp_path / "hf", HF_HUB_OFFLINE="1"
    )
    assert "not cached" in one_line_error(proc)


def test_unreachable_implicit_default_falls_back_to_embedded(hub, tmp_path, checkpoint):
    with_port_closed = "http://127.0.0.1:9"  # discard port: nothing listens there
    proc = run_cli(["predict", "--json", str(IMAGE)], with_port_closed, tmp_path / "hf")
    predict_json(proc)
    notices = [ln for ln in proc.stderr.splitlines() if "embedded zero-shot default" in ln]
    assert len(notices) == 1 and notices[0].startswith("cocoattr: ")
    # the implicit default repo not existing on the (reachable) Hub falls back the same way
    proc = run_cli(["predict", "--json", str(IMAGE)], hub.url, tmp_path / "hf2")
    predict_json(proc)
    assert "embedded zero-shot default" in proc.stderr


def test_explicit_unknown_repo_is_one_line_error(hub, tmp_path):
    proc = run_cli(["predict", "--checkpoint", "user/nope", str(IMAGE)], hub.url, tmp_path / "hf")
    assert "'user/nope' not found" in one_line_error(proc)


def test_truncated_weights_are_one_line_error(hub, tmp_path):
    proc = run_cli(["predict", "--checkpoint", "user/truncated", str(IMAGE)], hub.url, tmp_path / "hf")
    assert "truncated or corrupt" in one_line_error(proc)


def test_config_disagreeing_with_tensors_is_one_line_error(hub, tmp_path):
    proc = run_cli(["predict", "--checkpoint", "user/mismatch", str(IMAGE)], hub.url, tmp_path / "hf")
    assert "disagrees with model.safetensors" in one_line_error(proc)


def test_push_then_download(hub, tmp_path, checkpoint):
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder)
    proc = run_cli(["push", "--checkpoint", str(folder), "--repo", "user/pushed"], hub.url, tmp_path / "hf",
                   HF_TOKEN="hf_fake_token_for_the_local_server")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "/user/pushed/commit/" in proc.stdout
    assert hub.repos["user/pushed"][WEIGHTS_NAME] == (checkpoint / WEIGHTS_NAME).read_bytes()
    shipped = {CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, "metrics.json"} & {p.name for p in folder.iterdir()}
    assert {CONFIG_NAME, WEIGHTS_NAME, CARD_NAME} <= shipped  # metrics.json too when the checkpoint has one
    assert set(hub.repos["user/pushed"]) == shipped  # and nothing else from the folder (no recipe.txt)
    proc = run_cli(["predict", "--checkpoint", "user/pushed", "--json", str(IMAGE)], hub.url, tmp_path / "hf")
    predict_json(proc)


def test_read_metrics_prefers_metrics_json_then_the_card(tmp_path):
    from cocoattr.hub import METRICS_NAME, model_card, read_metrics

    metrics = {"gallery_mAP": 0.5223, "gallery_images": 36, "note": "text is skipped", "flag": True}
    config = {"backbone": "mobilenet_v2", "attributes": ["red", "cat"], "attribute_types": ["color", "category"],
              "image_size": 288, "heads": 8, "dim": 512, "embed_dim": 384}  # fmt: skip
    both, card_only, neither = tmp_path / "both", tmp_path / "card", tmp_path / "neither"
    for folder in (both, card_only, neither):
        folder.mkdir()
    for folder in (both, card_only):
        (folder / CARD_NAME).write_text(model_card(config, metrics), "utf-8")
    (both / METRICS_NAME).write_text(json.dumps(metrics), "utf-8")
    numeric = {"gallery_mAP": 0.5223, "gallery_images": 36}
    assert read_metrics(both) == (numeric, "metrics.json")
    assert read_metrics(card_only) == (numeric, "model card")  # a Hub download has no metrics.json
    assert read_metrics(neither) == ({}, "")
