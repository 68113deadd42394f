"""Download the public data cocoattr trains on: COCO annotations and images, COCO Attributes.

Downloads are large (train2017.zip is 19 GB) and networks drop, so every file is fetched into
`NAME.part`, resumed with an HTTP Range request on the next attempt (a server that ignores
Range makes us start over; one that resumes at another offset is refused), and a read that
stalls for `COCOATTR_DOWNLOAD_TIMEOUT` seconds (default 30) counts as a dropped connection: the
bytes received so far stay in the `.part`. A file is kept only when it passes every check:
its size (the recorded one, else the server's Content-Length / Content-Range total), its
recorded md5 / sha256, and a content check by type (`cocoattr.data.verify`: zip structure,
pickle header and STOP opcode, JSON, no HTML error page). Only then is it renamed into place
and given a `NAME.sha256` sidecar, so later runs and other machines can check the file. A failed
check removes the file (a possible prefix of the real one stays as `.part` to resume), and the
error names the URL and what was wrong. Zips are extracted defensively (no absolute paths,
`..`, symlinks or zip bombs) into a temporary folder first.

Layout under `root`: `downloads/` holds the archives, `coco/` the extracted COCO tree
(`coco/annotations/captions_train2017.json`, `coco/val2017/000000000139.jpg`, ...),
`cocottributes/` the COCO Attributes pickle, `coconut/NAME/data/*.parquet` COCONut (`fetch_hub_dataset`).

A mirror (or a test server) is used by passing `base_url` / `--base-url` or setting
`COCOATTR_DATA_BASE_URL`: it replaces the scheme+host+path prefix of every resource, so the
mirror must serve the same relative paths (`annotations/annotations_trainval2017.zip`,
`zips/val2017.zip`, `data/cocottributes_eccv_version.pkl`) and the same files.
"""

from __future__ import annotations

import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from cocoattr.atomic import atomic_write_text
from cocoattr.data import verify
from cocoattr.data.resources import RESOURCES, HubDataset, Resource
from cocoattr.data.verify import safe_extract
from cocoattr.errors import UserError, http_client_errors

BASE_URL_ENV = "COCOATTR_DATA_BASE_URL"
TIMEOUT_ENV = "COCOATTR_DOWNLOAD_TIMEOUT"
CHUNK = 1 << 20
DEFAULT_TIMEOUT_S = 30.0  # a read that waits this long for the next byte is a dropped connection


def resolve_base_url(base_url: str | None) -> str | None:
    """The explicit argument wins over the environment variable; empty means 'official servers'."""
    value = base_url if base_url else os.environ.get(BASE_URL_ENV, "")
    value = value.strip()
    if not value:
        return None
    if urllib.parse.urlsplit(value).scheme not in ("http", "https", "file"):
        raise UserError(f"base URL {value!r} must start with http://, https:// or file://")
    return value


def download_timeout() -> float:
    """Seconds a read may wait for the next byte: `COCOATTR_DOWNLOAD_TIMEOUT`, else 30."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise UserError(f"{TIMEOUT_ENV}={raw!r} must be a positive number of seconds")
    return value


def _resource(name: str) -> Resource:
    try:
        return RESOURCES[name]
    except KeyError:
        raise UserError(f"unknown data resource {name!r}; choose from {', '.join(RESOURCES)}") from None


def _check_root(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise UserError(f"--root {root} is a file, not a folder; give the folder to download into")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--root {root}: cannot create the folder ({e.strerror or e})") from None


def download(name: str, root: Path, base_url: str | None = None, *, retries: int = 3) -> Path:
    """Fetch (and extract) resource `name` under `root`; returns the folder or file it provides.

    Already complete files and extractions are skipped, so it is cheap to call again.
    """
    resource = _resource(name)
    root = Path(root)
    base = resolve_base_url(base_url)
    download_timeout()  # a bad COCOATTR_DOWNLOAD_TIMEOUT fails before any network work
    _check_root(root)
    if resource.hub is not None:
        return fetch_hub_dataset(resource.hub, root / resource.provides[0])
    if resource.extract_to is None:
        target_dir = root / Path(resource.provides[0]).parent
        for f in resource.files:
            fetch(
                f.url(base), target_dir / f.filename, size=f.size, md5=f.md5, sha256=f.sha256, retries=retries
            )
        return root / resource.provides[0]
    for f in resource.files:
        archive = fetch(
            f.url(base),
            root / "downloads" / f.filename,
            size=f.size,
            md5=f.md5,
            sha256=f.sha256,
            retries=retries,
        )
        safe_extract(archive, root / resource.extract_to)
    return root / resource.extract_to


def download_all(names: Sequence[str], root: Path, base_url: str | None = None) -> int:
    """Download every resource in `names` under `root`, printing where each is ready; returns 0.

    All arguments are checked before the first request: an unknown name, a bad base URL or
    timeout, or a `root` that is a file raise UserError (exit 2) with nothing fetched.
    """
    for name in names:
        _resource(name)
    base = resolve_base_url(base_url)
    download_timeout()
    root = Path(root)
    _check_root(root)
    for name in names:
        path = download(name, root, base)
        print(f"{name}: ready at {path}")
    return 0


# --- Hub datasets --------------------------------------------------------------------------


def fetch_hub_dataset(hub: HubDataset, dest: Path, *, retries: int = 3) -> Path:
    """The files of `hub.repo` matching its patterns in `dest`: listed at one commit by
    huggingface_hub (sizes, LFS sha256, URLs; HF_ENDPOINT honoured), moved by `fetch`, so a cut
    keeps `FILE.part` for the next run (huggingface_hub 2 drops it). Offline, a complete `dest`
    is used as it is; anything else is one line."""
    from fnmatch import fnmatch

    from huggingface_hub import HfApi, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    where = f"Hub dataset {hub.repo!r}"
    try:
        api = HfApi()
        revision = api.dataset_info(hub.repo, revision="main").sha
        listing = api.list_repo_tree(hub.repo, repo_type="dataset", recursive=True, revision=revision)
        files = [f for f in listing if hasattr(f, "size") and any(fnmatch(f.path, p) for p in hub.patterns)]
    except RepositoryNotFoundError:
        raise UserError(f"{where} not found (or private: set HF_TOKEN)") from None
    except (OfflineModeIsEnabled, HfHubHTTPError, OSError, ValueError, *http_client_errors()) as e:
        if _complete_offline_copy(hub, dest):
            return dest
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise UserError(
            f"{where} is not (completely) downloaded under {dest} and the Hub cannot be reached "
            f"(offline? {first}); run the same command online to fetch or resume it"
        ) from None
    for f in files:
        sha256 = f.lfs.sha256 if getattr(f, "lfs", None) else None
        url = hf_hub_url(hub.repo, f.path, repo_type="dataset", revision=revision)
        fetch(url, _inside(dest, f.path, where), size=f.size, sha256=sha256, retries=retries)
    parquet = [p for p in hub.patterns if p.endswith(".parquet")]
    if parquet and not any(any(dest.glob(p)) for p in parquet):
        raise UserError(f"{where}: the repo has no {', '.join(parquet)} (not a COCONut-style dataset repo?)")
    return dest


def _inside(dest: Path, name: str, where: str) -> Path:
    """`dest/name`, refusing a listed name that would land outside `dest` (a lying server)."""
    if name.startswith("/") or not (dest / name).resolve().is_relative_to(dest.resolve()):
        raise UserError(f"{where} lists a file outside the dataset folder ({name!r}); refused")
    return dest / name


def _complete_offline_copy(hub: HubDataset, dest: Path) -> bool:
    """Every parquet in `dest` vouched for by `fetch` (a `.sha256` sidecar), no `.part` left."""
    if not dest.is_dir() or any(dest.rglob("*.part")):
        return False
    parquet = [p for p in hub.patterns if p.endswith(".parquet")]
    found = [q for p in parquet for q in dest.glob(p)]
    return bool(found) and all(_sidecar(q).is_file() for q in found)


# --- fetching -----------------------------------------------------------------------------


def fetch(
    url: str,
    dest: Path,
    *,
    size: int | None = None,
    md5: str | None = None,
    sha256: str | None = None,
    retries: int = 3,
    progress: bool = True,
) -> Path:
    """Download `url` to `dest`, resuming `dest.part`; verify it, then write `dest.sha256`.

    Returns at once when `dest` is there and looks complete (`_is_complete`). A transfer that
    stops early (dropped, stalled, cut short) is retried `retries` times, each resuming from the
    bytes kept in `dest.part`; anything that fails verification is a UserError naming `url`.
    """
    dest = Path(dest)
    timeout = download_timeout()
    if _is_complete(dest, size, sha256):
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the folder {dest.parent}: {e.strerror or e}") from None
    if dest.exists() and not dest.is_file():
        raise UserError(f"{dest} exists and is not a file; move it away and run the command again")
    _sidecar(dest).unlink(missing_ok=True)  # whatever is at dest is no longer vouched for
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        try:
            total = _stream(url, part, size, progress, timeout)
            _check_content(url, part, resumable=total is None)
            break
        except _Interrupted as e:
            attempt += 1
            if attempt > retries:
                raise UserError(
                    f"download of {url} was interrupted after {part.stat().st_size if part.exists() else 0} "
                    f"bytes ({e}); run the same command again to resume from {part}"
                ) from None
            time.sleep(min(2.0**attempt, 30.0) if not _fast_retries() else 0.0)
    _verify_and_commit(url, part, dest, total, md5, sha256)
    return dest


class _Interrupted(Exception):
    """The transfer stopped part way; the .part file keeps what arrived."""


def _fast_retries() -> bool:
    return os.environ.get("COCOATTR_FAST_RETRY") == "1"


def _umask() -> int:
    mask = os.umask(0o022)  # only readable by setting it; set straight back
    os.umask(mask)
    return mask


def _is_complete(dest: Path, size: int | None, sha256: str | None) -> bool:
    """`dest` is there and nothing cheap says it is wrong (re-hashing it is `verify_sidecar`).

    Without a recorded size only a sidecar vouches for a file; a sidecar naming another sha256
    than the recorded one, or a file that fails `verify.quick_check` (an HTML page or a cut-short
    pickle kept by an older version), is fetched again.
    """
    if not dest.is_file():
        return False
    if size is not None and dest.stat().st_size != size:
        return False
    sidecar = _sidecar(dest)
    if size is None and not sidecar.is_file():
        return False
    if sha256 is not None and sidecar.is_file() and _recorded_sha256(sidecar) != sha256.lower():
        return False
    return verify.quick_check(dest) is None


def _sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def _recorded_sha256(sidecar: Path) -> str | None:
    words = sidecar.read_text(encoding="utf-8", errors="replace").split()
    return words[0].lower() if words else None


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).hostname or url


def _open(url: str, start: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": "cocoattr-data/1"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416:
            return e  # handled by the caller: the .part may already be complete
        raise UserError(
            f"{url}: the server answered HTTP {e.code} {e.reason} — check the URL or pass --base-url"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError):
            raise _Interrupted(f"no answer for {timeout:g} s") from None
        raise UserError(
            f"could not reach {_host(url)}: {reason} — check your connection or pass --base-url "
            f"(or set {BASE_URL_ENV}) to use a mirror"
        ) from None


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


def _content_length(response) -> int | None:
    length = (response.headers.get("Content-Length") or "").strip()
    return int(length) if length.isdigit() else None


def _resumed_range(response, part: Path, start: int) -> tuple[int, int | None]:
    """(end, total) of a 206 answer to `Range: bytes=start-`; anything else restarts from zero.

    `end` is the offset after the last byte this response carries, `total` the file's size when
    the server states it (`bytes a-b/total`, not `/*`).
    """
    content_range = response.headers.get("Content-Range", "")
    match = _CONTENT_RANGE.match(content_range.strip())
    if match is None or int(match[1]) != start or int(match[2]) < start:
        part.unlink(missing_ok=True)  # never append bytes from another offset
        raise _Interrupted(
            f"server resumed at the wrong offset ({content_range!r}, asked for {start}); restarting"
        )
    total = None if match[3] == "*" else int(match[3])
    return int(match[2]) + 1, total


def _stream(url: str, part: Path, size: int | None, progress: bool, timeout: float) -> int | None:
    """Append the rest of `url` to `part`; returns the file's full size when it is known.

    Returns only when `part` holds everything the server said it would send; a transfer that
    stops short (closed, or no byte for `timeout` s) raises _Interrupted, keeping what arrived.
    """
    start = part.stat().st_size if part.exists() else 0
    if size is not None and start > size:
        part.unlink()  # garbage from another file: start over (even if a 206 would append)
        start = 0
    response = _open(url, start, timeout)
    with response:
        if response.status == 416:
            # Range beyond the end: the part is complete only if it matches what we expect.
            match = _CONTENT_RANGE.match(
                "bytes 0-0/" + response.headers.get("Content-Range", "").split("/")[-1]
            )
            stated = int(match[3]) if match and match[3] != "*" else None
            known = size if size is not None else stated
            if start and known == start:
                return start
            part.unlink(missing_ok=True)
            raise _Interrupted("server refused the resume range; restarting")
        if response.status == 206:
            end, total = _resumed_range(response, part, start)
            mode = "ab"
        else:
            start, mode = 0, "wb"  # a 200 to a Range request: the server ignored it, start over
            end = total = _content_length(response)
        if response.headers.get_content_type() == "text/html" and verify.is_binary(
            part.name.removesuffix(".part")
        ):
            raise UserError(
                f"{url}: the server sent an HTML page (Content-Type: text/html), not the file — "
                "check the URL or pass --base-url"
            )
        if size is not None and total is not None and total != size:
            raise UserError(
                f"{url}: server reports {total} bytes but this file is known to be {size} bytes — "
                "the mirror serves a different file"
            )
        expected = size if size is not None else total
        received = _copy(response, part, mode, start, expected, progress, timeout)
    if (end is not None and received < end) or (expected is not None and received < expected):
        raise _Interrupted(f"connection closed at {received} of {end if end is not None else expected} bytes")
    if (end is not None and received > end) or (expected is not None and received > expected):
        part.unlink(missing_ok=True)
        raise UserError(
            f"{url}: the server sent {received} bytes, more than it announced; removed the download"
        )
    return expected


def _copy(
    response, part: Path, mode: str, start: int, expected: int | None, progress: bool, timeout: float
) -> int:
    """Write the body to `part` as it arrives; returns the size `part` then has.

    `read1` returns whatever one socket read brings, so every byte received is on disk before
    the next wait: a stall costs the wait, never the data.
    """
    bar = _progress_bar(part.name.removesuffix(".part"), expected, start, progress)
    received = start
    try:
        with open(part, mode) as out:
            while True:
                try:
                    chunk = response.read1(CHUNK)
                except TimeoutError:
                    raise _Interrupted(f"no data for {timeout:g} s") from None
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
    except OSError as e:  # opening the .part
        raise UserError(f"could not write {part}: {e.strerror or e}") from None
    finally:
        bar.close()
    return received


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


def _check_content(url: str, part: Path, *, resumable: bool) -> None:
    """`verify.check_content`, before anything is renamed or vouched for.

    A file that may be cut short while nobody told us its size stays as `.part` to be resumed;
    anything else that fails is removed.
    """
    problem = verify.check_content(part)
    if problem is None:
        return
    if resumable and problem.maybe_truncated:
        raise _Interrupted(f"{problem.what}, and the server did not say how long the file is")
    part.unlink(missing_ok=True)
    raise UserError(f"{url}: {problem.what}; removed the download")


def _verify_and_commit(
    url: str, part: Path, dest: Path, expected: int | None, md5: str | None, sha256: str | None
) -> None:
    actual = part.stat().st_size
    if expected is not None and actual != expected:
        part.unlink(missing_ok=True)
        raise UserError(
            f"{dest}: downloaded {actual} bytes but expected {expected}; removed the partial file"
        )
    got_md5, got_sha = verify.digests(part)
    for algorithm, want, got in (("md5", md5, got_md5), ("sha256", sha256, got_sha)):
        if want is not None and got != want.lower():
            part.unlink(missing_ok=True)
            raise UserError(
                f"{dest}: checksum mismatch ({algorithm} {got}, expected {want}) for {url}; the corrupt "
                "download was removed — run the command again"
            )
    os.chmod(part, 0o666 & ~_umask())
    os.replace(part, dest)
    atomic_write_text(_sidecar(dest), f"{got_sha}  {dest.name}\n")


def verify_sidecar(path: Path) -> bool:
    """Re-hash `path` and compare with its `.sha256` sidecar (False when there is none)."""
    sidecar = _sidecar(Path(path))
    if not sidecar.is_file():
        return False
    return verify.digests(Path(path))[1] == _recorded_sha256(sidecar)
