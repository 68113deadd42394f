"""Download the public data cocoattr trains on: COCO annotations and images, COCO Attributes.

Downloads are large (train2017.zip is 19 GB) and networks drop, so every file is fetched into
`NAME.part`, resumed with an HTTP Range request on the next attempt (a server that ignores
Range makes us start over), verified against a known size / md5 where we know one (otherwise
against the server's Content-Length), and only then renamed into place, with a `NAME.sha256`
sidecar so later runs and other machines can check the file. Zips are extracted defensively
(no absolute paths, `..`, symlinks or zip bombs) into a temporary folder first.

Layout under `root`: `downloads/` holds the archives, `coco/` the extracted COCO tree
(`coco/annotations/captions_train2017.json`, `coco/val2017/000000000139.jpg`, ...),
`cocottributes/` the COCO Attributes pickle.

A mirror (or a test server) is used by passing `base_url` / `--base-url` or setting
`COCOATTR_DATA_BASE_URL`: it replaces the scheme+host+path prefix of every resource, so the
mirror must serve the same relative paths (`annotations/annotations_trainval2017.zip`,
`zips/val2017.zip`, `data/cocottributes_eccv_version.pkl`).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cocoattr.errors import UserError

BASE_URL_ENV = "COCOATTR_DATA_BASE_URL"
COCO_BASE = "http://images.cocodataset.org/"
# The GitHub copy is the one the authors keep current ("pickled for Python 3", stored with git
# LFS; /raw/ redirects to media.githubusercontent.com). The official page
# http://cs.brown.edu/~gmpatter/cocottributes.html links a Python 2 pickle of the same data;
# the loader reads both.
COCOTTRIBUTES_BASE = "https://github.com/genp/cocottributes/raw/master/"

CHUNK = 1 << 20
TIMEOUT_S = 60


@dataclass(frozen=True)
class RemoteFile:
    """One file on a server. size/md5 are recorded only where several sources agree."""

    base: str
    path: str  # relative to base; kept when a mirror replaces the base
    size: int | None = None
    md5: str | None = None

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


_ANN_2014 = RemoteFile(
    COCO_BASE, "annotations/annotations_trainval2014.zip", md5="0a379cfc70b0e71301e0f377548639bd"
)
_ANN_2017 = RemoteFile(
    COCO_BASE, "annotations/annotations_trainval2017.zip", 252907541, "f4bbac642086de4f52a3fdda2de5fa2c"
)
_VAL_2017 = RemoteFile(COCO_BASE, "zips/val2017.zip", 815585330, "442b8da7639aecaf257c1dceb8ba8c80")
_TRAIN_2017 = RemoteFile(COCO_BASE, "zips/train2017.zip", 19336861798, "cced6f7f71b7629ddf16f17bbcfab6b2")
# 2014 image zips: COCO Attributes patches name 2014 files. Sizes unrecorded: checked
# against Content-Length, then a sha256 sidecar is written.
_VAL_2014 = RemoteFile(COCO_BASE, "zips/val2014.zip")
_TRAIN_2014 = RemoteFile(COCO_BASE, "zips/train2014.zip")
_COCOTTRIBUTES = RemoteFile(COCOTTRIBUTES_BASE, "data/cocottributes_eccv_version.pkl")

_COCO_SPLITS = ("train2014", "val2014", "train2017", "val2017")

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
        Resource(
            "coco-attributes",
            "COCO Attributes (cocottributes_eccv_version.pkl, needs the 2014 instances and images)",
            (_COCOTTRIBUTES,),
            None,
            ("cocottributes/cocottributes_eccv_version.pkl",),
        ),
    )
}


def resolve_base_url(base_url: str | None) -> str | None:
    """The explicit argument wins over the environment variable; empty means 'official servers'."""
    value = base_url if base_url else os.environ.get(BASE_URL_ENV, "")
    value = value.strip()
    if not value:
        return None
    if urllib.parse.urlsplit(value).scheme not in ("http", "https", "file"):
        raise UserError(f"base URL {value!r} must start with http://, https:// or file://")
    return value


def download(name: str, root: Path, base_url: str | None = None, *, retries: int = 3) -> Path:
    """Fetch (and extract) resource `name` under `root`; returns the folder or file it provides.

    Already complete files and extractions are skipped, so it is cheap to call again.
    """
    try:
        resource = RESOURCES[name]
    except KeyError:
        raise UserError(f"unknown data resource {name!r}; choose from {', '.join(RESOURCES)}") from None
    root = Path(root)
    base = resolve_base_url(base_url)
    if resource.extract_to is None:
        target_dir = root / Path(resource.provides[0]).parent
        for f in resource.files:
            fetch(f.url(base), target_dir / f.filename, size=f.size, md5=f.md5, retries=retries)
        return root / resource.provides[0]
    for f in resource.files:
        archive = fetch(f.url(base), root / "downloads" / f.filename, size=f.size, md5=f.md5, retries=retries)
        safe_extract(archive, root / resource.extract_to)
    return root / resource.extract_to


def run_download(args) -> int:
    """CLI entry: `python -m cocoattr data download NAME... --root DIR [--base-url URL]`."""
    root = Path(args.root)
    for name in args.names:
        path = download(name, root, getattr(args, "base_url", None))
        print(f"{name}: ready at {path}")
    return 0


# --- fetching -----------------------------------------------------------------------------


def fetch(
    url: str,
    dest: Path,
    *,
    size: int | None = None,
    md5: str | None = None,
    retries: int = 3,
    progress: bool = True,
) -> Path:
    """Download `url` to `dest` atomically, resuming `dest.part`; verify and write `dest.sha256`."""
    dest = Path(dest)
    if _is_complete(dest, size):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        try:
            expected = _stream(url, part, size, progress)
            break
        except _Interrupted as e:
            attempt += 1
            if attempt > retries:
                raise UserError(
                    f"download of {url} was interrupted after {part.stat().st_size if part.exists() else 0} "
                    f"bytes ({e}); run the same command again to resume from {part}"
                ) from None
            time.sleep(min(2.0**attempt, 30.0) if not _fast_retries() else 0.0)
    _verify_and_commit(url, part, dest, expected, md5)
    return dest


class _Interrupted(Exception):
    """The transfer stopped part way; the .part file keeps what arrived."""


def _fast_retries() -> bool:
    return os.environ.get("COCOATTR_FAST_RETRY") == "1"


def _is_complete(dest: Path, size: int | None) -> bool:
    if not dest.is_file():
        return False
    if size is not None:
        return dest.stat().st_size == size
    return _sidecar(dest).is_file()


def _sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).hostname or url


def _open(url: str, start: int):
    request = urllib.request.Request(url, headers={"User-Agent": "cocoattr-data/1"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416:
            return e  # handled by the caller: the .part may already be complete
        raise UserError(
            f"{url}: the server answered HTTP {e.code} {e.reason} — check the URL or pass --base-url"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise UserError(
            f"could not reach {_host(url)}: {reason} — check your connection or pass --base-url "
            f"(or set {BASE_URL_ENV}) to use a mirror"
        ) from None


def _total_from(response, start: int) -> int | None:
    """Full file size from Content-Range (206) or Content-Length (200), if the server says."""
    content_range = response.headers.get("Content-Range", "")
    if response.status == 206 and "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    if length and length.isdigit():
        return int(length) + (start if response.status == 206 else 0)
    return None


def _stream(url: str, part: Path, size: int | None, progress: bool) -> int | None:
    """Append the rest of `url` to `part`; returns the expected total size (if known)."""
    start = part.stat().st_size if part.exists() else 0
    if size is not None and start > size:
        start = 0  # garbage from another file: start over
    response = _open(url, start)
    with response:
        if response.status == 416:
            # Range beyond the end: the part is complete only if it matches what we expect.
            if size is not None and start == size:
                return size
            part.unlink(missing_ok=True)
            raise _Interrupted("server refused the resume range; restarting")
        if start and response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {start}-"):
                part.unlink(missing_ok=True)
                raise _Interrupted(f"server resumed at the wrong offset ({content_range!r}); restarting")
            mode = "ab"
        else:
            start, mode = 0, "wb"  # a 200 to a Range request: the server ignored it, start over
        total = _total_from(response, start)
        if size is not None and total is not None and total != size:
            raise UserError(
                f"{url}: server reports {total} bytes but this file is known to be {size} bytes — "
                "the mirror serves a different file"
            )
        expected = size if size is not None else total
        bar = _progress_bar(part.name.removesuffix(".part"), expected, start, progress)
        received = start
        try:
            with open(part, mode) as out:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (OSError, http.client.HTTPException) as e:
                        raise _Interrupted(f"{type(e).__name__}: {e}") from None
                    if not chunk:
                        break
                    try:
                        out.write(chunk)
                    except OSError as e:
                        raise UserError(f"could not write {part}: {e.strerror or e}") from None
                    received += len(chunk)
                    bar.update(len(chunk))
        finally:
            bar.close()
    if expected is not None and received < expected:
        raise _Interrupted(f"connection closed at {received} of {expected} bytes")
    return expected


def _progress_bar(label: str, total: int | None, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=label,
        disable=None if enabled else True,  # None: only on a terminal
        file=sys.stderr,
    )


def _digests(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def _verify_and_commit(url: str, part: Path, dest: Path, expected: int | None, md5: str | None) -> None:
    actual = part.stat().st_size
    if expected is not None and actual != expected:
        part.unlink(missing_ok=True)
        raise UserError(
            f"{dest}: downloaded {actual} bytes but expected {expected}; removed the partial file"
        )
    got_md5, got_sha = _digests(part)
    if md5 is not None and got_md5 != md5.lower():
        part.unlink(missing_ok=True)
        raise UserError(
            f"{dest}: checksum mismatch (md5 {got_md5}, expected {md5}) for {url}; the corrupt download was "
            "removed — run the command again"
        )
    os.replace(part, dest)
    tmp = _sidecar(dest).with_suffix(".sha256.tmp")
    tmp.write_text(f"{got_sha}  {dest.name}\n", encoding="utf-8")
    os.replace(tmp, _sidecar(dest))


def verify_sidecar(path: Path) -> bool:
    """Re-hash `path` and compare with its `.sha256` sidecar (False when there is none)."""
    sidecar = _sidecar(Path(path))
    if not sidecar.is_file():
        return False
    recorded = sidecar.read_text(encoding="utf-8").split()[0]
    return _digests(Path(path))[1] == recorded


# --- extracting ---------------------------------------------------------------------------

MAX_TOTAL_BYTES = 64 << 30  # train2017.zip holds ~19.3 GB of JPEGs
MAX_RATIO = 200  # JSON compresses ~5-10x, JPEG ~1x; zip bombs are 1000x and more
RATIO_MIN_BYTES = 1 << 20  # tiny members may compress absurdly well without harm


def _member_target(info: zipfile.ZipInfo, archive: Path) -> PurePosixPath | None:
    """The checked relative path of a member (None for directories); raises on anything unsafe."""
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UserError(f"{archive}: refusing to extract symlink member {name!r}")
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UserError(f"{archive}: refusing to extract member with an absolute path {name!r}")
    path = PurePosixPath(name)
    if any(p == ".." for p in path.parts):
        raise UserError(f"{archive}: refusing to extract member {name!r}, which points outside the folder")
    if info.is_dir() or not path.parts:
        return None
    return path


def _marker(dest: Path, archive: Path) -> Path:
    return dest / ".extracted" / (archive.name + ".txt")


def safe_extract(
    archive: Path, dest: Path, *, max_total: int = MAX_TOTAL_BYTES, max_ratio: float = MAX_RATIO
) -> list[Path]:
    """Extract `archive` into `dest` after checking every member; skip if already extracted.

    Files land in a temporary folder inside `dest` and are renamed into place one by one, so an
    interrupted extraction never leaves a half-written file under its real name; a marker listing
    the members is written last and lets the next call skip the work.
    """
    archive, dest = Path(archive), Path(dest)
    marker = _marker(dest, archive)
    if marker.is_file():
        members = [dest / line for line in marker.read_text(encoding="utf-8").splitlines() if line]
        if all(m.exists() for m in members):
            return members
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{archive}: not a readable zip file ({e}); delete it and download again") from None
    with zf:
        plan: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        total = 0
        for info in zf.infolist():
            target = _member_target(info, archive)
            if target is None:
                continue
            total += info.file_size
            if total > max_total:
                raise UserError(f"{archive}: refusing to extract over {max_total} bytes (possible zip bomb)")
            if info.file_size > RATIO_MIN_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
                raise UserError(
                    f"{archive}: member {info.filename!r} expands "
                    f"{info.file_size / max(info.compress_size, 1):.0f}x "
                    "(possible zip bomb); refusing to extract"
                )
            plan.append((info, target))
        dest.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(dest).free
        if total > free:
            raise UserError(f"{archive}: needs {total} bytes to extract but only {free} are free in {dest}")
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
        try:
            for info, target in plan:
                out_path = tmp.joinpath(*target.parts)
                out_path.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                with zf.open(info) as src, open(out_path, "wb") as out:
                    while chunk := src.read(CHUNK):
                        written += len(chunk)
                        if written > info.file_size:  # header lied about the size
                            raise UserError(f"{archive}: member {info.filename!r} is larger than declared")
                        out.write(chunk)
            for _, target in plan:
                final = dest.joinpath(*target.parts)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp.joinpath(*target.parts), final)
        except zipfile.BadZipFile as e:
            raise UserError(f"{archive}: corrupt zip ({e}); delete it and download again") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("".join(f"{t}\n" for _, t in plan), encoding="utf-8")
    return [dest.joinpath(*t.parts) for _, t in plan]
