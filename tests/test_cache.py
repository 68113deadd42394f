"""The app's prediction cache: keyed by file content, bounded, and a bad file is a UserError."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cocoattr.cache import PredictionCache, content_key
from cocoattr.errors import UserError
from cocoattr.index import file_sha256
from cocoattr.predictor import Prediction

GALLERY = Path(__file__).resolve().parent.parent / "cocoattr" / "gallery" / "images"


class CountingModel:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, image) -> Prediction:  # noqa: ANN001 - a PIL image
        self.calls += 1
        return Prediction(np.full(3, 0.5, np.float32), np.zeros((3, 2, 2)), np.ones(4, np.float32))


def test_same_bytes_under_another_name_hit_the_cache(tmp_path):
    a, b = tmp_path / "upload1.jpg", tmp_path / "upload2.jpg"
    shutil.copy(GALLERY / "skimage_chelsea.jpg", a)
    shutil.copy(GALLERY / "skimage_chelsea.jpg", b)
    model = CountingModel()
    cache = PredictionCache(model, display_side=64)
    first, second = cache.get(a), cache.get(b)
    assert model.calls == 1 and first is second and len(cache) == 1
    assert max(first.shown.size) <= 64 and first.size == (451, 300)
    assert content_key(a) == file_sha256(a), "one content hash: the index's"


def test_least_recently_used_entries_are_dropped(tmp_path):
    model = CountingModel()
    cache = PredictionCache(model, size=2, display_side=32)
    names = ["skimage_chelsea.jpg", "skimage_coffee.jpg", "gradio_lion.jpg"]
    for name in names:
        cache.get(GALLERY / name)
    assert model.calls == 3 and len(cache) == 2
    cache.get(GALLERY / names[2])
    assert model.calls == 3
    cache.get(GALLERY / names[0])  # dropped first: computed again
    assert model.calls == 4


def test_a_bad_file_is_a_user_error_naming_only_the_file(tmp_path):
    bad = tmp_path / "report.jpg"
    bad.write_bytes(b"%PDF-1.4 not an image")
    cache = PredictionCache(CountingModel())
    with pytest.raises(UserError, match="report.jpg") as info:
        cache.get(bad)
    assert str(tmp_path) not in str(info.value)
    with pytest.raises(UserError):
        cache.get(tmp_path / "missing.jpg")
    assert len(cache) == 0
