"""The one way cocoattr writes a file or a folder: to a temporary name beside it, then renamed.

A reader (the app, a resumed run, a second process) sees the old file or the new one, never
half of one; a crash or Ctrl-C leaves no stray temporary behind. Files and folders get the
permissions the user's umask gives (`tempfile.mkstemp` alone makes them 0600/0700, which an
app running as another user, as a Space does, cannot read).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back (cheap, process-wide).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_file(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, fsync: bool = True) -> Path:
    """Call `write(tmp)` to fill a temporary file beside `path`, then rename it onto `path`.

    The parent folder is created; on any error the temporary is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_file(path)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, "utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int | None = 1, **kwargs: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=indent, **kwargs))


@contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Fill the yielded staging folder; on success it replaces `folder` whole.

    The old folder is moved aside first and deleted only after the new one is in place (if
    the final rename fails the old one is moved back), so an interruption leaves either the
    old folder or the new one at `folder`, never a mix and never neither.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
        try:
            staging.rename(folder)
        except BaseException:
            if old is not None and not folder.exists():
                old.rename(folder)  # the swap failed: put the old folder back, never lose it
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
