"""What a downloaded file must look like before `download` keeps it and writes its sidecar.

A server can answer 200 and still send the wrong thing: an HTML error or login page, or a file
cut short with no Content-Length to tell. So besides the size and the recorded digests, every
file is checked by type:

* `.zip`: starts with a local file header (`PK\\x03\\x04`), has a readable central directory
  (it sits at the end, so a truncated zip has none), and every member's local header lies inside
  the file and matches its central-directory entry. Member CRCs are checked while extracting
  (`zipfile` raises on a mismatch, `safe_extract` turns it into a UserError) rather than here:
  a `testzip()` pass would inflate all 19 GB of train2017.zip, or a zip bomb, a second time.
* `.pkl`: the protocol header (`\\x80` + protocol 2-5) and the final STOP opcode (`.`).
  Protocol 0/1 pickles have no header and are refused (none of our sources serves one).
* `.json`: parses.
* anything: a body that starts like an HTML page (`<!DOCTYPE`, `<html`) is refused.

Stdlib only, like `download`: `python -m cocoattr data download --help` stays quick.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20
HEAD_BYTES = 1024
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTOCOLS = range(2, 6)
PICKLE_STOP = b"."
BINARY_SUFFIXES = frozenset({".zip", ".pkl"})
_HTML_STARTS = (b"<!doctype", b"<html")
_BLANK = b" \t\r\n\xef\xbb\xbf"  # whitespace and a UTF-8 byte-order mark


@dataclass(frozen=True)
class Problem:
    """What is wrong with a file; `maybe_truncated`: it may be a good prefix worth resuming."""

    what: str
    maybe_truncated: bool = False


def is_binary(filename: str) -> bool:
    """Files that are never text, so a `Content-Type: text/html` answer cannot be them."""
    return Path(filename).suffix.lower() in BINARY_SUFFIXES


def looks_like_html(head: bytes) -> bool:
    return head.lstrip(_BLANK)[:16].lower().startswith(_HTML_STARTS)


def _shown(head: bytes) -> str:
    """The first bytes of a file, safe to put in a one-line message."""
    return repr(head.lstrip(_BLANK)[:24])


def _ends(path: Path) -> tuple[bytes, bytes, int]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
        f.seek(max(size - 1, 0))
        tail = f.read(1)
    return head, tail, size


def quick_check(path: Path) -> Problem | None:
    """The checks that read only the first and last bytes (cheap enough for every rerun)."""
    path = Path(path)
    head, tail, size = _ends(path)
    suffix = path.name.removesuffix(".part")
    suffix = Path(suffix).suffix.lower()
    if size == 0:
        return Problem("the file is empty", maybe_truncated=True)
    if looks_like_html(head):
        return Problem(f"the server sent an HTML page, not a {suffix or 'data'} file (starts {_shown(head)})")
    if suffix == ".zip" and not head.startswith(ZIP_MAGIC):
        return Problem(f"not a zip file (starts {_shown(head)}, not {ZIP_MAGIC!r})")
    if suffix == ".pkl":
        if len(head) < 2 or head[0] != 0x80 or head[1] not in PICKLE_PROTOCOLS:
            return Problem(f"not a pickle (starts {_shown(head)}, not b'\\x80' + a protocol 2-5 byte)")
        if tail != PICKLE_STOP:
            return Problem("the pickle does not end with its STOP opcode (cut short?)", maybe_truncated=True)
    return None


def _check_zip(path: Path) -> Problem | None:
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if not infos:
                return Problem("the zip holds no files")
            for info in infos:
                if info.header_offset + info.compress_size > size:
                    return Problem(f"zip member {info.filename!r} runs past the end of the file")
                with zf.open(info):  # reads and checks the member's local header
                    pass
    except (RuntimeError, NotImplementedError) as e:  # encrypted, or a compression zipfile lacks
        return Problem(f"a zip this program cannot extract ({e})")
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        # The central directory is the last thing in a zip: a cut-short file has none.
        return Problem(f"not a readable zip ({e}; cut short?)", maybe_truncated=True)
    return None


def _check_json(path: Path) -> Problem | None:
    data = path.read_bytes()
    try:
        json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        return Problem(f"not UTF-8 JSON ({e.reason} at byte {e.start})")
    except json.JSONDecodeError as e:
        at_end = e.pos >= len(data.rstrip()) - 1
        return Problem(f"not valid JSON ({e.msg} at byte {e.pos})", maybe_truncated=at_end)
    return None


def check_content(path: Path) -> Problem | None:
    """Everything this module checks for the file's type (by its name, `.part` ignored)."""
    path = Path(path)
    problem = quick_check(path)
    if problem is not None:
        return problem
    suffix = Path(path.name.removesuffix(".part")).suffix.lower()
    if suffix == ".zip":
        return _check_zip(path)
    if suffix == ".json":
        return _check_json(path)
    return None


def digests(path: Path) -> tuple[str, str]:
    """(md5, sha256) hex digests of a file, in one pass."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()
