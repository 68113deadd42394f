"""Which checkpoint a user meant: nothing, an env variable, 'default', a Hub id or a folder.

`resolve_checkpoint` turns what was typed into a local folder and `load_model` loads it. Neither
ever builds anything: the embedded zero-shot default is built by an explicit step
(`python -m cocoattr build-default`, which `make demo` / `make test` run), and a missing or
stale one is said in one line.
"""

from __future__ import annotations

import os
from pathlib import Path

from cocoattr import hub
from cocoattr.errors import UserError, notice
from cocoattr.model import AttributeModel
from cocoattr.zeroshot import RECIPE_NAME, recipe_hash

# The Hub repo the app and CLI try first; offline they fall back to the embedded default.
DEFAULT_HUB_ID = "cocoattr/cocoattr-mobilenetv2-zeroshot"
ENV_CHECKPOINT = "COCOATTR_CHECKPOINT"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO_ROOT / "checkpoints" / "default"
BUILD_HINT = "run `make default` (or `python -m cocoattr build-default`)"


def default_dir() -> Path:
    """The embedded default's folder, which must have been built; a stale one is said once."""
    if not (DEFAULT_DIR / hub.WEIGHTS_NAME).is_file():
        raise UserError(f"the embedded zero-shot default is not built yet: {BUILD_HINT}")
    stamp = DEFAULT_DIR / RECIPE_NAME
    if not stamp.is_file() or stamp.read_text().strip() != recipe_hash():
        notice(f"the embedded default was built from older code; {BUILD_HINT} to rebuild it")
    return DEFAULT_DIR


def _unnamed(source: str | os.PathLike | None) -> bool:
    """No checkpoint named, by argument or env: the Hub default, which may fall back."""
    return source is None and not os.environ.get(ENV_CHECKPOINT)


def _fall_back(error: UserError) -> Path:
    notice(f"{error}; using the embedded zero-shot default instead")
    return default_dir()


def resolve_checkpoint(source: str | os.PathLike | None = None) -> Path:
    """Local folder for `source`: a folder, a Hub id, 'default', or None (env, then the Hub default,
    falling back to the embedded default when the Hub cannot be reached)."""
    implicit = _unnamed(source)
    source = str(source or os.environ.get(ENV_CHECKPOINT) or DEFAULT_HUB_ID)
    if source == "default":
        return default_dir()
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.suffix or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise UserError(f"checkpoint {source!r}: no such folder, and not a Hub id of the form user/name")
    try:
        return hub.download(source)
    except UserError as e:
        if not implicit:
            raise
        return _fall_back(e)


def load_model(source: str | os.PathLike | None = None, **overrides) -> AttributeModel:
    """The model behind `source` (see `resolve_checkpoint`), in eval mode. When nothing was named
    and the Hub default cannot be loaded by this code (e.g. published by an older version), the
    embedded default is used, said in one line."""
    folder = source if isinstance(source, Path) and source.is_dir() else resolve_checkpoint(source)
    try:
        return hub.load_folder(folder, **overrides)
    except UserError as e:
        if not _unnamed(source) or folder == DEFAULT_DIR:
            raise
        return hub.load_folder(_fall_back(e), **overrides)
