"""cocoattr.data.download where mutation testing (tests/mutation.py download) found the other
download tests blind: the progress bar a terminal shows, the messages each failure ends in, the
retry back-off, what `download` passes on (checksums, retries, the Hub branch), and COCONut's
`fetch_hub_dataset` called in this process against the fake Hub (its CLI tests run in
subprocesses, which mutmut cannot see)."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from cocoattr.data import download as dl
from cocoattr.data import resources
from cocoattr.errors import UserError

BODY = bytes(range(256)) * 12  # 3 KiB of a `.bin` (no content check applies to it)


class Server:
    """127.0.0.1 HTTP server whose answers a test scripts: `answer(handler, start)` per request;
    it records each request's Range and User-Agent headers."""

    def __init__(self, answer) -> None:
        self.answer, self.seen = answer, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                rng = self.headers.get("Range")
                server.seen.append((rng, self.headers.get("User-Agent")))
                server.answer(self, int(rng.removeprefix("bytes=").rstrip("-")) if rng else 0)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data/x.bin"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def honest(h: BaseHTTPRequestHandler, start: int) -> None:
    body = BODY[start:]
    h.send_response(206 if start else 200)
    if start:
        h.send_header("Content-Range", f"bytes {start}-{len(BODY) - 1}/{len(BODY)}")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def refused_range(content_range: str | None):
    def answer(h: BaseHTTPRequestHandler, start: int) -> None:
        h.send_response(416)
        if content_range is not None:
            h.send_header("Content-Range", content_range)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return answer


def cut(n: int):
    """Announces the whole file, sends `n` bytes, closes."""

    def answer(h: BaseHTTPRequestHandler, start: int) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(BODY)))
        h.end_headers()
        h.wfile.write(BODY[:n])
        h.wfile.flush()
        h.close_connection = True

    return answer


def short_without_length(n: int):
    def answer(h: BaseHTTPRequestHandler, start: int) -> None:
        h.send_response(200)
        h.end_headers()
        h.wfile.write(BODY[:n])
        h.wfile.flush()
        h.close_connection = True

    return answer


@pytest.fixture
def serve():
    servers: list[Server] = []

    def start(answer=honest) -> Server:
        servers.append(Server(answer))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setenv("COCOATTR_FAST_RETRY", "1")
    monkeypatch.setenv(dl.TIMEOUT_ENV, "5")
    monkeypatch.delenv(dl.BASE_URL_ENV, raising=False)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal(monkeypatch):
    """`terminal()` makes stderr a terminal, where tqdm draws its bar (it stays silent on a
    pipe). Called in the test body: pytest puts its own capture back after fixtures run."""

    def attach() -> Terminal:
        out = Terminal()
        monkeypatch.setattr("sys.stderr", out)
        return out

    return attach


# --- the progress bar ---------------------------------------------------------------------


def test_the_bar_counts_bytes_from_the_resumed_offset(terminal, monkeypatch):
    term = terminal()
    bar = dl._progress_bar("x.bin", 4096, 1024, True)
    assert (bar.total, bar.n, bar.desc) == (4096, 1024, "x.bin")
    assert (bar.unit, bar.unit_scale, bar.unit_divisor) == ("B", True, 1024)
    bar.update(1024)
    assert str(bar).startswith("x.bin:  50%") and "2.00k/4.00k" in str(bar)  # 1024-byte k
    bar.close()
    assert term.getvalue().split("\r")[-1].startswith("x.bin:  50%")  # drawn on stderr
    assert dl._progress_bar("x.bin", 10, 0, False).disable is True  # progress=False: never drawn
    pipe = io.StringIO()  # not a terminal: asked for, yet silent
    monkeypatch.setattr("sys.stderr", pipe)
    with dl._progress_bar("x.bin", 10, 0, True) as quiet:
        quiet.update(10)
    assert pipe.getvalue() == ""


def test_fetch_draws_the_file_name_size_and_resumed_offset_on_a_terminal(serve, terminal, tmp_path):
    term = terminal()
    server = serve()
    dest = tmp_path / "x.bin"
    dest.with_name("x.bin.part").write_bytes(BODY[:1024])
    dl.fetch(server.url, dest)
    assert dest.read_bytes() == BODY
    final = term.getvalue().split("\r")[-1]
    assert final.startswith("x.bin: 100%") and "3.00k/3.00k [" in final and "B/s]" in final, final
    assert server.seen == [("bytes=1024-", "cocoattr-data/1")]  # it says who it is, and resumes
    term.seek(0)
    term.truncate(0)
    dest.unlink()
    dl.fetch(server.url, dest, progress=False)
    assert dest.read_bytes() == BODY and term.getvalue() == ""


# --- what each failure says ---------------------------------------------------------------


def test_a_server_that_always_refuses_the_range_is_given_up_with_its_reason(serve, tmp_path):
    server = serve(refused_range("bytes */999999"))
    dest = tmp_path / "x.bin"
    dest.with_name("x.bin.part").write_bytes(BODY[:10])
    with pytest.raises(UserError) as e:
        dl.fetch(server.url, dest, retries=1)
    assert str(e.value) == (
        f"download of {server.url} was interrupted after 0 bytes (server refused the resume range; "
        f"restarting); run the same command again to resume from {dest}.part"
    )
    assert [r for r, _ in server.seen] == ["bytes=10-", None]  # the bad part removed, then from zero


@pytest.mark.parametrize("content_range", [None, "bytes */*"])
def test_a_416_without_a_stated_size_is_never_taken_as_complete(serve, tmp_path, content_range):
    server = serve(refused_range(content_range))
    part = tmp_path / "x.bin.part"
    part.write_bytes(BODY[:10])
    with pytest.raises(dl._Interrupted, match="server refused the resume range"):
        dl._stream(server.url, part, None, False, 5.0)
    assert not part.exists()


def test_a_416_when_the_part_has_the_recorded_size_is_complete(serve, tmp_path):
    """The recorded size decides, not what the server states."""
    server = serve(refused_range("bytes */999999"))
    part = tmp_path / "x.bin.part"
    part.write_bytes(BODY)
    assert dl._stream(server.url, part, len(BODY), False, 5.0) == len(BODY)
    assert part.read_bytes() == BODY


def test_a_416_to_a_fresh_request_removes_nothing_and_retries(serve, tmp_path):
    server = serve(refused_range("bytes */3072"))
    part = tmp_path / "x.bin.part"
    with pytest.raises(dl._Interrupted, match="server refused the resume range"):
        dl._stream(server.url, part, None, False, 5.0)
    assert server.seen == [(None, "cocoattr-data/1")] and not part.exists()


def test_a_part_longer_than_the_file_starts_over_from_zero(serve, tmp_path):
    server = serve()
    dest = tmp_path / "x.bin"
    dest.with_name("x.bin.part").write_bytes(b"garbage" * 1000)  # 7000 bytes of another file
    dl.fetch(server.url, dest, size=len(BODY))
    assert dest.read_bytes() == BODY and [r for r, _ in server.seen] == [None]


def test_a_part_longer_than_the_file_is_gone_even_if_the_server_answers_206(serve, tmp_path):
    def always_206(h: BaseHTTPRequestHandler, start: int) -> None:
        h.send_response(206)
        h.send_header("Content-Range", f"bytes {start}-{len(BODY) - 1}/{len(BODY)}")
        h.send_header("Content-Length", str(len(BODY) - start))
        h.end_headers()
        h.wfile.write(BODY[start:])

    server = serve(always_206)
    dest = tmp_path / "x.bin"
    dest.with_name("x.bin.part").write_bytes(b"garbage" * 1000)
    dl.fetch(server.url, dest, size=len(BODY), retries=0)
    assert dest.read_bytes() == BODY


def test_a_cut_without_length_names_the_recorded_size(serve, tmp_path):
    server = serve(short_without_length(100))
    dest = tmp_path / "x.bin"
    with pytest.raises(
        UserError, match=r"interrupted after 100 bytes \(connection closed at 100 of 3072 bytes\)"
    ):
        dl.fetch(server.url, dest, size=len(BODY), retries=0)


def test_a_resume_carrying_only_part_of_the_rest_is_not_complete(serve, tmp_path):
    """`bytes 10-19/3072`: the server sends ten bytes and says the file is longer."""

    def ten(h: BaseHTTPRequestHandler, start: int) -> None:
        h.send_response(206)
        h.send_header("Content-Range", f"bytes {start}-{start + 9}/{len(BODY)}")
        h.send_header("Content-Length", "10")
        h.end_headers()
        h.wfile.write(BODY[start : start + 10])

    server = serve(ten)
    part = tmp_path / "x.bin.part"
    part.write_bytes(BODY[:10])
    with pytest.raises(dl._Interrupted, match="connection closed at 20 of 20 bytes"):
        dl._stream(server.url, part, None, False, 5.0)
    assert part.read_bytes() == BODY[:20]  # what arrived is kept for the next attempt


def test_a_206_to_a_request_without_range_at_another_offset_restarts(tmp_path):
    part = tmp_path / "x.bin.part"  # nothing downloaded yet: nothing to remove
    msg = SimpleNamespace(headers={"Content-Range": "bytes 5-9/10"})
    with pytest.raises(dl._Interrupted, match="wrong offset"):
        dl._resumed_range(msg, part, 0)
    assert not part.exists()


def test_html_and_other_size_messages_are_exact(serve, tmp_path):
    def html(h: BaseHTTPRequestHandler, start: int) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        h.send_header("Content-Length", "6")
        h.end_headers()
        h.wfile.write(b"<html>")

    server = serve(html)
    server.url = server.url.replace("x.bin", "x.zip")  # a name that can never be text
    with pytest.raises(UserError) as e:
        dl.fetch(server.url, tmp_path / "x.zip")
    assert str(e.value) == (
        f"{server.url}: the server sent an HTML page (Content-Type: text/html), not the file — "
        "check the URL or pass --base-url"
    )
    other = serve()
    with pytest.raises(UserError) as e:
        dl.fetch(other.url, tmp_path / "y.bin", size=5)
    assert str(e.value) == (
        f"{other.url}: server reports 3072 bytes but this file is known to be 5 bytes — "
        "the mirror serves a different file"
    )


def test_a_checksum_mismatch_names_the_url(serve, tmp_path):
    server = serve()
    with pytest.raises(UserError, match=rf"checksum mismatch \(md5 .*, expected 00\) for {server.url};"):
        dl.fetch(server.url, tmp_path / "x.bin", md5="00")


def test_a_server_that_never_answers_is_interrupted_after_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(dl.TIMEOUT_ENV, "0.2")
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/x.bin"
        with pytest.raises(UserError) as e:
            dl.fetch(url, tmp_path / "x.bin", retries=0)
    assert str(e.value) == (
        f"download of {url} was interrupted after 0 bytes (no answer for 0.2 s); "
        f"run the same command again to resume from {tmp_path / 'x.bin.part'}"
    )


def test_a_server_that_closes_without_answering_names_the_reason(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as rude:
        url = f"http://127.0.0.1:{rude.getsockname()[1]}/x.bin"

        def hang_up() -> None:
            conn, _ = rude.accept()
            conn.recv(1024)
            conn.close()

        threading.Thread(target=hang_up, daemon=True).start()
        with pytest.raises(UserError) as e:
            dl.fetch(url, tmp_path / "x.bin", retries=0)
    assert str(e.value).startswith(
        "could not reach 127.0.0.1: Remote end closed connection without response — check your connection"
    )


def test_a_refused_connection_names_the_os_reason(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]  # closed again: nobody listens there
    with pytest.raises(UserError) as e:
        dl.fetch(f"http://127.0.0.1:{port}/x.bin", tmp_path / "x.bin")
    assert str(e.value).startswith("could not reach 127.0.0.1: [Errno 111] Connection refused — ")


class Chunks:
    def __init__(self, *chunks: bytes | Exception) -> None:
        self.chunks = list(chunks)

    def read1(self, n: int) -> bytes:
        item = self.chunks.pop(0) if self.chunks else b""
        if isinstance(item, Exception):
            raise item
        return item


def test_copy_reports_write_and_read_failures_in_one_line(tmp_path, terminal):
    term = terminal()
    with pytest.raises(UserError) as e:
        dl._copy(Chunks(b"x" * (2 << 20)), dl.Path("/dev/full"), "ab", 0, None, False, 5.0)
    assert str(e.value) == "could not write /dev/full: No space left on device"
    with pytest.raises(UserError) as e:
        dl._copy(Chunks(b"x"), tmp_path, "ab", 0, None, False, 5.0)  # a folder, not a file
    assert str(e.value) == f"could not write {tmp_path}: Is a directory"
    with pytest.raises(dl._Interrupted) as e:
        dl._copy(
            Chunks(b"abc", ConnectionResetError("reset by peer")), tmp_path / "y.part", "wb", 0, 9, True, 5.0
        )
    assert str(e.value) == "ConnectionResetError: reset by peer"
    assert (tmp_path / "y.part").read_bytes() == b"abc"
    assert term.getvalue().split("\r")[-1].startswith("y:  33%")  # the bar saw the 3 bytes


def test_content_check_of_a_file_whose_size_was_known_removes_it(tmp_path):
    part = tmp_path / "x.pkl.part"
    part.write_bytes(b"\x80\x04not a whole pickle")  # no STOP opcode, yet the server's size was met
    with pytest.raises(UserError, match="STOP opcode.*removed the download"):
        dl._check_content("http://h/x.pkl", part, resumable=False)
    assert not part.exists()


def test_fetch_makes_the_nested_folders_and_refuses_a_folder_in_the_way(serve, tmp_path):
    server = serve()
    deep = tmp_path / "a" / "b" / "c" / "x.bin"
    assert dl.fetch(server.url, deep) == deep and deep.read_bytes() == BODY
    (tmp_path / "d.bin").mkdir()
    with pytest.raises(UserError) as e:
        dl.fetch(server.url, tmp_path / "d.bin")
    assert (
        str(e.value)
        == f"{tmp_path / 'd.bin'} exists and is not a file; move it away and run the command again"
    )
    with pytest.raises(UserError) as e:
        dl.fetch(server.url, deep / "under-a-file.bin")
    assert str(e.value) == f"cannot create the folder {deep}: File exists"


# --- retries ------------------------------------------------------------------------------


def test_retries_back_off_exponentially_to_30_s(serve, tmp_path, monkeypatch):
    monkeypatch.delenv("COCOATTR_FAST_RETRY")
    waits: list[float] = []
    monkeypatch.setattr(dl.time, "sleep", waits.append)
    server = serve(short_without_length(10))
    with pytest.raises(UserError, match="interrupted"):
        dl.fetch(server.url, tmp_path / "x.bin", size=len(BODY), retries=6)
    assert waits == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0] and len(server.seen) == 7
    monkeypatch.setenv("COCOATTR_FAST_RETRY", "1")
    waits.clear()
    with pytest.raises(UserError, match="interrupted"):
        dl.fetch(server.url, tmp_path / "y.bin", size=len(BODY))  # the default: 3 retries
    assert waits == [0.0, 0.0, 0.0] and len(server.seen) == 11


@pytest.fixture
def plain_resource(monkeypatch, serve):
    """A registry entry for the test server's file (no extraction), and one for a zip of it."""
    server = serve()
    base = server.url.removesuffix("/data/x.bin")

    def entry(md5: str | None = None, sha256: str | None = None, extract: bool = False) -> None:
        f = resources.RemoteFile(resources.COCOTTRIBUTES_BASE, "data/x.bin", md5=md5, sha256=sha256)
        res = resources.Resource(
            "coco-attributes", "test", (f,), "out" if extract else None, ("files/x.bin",)
        )
        monkeypatch.setitem(resources.RESOURCES, "coco-attributes", res)

    return server, base, entry


@pytest.mark.parametrize("extract", [False, True])
def test_download_passes_the_recorded_checksums_and_retries_on(plain_resource, tmp_path, extract):
    server, base, entry = plain_resource
    for wrong in ({"md5": "0" * 32}, {"sha256": "0" * 64}):
        entry(**wrong, extract=extract)
        with pytest.raises(UserError, match=f"checksum mismatch \\({next(iter(wrong))} "):
            dl.download("coco-attributes", tmp_path, base)
    server.answer = cut(10)
    entry(extract=extract)
    n = len(server.seen)
    with pytest.raises(UserError, match="interrupted"):
        dl.download("coco-attributes", tmp_path / "r", base, retries=1)
    assert len(server.seen) - n == 2  # the retries asked for, not fetch's default


def test_download_retries_three_times_by_default(plain_resource, tmp_path):
    server, base, entry = plain_resource
    server.answer = cut(10)
    entry()
    with pytest.raises(UserError, match="interrupted"):
        dl.download("coco-attributes", tmp_path, base)
    assert len(server.seen) == 4


# --- small pieces -------------------------------------------------------------------------


def test_base_urls_for_https_and_file_mirrors_are_accepted():
    assert dl.resolve_base_url(" https://mirror.example/coco ") == "https://mirror.example/coco"
    assert dl.resolve_base_url("file:///srv/coco") == "file:///srv/coco"


def test_an_unknown_resource_lists_the_known_ones():
    with pytest.raises(UserError) as e:
        dl.download("nope", dl.Path("/nonexistent"))
    assert str(e.value) == f"unknown data resource 'nope'; choose from {', '.join(resources.RESOURCES)}"


def test_verify_sidecar_without_a_sidecar_is_false(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(BODY)
    assert dl.verify_sidecar(f) is False
    f.with_name("x.bin.sha256").write_text(f"{hashlib.sha256(BODY).hexdigest()}  x.bin\n")
    assert dl.verify_sidecar(f) is True


# --- COCONut's Hub datasets, in this process ----------------------------------------------

COCONUT_VAL = "xdeng77/relabeled_coco_val"
PARQUET = b"PAR1" + bytes(range(200)) + b"PAR1"


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    """What `fetch_hub_dataset` asks `fetch` for (the real fetch still runs)."""
    seen: list[dict] = []
    real = dl.fetch

    def recording(url, dest, **kw):
        seen.append({"url": url, "dest": dest, **kw})
        return real(url, dest, **kw)

    monkeypatch.setattr(dl, "fetch", recording)
    return seen


def test_download_fetches_the_listed_parquet_and_card_at_one_commit(at_hub, tmp_path, calls):
    files = {"data/val-0.parquet": PARQUET, "data/val-1.parquet": PARQUET[::-1], "README.md": b"card",
             "extra/notes.txt": b"not asked for"}  # fmt: skip
    at_hub.datasets[COCONUT_VAL] = files
    out = dl.download("coconut-val", tmp_path)
    assert out == tmp_path / "coconut" / "relabeled_coco_val"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "README.md", "README.md.sha256", "data/val-0.parquet", "data/val-0.parquet.sha256",
        "data/val-1.parquet", "data/val-1.parquet.sha256",
    ]  # fmt: skip
    assert (out / "data/val-1.parquet").read_bytes() == PARQUET[::-1]
    commit = at_hub.sha(files)
    assert {c["dest"].name: (c["url"], c["size"], c["sha256"], c["retries"]) for c in calls} == {
        "README.md": (f"{at_hub.url}/datasets/{COCONUT_VAL}/resolve/{commit}/README.md", 4, None, 3),
        "val-0.parquet": (f"{at_hub.url}/datasets/{COCONUT_VAL}/resolve/{commit}/data/val-0.parquet",
                          len(PARQUET), hashlib.sha256(PARQUET).hexdigest(), 3),
        "val-1.parquet": (f"{at_hub.url}/datasets/{COCONUT_VAL}/resolve/{commit}/data/val-1.parquet",
                          len(PARQUET), hashlib.sha256(PARQUET[::-1]).hexdigest(), 3),
    }  # fmt: skip
    calls.clear()
    hub = resources.RESOURCES["coconut-val"].hub
    assert dl.fetch_hub_dataset(hub, out, retries=1) == out  # done: every file verified, kept
    assert {c["retries"] for c in calls} == {1} and len(calls) == 3


def test_a_repo_without_parquet_is_not_a_coconut_dataset(at_hub, tmp_path):
    at_hub.datasets[COCONUT_VAL] = {"README.md": b"card"}
    with pytest.raises(UserError) as e:
        dl.download("coconut-val", tmp_path)
    assert str(e.value) == (
        f"Hub dataset {COCONUT_VAL!r}: the repo has no data/*.parquet (not a COCONut-style dataset repo?)"
    )


def test_a_missing_repo_says_not_found_or_private(at_hub, tmp_path):
    at_hub.datasets.pop(COCONUT_VAL, None)  # the fake Hub lives for the module
    with pytest.raises(UserError) as e:
        dl.download("coconut-val", tmp_path)
    assert str(e.value) == f"Hub dataset {COCONUT_VAL!r} not found (or private: set HF_TOKEN)"


def test_a_listed_name_outside_the_folder_is_refused(at_hub, tmp_path):
    at_hub.datasets[COCONUT_VAL] = {"data/../../evil.parquet": PARQUET}
    with pytest.raises(UserError) as e:
        dl.download("coconut-val", tmp_path)
    assert str(e.value) == (
        f"Hub dataset {COCONUT_VAL!r} lists a file outside the dataset folder ('data/../../evil.parquet'); refused"
    )
    assert not (tmp_path / "coconut" / "evil.parquet").exists()
    with pytest.raises(UserError, match="outside the dataset folder \\('/etc/x.parquet'\\)"):
        dl._inside(tmp_path, "/etc/x.parquet", "Hub dataset 'r'")
    assert dl._inside(tmp_path, "data/a.parquet", "w") == tmp_path / "data" / "a.parquet"


def test_offline_a_complete_copy_is_used_and_anything_else_is_one_line(at_hub, tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    at_hub.datasets[COCONUT_VAL] = {"data/val-0.parquet": PARQUET, "README.md": b"card"}
    out = dl.download("coconut-val", tmp_path)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    n = len(at_hub.requests)
    assert dl.download("coconut-val", tmp_path) == out and len(at_hub.requests) == n  # nothing asked
    (out / "data" / "val-1.parquet.part").write_bytes(b"PAR1")  # a cut download left behind
    with pytest.raises(UserError) as e:
        dl.download("coconut-val", tmp_path)
    assert str(e.value) == (
        f"Hub dataset {COCONUT_VAL!r} is not (completely) downloaded under {out} and the Hub cannot be "
        f"reached (offline? Cannot reach {at_hub.url}/api/datasets/{COCONUT_VAL}/revision/main: offline "
        "mode is enabled. To disable it, please unset the `HF_HUB_OFFLINE` environment variable.); run "
        "the same command online to fetch or resume it"
    )


def test_a_complete_offline_copy_needs_every_parquet_vouched_for(tmp_path):
    hub = resources.RESOURCES["coconut-val"].hub
    dest = tmp_path / "c"
    assert dl._complete_offline_copy(hub, dest) is False  # nothing there
    (dest / "data").mkdir(parents=True)
    assert dl._complete_offline_copy(hub, dest) is False  # no parquet
    (dest / "data" / "a.parquet").write_bytes(PARQUET)
    assert dl._complete_offline_copy(hub, dest) is False  # not vouched for by fetch
    (dest / "data" / "a.parquet.sha256").write_text("x  a.parquet\n")
    (dest / "data" / "b.parquet").write_bytes(PARQUET)
    assert dl._complete_offline_copy(hub, dest) is False  # one of two
    (dest / "data" / "b.parquet.sha256").write_text("x  b.parquet\n")
    assert dl._complete_offline_copy(hub, dest) is True
    (dest / "data" / "c.parquet.part").write_bytes(b"PAR1")
    assert dl._complete_offline_copy(hub, dest) is False  # a download still under way


def test_the_listing_is_asked_at_the_commit_just_resolved(at_hub, tmp_path):
    files = {"data/val-0.parquet": PARQUET, "README.md": b"card"}
    at_hub.datasets[COCONUT_VAL] = files
    n = len(at_hub.requests)
    dl.download("coconut-val", tmp_path)
    trees = [r for r in at_hub.requests[n:] if "/tree/" in r]
    assert trees == [
        f"GET /api/datasets/{COCONUT_VAL}/tree/{at_hub.sha(files)}"
    ]  # never main: a push between
    # resolving and listing must not mix two commits


def test_an_error_without_a_message_is_named_by_its_type(at_hub, tmp_path, monkeypatch):
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise OSError()  # str() is ""

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", refuse)
    with pytest.raises(UserError) as e:
        dl.fetch_hub_dataset(resources.RESOURCES["coconut-val"].hub, tmp_path / "c", retries=1)
    assert "cannot be reached (offline? OSError); run the same command online" in str(e.value)


def test_every_missing_parquet_pattern_is_named(at_hub, tmp_path):
    import dataclasses

    at_hub.datasets[COCONUT_VAL] = {"README.md": b"card"}
    hub = dataclasses.replace(
        resources.RESOURCES["coconut-val"].hub, patterns=("a/*.parquet", "b/*.parquet", "README.md")
    )
    with pytest.raises(UserError) as e:
        dl.fetch_hub_dataset(hub, tmp_path / "c", retries=1)
    assert str(e.value) == (
        f"Hub dataset {COCONUT_VAL!r}: the repo has no a/*.parquet, b/*.parquet (not a COCONut-style dataset repo?)"
    )
