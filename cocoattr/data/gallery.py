"""The bundled gallery: a few hand-labelled photos with COCO-style captions.

Many parts of cocoattr use it (tests, the demo, the miner's evaluation, quick training
checks), so reading it lives in one place. `captions.json` is in COCO captions format;
`attributes.json` is `{"annotations": [{"image_id", "positive": [...], "unknown": [...]}]}`
where every other vocabulary attribute is a judged negative.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from cocoattr.data.coco import captions_by_image, load_coco, read_json
from cocoattr.data.splits import rank_split
from cocoattr.errors import UserError
from cocoattr.images import path_inside
from cocoattr.vocab import Vocabulary, load_vocabulary

# A few dozen images split 0.8/0.1/0.1 would leave 3-5 for validation and test, so the gallery
# uses exact counts (46 images: 23 / 12 / 11), ordered by the same hash as every other split.
GALLERY_SPLIT = (0.5, 0.25, 0.25)
GALLERY_SPLIT_SEED = 0


@dataclass
class Gallery:
    """Row i of every field describes image `image_ids[i]`."""

    image_ids: list[int]
    paths: list[Path]
    captions: list[list[str]]
    labels: np.ndarray  # (N, A) int8 hand labels; -1 where the labeller was unsure
    vocab: Vocabulary

    def __len__(self) -> int:
        return len(self.image_ids)

    def splits(self, fractions=GALLERY_SPLIT, seed: int = GALLERY_SPLIT_SEED) -> dict[int, str]:  # noqa: ANN001
        """image id -> 'train' / 'val' / 'test': what training and `evaluate --split` use."""
        return rank_split(self.image_ids, fractions, seed)


def gallery_root() -> Path:
    """The gallery folder shipped inside the package."""
    return Path(str(resources.files("cocoattr").joinpath("gallery")))


def read_hand_labels(path: Path, vocab: Vocabulary | None = None) -> dict[int, np.ndarray]:
    """image id -> (A,) int8 labels from an attributes.json: listed positives 1, listed unknowns
    -1, every other vocabulary attribute 0. Unknown attribute names are an error, not a skip,
    because a typo would silently turn a positive into a negative."""
    vocab = vocab or load_vocabulary()
    path = Path(path)
    data = read_json(path)
    anns = data.get("annotations")
    if not isinstance(anns, list):
        raise UserError(f"{path}: expected {{'annotations': [...]}} with one entry per image")
    out: dict[int, np.ndarray] = {}
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict) or "image_id" not in ann:
            raise UserError(f"{path}: annotations[{i}] has no 'image_id'")
        image_id = int(ann["image_id"])
        if image_id in out:
            raise UserError(f"{path}: image_id {image_id} is labelled twice")
        row = np.zeros(len(vocab), dtype=np.int8)
        for key, value in (("unknown", -1), ("positive", 1)):
            names = ann.get(key, [])
            if not isinstance(names, list):
                raise UserError(f"{path}: annotations[{i}].{key} must be a list of attribute names")
            bad = [n for n in names if n not in vocab]
            if bad:
                raise UserError(f"{path}: image_id {image_id} names attributes not in the vocabulary: {bad}")
            row[[vocab.index(n) for n in names]] = value
        out[image_id] = row
    return out


def load_gallery(
    root: Path | None = None, vocab: Vocabulary | None = None, *, check_files: bool = True
) -> Gallery:
    """The gallery's images, captions and hand labels (images without hand labels get all -1)."""

    vocab = vocab or load_vocabulary()
    root = Path(root) if root is not None else gallery_root()
    captions_path, labels_path = root / "captions.json", root / "attributes.json"
    if not captions_path.is_file():
        raise UserError(f"{captions_path}: gallery captions not found")
    coco = load_coco(captions_path, "captions")
    captions = captions_by_image(coco)
    hand = read_hand_labels(labels_path, vocab) if labels_path.is_file() else {}
    stray = sorted(set(hand) - set(coco.imgs))
    if stray:
        raise UserError(f"{labels_path}: labels for image ids not in {captions_path.name}: {stray[:5]}")
    ids, paths, missing = [], [], []
    for image_id in sorted(coco.imgs):
        name = coco.imgs[image_id]["file_name"]
        candidates = (
            path_inside(root, name, str(captions_path), "image file_name", "the gallery folder"),
            root / "images" / name,
        )
        path = next((p for p in candidates if p.is_file()), candidates[0])
        if check_files and not path.is_file():
            missing.append(name)
            continue
        ids.append(int(image_id))
        paths.append(path)
    if missing:
        raise UserError(f"{root}: {len(missing)} gallery images are missing (e.g. {missing[:3]})")
    unknown = np.full(len(vocab), -1, dtype=np.int8)
    labels = np.stack([hand.get(i, unknown) for i in ids]) if ids else np.zeros((0, len(vocab)), np.int8)
    return Gallery(ids, paths, [captions[i] for i in ids], labels.astype(np.int8), vocab)
