"""Every kind of bad or unusual image gets decoded correctly or one clear UserError."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from cocoattr.errors import UserError
from cocoattr.images import MAX_PIXELS, list_images, load_image


def _save(img: Image.Image, path, fmt: str = "PNG", **kw) -> str:
    img.save(path, fmt, **kw)
    return str(path)


def test_modes_become_rgb(tmp_path):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    cases = {
        "grey.png": rgb.convert("L"),
        "palette.png": rgb.convert("P"),
        "rgba.png": rgb.convert("RGBA"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "i16.png": Image.fromarray(np.arange(600, dtype=np.uint16).reshape(20, 30) * 100),
    }
    for name, img in cases.items():
        out = load_image(_save(img, tmp_path / name, "JPEG" if name.endswith("jpg") else "PNG"))
        assert out.mode == "RGB" and out.size == (30, 20), name


def test_transparent_pixels_composite_on_white(tmp_path):
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    out = load_image(_save(img, tmp_path / "clear.png"))
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    img.save(path, "JPEG", exif=exif.tobytes())
    assert load_image(path).size == (20, 40)
    caller = Image.open(path)  # a caller's own image is rotated in a copy, never in place
    assert load_image(caller).size == (20, 40) and caller.size == (40, 20)


def test_one_pixel_image_is_fine(tmp_path):
    assert load_image(_save(Image.new("RGB", (1, 1), "blue"), tmp_path / "dot.png")).size == (1, 1)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty file"), (b"%PDF-1.4 not really an image", "not an image")],
)
def test_bad_bytes_on_disk(tmp_path, content, message):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_image(path)


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(
        buf, "JPEG"
    )
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    with pytest.raises(UserError, match="cut.jpg"):
        load_image(path)


def test_missing_and_directory(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(UserError, match="directory"):
        load_image(tmp_path)


@pytest.mark.parametrize("side", [9000, 12000, 20000])  # ours, Pillow's warning, Pillow's error
def test_decompression_bomb_is_refused_before_decoding(tmp_path, side):
    # A huge PNG compresses to almost nothing; it must be refused from its header, and the
    # message names its size and the limit whichever check (ours or Pillow's) caught it first.
    path = tmp_path / "huge.png"
    Image.new("1", (side, side)).save(path)
    assert path.stat().st_size < 2_000_000 and side * side > MAX_PIXELS
    mp = round(side * side / 1e6)
    want = re.escape(f"huge.png: image is too large ({side}x{side} = {mp} MP; the limit is 64 MP)")
    with pytest.raises(UserError, match=want):
        load_image(path)
    with pytest.raises(UserError, match=want.replace("huge\\.png", "bytes")):
        load_image(path.read_bytes(), name="bytes")


def test_arrays_and_bytes():
    arr = np.zeros((5, 6, 3), np.uint8)
    assert load_image(arr).size == (6, 5)
    assert load_image(np.zeros((5, 6), np.float32)).mode == "RGB"
    with pytest.raises(UserError, match="shape"):
        load_image(np.zeros((5, 6, 7), np.uint8))
    buf = io.BytesIO()
    Image.new("RGB", (3, 3)).save(buf, "PNG")
    assert load_image(buf.getvalue()).size == (3, 3)
    with pytest.raises(UserError, match="empty"):
        load_image(b"")


def test_list_images_is_sorted_and_filtered(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.JPG", "a.png", "sub/c.webp", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG", "c.webp"]


def test_jpeg_draft_keeps_both_sides_above_the_minimum(tmp_path):
    img = Image.fromarray(np.random.default_rng(2).integers(0, 255, (1500, 2400, 3), dtype=np.uint8))
    path = _save(img, tmp_path / "big.jpg", "JPEG")
    small = load_image(path, min_side=300)
    assert small.size == (600, 375)  # 1/4 scale: the largest reduction keeping both sides >= 300
    assert load_image(path).size == (2400, 1500)
    png = _save(img, tmp_path / "big.png")
    assert load_image(png, min_side=300).size == (2400, 1500)  # draft mode is JPEG-only
