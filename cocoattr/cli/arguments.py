"""Argument types and checks the subcommands share: output paths checked before any work starts."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cocoattr.errors import UserError


def _check_writable(path: Path, start: Path) -> Path:
    """`start` or its nearest existing ancestor must be a folder we can write in."""
    parent = start
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{path}: cannot write in {parent} (permission denied)")
    return path


def writable_file(path: str | Path) -> Path:
    """An output file path checked before any work starts: not a folder, and its folder writable."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a file name to write")
    return _check_writable(path, path.parent)


def writable_folder(path: str | Path) -> Path:
    """An output folder checked before any work starts: not a file, and writable (or creatable)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: is a file; give a folder to write the run into")
    return _check_writable(path, path)


def add_checkpoint(p: argparse.ArgumentParser) -> None:
    """--checkpoint, resolved by `checkpoints.resolve_checkpoint`."""
    p.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint folder, Hub id (user/name) or 'default'; env COCOATTR_CHECKPOINT; "
        "else the Hub default, falling back to the embedded zero-shot default offline",
    )


def probability(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (got {text})")
    return value


def add_device(p: argparse.ArgumentParser) -> None:
    """--device: onnxruntime on the CPU, PyTorch on CUDA."""
    p.add_argument("--device", default="cpu",
                   help="'cpu' (onnxruntime, the default) or 'cuda' / 'cuda:N' (PyTorch)")  # fmt: skip


# Override for `cocoattr index build` (a positive integer): save partial progress more often, e.g. on
# a machine that may be killed at any time, or in tests that SIGKILL a build.
ENV_SAVE_EVERY = "COCOATTR_INDEX_SAVE_EVERY"


def save_every_from_env() -> int:
    """COCOATTR_INDEX_SAVE_EVERY (images between partial saves), else `cocoattr.index.SAVE_EVERY`."""
    from cocoattr.index import SAVE_EVERY  # numpy + the gallery: only for the commands that build

    raw = os.environ.get(ENV_SAVE_EVERY, "").strip()
    if not raw:
        return SAVE_EVERY
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{ENV_SAVE_EVERY}={raw!r}: expected a positive whole number of images")
    return value
