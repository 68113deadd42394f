"""cocoattr.data.download's helpers at their edges: what mutation testing (tests/mutation.py
download) showed the server-driven tests let through -- Content-Range arithmetic, sidecar
parsing, the size check without a recorded size, nested --root folders, the umask."""

from __future__ import annotations

import hashlib
import os
import stat
from email.message import Message
from types import SimpleNamespace

import pytest

from cocoattr.data import download as dl
from cocoattr.errors import UserError


def response(**headers: str) -> SimpleNamespace:
    msg = Message()
    for k, v in headers.items():
        msg[k.replace("_", "-")] = v
    return SimpleNamespace(headers=msg)


def test_a_one_byte_resume_is_accepted(tmp_path):
    part = tmp_path / "x.part"
    part.write_bytes(b"x" * 1000)
    assert dl._resumed_range(response(Content_Range="bytes 1000-1000/1001"), part, 1000) == (1001, 1001)
    assert dl._resumed_range(response(Content_Range="bytes 1000-1999/*"), part, 1000) == (2000, None)
    assert part.exists()


@pytest.mark.parametrize("headers", [{"Content_Range": "bytes 6-9/10"}, {}])
def test_a_resume_elsewhere_or_without_a_range_removes_the_part(tmp_path, headers):
    part = tmp_path / "x.part"
    part.write_bytes(b"x" * 5)
    with pytest.raises(
        dl._Interrupted, match=r"server resumed at the wrong offset \(.*, asked for 5\); restarting"
    ):
        dl._resumed_range(response(**headers), part, 5)
    assert not part.exists()


def test_content_length_is_read_or_none():
    assert dl._content_length(response(Content_Length=" 42 ")) == 42
    assert dl._content_length(response()) is None
    assert dl._content_length(response(Content_Length="many")) is None


def test_sidecar_words(tmp_path):
    sidecar = tmp_path / "x.json.sha256"
    sidecar.write_text("ABCDEF  x.json\n")
    assert dl._recorded_sha256(sidecar) == "abcdef"
    sidecar.write_text("")
    assert dl._recorded_sha256(sidecar) is None
    sidecar.write_bytes(b"\xff\xfe abc")  # not UTF-8: replaced, never a crash
    assert dl._recorded_sha256(sidecar) == "\ufffd\ufffd"


def test_a_complete_file_with_its_sidecar_is_complete(tmp_path):
    dest = tmp_path / "x.json"
    dest.write_text("{}")
    sha = hashlib.sha256(b"{}").hexdigest()
    (tmp_path / "x.json.sha256").write_text(f"{sha}  x.json\n")
    assert dl._is_complete(dest, 2, sha)
    assert dl._is_complete(dest, None, sha.upper())  # the recorded sha256 is compared lower-case
    assert not dl._is_complete(dest, 3, sha)
    assert not dl._is_complete(dest, 2, "0" * 64)


def test_size_is_checked_and_an_unknown_size_still_commits(tmp_path):
    part, dest = tmp_path / "x.json.part", tmp_path / "x.json"
    part.write_text("{}")
    with pytest.raises(
        UserError, match=r"x.json: downloaded 2 bytes but expected 3; removed the partial file$"
    ):
        dl._verify_and_commit("http://h/x.json", part, dest, 3, None, None)
    assert not part.exists() and not dest.exists()
    part.write_text("{}")
    dl._verify_and_commit("http://h/x.json", part, dest, None, None, None)  # nothing known: kept, vouched for
    assert (
        dest.read_text() == "{}"
        and dl._recorded_sha256(tmp_path / "x.json.sha256") == hashlib.sha256(b"{}").hexdigest()
    )


def test_a_checksum_mismatch_names_the_algorithm(tmp_path):
    part, dest = tmp_path / "x.json.part", tmp_path / "x.json"
    part.write_text("{}")
    md5 = hashlib.md5(b"{}").hexdigest()
    with pytest.raises(
        UserError,
        match=rf"checksum mismatch \(md5 {md5}, expected 0+\) for http://h/x.json; the corrupt download was removed — run the command again$",
    ):
        dl._verify_and_commit("http://h/x.json", part, dest, 2, "0" * 32, None)
    assert not part.exists()


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o000, 0o666)])
def test_a_committed_file_gets_exactly_the_umask_mode(tmp_path, umask, mode):
    part, dest = tmp_path / "x.json.part", tmp_path / "x.json"
    part.write_text("{}")
    os.chmod(part, 0o600)
    old = os.umask(umask)
    try:
        dl._verify_and_commit("http://h/x.json", part, dest, 2, None, None)
    finally:
        os.umask(old)
    assert stat.S_IMODE(dest.stat().st_mode) == mode


def test_a_nested_root_is_created(tmp_path):
    root = tmp_path / "a" / "b" / "c"
    dl._check_root(root)
    assert root.is_dir()
