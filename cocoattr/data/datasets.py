"""Training samples from any source, and one torch Dataset that serves them all.

A `Sample` is "this image (or this box of it) has these int8 labels"; each source (the bundled
gallery, COCO captions mined for labels, COCO Attributes object patches) only has to produce
samples. The Dataset takes the model's preprocessing as `transform`, so data code never
depends on the model. Splits hash the image id, so they are the same on every run and machine
and every patch of one photo lands in the same split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cocoattr.data.captions import CaptionMiner
from cocoattr.data.coco import SkipReport, captions_by_image, image_records, load_coco
from cocoattr.data.cocottributes import (
    ColumnMapping,
    crop_with_context,
    join_instances,
    load_cocottributes,
    map_columns,
    vocab_labels,
)
from cocoattr.data.gallery import Gallery, load_gallery
from cocoattr.errors import UserError
from cocoattr.images import load_image
from cocoattr.vocab import Vocabulary, load_vocabulary


@dataclass(frozen=True)
class Sample:
    image_id: int
    path: Path
    labels: np.ndarray  # (A,) int8: 1 positive, 0 negative, -1 unknown
    box: tuple[float, float, float, float] | None = None  # COCO (x, y, w, h); None = whole image
    source: str = ""
    mask: dict | None = None  # the object's pixels as COCO RLE (pycocotools), where a segment gives them


class AttributeDataset(Dataset):
    """Yields (transform(image or crop), labels float32 (A,), known_mask bool (A,)).

    `labels` is 1.0 for positives and 0.0 for negatives and unknowns; `known_mask` is False for
    unknowns so the loss can ignore them. An object sample (with a box) is its box cropped with
    `context`, unless `whole`: then the whole photo, for a head restricted to the object's region.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[Image.Image], torch.Tensor],
        *,
        context: float = 0.2,
        whole: bool = False,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.context = context
        self.whole = whole

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, index: int) -> Image.Image:
        """The PIL image (cropped with context for boxes) before the transform."""
        s = self.samples[index]
        image = load_image(s.path)
        return (
            crop_with_context(image, s.box, self.context) if s.box is not None and not self.whole else image
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        labels = self.samples[index].labels
        return (
            self.transform(self.image(index)),
            torch.from_numpy((labels == 1).astype(np.float32)),
            torch.from_numpy(labels != -1),
        )

    def label_matrix(self) -> np.ndarray:
        """(N, A) int8 labels of all samples, e.g. for class weights."""
        return np.stack([s.labels for s in self.samples])


# --- sources -----------------------------------------------------------------------------------


def gallery_samples(
    gallery: Gallery | None = None, labels: str = "hand", miner: CaptionMiner | None = None
) -> list[Sample]:
    """The bundled gallery with its hand labels (`labels='hand'`) or caption-mined ones ('mined')."""
    gallery = gallery or load_gallery()
    if labels == "hand":
        rows = gallery.labels
    elif labels == "mined":
        miner = miner or CaptionMiner(gallery.vocab)
        rows = np.stack([miner.labels(c) for c in gallery.captions]) if len(gallery) else gallery.labels
    else:
        raise ValueError(f"labels must be 'hand' or 'mined', not {labels!r}")
    return [
        Sample(i, p, rows[k].astype(np.int8), None, f"gallery-{labels}")
        for k, (i, p) in enumerate(zip(gallery.image_ids, gallery.paths, strict=True))
    ]


def coco_caption_samples(
    captions_json: Path,
    image_dir: Path,
    miner: CaptionMiner | None = None,
    *,
    check_files: bool = True,
    keep_empty: bool = False,
) -> tuple[list[Sample], SkipReport]:
    """Whole COCO images labelled by mining their captions; images with no mined label are
    dropped unless `keep_empty` (they would add nothing but unknowns)."""
    miner = miner or CaptionMiner()
    coco = load_coco(captions_json, "captions")
    records, report = image_records(coco, image_dir, check_files=check_files, source=str(captions_json))
    captions = captions_by_image(coco)
    samples = []
    for r in records:
        labels = miner.labels(captions[r.id])
        if not keep_empty and not (labels != -1).any():
            report.add("images with no mined label", r.id)
            continue
        samples.append(Sample(r.id, r.path, labels, None, "coco-captions"))
    return samples, report


def cocottributes_samples(
    pickle_path: Path,
    instances: dict[str, Path],
    image_dirs: dict[str, Path],
    vocab: Vocabulary | None = None,
    *,
    check_files: bool = True,
) -> tuple[list[Sample], SkipReport, ColumnMapping]:
    """COCO Attributes object patches (box + vote labels) joined with COCO-2014 instances.

    `instances`/`image_dirs` are keyed 'train2014'/'val2014'. Patches whose annotation or image
    is missing are skipped and listed in the report; the mapping says which columns were used.
    """
    vocab = vocab or load_vocabulary()
    data = load_cocottributes(pickle_path)
    mapping = map_columns(data.columns, vocab)
    if not mapping.columns:
        raise UserError(
            f"{pickle_path}: none of its {len(data.columns)} attribute columns match the vocabulary"
        )
    labels = vocab_labels(data, vocab, mapping)
    patches, report = join_instances(data, instances, image_dirs, check_files=check_files)
    samples = [
        Sample(p.image_id, p.image_path, labels[i], p.box.bbox, "coco-attributes")
        for i, p in enumerate(patches)
        if p is not None
    ]
    return samples, report, mapping
