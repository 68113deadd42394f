"""The frozen-backbone feature cache: with `finetune_stages: 0` and `feature_cache: true` the
backbone runs once per image and its (C, h, w) grid is stored as float16 on disk; epochs then
run only `AttributeModel.forward_head`. That is what makes the gallery config finish in minutes
on a laptop CPU. Cached grids cannot be augmented, so there is NO augmentation in that mode.

The file name carries a key over everything that determines the grids (backbone config and
weights, input size, the image list), so a changed backbone or image set is never served
stale grids; ranks share the work of filling it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cocoattr.data.datasets import AttributeDataset, Sample
from cocoattr.model import AttributeModel
from cocoattr.training.data import Preprocess
from cocoattr.training.distributed import Dist, barrier


class GridDataset(Dataset):
    """Cached (C, h, w) float16 grids with their labels: what the head trains on. Yields
    (grid, targets, known, cells). With `cells` (`data.objects: region`) several objects share
    their photo's grid (`rows[i]`: sample i's row of `grids`) and the head reads only their cells."""

    def __init__(self, grids: np.ndarray, samples: Sequence[Sample], rows: Sequence[int] | None = None,
                 cells: torch.Tensor | None = None) -> None:  # fmt: skip
        self.grids, self.samples = grids, list(samples)
        self.rows = list(range(len(self.samples))) if rows is None else list(rows)
        self.cells = cells
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        labels = self.samples[index].labels
        grid = torch.from_numpy(np.asarray(self.grids[self.rows[index]], dtype=np.float32))
        cells = self.cells[index] if self.cells is not None else torch.ones(grid[0].numel(), dtype=torch.bool)
        return grid, torch.from_numpy((labels == 1).astype(np.float32)), torch.from_numpy(labels != -1), cells


def _backbone_key(model: AttributeModel, samples: Sequence[Sample]) -> str:
    """Hash of what determines the grids: backbone config + weights, input size, image list."""
    from cocoattr.hub import model_config

    cfg = model_config(model)
    h = hashlib.sha256()
    h.update(json.dumps({k: cfg.get(k) for k in ("backbone", "concepts", "colour", "concept_temperature",
                                                   "image_size")}, sort_keys=True).encode())  # fmt: skip
    for name, tensor in sorted(model.backbone.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for s in samples:
        h.update(f"{s.path}|{s.box}\n".encode())
    return h.hexdigest()[:20]


@torch.no_grad()
def cached_grids(model: AttributeModel, samples: Sequence[Sample], cache_dir: Path, d: Dist,
                 batch_size: int, num_workers: int, desc: str) -> np.ndarray:  # fmt: skip
    """(N, C, h, w) float16 memmap of backbone grids, computed once (ranks share the work)."""
    from numpy.lib.format import open_memmap

    path = cache_dir / f"{model.backbone.name}-{model.image_size}-{_backbone_key(model, samples)}.npy"
    if not path.is_file():
        tmp = path.with_name(path.name + ".tmp.npy")
        if d.main:
            cache_dir.mkdir(parents=True, exist_ok=True)
            shape = (len(samples), model.backbone.channels, *model.grid)
            open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape).flush()
        barrier(d)
        grids = np.load(tmp, mmap_mode="r+")
        mine = list(range(d.rank, len(samples), d.world))
        loader = DataLoader(
            torch.utils.data.Subset(AttributeDataset(samples, Preprocess(model)), mine),
            batch_size=batch_size, num_workers=num_workers,
        )  # fmt: skip
        backbone = model.backbone.eval()  # frozen here
        done = 0
        for images, _, _ in tqdm(loader, desc=f"cache {desc}", disable=not d.main, leave=False):
            x = images.to(d.device)
            feats = backbone(x).float().cpu().numpy().astype(np.float16)
            grids[mine[done : done + len(feats)]] = feats
            done += len(feats)
        grids.flush()
        del grids
        barrier(d)
        if d.main:
            os.replace(tmp, path)
        barrier(d)
    return np.load(path, mmap_mode="r")
