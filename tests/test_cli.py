"""The CLI as a user runs it: JSON output, readable tables, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cocoattr.cli import main
from cocoattr.data.gallery import gallery_root

ROOT = Path(__file__).resolve().parent.parent
CAT = str(gallery_root() / "images" / "skimage_chelsea.jpg")


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


def test_unknown_checkpoint_is_one_line_error():
    proc = run("predict", "--checkpoint", "./no/such/dir", CAT)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("cocoattr: error:") and "Traceback" not in proc.stderr


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
    assert hits[0]["image"] == str(root / "gradio_lion.jpg")
    assert set(hits[0]["attributes"]) == {"furry", "animal"}
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert "query: furry animal" in captured.err
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
