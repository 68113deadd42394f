"""Variable-length byte strings as two plain numpy arrays, so an .npz holds them without pickles
(the index's per-image JSON records and JPEG thumbnails)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pack_bytes(items: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Variable-length byte strings as (one uint8 blob, int64 offsets of length len(items) + 1)."""
    offsets = np.zeros(len(items) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in items]) if items else []
    return np.frombuffer(b"".join(items), np.uint8), offsets


def unpack_bytes(blob: np.ndarray, offsets: np.ndarray) -> list[bytes]:
    """The inverse of `pack_bytes`; ValueError when the offsets do not describe the blob."""
    if blob.ndim != 1 or offsets.ndim != 1 or offsets.dtype.kind != "i" or len(offsets) < 1:
        raise ValueError("byte column: bad array shapes")
    if offsets[0] != 0 or offsets[-1] != len(blob) or np.any(np.diff(offsets) < 0):
        raise ValueError("byte column: offsets do not describe the data")
    raw = blob.astype(np.uint8, copy=False).tobytes()
    return [raw[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)]
