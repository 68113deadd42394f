"""Reliability, bad input: odd and broken images through whole batches (CLI predict, index build,
the app), bad queries (CLI search, the app), and bad training configs through the CLI.

tests/test_images.py checks `load_image` file by file; here the question is what a *batch* does:
every bad file is named on stderr and skipped, every good file still gets its result, and the
exit code says something failed (1), while a mistake that stops the whole command exits 2 with
one line and no traceback. Cases and outcomes are listed in docs/reliability.md.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cocoattr.data.gallery import gallery_root

ROOT = Path(__file__).resolve().parent.parent
CAT = gallery_root() / "images" / "skimage_chelsea.jpg"
# gradio's queue calls pandas APIs that pandas 3 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "COCOATTR_CHECKPOINT": "default"}
    return subprocess.run([sys.executable, "-m", "cocoattr", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("cocoattr: error:")]
    assert len(lines) == 1, proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture(scope="module", autouse=True)
def default_built(default_checkpoint):
    return default_checkpoint


# ----------------------------------------------------------------------------- image zoo

GOOD = ("grey.png", "palette.png", "rgba.png", "cmyk.jpg", "i16.png", "exif_rotated.jpg", "one_pixel.png")
BAD = {  # file -> fragment of its message
    "not_an_image.jpg": "not an image",
    "truncated.jpg": "cannot decode image",
    "empty.jpg": "empty file",
    "bomb.png": "too large",
}


def make_zoo(folder: Path) -> Path:
    """Every kind of image a user might have, good and bad, in one folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    rgb.convert("L").save(folder / "grey.png")
    rgb.convert("P").save(folder / "palette.png")
    rgb.convert("RGBA").save(folder / "rgba.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg", "JPEG")
    Image.fromarray(np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 20).save(folder / "i16.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (64, 32), "red").save(folder / "exif_rotated.jpg", "JPEG", exif=exif.tobytes())
    Image.new("RGB", (1, 1), "blue").save(folder / "one_pixel.png")
    (folder / "not_an_image.jpg").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    Image.new("1", (20000, 20000)).save(folder / "bomb.png")  # 400 MP, a few kB on disk
    (folder / "a_folder.jpg").mkdir()  # a directory with an image-like name
    return folder


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    return make_zoo(tmp_path_factory.mktemp("zoo") / "photos")


def test_predict_batch_skips_each_bad_file_and_keeps_the_good_ones(zoo, tmp_path):
    files = [str(zoo / n) for n in (*GOOD, *BAD)] + [str(zoo / "a_folder.jpg"), str(tmp_path / "missing.jpg"),
                                                     str(CAT)]  # fmt: skip
    proc = cli("predict", "--json", *files)
    assert proc.returncode == 1, proc.stderr  # partly failed
    assert "Traceback" not in proc.stderr
    rows = json.loads(proc.stdout)
    assert [Path(r["image"]).name for r in rows] == [*GOOD, CAT.name], "every good file, in order"
    assert all(0.0 <= p <= 1.0 for r in rows for p in r["attributes"].values())
    skipped = [ln for ln in proc.stderr.splitlines() if ln.startswith("cocoattr: skipped")]
    assert len(skipped) == len(BAD) + 2, proc.stderr
    for name, fragment in {
        **BAD,
        "a_folder.jpg": "a folder with no images",
        "missing.jpg": "no such file",
    }.items():
        line = next((ln for ln in skipped if name in ln), None)
        assert line is not None and fragment in line, (name, proc.stderr)
    assert f"{len(BAD) + 2} of {len(files)} images failed" in proc.stderr


def test_predict_all_bad_still_exits_1_with_no_results(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"nope")
    proc = cli("predict", "--json", str(tmp_path / "x.jpg"), str(tmp_path / "gone.png"))
    assert proc.returncode == 1 and json.loads(proc.stdout) == []
    assert "2 of 2 images failed" in proc.stderr and "Traceback" not in proc.stderr


def test_index_build_skips_bad_files_and_indexes_the_rest(zoo, tmp_path):
    from cocoattr.index import Index

    out = tmp_path / "zoo.npz"
    proc = cli("index", "build", "--images", str(zoo), "--out", str(out), "--batch-size", "4")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for name, fragment in BAD.items():
        assert any(name in ln and fragment in ln for ln in proc.stderr.splitlines()), (name, proc.stderr)
    assert f"{len(BAD)} failed" in proc.stderr and f"{len(BAD)} images could not be read" in proc.stderr
    index = Index.load(out)
    assert sorted(index.paths) == sorted(GOOD), "a folder named *.jpg is not an image; bad files are left out"
    assert index.complete and np.isfinite(index.embeddings).all()


def test_index_build_on_a_missing_folder_or_non_index_out(tmp_path):
    assert_one_line_error(cli("index", "build", "--images", str(tmp_path / "nope"), "--out",
                              str(tmp_path / "i.npz")), "not a folder of images")  # fmt: skip
    (tmp_path / "photos").mkdir()
    precious = tmp_path / "notes.npz"
    precious.write_bytes(b"my notes")
    assert_one_line_error(cli("index", "build", "--images", str(tmp_path / "photos"), "--out", str(precious)),
                          "not a readable cocoattr index")  # fmt: skip
    assert precious.read_bytes() == b"my notes"


# ----------------------------------------------------------------------------- the app


def test_app_accepts_odd_modes_and_refuses_broken_files(app_client, zoo):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    for name in GOOD:
        probs = app_client.predict(handle_file(str(zoo / name)), 3, api_name="/predict")
        assert len(probs) == 3, name
    for name, fragment in {"truncated.jpg": "cannot decode", "not_an_image.jpg": "not an image",
                           "bomb.png": "too large"}.items():  # fmt: skip
        with pytest.raises(AppError) as info:
            app_client.predict(handle_file(str(zoo / name)), api_name="/predict")
        assert fragment in str(info.value) and "Traceback" not in str(info.value), (name, str(info.value))
    # an empty upload: the app's own one-line error, never a crash
    with pytest.raises(AppError) as info:
        app_client.predict(handle_file(str(zoo / "empty.jpg")), api_name="/predict")
    assert "empty file" in str(info.value) and "Traceback" not in str(info.value), str(info.value)
    assert len(app_client.predict(handle_file(str(CAT)), 2, api_name="/predict")) == 2, "still serving"


def test_app_search_long_and_odd_queries(app_client):
    from gradio_client.exceptions import AppError

    t0 = time.perf_counter()
    hits = app_client.predict("furry animal " * 8000, 3, api_name="/search")  # ~100k characters
    assert len(hits) == 3 and time.perf_counter() - t0 < 60
    assert app_client.predict("-person, -indoor", 3, api_name="/search"), "exclusions only rank by absence"
    assert len(app_client.predict("furry^1e308, animal^-5, red^nan", 3, api_name="/search")) == 3
    with pytest.raises(AppError, match="excludes"):
        app_client.predict("red, -red", api_name="/search")


# ----------------------------------------------------------------------------- queries through the CLI


@pytest.fixture(scope="module")
def small_index(tmp_path_factory) -> Path:
    """A real index of four gallery photos (built in-process with the default checkpoint)."""
    import shutil

    from cocoattr.index import build_index

    root = tmp_path_factory.mktemp("q") / "photos"
    root.mkdir()
    for name in ("gradio_lion.jpg", "skimage_coffee.jpg", "skimage_chelsea.jpg", "skimage_motorcycle.jpg"):
        shutil.copy(gallery_root() / "images" / name, root / name)
    out = root.parent / "index.npz"
    build_index(root, out, checkpoint="default", progress=False)
    return out


@pytest.mark.parametrize(("query", "fragment"), [("", "empty query"), ("  , ;  ", "empty query"),
                                                 ("red, -red", "both asks for and excludes"),
                                                 ("qqxzv, zzkvq", "nothing in the query matches")])  # fmt: skip
def test_cli_search_unusable_queries_exit_2(small_index, query, fragment):
    assert_one_line_error(cli("search", "--index", str(small_index), query), fragment)


def test_cli_search_only_negations_ranks_by_absence(small_index):
    proc = cli("search", "--index", str(small_index), "--json", "-animal, -furry")
    assert proc.returncode == 0, proc.stderr
    assert "exclusions only: ranking by absence" in proc.stderr
    hits = json.loads(proc.stdout)
    assert {Path(h["image"]).name for h in hits[:2]} == {"skimage_coffee.jpg", "skimage_motorcycle.jpg"}


def test_cli_search_absurd_weights_are_clamped_with_warnings(small_index):
    proc = cli("search", "--index", str(small_index), "--json", "furry^1e308, animal^-5, red^nan, cat^abc")
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if "warning:" in ln]
    assert sum("clamped" in w for w in warnings) == 3 and any("not a number" in w for w in warnings)
    assert all(np.isfinite(h["score"]) for h in json.loads(proc.stdout))


def test_cli_search_unknown_words_are_reported_and_ignored(small_index):
    proc = cli("search", "--index", str(small_index), "--json", "furry, qqxzv")
    assert proc.returncode == 0, proc.stderr
    assert "'qqxzv' -> (unknown" in proc.stderr
    assert Path(json.loads(proc.stdout)[0]["image"]).name in {"gradio_lion.jpg", "skimage_chelsea.jpg"}


def test_cli_search_100k_characters_is_truncated_quickly(small_index):
    t0 = time.perf_counter()
    proc = cli("search", "--index", str(small_index), "--json", "a fluffy cat on a sofa " * 4400)
    assert proc.returncode == 0, proc.stderr
    assert "query truncated to its first" in proc.stderr
    assert time.perf_counter() - t0 < 120
    assert json.loads(proc.stdout)


# ----------------------------------------------------------------------------- training configs


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("epochs: 2\nbatch_sise: 4\n", "batch_sise"),  # misspelt key
        ("epochs: ten\n", "epochs"),  # wrong type
        ("data:\n  sorce: gallery\n", "data.sorce"),  # misspelt nested key
        ("lr: [1, 2]\n", "lr"),
        ("epochs: 2\n  bad indent: [\n", "malformed YAML"),
        ("- just\n- a list\n", "expected a mapping"),  # not a mapping
    ],
)
def test_bad_train_config_names_the_key(tmp_path, text, fragment):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    proc = cli("train", "--config", str(config), "--out", str(tmp_path / "run"), timeout=120)
    assert_one_line_error(proc, "bad.yaml", fragment)
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_missing_train_config_is_one_line(tmp_path):
    proc = cli("train", "--config", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "run"), timeout=120)
    assert_one_line_error(proc, "none.yaml")


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate", "--checkpoint", "default", "--data", "{missing}"],
        ["index", "build", "--images", "{missing}"],
        ["data", "mine", "--captions", "{missing}"],
    ],
    ids=["evaluate", "index-build", "data-mine"],
)
@pytest.mark.parametrize("where", ["a folder", "below a file"])
def test_out_that_cannot_be_written_is_one_line_before_any_work(tmp_path, command, where):
    """Checked first: the input is missing too, yet the error is about --out (before: a traceback
    after the whole evaluation or index build, and a stray .tmp)."""
    missing = str(tmp_path / "no-such-input")
    (tmp_path / "file.txt").write_text("x")
    out = tmp_path if where == "a folder" else tmp_path / "file.txt" / "out.json"
    args = [a.replace("{missing}", missing) for a in command]
    proc = cli(*args, "--out", str(out), timeout=120)
    assert_one_line_error(proc, str(out), "is a folder" if where == "a folder" else "is not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]  # no .tmp, nothing written
