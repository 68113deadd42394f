"""Checks on what a download brings: each file's content before `download` keeps it and writes
its sidecar, and each zip member before `safe_extract` writes it.

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

Zips are extracted defensively (`safe_extract`): no absolute paths, `..`, symlinks or zip bombs,
into a temporary folder first.

Stdlib only, like `download`: `python -m cocoattr data download --help` stays quick.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cocoattr.errors import UserError

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


# --- extracting ---------------------------------------------------------------------------

MAX_TOTAL_BYTES = 64 << 30  # train2017.zip holds ~19.3 GB of JPEGs
MAX_RATIO = 200  # JSON compresses ~5-10x, JPEG ~1x; zip bombs are 1000x and more
RATIO_MIN_BYTES = 1 << 20  # tiny members may compress absurdly well without harm


def _member_target(info: zipfile.ZipInfo, archive: Path) -> PurePosixPath | None:
    """The checked relative path of a member (None for directories); raises on anything unsafe."""
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UserError(f"{archive}: refusing to extract symlink member {name!r}")
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UserError(f"{archive}: refusing to extract member with an absolute path {name!r}")
    path = PurePosixPath(name)
    if any(p == ".." for p in path.parts):
        raise UserError(f"{archive}: refusing to extract member {name!r}, which points outside the folder")
    if info.is_dir() or not path.parts:
        return None
    return path


def _marker(dest: Path, archive: Path) -> Path:
    return dest / ".extracted" / (archive.name + ".txt")


def safe_extract(
    archive: Path, dest: Path, *, max_total: int = MAX_TOTAL_BYTES, max_ratio: float = MAX_RATIO
) -> list[Path]:
    """Extract `archive` into `dest` after checking every member; skip if already extracted.

    Files land in a temporary folder inside `dest` and are renamed into place one by one, so an
    interrupted extraction never leaves a half-written file under its real name; a marker listing
    the members is written last and lets the next call skip the work.
    """
    archive, dest = Path(archive), Path(dest)
    marker = _marker(dest, archive)
    if marker.is_file():
        members = [dest / line for line in marker.read_text(encoding="utf-8").splitlines() if line]
        if all(m.exists() for m in members):
            return members
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{archive}: not a readable zip file ({e}); delete it and download again") from None
    with zf:
        plan: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        total = 0
        for info in zf.infolist():
            target = _member_target(info, archive)
            if target is None:
                continue
            total += info.file_size
            if total > max_total:
                raise UserError(f"{archive}: refusing to extract over {max_total} bytes (possible zip bomb)")
            if info.file_size > RATIO_MIN_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
                raise UserError(
                    f"{archive}: member {info.filename!r} expands "
                    f"{info.file_size / max(info.compress_size, 1):.0f}x "
                    "(possible zip bomb); refusing to extract"
                )
            plan.append((info, target))
        dest.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(dest).free
        if total > free:
            raise UserError(f"{archive}: needs {total} bytes to extract but only {free} are free in {dest}")
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
        try:
            for info, target in plan:
                out_path = tmp.joinpath(*target.parts)
                out_path.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                with zf.open(info) as src, open(out_path, "wb") as out:
                    while chunk := src.read(CHUNK):
                        written += len(chunk)
                        if written > info.file_size:  # header lied about the size
                            raise UserError(f"{archive}: member {info.filename!r} is larger than declared")
                        out.write(chunk)
            for _, target in plan:
                final = dest.joinpath(*target.parts)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp.joinpath(*target.parts), final)
        except zipfile.BadZipFile as e:
            raise UserError(f"{archive}: corrupt zip ({e}); delete it and download again") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("".join(f"{t}\n" for _, t in plan), encoding="utf-8")
    return [dest.joinpath(*t.parts) for _, t in plan]
