"""Nearest-neighbour backends: exact numpy and FAISS agree."""

from __future__ import annotations

import numpy as np

from cocoattr.backends import choose_backend, make_backend, top_indices


def test_numpy_and_faiss_give_the_same_top_k():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(2000, 32)).astype(np.float32)
    a, b = make_backend(emb, "numpy"), make_backend(emb, "faiss")
    assert (a.name, b.name) == ("numpy", "faiss")
    for q in rng.normal(size=(20, 32)).astype(np.float32):
        ia, sa = a.top_k(q, 10)
        ib, sb = b.top_k(q, 10)
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_allclose(sa, sb, atol=1e-5)
    assert len(a.top_k(q, 5000)[0]) == 2000 == len(b.top_k(q, 5000)[0])


def test_top_indices_breaks_ties_by_position_and_clamps_k():
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0])
    assert top_indices(scores, 3).tolist() == [1, 2, 4]
    assert top_indices(scores, 99).tolist() == [1, 2, 4, 3, 0]
    assert top_indices(scores, 0).tolist() == [] and top_indices(np.zeros(0), 5).tolist() == []


def test_auto_is_numpy_below_the_faiss_threshold():
    assert choose_backend("auto", 10) == "numpy"
    assert choose_backend("faiss", 10) == "faiss" and choose_backend("numpy", 10**9) == "numpy"
