"""Training data: samples per split, the model's own preprocessing, seeded augmentation.

config.data -> {'train': samples with train_labels, 'val'/'test': samples with eval_labels}
-> ImageDataset (decode, [augment], preprocess) -> (image, targets, known) per sample
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cocoattr.data.cocottributes import relative_box
from cocoattr.data.datasets import AttributeDataset, Sample
from cocoattr.data.splits import SPLITS, split_of
from cocoattr.errors import UserError
from cocoattr.model import AttributeModel
from cocoattr.training.config import DataConfig


def _gallery_splits(data: DataConfig) -> dict[str, dict[str, list[Sample]]]:
    from cocoattr.data.datasets import gallery_samples
    from cocoattr.data.gallery import load_gallery

    gallery = load_gallery(Path(data.root) if data.root else None)
    by_labels = {"hand": gallery_samples(gallery, "hand"), "captions": gallery_samples(gallery, "mined")}
    which = gallery.splits(data.split, data.split_seed)
    return {
        labels: {s: [x for x in samples if which[x.image_id] == s] for s in SPLITS}
        for labels, samples in by_labels.items()
    }


def _coco_samples(data: DataConfig) -> list[Sample]:
    root = Path(data.root or ".").expanduser()
    if data.source == "coco_captions":
        from cocoattr.data.captions import CaptionMiner
        from cocoattr.data.datasets import coco_caption_samples

        samples, report = coco_caption_samples(
            root / data.captions_json, root / data.image_dir, CaptionMiner(min_votes=data.min_votes)
        )
    else:
        from cocoattr.data.datasets import cocottributes_samples

        samples, report, _ = cocottributes_samples(
            root / data.attributes_pickle,
            {k: root / v for k, v in data.instances.items()},
            {k: root / v for k, v in data.image_dirs.items()},
        )
    print(f"cocoattr: {len(samples)} samples; {report.summary()}", file=sys.stderr)
    return samples


def _coconut_samples(data: DataConfig) -> dict[str, list[Sample]]:
    """{'coconut': dense labels, 'coconut+captions': the same filled in by mined captions (if asked),
    'coconut-objects': one sample per thing segment (if asked)}."""
    from cocoattr.data.captions import CaptionMiner
    from cocoattr.data.coco import captions_by_image, load_coco
    from cocoattr.data.coconut import coconut_object_samples, coconut_samples

    root = Path(data.root or ".").expanduser()
    objects: list[Sample] = []
    if "coconut-objects" in (data.train_labels, data.eval_labels):
        objects, report = coconut_object_samples(root / data.coconut, root / data.coconut_images)
        print(f"cocoattr: {len(objects)} COCONut objects; {report.summary()}", file=sys.stderr)
        if {data.train_labels, data.eval_labels} == {"coconut-objects"}:
            return {"coconut-objects": objects}
    captions = None
    if "coconut+captions" in (data.train_labels, data.eval_labels):
        captions = captions_by_image(load_coco(root / data.captions_json, "captions"))
    dense, merged, report = coconut_samples(
        root / data.coconut, root / data.coconut_images, captions=captions,
        miner=CaptionMiner(min_votes=data.min_votes),
    )  # fmt: skip
    print(f"cocoattr: {len(dense)} COCONut samples; {report.summary()}", file=sys.stderr)
    return {"coconut": dense, "coconut+captions": merged or [], "coconut-objects": objects}


def _by_image_split(samples: list[Sample], data: DataConfig) -> dict[str, list[Sample]]:
    return {s: [x for x in samples if split_of(x.image_id, data.split, data.split_seed) == s] for s in SPLITS}


def load_splits(data: DataConfig) -> dict[str, list[Sample]]:
    """{'train': samples with train_labels, 'val'/'test': samples with eval_labels}."""
    if data.source == "gallery":
        both = _gallery_splits(data)
        out = {"train": both[data.train_labels]["train"]}
        out |= {s: both[data.eval_labels][s] for s in ("val", "test")}
    elif data.source == "coconut":
        by_labels = _coconut_samples(data)
        out = {"train": _by_image_split(by_labels[data.train_labels], data)["train"]}
        out |= {s: v for s, v in _by_image_split(by_labels[data.eval_labels], data).items() if s != "train"}
    else:
        out = _by_image_split(_coco_samples(data), data)
    if data.max_train:
        out["train"] = out["train"][: data.max_train]
    if data.max_eval:
        out |= {s: out[s][: data.max_eval] for s in ("val", "test")}
    for split in ("train", "val"):
        if not out[split]:
            raise UserError(f"config: data gives no {split} samples (check data.split and data.max_*)")
    return out


class Preprocess:
    """The model's own preprocessing (`cocoattr.transforms.preprocess`, one image), picklable for workers."""

    def __init__(self, model: AttributeModel) -> None:
        self.size = model.image_size
        self.mean = model.backbone.mean.view(3, 1, 1).cpu().numpy()
        self.std = model.backbone.std.view(3, 1, 1).cpu().numpy()

    def __call__(self, image: Any) -> torch.Tensor:
        from cocoattr.transforms import preprocess

        return preprocess([image], self.size, self.mean, self.std)[0]


def augment(image: Any, rng: np.random.Generator) -> Any:
    """Random crop keeping 65-100% of each side, and a horizontal flip half the time."""
    from PIL import Image

    w, h = image.size
    cw, ch = int(w * rng.uniform(0.65, 1.0)), int(h * rng.uniform(0.65, 1.0))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    image = image.crop((x, y, x + cw, y + ch))
    return image.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


# ------------------------------------------------------------------ object regions (data.objects: region)


def sample_region(sample: Sample, size: tuple[int, int], mirrored: bool = False) -> np.ndarray | None:
    """The object's region as `inference.region_cells` reads it: its mask where the sample has
    one (COCO RLE), else its box relative to the photo's `size` (w, h); None for a whole image.
    `mirrored`: the region in the left-right mirrored photo."""
    if sample.mask is not None:
        from pycocotools import mask as rle

        mask = rle.decode(sample.mask).astype(bool)
        return np.ascontiguousarray(mask[:, ::-1]) if mirrored else mask
    if sample.box is None:
        return None
    x0, y0, x1, y1 = relative_box(sample.box, *size)
    x0, x1 = (1 - x1, 1 - x0) if mirrored else (x0, x1)
    return np.array([x0, y0, x1, y1], np.float32)


def photo_size(sample: Sample) -> tuple[int, int]:
    """(w, h) of the sample's photo: from its mask's RLE, else the file header (no decode); a
    whole-image sample needs none (0, 0)."""
    if sample.mask is not None:
        h, w = sample.mask["size"]
        return int(w), int(h)
    if sample.box is None:
        return 0, 0
    from PIL import Image

    with Image.open(sample.path) as im:
        return im.size


def sample_cells(samples: Sequence[Sample], grid: tuple[int, int], mirrored: bool = False) -> torch.Tensor:
    """(N, h*w) bool: the grid cells each sample's head reads (every cell for a whole image).
    Mirrored regions get their own cells: a mask's cells (sampled at pixel centres) are not
    exactly the mirror of the unmirrored ones."""
    h, w = grid
    rows = [_cells(s, photo_size(s), grid, mirrored) for s in samples]
    return torch.stack(rows) if rows else torch.zeros((0, h * w), dtype=torch.bool)


def _cells(
    sample: Sample, size: tuple[int, int], grid: tuple[int, int], mirrored: bool = False
) -> torch.Tensor:
    """(h*w,) bool: one sample's cells in a photo of `size` (w, h); every cell for a whole image."""
    from cocoattr.inference import region_cells

    region = sample_region(sample, size, mirrored)
    return (
        torch.ones(grid[0] * grid[1], dtype=torch.bool)
        if region is None
        else region_cells([region], *grid)[0]
    )


class ImageDataset(AttributeDataset):
    """AttributeDataset whose augmentation of item i in epoch e depends only on (seed, e, i).
    Yields (image, targets, known, cells): with `cells` (N, h*w) given (`data.objects: region`),
    each object sample is the whole photo and the head reads only its cells; augmentation is
    then a mirror only, so the region stays where the cells say. Else cells are all True."""

    def __init__(self, samples: Sequence[Sample], transform: Preprocess, train: bool, seed: int,
                 cells: torch.Tensor | None = None, grid: tuple[int, int] = (1, 1)) -> None:  # fmt: skip
        super().__init__(samples, transform, whole=cells is not None)
        self.train, self.seed, self.epoch = train, seed, 0
        self.cells, self.grid = cells, grid

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        labels = self.samples[index].labels
        image = self.image(index)
        if self.cells is None:
            cells = torch.ones(self.grid[0] * self.grid[1], dtype=torch.bool)
            if self.train:
                image = augment(image, np.random.default_rng([self.seed, self.epoch, index]))
        else:
            cells = self.cells[index]
            if self.train and np.random.default_rng([self.seed, self.epoch, index]).random() < 0.5:
                from PIL import Image

                image = image.transpose(Image.FLIP_LEFT_RIGHT)  # the photo is decoded: its size is known
                cells = _cells(self.samples[index], image.size, self.grid, mirrored=True)
        return (
            self.transform(image),
            torch.from_numpy((labels == 1).astype(np.float32)),
            torch.from_numpy(labels != -1),
            cells,
        )


def label_matrix(samples: Sequence[Sample]) -> np.ndarray:
    return np.stack([s.labels for s in samples]).astype(np.int8)
