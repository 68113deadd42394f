"""Which split an image belongs to: one hash of (seed, image id) decides, everywhere.

Training configs, `evaluate --split` and the gallery all split through here, so an image is
in the same split whichever tool asks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol, TypeVar

SPLITS = ("train", "val", "test")


class HasImageId(Protocol):
    image_id: int


T = TypeVar("T", bound=HasImageId)


def _hash(image_id: int | str, seed: int) -> int:
    """64 bits of sha256("seed:id"): the one source of every split decision."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{image_id}".encode()).digest()[:8], "big")


def rank_split(ids: Sequence[int], fractions: Sequence[float], seed: int = 0) -> dict[int, str]:
    """Exact-count split of a small set: order by the same hash as `split_of`, then cut."""
    order = sorted(set(ids), key=lambda i: _hash(i, seed))
    n_train = round(fractions[0] * len(order))
    n_val = round(fractions[1] * len(order))
    return {
        i: SPLITS[0] if k < n_train else SPLITS[1] if k < n_train + n_val else SPLITS[2]
        for k, i in enumerate(order)
    }


def split_of(image_id: int | str, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> str:
    """'train', 'val' or 'test' for an image, from a hash of (seed, id): stable everywhere."""
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, not {fractions}")
    u = _hash(image_id, seed) / 2**64
    edge = 0.0
    for name, frac in zip(SPLITS, fractions, strict=True):
        edge += frac
        if u < edge:
            return name
    return SPLITS[-1]


def select_split(
    samples: Sequence[T], split: str, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> list[T]:
    """The samples whose image falls in `split`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return [s for s in samples if split_of(s.image_id, fractions, seed) == split]
