"""What `cocoattr data download` can fetch: every resource's files, with the sizes and hashes on record.

A resource is one or more remote files plus where they are extracted. Sizes and sha256s are
copied from published records (cited beside them); a file without one is checked by its
Content-Length and its content type instead (`cocoattr.data.download`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

COCO_BASE = "http://images.cocodataset.org/"
# The GitHub copy is the one the authors keep current ("pickled for Python 3", stored with git
# LFS; /raw/ redirects to media.githubusercontent.com). The official page
# http://cs.brown.edu/~gmpatter/cocottributes.html links a Python 2 pickle of the same data;
# the loader reads both, but the size and sha256 below are the GitHub copy's.
COCOTTRIBUTES_BASE = "https://github.com/genp/cocottributes/raw/master/"


@dataclass(frozen=True)
class RemoteFile:
    """One file on a server. size/md5/sha256 are recorded only where a source that downloaded
    the real file says so (see the registry below); None means unknown, and then the server's
    Content-Length and the content check are all a download is checked against."""

    base: str
    path: str  # relative to base; kept when a mirror replaces the base
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None

    @property
    def filename(self) -> str:
        return PurePosixPath(self.path).name

    def url(self, base_url: str | None = None) -> str:
        return (base_url or self.base).rstrip("/") + "/" + self.path


@dataclass(frozen=True)
class Resource:
    """A named thing a user asks for; `extract_to` is None for files used as they are."""

    name: str
    description: str
    files: tuple[RemoteFile, ...]
    extract_to: str | None
    provides: tuple[str, ...]  # paths (relative to root) a user will look for afterwards
    hub: HubDataset | None = None  # fetched through huggingface_hub instead of `files`


@dataclass(frozen=True)
class HubDataset:
    """A Hugging Face dataset repo, fetched with huggingface_hub into root/`provides[0]` (resumed,
    kept between runs, HF_ENDPOINT / HF_HUB_OFFLINE honoured); its sizes and hashes are the Hub's."""

    repo: str
    patterns: tuple[str, ...] = ("data/*.parquet", "README.md")


# Where the numbers come from (none was computed here: this machine cannot reach the servers).
# COCO sha256s (all six zips) and the 2014 image zip sizes: TensorFlow Datasets'
# url_checksums/coco.txt (also coco2014.txt, coco2017.txt), which agree with the sha256s in
# torchvision's prototype COCO dataset and with the 2017 sizes and md5s recorded here before.
# annotations_trainval2014.zip's size (252872794 there) is left unpinned: its md5 and sha256
# identify it. COCO Attributes: the git LFS pointer of data/cocottributes_eccv_version.pkl in
# github.com/genp/cocottributes (commit 019b18a1), i.e. the object /raw/master/ serves; if the
# authors replace that file, the size check will say so.
_ANN_2014 = RemoteFile(
    COCO_BASE,
    "annotations/annotations_trainval2014.zip",
    md5="0a379cfc70b0e71301e0f377548639bd",
    sha256="031296bbc80c45a1d1f76bf9a90ead27e94e99ec629208449507a4917a3bf009",
)
_ANN_2017 = RemoteFile(
    COCO_BASE,
    "annotations/annotations_trainval2017.zip",
    252907541,
    "f4bbac642086de4f52a3fdda2de5fa2c",
    "113a836d90195ee1f884e704da6304dfaaecff1f023f49b6ca93c4aaae470268",
)
_VAL_2017 = RemoteFile(
    COCO_BASE,
    "zips/val2017.zip",
    815585330,
    "442b8da7639aecaf257c1dceb8ba8c80",
    "4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05",
)
_TRAIN_2017 = RemoteFile(
    COCO_BASE,
    "zips/train2017.zip",
    19336861798,
    "cced6f7f71b7629ddf16f17bbcfab6b2",
    "69a8bb58ea5f8f99d24875f21416de2e9ded3178e903f1f7603e283b9e06d929",
)
# 2014 image zips: COCO Attributes patches name 2014 files. No md5 recorded (one source only).
_VAL_2014 = RemoteFile(
    COCO_BASE,
    "zips/val2014.zip",
    6645013297,
    sha256="fe9be816052049c34717e077d9e34aa60814a55679f804cd043e3cbee3b9fde0",
)
_TRAIN_2014 = RemoteFile(
    COCO_BASE,
    "zips/train2014.zip",
    13510573713,
    sha256="ede4087e640bddba550e090eae701092534b554b42b05ac33f0300b984b31775",
)
_COCOTTRIBUTES = RemoteFile(
    COCOTTRIBUTES_BASE,
    "data/cocottributes_eccv_version.pkl",
    1261766525,
    sha256="5604b2a9bf14cf3d73b64e6fe602267a628ebe09f9fe0a94641b2745fdfeefbd",
)

_COCO_SPLITS = ("train2014", "val2014", "train2017", "val2017")
# COCONut panoptic masks (cocoattr.data.coconut); sizes from the repos' file listings (2026-12).
# The images are COCO's: coco-images-val for coconut-val, coco-images-train for coconut-s; coconut-b
# also needs COCO's unlabeled2017 images, which no resource here fetches.
_COCONUT = (
    ("coconut-val", "xdeng77/relabeled_coco_val", "relabeled COCO val2017 masks, 5k images", "33 MB"),
    ("coconut-s", "xdeng77/coconut_s", "COCONut-S masks, 118k train2017 images", "818 MB"),
    ("coconut-b", "xdeng77/coconut_b", "COCONut-B masks, 242k train2017 + unlabeled2017 images", "1.6 GB"),
)

RESOURCES: dict[str, Resource] = {
    r.name: r
    for r in (
        Resource(
            "coco-captions",
            "COCO captions 2014+2017 (annotations_trainval*.zip, ~500 MB)",
            (_ANN_2014, _ANN_2017),
            "coco",
            tuple(f"coco/annotations/captions_{s}.json" for s in _COCO_SPLITS),
        ),
        Resource(
            "coco-instances",
            "COCO object boxes 2014+2017 (same zips as coco-captions)",
            (_ANN_2014, _ANN_2017),
            "coco",
            tuple(f"coco/annotations/instances_{s}.json" for s in _COCO_SPLITS),
        ),
        Resource(
            "coco-images-val", "COCO val2017 images (5k, 816 MB)", (_VAL_2017,), "coco", ("coco/val2017",)
        ),
        Resource(
            "coco-images-train",
            "COCO train2017 images (118k, 19 GB)",
            (_TRAIN_2017,),
            "coco",
            ("coco/train2017",),
        ),
        Resource(
            "coco-images-val2014",
            "COCO val2014 images (40k, 6.6 GB)",
            (_VAL_2014,),
            "coco",
            ("coco/val2014",),
        ),
        Resource(
            "coco-images-train2014",
            "COCO train2014 images (83k, 13.5 GB)",
            (_TRAIN_2014,),
            "coco",
            ("coco/train2014",),
        ),
        *(
            Resource(
                name,
                f"COCONut {what} (Hub dataset {repo}, {size})",
                (),
                None,
                (f"coconut/{repo.split('/')[1]}",),
                HubDataset(repo),
            )
            for name, repo, what, size in _COCONUT
        ),
        Resource(
            "coco-attributes",
            "COCO Attributes (cocottributes_eccv_version.pkl, needs the 2014 instances and images)",
            (_COCOTTRIBUTES,),
            None,
            ("cocottributes/cocottributes_eccv_version.pkl",),
        ),
    )
}
