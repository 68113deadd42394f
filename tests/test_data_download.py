"""Downloads against a local HTTP server on 127.0.0.1: resume, Range quirks, checksums, safe unzip."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import socket
import stat
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cocoattr.cli import main as cli_main
from cocoattr.data import download as dl
from cocoattr.data import resources
from cocoattr.errors import UserError

CAPTIONS_VAL2017 = {
    "info": {"description": "COCO 2017 Dataset"},
    "licenses": [],
    "images": [
        {"license": 4, "file_name": "000000397133.jpg", "height": 427, "width": 640, "id": 397133},
    ],
    "annotations": [
        {"image_id": 397133, "id": 370509, "caption": "A man is in a kitchen making pizzas."},
        {"image_id": 397133, "id": 370584, "caption": "Man in apron standing on front of oven with pans."},
    ],
}


def annotations_zip() -> bytes:
    """A tiny annotations_trainval2017.zip in the real layout (annotations/*.json)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("annotations/captions_val2017.json", json.dumps(CAPTIONS_VAL2017))
        zf.writestr("annotations/instances_val2017.json", json.dumps({"images": [], "annotations": []}))
        # incompressible padding so the file is big enough to interrupt in the middle
        zf.writestr("annotations/padding.bin", hashlib.sha256(b"x").digest() * 2048, zipfile.ZIP_STORED)
    return buf.getvalue()


class MirrorServer:
    """A threaded http.server serving `files`, with Range support that can be switched off and a
    connection drop after N bytes for the next request."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.honour_range = True
        self.drop_after: int | None = None
        self.requests: list[tuple[str, str | None]] = []
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                mirror.requests.append((self.path, self.headers.get("Range")))
                body = mirror.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start, total = 0, len(body)
                rng = self.headers.get("Range")
                if rng and mirror.honour_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= total:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{total}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(total - start))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                payload = body[start:]
                if mirror.drop_after is not None:
                    payload, mirror.drop_after = payload[: mirror.drop_after], None
                    self.wfile.write(payload)
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


ZIP = annotations_zip()
ZIP_PATH = "/annotations/annotations_trainval2017.zip"
ZIP_MD5 = hashlib.md5(ZIP).hexdigest()


@pytest.fixture
def mirror():
    server = MirrorServer({ZIP_PATH: ZIP, "/data/blob.bin": bytes(range(256)) * 400})
    yield server
    server.close()


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv("COCOATTR_FAST_RETRY", "1")
    monkeypatch.delenv(dl.BASE_URL_ENV, raising=False)


@pytest.fixture
def tiny_registry(monkeypatch):
    """coco-captions pointing at the tiny zip (its md5), since the real entry knows real checksums."""
    entry = resources.Resource(
        "coco-captions",
        "test",
        (resources.RemoteFile(resources.COCO_BASE, "annotations/annotations_trainval2017.zip", md5=ZIP_MD5),),
        "coco",
        ("coco/annotations/captions_val2017.json",),
    )
    monkeypatch.setitem(resources.RESOURCES, "coco-captions", entry)


def test_registry_lists_the_resources_with_known_sizes():
    assert set(resources.RESOURCES) == {
        "coco-captions",
        "coco-instances",
        "coco-images-val",
        "coco-images-train",
        "coco-images-val2014",
        "coco-images-train2014",
        "coco-attributes",
        "coconut-val",  # Hub datasets: tests/test_data_coconut.py
        "coconut-s",
        "coconut-b",
    }
    assert (
        resources.RESOURCES["coco-images-val2014"].files[0].url()
        == "http://images.cocodataset.org/zips/val2014.zip"
    )
    sizes = {f.filename: f.size for r in resources.RESOURCES.values() for f in r.files}
    assert sizes["annotations_trainval2017.zip"] == 252907541
    assert sizes["val2017.zip"] == 815585330
    assert sizes["train2017.zip"] == 19336861798
    assert (
        resources.RESOURCES["coco-images-val"].files[0].url()
        == "http://images.cocodataset.org/zips/val2017.zip"
    )
    assert (
        resources.RESOURCES["coco-captions"].files[1].url("http://127.0.0.1:9/mirror/")
        == "http://127.0.0.1:9/mirror/annotations/annotations_trainval2017.zip"
    )


def test_download_extracts_from_mirror_given_by_env(mirror, tiny_registry, tmp_path, monkeypatch):
    monkeypatch.setenv(dl.BASE_URL_ENV, mirror.url)
    out = dl.download("coco-captions", tmp_path)
    assert out == tmp_path / "coco"
    captions = json.loads((out / "annotations" / "captions_val2017.json").read_text())
    assert captions["annotations"][0]["caption"] == "A man is in a kitchen making pizzas."
    archive = tmp_path / "downloads" / "annotations_trainval2017.zip"
    assert archive.read_bytes() == ZIP
    sidecar = archive.with_name(archive.name + ".sha256").read_text().split()
    assert sidecar == [hashlib.sha256(ZIP).hexdigest(), "annotations_trainval2017.zip"]
    assert dl.verify_sidecar(archive)
    assert not list(tmp_path.rglob("*.part")) and not list(out.glob(".extract-*"))
    # a second call neither downloads nor extracts again
    n = len(mirror.requests)
    (out / "annotations" / "captions_val2017.json").write_text("{}")
    assert dl.download("coco-captions", tmp_path) == out
    assert len(mirror.requests) == n
    assert (out / "annotations" / "captions_val2017.json").read_text() == "{}"


def test_interrupted_download_resumes_with_range(mirror, tmp_path):
    dest = tmp_path / "a.zip"
    half = len(ZIP) // 2
    mirror.drop_after = half
    with pytest.raises(UserError, match="interrupted after .* run the same command again to resume"):
        dl.fetch(mirror.url + ZIP_PATH, dest, md5=ZIP_MD5, retries=0)
    part = tmp_path / "a.zip.part"
    assert part.stat().st_size == half and not dest.exists()
    dl.fetch(mirror.url + ZIP_PATH, dest, md5=ZIP_MD5, retries=0)
    assert mirror.requests[-1] == (ZIP_PATH, f"bytes={half}-")
    assert dest.read_bytes() == ZIP and not part.exists()


def test_dropped_connection_is_retried_automatically(mirror, tmp_path):
    mirror.drop_after = 1000
    dest = dl.fetch(mirror.url + ZIP_PATH, tmp_path / "a.zip", md5=ZIP_MD5, retries=2)
    assert dest.read_bytes() == ZIP
    assert [r for _, r in mirror.requests] == [None, "bytes=1000-"]


def test_server_ignoring_range_restarts_from_zero(mirror, tmp_path):
    mirror.honour_range = False
    (tmp_path / "a.zip.part").write_bytes(b"\xff" * 5000)  # would corrupt the file if appended to
    dest = dl.fetch(mirror.url + ZIP_PATH, tmp_path / "a.zip", md5=ZIP_MD5)
    assert mirror.requests == [(ZIP_PATH, "bytes=5000-")]
    assert dest.read_bytes() == ZIP


def test_complete_part_with_known_size_is_committed_on_416(mirror, tmp_path):
    (tmp_path / "a.zip.part").write_bytes(ZIP)
    dest = dl.fetch(mirror.url + ZIP_PATH, tmp_path / "a.zip", size=len(ZIP), md5=ZIP_MD5)
    assert dest.read_bytes() == ZIP and mirror.requests == [(ZIP_PATH, f"bytes={len(ZIP)}-")]


def test_checksum_mismatch_removes_the_file(mirror, tmp_path):
    with pytest.raises(UserError, match=r"a\.zip: checksum mismatch .* removed"):
        dl.fetch(mirror.url + ZIP_PATH, tmp_path / "a.zip", md5="0" * 32)
    assert list(tmp_path.iterdir()) == []


def test_size_check_against_content_length(mirror, tmp_path):
    with pytest.raises(UserError, match="server reports 102400 bytes but this file is known to be 5 bytes"):
        dl.fetch(mirror.url + "/data/blob.bin", tmp_path / "b.bin", size=5)
    assert list(tmp_path.iterdir()) == []


def test_real_registry_rejects_a_mirror_serving_other_files(mirror, tmp_path):
    mirror.files["/zips/val2017.zip"] = ZIP
    with pytest.raises(UserError, match="known to be 815585330 bytes"):
        dl.download("coco-images-val", tmp_path, base_url=mirror.url)
    mirror.files["/annotations/annotations_trainval2014.zip"] = ZIP
    with pytest.raises(UserError, match="checksum mismatch"):
        dl.download("coco-captions", tmp_path, base_url=mirror.url)
    assert not (tmp_path / "downloads" / "annotations_trainval2014.zip").exists()


def test_unreachable_server_is_a_user_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(
        UserError, match=r"could not reach 127\.0\.0\.1: .* check your connection or pass --base-url"
    ):
        dl.download("coco-attributes", tmp_path, base_url=f"http://127.0.0.1:{port}")


def test_http_error_is_a_user_error(mirror, tmp_path):
    with pytest.raises(UserError, match="HTTP 404"):
        dl.download("coco-attributes", tmp_path, base_url=mirror.url)


def test_unknown_resource_and_bad_base_url(tmp_path):
    with pytest.raises(UserError, match="unknown data resource 'coco-everything'; choose from coco-captions"):
        dl.download("coco-everything", tmp_path)
    with pytest.raises(UserError, match="must start with http"):
        dl.download("coco-attributes", tmp_path, base_url="127.0.0.1:8000")


def test_cli_download_fetches_a_plain_file(mirror, tmp_path, capsys, unpinned):
    # A small real pickle (the download checks the header and STOP opcode) under an entry without
    # the real file's recorded size and sha256.
    blob = pickle.dumps({"ann_vecs": {}, "split": {}}, protocol=4)
    mirror.files[unpinned] = blob
    argv = ["data", "download", "coco-attributes", "--root", str(tmp_path), "--base-url", mirror.url]
    assert cli_main(argv) == 0
    path = tmp_path / "cocottributes" / "cocottributes_eccv_version.pkl"
    assert path.read_bytes() == blob
    assert f"coco-attributes: ready at {path}" in capsys.readouterr().out


# --- safe unzip ---------------------------------------------------------------------------------


def _zip(tmp_path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    path = tmp_path / "x.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in members:
            zf.writestr(info, data)
    return path


@pytest.mark.parametrize(
    "name", ["../evil.txt", "a/../../evil.txt", "/tmp/evil.txt", "C:/evil.txt", "a\\..\\evil"]
)
def test_unzip_refuses_paths_outside_the_folder(tmp_path, name):
    archive = _zip(tmp_path, [("ok.txt", b"fine"), (name, b"evil")])
    dest = tmp_path / "out"
    with pytest.raises(UserError, match="refusing to extract"):
        dl.safe_extract(archive, dest)
    assert not (tmp_path / "evil.txt").exists()
    assert not dest.exists() or not any(p.is_file() for p in dest.rglob("*"))


def test_unzip_refuses_symlinks(tmp_path):
    info = zipfile.ZipInfo("link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = _zip(tmp_path, [(info, b"/etc/passwd")])
    with pytest.raises(UserError, match="refusing to extract symlink member 'link'"):
        dl.safe_extract(archive, tmp_path / "out")


def test_unzip_refuses_bombs(tmp_path):
    archive = _zip(tmp_path, [("zeros.bin", bytes(8 << 20))])  # 8 MiB of zeros deflate ~1000x
    with pytest.raises(UserError, match="zeros.bin' expands .*x \\(possible zip bomb\\)"):
        dl.safe_extract(archive, tmp_path / "out")
    small = _zip(tmp_path, [("a.txt", b"a" * 1000), ("b.txt", b"b" * 1000)])
    with pytest.raises(UserError, match="refusing to extract over 1500 bytes"):
        dl.safe_extract(small, tmp_path / "out", max_total=1500)
    assert not (tmp_path / "out" / "a.txt").exists()


def test_unzip_rejects_a_corrupt_archive(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(ZIP[: len(ZIP) // 3])
    with pytest.raises(UserError, match="bad.zip: not a readable zip file"):
        dl.safe_extract(bad, tmp_path / "out")


def test_unzip_merges_two_archives_into_one_tree(tmp_path):
    a = _zip(tmp_path, [("annotations/captions_train2014.json", b"{}")])
    a = a.rename(tmp_path / "a.zip")
    b = _zip(tmp_path, [("annotations/captions_train2017.json", b"[]")])
    dest = tmp_path / "coco"
    dl.safe_extract(a, dest)
    dl.safe_extract(b, dest)
    assert sorted(p.name for p in (dest / "annotations").iterdir()) == [
        "captions_train2014.json",
        "captions_train2017.json",
    ]
