"""Safe image loading shared by the CLI, the index and the app.

One function decides what counts as a usable image, so every entry point fails the same
way: a `UserError` naming the file and the problem, never a Pillow traceback.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's own bomb guard is a warning at 89 MP and an error at 2x that; we make the
# limit explicit and the message ours. 64 MP covers any camera photo.
MAX_PIXELS = 64_000_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray


def load_image(source: ImageInput, name: str | None = None, min_side: int | None = None) -> Image.Image:
    """Decode `source` into an upright RGB PIL image, or raise `UserError`.

    Accepts a path, raw bytes, a PIL image or an HxW / HxWxC uint8 array. Handles EXIF
    rotation, palette/RGBA/CMYK/16-bit/greyscale modes, truncated and oversized files.
    `min_side`: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (JPEG draft mode) as long as
    both sides stay >= min_side; a 12 MP photo for a 288 px model decodes ~8x faster.
    """
    from cocoattr.errors import UserError

    label = name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "image")
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        image = _from_array(source, label)
    else:
        image = _open(source, label, min_side)
    w, h = image.size
    if w < 1 or h < 1:
        raise UserError(f"{label}: image has no pixels ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise UserError(_too_large(label, (w, h)))
    try:
        if image is source:  # the caller's image: never changed in place
            image = ImageOps.exif_transpose(image)
        else:  # ours: turned in place, not copied when it is upright (most photos)
            ImageOps.exif_transpose(image, in_place=True)
        return _to_rgb(image)
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{label}: cannot decode image ({e})") from None


def _open(source: str | os.PathLike | bytes, label: str, min_side: int | None = None) -> Image.Image:
    from cocoattr.errors import UserError

    if isinstance(source, bytes):
        if not source:
            raise UserError(f"{label}: empty file")
        fp = io.BytesIO(source)
    else:
        path = Path(source)
        if path.is_dir():
            raise UserError(f"{label}: is a directory, not an image")
        if not path.exists():
            raise UserError(f"{label}: no such file")
        if path.stat().st_size == 0:
            raise UserError(f"{label}: empty file")
        fp = path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(fp)
            if image.size[0] * image.size[1] > MAX_PIXELS:
                raise UserError(_too_large(label, image.size))
            if min_side and image.format == "JPEG":
                image.draft("RGB", (min_side, min_side))
            image.load()
    except UserError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(_too_large(label, _declared_size(fp))) from None
    except UnidentifiedImageError:
        raise UserError(f"{label}: not an image (unrecognised format)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{label}: cannot decode image ({e})") from None
    return image


def _too_large(label: str, size: tuple[int, int] | None) -> str:
    """'x.png: image is too large (12000x12000 = 144 MP; the limit is 64 MP)'."""
    limit = f"the limit is {MAX_PIXELS / 1e6:.0f} MP"
    if size is None:
        return f"{label}: image is too large ({limit})"
    w, h = size
    return f"{label}: image is too large ({w}x{h} = {w * h / 1e6:.0f} MP; {limit})"


def _declared_size(fp: Path | io.BytesIO) -> tuple[int, int] | None:
    """The size a file's header declares, read by its format's own plugin (no pixels decoded).

    Pillow's bomb check inside `Image.open` raises before the caller sees the image's size, so
    the message could not say how large the image is; the plugins read only the header here.
    """
    Image.init()
    with open(fp, "rb") if isinstance(fp, Path) else contextlib.nullcontext(fp) as f:
        f.seek(0)
        prefix = f.read(16)
        for fmt in Image.ID:
            factory, accept = Image.OPEN[fmt]
            if accept is not None and not accept(prefix):
                continue
            try:
                f.seek(0)
                return factory(f, "").size
            except Exception:  # noqa: BLE001, S112 - not this format: try the next plugin
                continue
    return None


def _from_array(array: np.ndarray, label: str) -> Image.Image:
    from cocoattr.errors import UserError

    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise UserError(f"{label}: expected an HxW or HxWx3/4 array, got shape {array.shape}")
    if array.size == 0:
        raise UserError(f"{label}: image has no pixels {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Modes Pillow can't convert directly (16-bit greyscale, float) go through numpy."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(image, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
        return Image.fromarray(a.astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def path_inside(root: str | os.PathLike, name: object, source: str, what: str = "file name",
                where: str | None = None) -> Path:  # fmt: skip
    """`root / name` if `name` is a plain relative path that stays inside `root`, else UserError.

    A lexical check (no symlink resolution): an index, captions or annotation file written by
    someone else must not make us open, show or return files outside the folder it describes.
    """
    from pathlib import PurePosixPath

    from cocoattr.errors import UserError

    text = str(name)
    parts = PurePosixPath(text).parts
    if (not text or "\\" in text or "\x00" in text or text.startswith("/") or ".." in parts
            or ":" in parts[0] or any(part in ("", ".") for part in text.split("/"))):  # fmt: skip
        raise UserError(
            f"{source}: {what} {text!r} points outside {where or f'the folder {root}'}; refusing it"
        )
    return Path(root) / text


def exif_rotated(path: str | os.PathLike) -> bool:
    """Whether a photo's EXIF orientation turns or mirrors it (reads the header only): `load_image`
    applies it, so annotations drawn in the stored frame (COCO masks, boxes) no longer fit."""
    try:
        with Image.open(path) as im:
            return im.getexif().get(0x0112, 1) not in (0, 1)
    except (OSError, ValueError, SyntaxError):
        return False  # a broken file is reported when the model reads it


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under `folder` (recursive, sorted): the unit every batch job walks."""
    root = Path(folder)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def thumbnail_jpeg(source: ImageInput, size: int = 256, quality: int = 85) -> bytes:
    """A small upright JPEG (longest side `size` px) of `source`, so results can be drawn from an
    index alone; raises `UserError` like `load_image`."""
    image = load_image(source, min_side=size)
    image.thumbnail((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()
