"""Index builds split across processes: `index build --shard I/N` (or torchrun) and `index merge`.

Each image belongs to one shard by a hash of its relative path, so the split does not depend
on which other images exist (an image added later lands in one shard; rerunning a killed
shard reuses its own part file, as an ordinary build does). Each rank writes its own part
(`OUT.shard-I-of-N.npz`, an ordinary index with `info["shard"] = [I, N]`); `merge_parts`
checks that the parts are one build (same checkpoint, vocabulary, image set, every shard
once, each complete) and joins them, rows ordered by path as a single build orders them, so
the merged file equals what one process would have written.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from cocoattr.errors import UserError
from cocoattr.index import Index

SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
MAX_SHARDS = 4096

Shard = tuple[int, int]  # (this shard, number of shards)


def parse_shard(text: str) -> Shard:
    """'I/N' with 0 <= I < N, or one UserError line."""
    m = SHARD_RE.match(text or "")
    i, n = (int(m.group(1)), int(m.group(2))) if m else (-1, 0)
    if not m or not 0 <= i < n <= MAX_SHARDS:
        raise UserError(
            f"--shard {text!r}: expected I/N, this process's shard I of N shards with 0 <= I < N <= "
            f"{MAX_SHARDS} (e.g. 0/2 and 1/2)"
        )
    return i, n


def shard_from_env(environ: Mapping[str, str] = os.environ) -> Shard | None:
    """(RANK, WORLD_SIZE) under torchrun, read as `cocoattr.training.distributed` reads them
    (a RANK and a WORLD_SIZE above 1), else None: a single process."""
    if "RANK" not in environ or environ.get("WORLD_SIZE", "1").strip() in ("", "1"):
        return None
    rank, world = environ["RANK"], environ.get("WORLD_SIZE", "")
    try:
        return parse_shard(f"{rank}/{world}")
    except UserError:
        raise UserError(
            f"RANK={rank!r} WORLD_SIZE={world!r}: expected 0 <= RANK < WORLD_SIZE (as torchrun sets them)"
        ) from None


def rank_device(device: str, environ: Mapping[str, str] = os.environ) -> str:
    """A torchrun rank's GPU: plain 'cuda' becomes cuda:LOCAL_RANK (one GPU per process, as in
    training); any other device is kept."""
    local = environ.get("LOCAL_RANK", "").strip()
    return f"cuda:{local}" if device == "cuda" and local.isdigit() else device


def shard_of(rel: str, n: int) -> int:
    """The shard an image (its path relative to the indexed root) belongs to."""
    return int.from_bytes(hashlib.sha1(rel.encode("utf-8")).digest()[:8], "big") % n


def selector(shard: Shard) -> Callable[[str], bool]:
    """`build_index(select=...)` for one shard: keeps the images that belong to it."""
    i, n = shard
    return lambda rel: shard_of(rel, n) == i


def part_path(out: str | os.PathLike, shard: Shard) -> Path:
    """Where shard I of N of the index `out` is written: OUT.shard-I-of-N.npz beside it."""
    return _part(out, str(shard[0]), shard[1])


def parts_pattern(out: str | os.PathLike, n: int) -> Path:
    """The shell pattern of every part of an N-shard build of `out` (what `index merge` takes)."""
    return _part(out, "*", n)


def _part(out: str | os.PathLike, i: str, n: int) -> Path:
    out = Path(out)
    stem = out.name[: -len(".npz")] if out.name.endswith(".npz") else out.name
    return out.with_name(f"{stem}.shard-{i}-of-{n}.npz")


def _short(index: Index) -> str:
    return f"{index.checkpoint.get('source', '?')} (sha256 {str(index.checkpoint.get('sha256', '?'))[:12]})"


def _check_parts(parts: Sequence[tuple[Path, Index]]) -> int:
    """The number of shards, after checking the parts are one whole build; else one UserError line."""
    first_path, first = parts[0]
    seen: dict[int, Path] = {}
    n = None
    for path, part in parts:
        shard = part.info.get("shard")
        if not (isinstance(shard, list) and len(shard) == 2 and all(isinstance(x, int) for x in shard)):
            raise UserError(f"{path}: not a shard part (built without --shard); nothing to merge")
        i, count = shard
        if n is None:
            n = count
        if count != n:
            raise UserError(f"{path}: shard {i}/{count}, but {first_path} is one of {n} shards")
        if i in seen:
            raise UserError(f"shard {i}/{n} given twice: {seen[i]} and {path}")
        seen[i] = path
        if not part.complete:
            raise UserError(
                f"{path}: shard {i}/{n} is incomplete (an interrupted build); run its `index build "
                f"--shard {i}/{n}` again to finish it"
            )
        if part.checkpoint.get("sha256") != first.checkpoint.get("sha256"):
            raise UserError(
                f"{path}: made with checkpoint {_short(part)}, {first_path} with {_short(first)}; "
                "rebuild the shards with one checkpoint"
            )
        why = part.incompatible(first.checkpoint, first.attributes, first.root_spec)
        rest = {k: v for k, v in part.info.items() if k != "shard"}
        first_rest = {k: v for k, v in first.info.items() if k != "shard"}
        if why is None and rest != first_rest:
            why = "it indexes another image set"
        if why is None and (part.records is None) != (first.records is None):
            why = "one has COCO records, the other not"
        if why is None and (part.thumbnails is None) != (first.thumbnails is None):
            why = "one has thumbnails, the other not"
        if why is None and part.embeddings.shape[1:] != first.embeddings.shape[1:]:
            why = "the embedding sizes differ"
        if why is not None:
            raise UserError(f"{path}: not a part of the same build as {first_path} ({why})")
    assert n is not None
    missing = [f"{i}/{n}" for i in range(n) if i not in seen]
    if missing:
        raise UserError(f"missing shard(s) {', '.join(missing)}: give every part of the {n}-shard build")
    return n


def merge_parts(paths: Sequence[str | os.PathLike]) -> Index:
    """One index from the parts of a sharded build, equal to a single-process build of it."""
    if not paths:
        raise UserError("index merge: give the part files (OUT.shard-I-of-N.npz) to merge")
    parts = [(Path(p), Index.load(p)) for p in paths]
    _check_parts(parts)
    first = parts[0][1]
    rows = sorted((rel, k, j) for k, (_, part) in enumerate(parts) for j, rel in enumerate(part.paths))
    for (a, ka, _), (b, kb, _) in zip(rows, rows[1:], strict=False):
        if a == b:
            raise UserError(f"{a}: in two parts ({parts[ka][0]} and {parts[kb][0]}); rebuild them")

    def take(field: str) -> np.ndarray:
        stacked = [getattr(part, field) for _, part in parts]
        return np.stack([stacked[k][j] for _, k, j in rows]) if rows else np.concatenate(stacked)

    return Index(
        root_spec=first.root_spec, paths=[rel for rel, _, _ in rows], sizes=take("sizes").astype(np.int64),
        mtimes=take("mtimes").astype(np.int64), probs=take("probs").astype(np.float16),
        embeddings=take("embeddings").astype(np.float32), attributes=first.attributes,
        checkpoint=first.checkpoint, attribute_text=first.attribute_text, text_proj=first.text_proj,
        temperature=first.temperature, complete=True,
        records=None if first.records is None else [parts[k][1].records[j] for _, k, j in rows],
        thumbnails=None if first.thumbnails is None else [parts[k][1].thumbnails[j] for _, k, j in rows],
        info={k: v for k, v in first.info.items() if k != "shard"},
    )  # fmt: skip
