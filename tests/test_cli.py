"""The CLI as a user runs it: JSON output, readable tables, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cocoattr.cli import main
from cocoattr.data.gallery import gallery_root

ROOT = Path(__file__).resolve().parent.parent
CAT = str(gallery_root() / "images" / "skimage_chelsea.jpg")
ASTRONAUT = str(gallery_root() / "images" / "skimage_astronaut.jpg")  # 512x512, one person


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = os.environ | {"HF_HUB_OFFLINE": "1", "COCOATTR_CHECKPOINT": "default"} | (env or {})
    return subprocess.run([sys.executable, "-m", "cocoattr", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def default_built(default_checkpoint):
    return default_checkpoint


def test_predict_json_has_every_attribute_and_sensible_top():
    proc = run("predict", "--json", CAT)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    assert row["image"] == CAT and len(row["attributes"]) >= 150
    assert "objects" not in row, "objects only with --objects"
    top = sorted(row["attributes"], key=row["attributes"].get, reverse=True)[:10]
    assert {"cat", "furry", "animal"} & set(top)
    assert all(0.0 <= p <= 1.0 for p in row["attributes"].values())


def test_predict_table_shows_top_k():
    proc = run("predict", "--top-k", "3", CAT)
    assert proc.returncode == 0
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == CAT and len(lines) == 4


def test_bad_file_is_skipped_and_reported(tmp_path):
    bad = tmp_path / "report.jpg"
    bad.write_bytes(b"%PDF-1.4 definitely not a jpeg")
    proc = run("predict", "--json", str(bad), CAT)
    assert proc.returncode == 1
    assert [r["image"] for r in json.loads(proc.stdout)] == [CAT]
    assert "report.jpg" in proc.stderr and "Traceback" not in proc.stderr


def test_a_folder_stands_for_every_image_under_it(tmp_path):
    import shutil

    (tmp_path / "photos" / "sub").mkdir(parents=True)
    shutil.copy(CAT, tmp_path / "photos" / "sub" / "cat.jpg")
    shutil.copy(ASTRONAUT, tmp_path / "photos" / "astronaut.JPG")
    (tmp_path / "photos" / "notes.txt").write_text("not a photo")
    (tmp_path / "empty").mkdir()
    proc = run("predict", "--json", CAT, str(tmp_path / "photos"), str(tmp_path / "empty"))
    assert proc.returncode == 1, proc.stderr  # the empty folder counts as a failed input
    images = [r["image"] for r in json.loads(proc.stdout)]
    assert images == [
        CAT,
        str(tmp_path / "photos" / "astronaut.JPG"),
        str(tmp_path / "photos" / "sub" / "cat.jpg"),
    ]
    assert "empty: a folder with no images in it" in proc.stderr and "1 of 4 images failed" in proc.stderr


def test_unknown_checkpoint_is_one_line_error():
    proc = run("predict", "--checkpoint", "./no/such/dir", CAT)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("cocoattr: error:") and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- predict --objects


def test_predict_objects_json_has_the_astronaut(capsys):
    assert main(["predict", "--checkpoint", "default", "--objects", "--json", "--top-k", "4", ASTRONAUT]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["image"] == ASTRONAUT and len(row["attributes"]) >= 150, "the image-level record is unchanged"
    people = [o for o in row["objects"] if o["category"] == "person" and o["score"] >= 0.5]
    assert people, row["objects"]
    for o in row["objects"]:
        assert set(o) == {"box", "category", "detector_category", "score", "attributes"}
        x1, y1, x2, y2 = o["box"]
        assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 512, o["box"]
        values = list(o["attributes"].values())
        assert len(values) == 4 and values == sorted(values, reverse=True), "the --top-k best, highest first"
        assert set(o["attributes"]) <= set(row["attributes"])
    x1, y1, x2, y2 = people[0]["box"]
    assert (x2 - x1) * (y2 - y1) > 0.3 * 512 * 512, "the astronaut fills much of the photo"


def test_predict_objects_table_has_one_line_per_object(capsys):
    assert main(["predict", "--checkpoint", "default", "--objects", "--top-k", "3", ASTRONAUT]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ASTRONAUT and len(lines[1:4]) == 3 and not lines[1].lstrip().startswith("[")
    pattern = r"  \[person 0\.\d\d\]  box \d+,\d+,\d+,\d+  (\S+ [01]\.\d\d, ){4}\S+ [01]\.\d\d"
    assert any(re.fullmatch(pattern, line) for line in lines[4:]), lines
    assert main(["predict", "--checkpoint", "default", "--objects", "--min-score", "0.99", ASTRONAUT]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "  (no objects above 0.99)"


def test_predict_objects_without_a_detector_is_one_line(tmp_path, random_model, capsys):
    from cocoattr.hub import save_checkpoint

    folder = save_checkpoint(random_model(), tmp_path / "no-detector")
    assert main(["predict", "--checkpoint", str(folder), "--objects", ASTRONAUT]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no object detector" in err[0], err
    assert main(["predict", "--checkpoint", str(folder), "--json", ASTRONAUT]) == 0, "fine without --objects"


def test_version_is_the_projects(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"cocoattr {version}"


def test_download_help_lists_every_resource(capsys):
    from cocoattr.cli import build_parser
    from cocoattr.data.resources import RESOURCES

    with pytest.raises(SystemExit):
        build_parser().parse_args(["data", "download", "--help"])
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps long help lines
    for name in RESOURCES:
        assert name in shown


# ----------------------------------------------------------------------------- search (tests/conftest.py real_index)


def test_cli_search_json(real_index, capsys):
    root, out = real_index
    capsys.readouterr()
    assert main(["search", "--index", str(out), "--json", "--top-k", "3", "furry", "animal"]) == 0
    captured = capsys.readouterr()
    hits = json.loads(captured.out)
    assert len(hits) == 3 and all(set(h) == {"image", "score", "attributes"} for h in hits)
    assert hits[0]["image"] == "gradio_lion.jpg", "no --images: the path relative to the indexed folder"
    assert set(hits[0]["attributes"]) == {"furry", "animal"}
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert "query: furry animal" in captured.err
    args = ["search", "--index", str(out), "--images", str(root), "--json", "--top-k", "1", "furry"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)[0]["image"] == str(root / "gradio_lion.jpg"), "a file there"
    assert main(["search", "--index", str(out), "--top-k", "2", "vehicle"]) == 0
    header, first = capsys.readouterr().out.splitlines()[:2]
    assert header.split()[:2] == ["rank", "score"] and "jeep" in first


def test_cli_search_unknown_query_is_a_clean_error(real_index, capsys):
    _, out = real_index
    assert main(["search", "--index", str(out), "xqzzkv"]) == 2
    assert "nothing in the query matches" in capsys.readouterr().err


def test_search_takes_excludes_and_options_in_any_order(real_index, capsys):
    _, index = real_index
    assert main(["search", "-indoor", "--index", str(index), "cup", "--top-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 2 and set(hits[0]["attributes"]) == {"cup", "-indoor"}


def test_search_mistyped_option_is_a_usage_error_not_a_query_word(real_index, capsys):
    _, index = real_index
    for typo, said in (
        ("--k", "unknown option --k"),
        ("--i", "ambiguous option --i: could be --images, --index"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["search", "--index", str(index), "cup", typo, "2"])
        assert exit_.value.code == 2 and said in capsys.readouterr().err
    # argparse's unique prefixes and --name=value still work, wherever they are typed
    assert main(["search", "cup", "--top=1", "-indoor", "--ind", str(index), "--js"]) == 0
    (hit,) = json.loads(capsys.readouterr().out)
    assert set(hit["attributes"]) == {"cup", "-indoor"}


def test_search_without_index_uses_the_gallery_index_and_prints_a_header(real_index, capsys, monkeypatch):
    import cocoattr.index

    _, index = real_index
    monkeypatch.setattr(cocoattr.index, "GALLERY_INDEX", index)
    assert main(["search", "cup"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["rank", "score", "image"]
    assert "skimage_coffee.jpg" in lines[1]


@pytest.mark.parametrize(("query", "fragment"), [("missing.jpg", "no such image file"), (".", "is a folder")])
def test_search_by_a_path_that_is_no_image_is_one_line(real_index, capsys, query, fragment):
    _, index = real_index
    assert main(["search", "--index", str(index), query]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]
