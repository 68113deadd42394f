"""Thin entry beside the library (like torchvision's references/): the same as `python -m cocoattr train`.

python train/train.py --config train/configs/gallery.yaml --out runs/gallery
torchrun --nproc_per_node=2 train/train.py --config train/configs/gallery.yaml --out runs/gallery-ddp
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from cocoattr.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
