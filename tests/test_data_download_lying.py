"""Downloads against a lying 127.0.0.1 server: short bodies, HTML pages sent with 200, stalls,
206 answers at the wrong offset, short resumed transfers. Nothing bad may be kept or vouched for.

Each handler misbehaves on purpose and is bounded: a stall waits at most STALL_MAX_S (and ends
as soon as the test closes the server), so no test can hang.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import stat
import threading
import time
import zipfile
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cocoattr import cli
from cocoattr.data import download as dl
from cocoattr.data import resources, verify
from cocoattr.errors import UserError

STALL_MAX_S = 10.0
PKL = pickle.dumps({"ann_vecs": {i: [0.5] * 8 for i in range(300)}, "split": {}}, protocol=4)
BLOB = bytes(range(256)) * 40  # 10240 bytes of a type without a content check (.bin)
HTML = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>gone</body></html>\n"


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("annotations/captions_val2017.json", json.dumps({"images": [], "annotations": []}))
        zf.writestr("annotations/padding.bin", bytes(range(256)) * 64)
    return buf.getvalue()


ZIP = _zip_bytes()

Handler = Callable[[BaseHTTPRequestHandler, bytes, int | None], None]


class LyingServer:
    """Serves `files` on 127.0.0.1; `behave[path]` is a list of handlers used one per request
    (the last one repeats). A handler gets the request, the body and the requested Range start."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.behave: dict[str, list[Handler]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.closing = threading.Event()
        server = self

        class RequestHandler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                plan = server.behave.get(self.path) or [honest]
                handler = plan.pop(0) if len(plan) > 1 else plan[0]
                start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else None
                try:
                    handler(self, body, start)
                except OSError:  # the client gave up
                    self.close_connection = True

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass

        self.httpd = Server(("127.0.0.1", 0), RequestHandler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stall(self) -> None:
        self.closing.wait(STALL_MAX_S)

    def close(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()


# --- behaviours -----------------------------------------------------------------------------


def honest(h, body: bytes, start: int | None) -> None:
    """Range honoured (206 with a correct Content-Range), Content-Length always right."""
    if start:
        if start >= len(body):
            h.send_response(416)
            h.send_header("Content-Range", f"bytes */{len(body)}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        h.send_response(206)
        h.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
    else:
        h.send_response(200)
        start = 0
    h.send_header("Content-Length", str(len(body) - start))
    h.send_header("Content-Type", "application/octet-stream")
    h.end_headers()
    h.wfile.write(body[start:])


def short_with_length(n: int) -> Handler:
    """200 with the full Content-Length, then only `n` bytes and a close."""

    def handler(h, body, start):
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body[:n])
        h.close_connection = True

    return handler


def short_without_length(n: int) -> Handler:
    """200 with no Content-Length (HTTP/1.0: the close ends the body) after `n` bytes; ignores Range."""

    def handler(h, body, start):
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.end_headers()
        h.wfile.write(body[:n])
        h.close_connection = True

    return handler


def html_page(content_type: str) -> Handler:
    def handler(h, body, start):
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(HTML)))
        h.end_headers()
        h.wfile.write(HTML)

    return handler


def stall_after(n: int, server_ref: list[LyingServer]) -> Handler:
    """Honest headers (Range honoured), `n` bytes of the body, then silence until the test ends."""

    def handler(h, body, start):
        start = start or 0
        if start:
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            h.send_response(200)
        h.send_header("Content-Length", str(len(body) - start))
        h.end_headers()
        h.wfile.write(body[start : start + n])
        h.wfile.flush()
        server_ref[0].stall()
        h.close_connection = True

    return handler


def partial_206(content_range: Callable[[int, int], str], send: Callable[[bytes, int], bytes]) -> Handler:
    """206 with a Content-Range made by `content_range(start, total)` and the bytes `send(body, start)`."""

    def handler(h, body, start):
        start = start or 0
        payload = send(body, start)
        h.send_response(206)
        h.send_header("Content-Range", content_range(start, len(body)))
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)
        h.close_connection = True

    return handler


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setenv("COCOATTR_FAST_RETRY", "1")
    monkeypatch.setenv(dl.TIMEOUT_ENV, "5")
    monkeypatch.delenv(dl.BASE_URL_ENV, raising=False)


@pytest.fixture
def server():
    s = LyingServer({"/data/x.pkl": PKL, "/data/x.bin": BLOB, "/data/x.zip": ZIP, "/data/x.json": b"[1, 2]"})
    yield s
    s.close()


def _nothing_kept(dest) -> None:
    assert not dest.exists(), "a bad file was kept under its real name"
    assert not dest.with_name(dest.name + ".sha256").exists(), "a bad file was vouched for"


# --- short bodies ---------------------------------------------------------------------------


def test_short_body_with_content_length_resumes_and_completes(server, tmp_path):
    server.behave["/data/x.pkl"] = [short_with_length(1000), honest]
    dest = dl.fetch(server.url + "/data/x.pkl", tmp_path / "x.pkl", retries=1)
    assert dest.read_bytes() == PKL
    assert server.requests == [("/data/x.pkl", None), ("/data/x.pkl", "bytes=1000-")]


def test_always_short_body_is_never_kept(server, tmp_path):
    server.behave["/data/x.pkl"] = [short_with_length(1000)]
    dest = tmp_path / "x.pkl"
    with pytest.raises(UserError, match=r"x\.pkl was interrupted .*closed at 1000 of \d+ bytes"):
        dl.fetch(server.url + "/data/x.pkl", dest, retries=2)
    _nothing_kept(dest)


@pytest.mark.parametrize(
    ("path", "what"), [("/data/x.pkl", "STOP opcode"), ("/data/x.zip", "not a readable zip")]
)
def test_early_close_without_length_is_not_kept(server, tmp_path, path, what):
    """No Content-Length and no recorded size: only the content check can tell it was cut short."""
    server.behave[path] = [short_without_length(len(server.files[path]) // 2)]
    dest = tmp_path / path.rsplit("/", 1)[1]
    with pytest.raises(UserError, match=f"{dest.name} was interrupted .*{what}.*did not say how long"):
        dl.fetch(server.url + path, dest, retries=1)
    _nothing_kept(dest)
    part = dest.with_name(dest.name + ".part")
    assert server.files[path].startswith(part.read_bytes()), "the prefix is kept to resume"
    # The next run resumes it from a server that honours Range.
    server.behave[path] = [honest]
    assert dl.fetch(server.url + path, dest).read_bytes() == server.files[path]
    assert server.requests[-1] == (path, f"bytes={len(server.files[path]) // 2}-")


def test_cli_truncated_pickle_exits_non_zero_with_one_line(server, unpinned, tmp_path, capsys):
    server.files[unpinned] = PKL
    server.behave[unpinned] = [short_without_length(2000)]
    code = cli.main(
        ["data", "download", "coco-attributes", "--root", str(tmp_path), "--base-url", server.url]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{server.url}{unpinned} was interrupted" in err and "STOP opcode" in err
    _nothing_kept(tmp_path / "cocottributes" / "cocottributes_eccv_version.pkl")


# --- HTML instead of the file ----------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "application/octet-stream"])
def test_html_page_served_with_200_is_refused(server, unpinned, tmp_path, capsys, content_type):
    server.files[unpinned] = PKL
    server.behave[unpinned] = [html_page(content_type)]
    code = cli.main(
        ["data", "download", "coco-attributes", "--root", str(tmp_path), "--base-url", server.url]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"{server.url}{unpinned}: the server sent an HTML page" in err
    dest = tmp_path / "cocottributes" / "cocottributes_eccv_version.pkl"
    _nothing_kept(dest)
    assert not dest.with_name(dest.name + ".part").exists()
    # Fixed server: the rerun fetches the real file (nothing bad was left to skip).
    server.behave[unpinned] = [honest]
    assert (
        cli.main(["data", "download", "coco-attributes", "--root", str(tmp_path), "--base-url", server.url])
        == 0
    )
    assert dest.read_bytes() == PKL and dl.verify_sidecar(dest)


def test_html_content_type_on_resume_keeps_the_part(server, tmp_path):
    part = tmp_path / "x.pkl.part"
    part.write_bytes(PKL[:1000])
    server.behave["/data/x.pkl"] = [html_page("text/html")]
    with pytest.raises(UserError, match=r"x\.pkl: the server sent an HTML page \(Content-Type: text/html\)"):
        dl.fetch(server.url + "/data/x.pkl", tmp_path / "x.pkl")
    assert part.read_bytes() == PKL[:1000]
    _nothing_kept(tmp_path / "x.pkl")


def test_bad_file_kept_by_an_older_version_is_fetched_again(server, unpinned, tmp_path):
    """The old code saved the HTML page and wrote its sidecar; reruns must not skip it forever."""
    server.files[unpinned] = PKL
    dest = tmp_path / "cocottributes" / "cocottributes_eccv_version.pkl"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(HTML)
    dest.with_name(dest.name + ".sha256").write_text(f"{'0' * 64}  {dest.name}\n")
    dl.download("coco-attributes", tmp_path, base_url=server.url)
    assert dest.read_bytes() == PKL and dl.verify_sidecar(dest)
    assert server.requests == [(unpinned, None)]


def test_recorded_sha256_mismatch_is_refused_without_a_sidecar(server, tmp_path):
    with pytest.raises(UserError, match=r"x\.bin: checksum mismatch \(sha256 [0-9a-f]{64}, expected f+\)"):
        dl.fetch(server.url + "/data/x.bin", tmp_path / "x.bin", sha256="f" * 64)
    assert list(tmp_path.iterdir()) == []


def test_stale_sidecar_against_the_recorded_sha256_is_fetched_again(server, tmp_path):
    dest = tmp_path / "x.bin"
    dest.write_bytes(BLOB[:-1] + b"!")
    dest.with_name("x.bin.sha256").write_text(f"{'0' * 64}  x.bin\n")
    sha = hashlib.sha256(BLOB).hexdigest()
    dl.fetch(server.url + "/data/x.bin", dest, size=len(BLOB), sha256=sha)
    assert dest.read_bytes() == BLOB and dl.verify_sidecar(dest)


def test_complete_file_is_skipped_and_a_wrong_one_fetched_again(server, tmp_path):
    dest = tmp_path / "x.bin"
    dest.write_bytes(BLOB)  # no sidecar: the recorded size vouches for it
    assert dl.fetch(server.url + "/data/x.bin", dest, size=len(BLOB)) == dest
    assert server.requests == []
    dest.write_bytes(BLOB[:-1])  # the wrong size, even with a sidecar
    dest.with_name("x.bin.sha256").write_text(f"{hashlib.sha256(BLOB[:-1]).hexdigest()}  x.bin\n")
    dl.fetch(server.url + "/data/x.bin", dest, size=len(BLOB))
    assert dest.read_bytes() == BLOB and dl.verify_sidecar(dest) and len(server.requests) == 1
    other = tmp_path / "y.bin"
    other.write_bytes(BLOB[:-1])  # unknown size and no sidecar: nothing vouches for it
    dl.fetch(server.url + "/data/x.bin", other)
    assert other.read_bytes() == BLOB and len(server.requests) == 2


# --- stalls ----------------------------------------------------------------------------------


def test_stall_keeps_the_bytes_and_resumes_with_range(server, tmp_path, monkeypatch):
    monkeypatch.setenv(dl.TIMEOUT_ENV, "0.5")
    server.behave["/data/x.pkl"] = [stall_after(3000, [server]), honest]
    t0 = time.monotonic()
    dest = dl.fetch(server.url + "/data/x.pkl", tmp_path / "x.pkl", retries=1)
    assert time.monotonic() - t0 < 4.0, "a stall must cost the timeout, not minutes"
    assert dest.read_bytes() == PKL
    assert server.requests == [("/data/x.pkl", None), ("/data/x.pkl", "bytes=3000-")]


def test_stall_every_time_gives_up_keeping_the_bytes(server, tmp_path, monkeypatch):
    monkeypatch.setenv(dl.TIMEOUT_ENV, "0.3")
    server.behave["/data/x.bin"] = [stall_after(1000, [server])]
    dest = tmp_path / "x.bin"
    with pytest.raises(UserError, match=r"interrupted after 3000 bytes \(no data for 0\.3 s\); run the same"):
        dl.fetch(server.url + "/data/x.bin", dest, retries=2)
    assert (tmp_path / "x.bin.part").read_bytes() == BLOB[:3000]
    assert [r for _, r in server.requests] == [None, "bytes=1000-", "bytes=2000-"]
    _nothing_kept(dest)


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan", "inf"])
def test_bad_timeout_env_is_one_clear_error(tmp_path, monkeypatch, value):
    monkeypatch.setenv(dl.TIMEOUT_ENV, value)
    with pytest.raises(UserError, match=f"{dl.TIMEOUT_ENV}=.* must be a positive number of seconds"):
        dl.download_all(["coco-attributes"], tmp_path, None)


# --- Range answers ---------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [lambda s: 0, lambda s: s - 1, lambda s: s + 1, lambda s: s + 500])
def test_206_at_another_offset_is_never_appended(server, tmp_path, offset):
    part = tmp_path / "x.bin.part"
    part.write_bytes(BLOB[:1000])
    wrong = partial_206(lambda s, t: f"bytes {offset(s)}-{t - 1}/{t}", lambda b, s: b[offset(s) :])
    server.behave["/data/x.bin"] = [wrong, honest]
    dest = dl.fetch(server.url + "/data/x.bin", tmp_path / "x.bin", retries=1)
    assert dest.read_bytes() == BLOB
    assert [r for _, r in server.requests] == ["bytes=1000-", None], "refused, then restarted from zero"


@pytest.mark.parametrize(
    "header", ["", "bytes 1000-/10240", "items 1000-10239/10240", "bytes 1000-999/10240"]
)
def test_206_without_a_usable_content_range_is_refused(server, tmp_path, header):
    (tmp_path / "x.bin.part").write_bytes(BLOB[:1000])
    server.behave["/data/x.bin"] = [partial_206(lambda s, t: header, lambda b, s: b[s:]), honest]
    assert dl.fetch(server.url + "/data/x.bin", tmp_path / "x.bin", retries=1).read_bytes() == BLOB
    assert [r for _, r in server.requests] == ["bytes=1000-", None]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    (tmp_path / "x.bin.part").write_bytes(b"\xff" * 1000)  # would corrupt the file if appended to
    server.behave["/data/x.bin"] = [short_with_length(len(BLOB))]  # a plain 200, whatever was asked
    assert dl.fetch(server.url + "/data/x.bin", tmp_path / "x.bin").read_bytes() == BLOB
    assert [r for _, r in server.requests] == ["bytes=1000-"]


@pytest.mark.parametrize("total", ["10240", "*"])
def test_short_resumed_transfer_is_not_complete(server, tmp_path, total):
    part = tmp_path / "x.bin.part"
    part.write_bytes(BLOB[:1000])
    # Content-Range promises up to the end, Content-Length matches the bytes actually sent.
    short = partial_206(lambda s, t: f"bytes {s}-{t - 1}/{total}", lambda b, s: b[s:4000])
    server.behave["/data/x.bin"] = [short]
    dest = tmp_path / "x.bin"
    with pytest.raises(UserError, match=r"interrupted after 4000 bytes \(connection closed at 4000 of 10240"):
        dl.fetch(server.url + "/data/x.bin", dest, retries=0)
    _nothing_kept(dest)
    assert part.read_bytes() == BLOB[:4000], "the resumed bytes are kept for the next try"
    server.behave["/data/x.bin"] = [honest]
    assert dl.fetch(server.url + "/data/x.bin", dest).read_bytes() == BLOB
    assert server.requests[-1] == ("/data/x.bin", "bytes=4000-")


def test_complete_part_of_unknown_size_is_committed_on_416(server, tmp_path):
    (tmp_path / "x.pkl.part").write_bytes(PKL)
    dest = dl.fetch(server.url + "/data/x.pkl", tmp_path / "x.pkl")
    assert dest.read_bytes() == PKL and server.requests == [("/data/x.pkl", f"bytes={len(PKL)}-")]


def test_more_bytes_than_announced_is_refused(server, tmp_path):
    server.behave["/data/x.bin"] = [short_without_length(len(BLOB))]
    with pytest.raises(UserError, match="sent 10240 bytes, more than it announced; removed"):
        dl.fetch(server.url + "/data/x.bin", tmp_path / "x.bin", size=100)
    assert list(tmp_path.iterdir()) == []


# --- arguments, permissions, registry --------------------------------------------------------


def test_root_that_is_a_file_is_one_line_exit_2_before_any_request(server, tmp_path, capsys):
    root = tmp_path / "not-a-folder"
    root.write_text("x")
    code = cli.main(["data", "download", "coco-attributes", "--root", str(root), "--base-url", server.url])
    err = capsys.readouterr().err.strip()
    assert (
        code == 2
        and err == f"cocoattr: error: --root {root} is a file, not a folder; give the folder to download into"
    )
    assert server.requests == []
    with pytest.raises(UserError, match=r"below: cannot create the folder \(Not a directory\)"):
        dl.download_all(["coco-attributes"], root / "below", server.url)
    assert server.requests == []


def test_download_all_checks_every_name_first(server, tmp_path):
    with pytest.raises(UserError, match="unknown data resource 'nope'"):
        dl.download_all(["coco-attributes", "nope"], tmp_path, server.url)
    assert server.requests == [] and list(tmp_path.iterdir()) == []


def test_files_get_the_users_umask(server, tmp_path):
    old = os.umask(0o027)
    try:
        part = tmp_path / "x.pkl.part"
        part.write_bytes(PKL[:1000])
        os.chmod(part, 0o600)  # as a mkstemp-made or older .part might be
        dest = dl.fetch(server.url + "/data/x.pkl", tmp_path / "x.pkl")
    finally:
        os.umask(old)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "x.pkl.sha256").stat().st_mode) == 0o640


def test_registry_records_sha256_and_sizes_for_every_file():
    files = {f.filename: f for r in resources.RESOURCES.values() for f in r.files}
    assert all(f.sha256 is not None and len(f.sha256) == 64 for f in files.values())
    assert files["val2014.zip"].size == 6645013297 and files["train2014.zip"].size == 13510573713
    assert files["cocottributes_eccv_version.pkl"].size == 1261766525


def test_real_registry_refuses_a_lying_mirror_for_the_pickle(server, tmp_path):
    server.files["/data/cocottributes_eccv_version.pkl"] = HTML
    with pytest.raises(UserError, match="known to be 1261766525 bytes"):
        dl.download("coco-attributes", tmp_path, base_url=server.url)
    assert not list((tmp_path / "cocottributes").iterdir())


# --- content checks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "what", "truncated"),
    [
        ("a.zip", ZIP[: len(ZIP) - 30], "not a readable zip", True),
        ("a.zip", b"\n  <html><body>502</body></html>", "HTML page", False),
        ("a.zip", b"GIF89a" + bytes(100), "not a zip file", False),
        ("a.pkl", pickle.dumps({"a": 1}, protocol=0), "not a pickle", False),
        ("a.pkl", PKL[:-1], "STOP opcode", True),
        ("a.pkl", b"\xef\xbb\xbf<!doctype html><p>", "HTML page", False),
        ("a.json", b'{"images": [', "not valid JSON", True),
        ("a.json", b"<!DOCTYPE html>", "HTML page", False),
        ("a.json", b"{} trailing", "not valid JSON", False),
        ("a.bin", b"", "empty", True),
    ],
)
def test_content_check_by_type(tmp_path, name, data, what, truncated):
    path = tmp_path / (name + ".part")
    path.write_bytes(data)
    problem = verify.check_content(path)
    assert problem is not None and what in problem.what and problem.maybe_truncated == truncated


@pytest.mark.parametrize(
    ("name", "data"),
    [("a.zip", ZIP), ("a.pkl", PKL), ("a.pkl", pickle.dumps([1], protocol=2)), ("a.json", b" [1]")],
)
def test_content_check_passes_good_files(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    assert verify.check_content(tmp_path / name) is None
