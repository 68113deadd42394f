"""Training data (cocoattr.training.data): the gallery split the gallery config trains on."""

from __future__ import annotations

from cocoattr.data.splits import rank_split


def _exact_counts(n: int) -> dict[str, int]:
    """50/25/25 of n images, rounded, the rest to test (36 images: 18/9/9; 46: 23/12/11)."""
    train, val = round(0.5 * n), round(0.25 * n)
    return {"train": train, "val": val, "test": n - train - val}


def test_gallery_split_exact_counts() -> None:
    from cocoattr.data.gallery import load_gallery

    ids = load_gallery().image_ids
    split = rank_split(ids, (0.5, 0.25, 0.25), 0)
    counts = {s: list(split.values()).count(s) for s in ("train", "val", "test")}
    assert counts == _exact_counts(len(ids))
    assert rank_split(list(reversed(ids)), (0.5, 0.25, 0.25), 0) == split  # order-independent


def test_load_splits_gives_the_gallery_counts_per_label_source() -> None:
    from cocoattr.data.gallery import load_gallery
    from cocoattr.training.config import DataConfig
    from cocoattr.training.data import load_splits

    splits = load_splits(DataConfig())
    assert {s: len(v) for s, v in splits.items()} == _exact_counts(len(load_gallery()))
    capped = load_splits(DataConfig(max_train=4, max_eval=2))
    assert {s: len(v) for s, v in capped.items()} == {"train": 4, "val": 2, "test": 2}
