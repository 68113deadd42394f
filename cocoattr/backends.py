"""Nearest-neighbour search over an index's unit embeddings: exact numpy, or FAISS.

One small interface (`SearchBackend`): `scores` for every item (combined with attribute
scores) and `top_k` (a query by image or by free text alone). FAISS (`IndexFlatIP` over
unit vectors) gives the same results as numpy; it only pays on very large collections.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from cocoattr.errors import UserError

# "auto" uses FAISS above this many images. Exact FAISS (IndexFlatIP) measured 2.5-4x slower
# than numpy's BLAS product at 100k-1M on a 2-core CPU (bench/README.md), so the switch only
# pays on bigger machines or sets; `search(..., backend="faiss")` chooses it explicitly.
FAISS_MIN_ITEMS = 5_000_000


class SearchBackend(Protocol):
    """Inner-product search over the index's unit embeddings (= cosine similarity)."""

    name: str

    def scores(self, query: np.ndarray) -> np.ndarray:
        """(N,) similarity of every item to `query` (D,): used when combining with attribute scores."""
        ...

    def top_k(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, similarities) of the k most similar items, best first."""
        ...


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (float32); zero rows stay zero."""
    x = np.asarray(x, np.float32)
    return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first; ties broken by position (deterministic)."""
    n = len(scores)
    k = max(0, min(k, n))
    if k == 0:
        return np.zeros(0, np.int64)
    cand = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
    return cand[np.lexsort((cand, -scores[cand]))]


class NumpyBackend:
    name = "numpy"

    def __init__(self, embeddings: np.ndarray) -> None:
        self.embeddings = unit(embeddings)

    def scores(self, query: np.ndarray) -> np.ndarray:
        return self.embeddings @ unit(query)

    def top_k(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.scores(query)
        idx = top_indices(s, k)
        return idx, s[idx]


class FaissBackend:
    """Exact FAISS inner-product search: faster top-k on large sets; the dense `scores` is numpy's."""

    name = "faiss"

    def __init__(self, embeddings: np.ndarray) -> None:
        import faiss  # optional dependency (faiss-cpu): imported only when this backend is chosen

        self.embeddings = np.ascontiguousarray(unit(embeddings))
        self.index = faiss.IndexFlatIP(self.embeddings.shape[1])
        if len(self.embeddings):
            self.index.add(self.embeddings)

    def scores(self, query: np.ndarray) -> np.ndarray:
        return self.embeddings @ unit(query)

    def top_k(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = max(0, min(k, self.index.ntotal))
        if k == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        sims, idx = self.index.search(np.ascontiguousarray(unit(query)[None]), k)
        return idx[0].astype(np.int64), sims[0]


def has_faiss() -> bool:
    try:
        import faiss  # noqa: F401 - optional dependency: probing whether it is installed
    except ImportError:
        return False
    return True


def choose_backend(kind: str, n_items: int) -> str:
    """'numpy' or 'faiss' for a requested kind ('auto' picks by collection size)."""
    if kind == "auto":
        return "faiss" if n_items > FAISS_MIN_ITEMS and has_faiss() else "numpy"
    return kind


def make_backend(embeddings: np.ndarray, kind: str = "numpy") -> SearchBackend:
    if kind == "numpy":
        return NumpyBackend(embeddings)
    if kind == "faiss":
        if not has_faiss():
            raise UserError("the FAISS backend needs faiss-cpu (pip install faiss-cpu)")
        return FaissBackend(embeddings)
    raise UserError(f"unknown search backend {kind!r} (numpy, faiss or auto)")
