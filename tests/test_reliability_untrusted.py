"""Reliability, untrusted files: nothing a downloaded or hand-edited file says can run code, reach
outside its folder, or end in a traceback; each is one clear line and exit 2 through the CLI.

Covered elsewhere (see docs/reliability.md): truncated / inconsistent checkpoints
(test_model.py, test_hub.py), malicious pickles (test_data_cocottributes.py), index paths
outside the folder and object arrays (test_index.py), zip-slip / symlinks / bombs
(test_data_download.py), malformed COCO JSON (test_data_coco.py).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cocoattr.data.gallery import gallery_root, load_gallery
from cocoattr.errors import UserError
from cocoattr.index import Index

ROOT = Path(__file__).resolve().parent.parent
CAT = gallery_root() / "images" / "skimage_chelsea.jpg"


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = os.environ | {"HF_HUB_OFFLINE": "1", "COCOATTR_CHECKPOINT": "default"} | (env or {})
    return subprocess.run([sys.executable, "-m", "cocoattr", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("cocoattr: error:")]
    assert len(lines) == 1, proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


class _Pwn:
    """Unpickling this runs `touch marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------- index files


def test_malicious_npz_index_never_runs_code(tmp_path):
    """An .npz whose arrays are object arrays holding a code-running pickle: allow_pickle stays False."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.npz"
    payload = np.empty(1, dtype=object)
    payload[0] = _Pwn(marker)
    meta = np.frombuffer(json.dumps({"format": "cocoattr-index", "version": 1}).encode(), np.uint8)
    np.savez(evil, meta=meta, paths=payload, probs=payload, embeddings=payload, sizes=payload, mtimes=payload)
    proc = cli("search", "--index", str(evil), "red")
    assert_one_line_error(proc, "evil.npz", "not a readable cocoattr index", "allow_pickle")
    assert not marker.exists()
    # the same file as the app's index (COCOATTR_INDEX) is refused in-process too
    with pytest.raises(UserError, match="allow_pickle"):
        Index.load(evil)
    assert not marker.exists()


def test_pickle_disguised_as_npz_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.npz"
    evil.write_bytes(pickle.dumps({"meta": _Pwn(marker)}))  # np.load would unpickle this if allowed
    assert_one_line_error(cli("search", "--index", str(evil), "red"), "evil.npz")
    assert not marker.exists()


def test_index_with_a_root_and_absolute_path_is_refused_by_search(tmp_path):
    """A valid index whose entry points at /etc/passwd: search refuses the whole file."""
    n, attrs = 1, ["red", "furry"]
    index = Index(root_spec=str(tmp_path), paths=["/etc/passwd"], sizes=np.zeros(n, np.int64),
                  mtimes=np.zeros(n, np.int64), probs=np.full((n, 2), 0.5, np.float16),
                  embeddings=np.ones((n, 4), np.float32), attributes=attrs,
                  checkpoint={"sha256": "x", "source": "x"})  # fmt: skip
    index.save(tmp_path / "i.npz")
    assert_one_line_error(
        cli("search", "--index", str(tmp_path / "i.npz"), "red"), "outside the indexed folder"
    )


# ----------------------------------------------------------------------------- the index root


def _crafted(root_spec: str, paths: list[str], thumbnails: list[bytes] | None = None) -> Index:
    """A valid index whose recorded root and entries someone else chose."""
    n = len(paths)
    return Index(root_spec=root_spec, paths=paths, sizes=np.zeros(n, np.int64), mtimes=np.zeros(n, np.int64),
                 probs=np.full((n, 2), 0.9, np.float16), embeddings=np.ones((n, 4), np.float32),
                 attributes=["red", "furry"], checkpoint={"sha256": "x", "source": "x"},
                 thumbnails=thumbnails)  # fmt: skip


def test_an_index_whose_root_is_slash_never_lists_etc_passwd(tmp_path, capsys):
    """Issue 15: the root `/` comes from the file, so `etc/passwd` would be /etc/passwd; hits are
    read only from the folder the user names (`--images`), else shown as the stored relative path."""
    from cocoattr.cli import main

    crafted = tmp_path / "crafted.npz"
    _crafted("/", ["etc/passwd", "etc/hostname"]).save(crafted)
    assert main(["search", "--index", str(crafted), "--json", "red"]) == 0
    out = capsys.readouterr().out
    assert sorted(h["image"] for h in json.loads(out)) == ["etc/hostname", "etc/passwd"]
    assert "/etc/passwd" not in out
    assert main(["search", "--index", str(crafted), "red"]) == 0
    assert "/etc/passwd" not in capsys.readouterr().out
    assert Index.load(crafted).root is None and Index.load(crafted).path(0) is None
    mine = tmp_path / "photos"
    mine.mkdir()
    assert main(["search", "--index", str(crafted), "--images", str(mine), "--json", "red"]) == 0
    images = {h["image"] for h in json.loads(capsys.readouterr().out)}
    assert images == {str(mine.resolve() / "etc" / "passwd"), str(mine.resolve() / "etc" / "hostname")}


def test_a_hub_index_whose_root_is_slash_never_lists_etc_passwd(tmp_path):
    """The same index pushed as a dataset repo: its `index.json` root is not where hits are read."""
    import cocoattr.index_hub as ih
    from cocoattr.search import find

    ih.write_dataset(_crafted("/", ["etc/passwd"]), tmp_path / "repo")
    index = ih.read_dataset(tmp_path / "repo", "hf://datasets/x/y").serve_from(None)
    assert index.root_spec == "/" and index.root is None
    hit = find(index, "red", k=1).hits[0]
    assert hit.path is None and hit.to_json()["image"] == "etc/passwd"


def test_the_app_never_serves_a_file_a_hub_index_root_names(tmp_path, monkeypatch, app_predictor):
    """A Space serving a crafted Hub index: no hit file, tile or static folder is /etc/passwd or /."""
    import app
    import cocoattr.index_hub as ih
    from cocoattr.serving import search_tile

    ih.write_dataset(_crafted("/", ["etc/passwd"]), tmp_path / "repo")
    monkeypatch.setattr(ih, "download_index", lambda repo: tmp_path / "repo")
    monkeypatch.setenv("COCOATTR_INDEX", "hf://datasets/user/evil")
    monkeypatch.delenv("COCOATTR_IMAGES", raising=False)
    monkeypatch.setattr(app, "log", lambda line: None)
    served = app.open_index(app_predictor)
    assert served.root is None, "gr.set_static_paths would get this folder"
    s = app.Service(app_predictor, served)
    hit = s.search("red", 1).hits[0]
    image, _ = search_tile(hit, 0)
    assert hit.path is None and not isinstance(image, str), image  # a grey square, not a file path
    with pytest.raises(UserError, match="not on this machine"):
        s.hit_heatmaps(hit, ["red"])


def test_an_index_with_dotdot_paths_is_refused_whatever_folder_is_named(tmp_path, capsys):
    from cocoattr.cli import main

    crafted = tmp_path / "crafted.npz"
    _crafted("/", ["a.jpg", "../../etc/passwd"]).save(crafted)
    for extra in ([], ["--images", str(tmp_path)]):
        assert main(["search", "--index", str(crafted), *extra, "red"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "'../../etc/passwd' points outside the indexed folder" in err[0], err
    assert main(["search", "--index", str(crafted), "--images", str(tmp_path / "nope"), "red"]) == 2
    err = capsys.readouterr().err
    assert "--images" in err and "no such folder" in err, err


def test_the_gallery_search_still_returns_the_gallery_photos(tmp_path, capsys):
    """A gallery index names no folder ('gallery' is this package's): its hits are the bundled photos."""
    from test_index import FakePredictor

    from cocoattr.cli import main
    from cocoattr.index import build_index

    out = tmp_path / "gallery.npz"
    build_index("gallery", out, FakePredictor(tmp_path / "c"), progress=False)
    n = len(load_gallery().paths)
    assert main(["search", "--index", str(out), "--json", "--top-k", str(n), "red"]) == 0
    hits = json.loads(capsys.readouterr().out)
    photos = {str(p) for p in (gallery_root() / "images").iterdir()}
    assert len(hits) == n and {h["image"] for h in hits} <= photos
    assert Index.load(out).root == gallery_root() / "images"


def test_truncated_and_wrong_version_index(tmp_path):
    n = 1
    index = Index(root_spec=str(tmp_path), paths=["a.jpg"], sizes=np.zeros(n, np.int64),
                  mtimes=np.zeros(n, np.int64), probs=np.full((n, 2), 0.5, np.float16),
                  embeddings=np.ones((n, 4), np.float32), attributes=["red", "furry"],
                  checkpoint={"sha256": "x", "source": "x"})  # fmt: skip
    good = tmp_path / "good.npz"
    index.save(good)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert_one_line_error(
        cli("search", "--index", str(cut), "red"), "cut.npz", "not a readable cocoattr index"
    )
    assert_one_line_error(cli("search", "--index", str(tmp_path / "none.npz"), "red"), "no such index file")


def test_index_save_every_env_is_validated(tmp_path):
    proc = cli("index", "build", "--images", str(tmp_path), "--out", str(tmp_path / "i.npz"),
               env={"COCOATTR_INDEX_SAVE_EVERY": "-3"})  # fmt: skip
    assert_one_line_error(proc, "COCOATTR_INDEX_SAVE_EVERY")


# ----------------------------------------------------------------------------- gallery folders


def _gallery_copy(tmp_path: Path) -> Path:
    root = tmp_path / "gallery"
    shutil.copytree(gallery_root(), root)
    return root


@pytest.mark.parametrize("name", ["../secret.jpg", "/etc/hostname", "images/../../secret.jpg", "C:/x.jpg"])
def test_gallery_file_names_outside_the_folder_are_refused(tmp_path, name, default_checkpoint):
    root = _gallery_copy(tmp_path)
    shutil.copy(CAT, tmp_path / "secret.jpg")
    captions = json.loads((root / "captions.json").read_text())
    captions["images"][0]["file_name"] = name
    (root / "captions.json").write_text(json.dumps(captions))
    with pytest.raises(UserError, match="points outside the gallery folder"):
        load_gallery(root)
    assert_one_line_error(cli("evaluate", "--checkpoint", "default", "--data", str(root)),
                          "points outside the gallery folder")  # fmt: skip


def test_gallery_attributes_naming_unknown_attributes(tmp_path):
    root = _gallery_copy(tmp_path)
    labels = json.loads((root / "attributes.json").read_text())
    labels["annotations"][0]["positive"].append("unicornish")
    (root / "attributes.json").write_text(json.dumps(labels))
    with pytest.raises(UserError, match=r"names attributes not in the vocabulary: \['unicornish'\]"):
        load_gallery(root)
    # and through the CLI: the miner's evaluation against these hand labels
    proc = cli(
        "data", "mine", "--captions", str(root / "captions.json"), "--labels", str(root / "attributes.json")
    )
    assert_one_line_error(proc, "unicornish")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("{not json", "malformed JSON"), ("[1, 2]", "expected a JSON object"), ("", "malformed JSON"),
     ('{"images": "x", "annotations": []}', "not a COCO annotation file")],
)  # fmt: skip
def test_malformed_captions_json_through_the_cli(tmp_path, text, fragment):
    path = tmp_path / "captions.json"
    path.write_text(text)
    assert_one_line_error(cli("data", "mine", "--captions", str(path)), "captions.json", fragment)


# ----------------------------------------------------------------------------- checkpoints via the CLI


@pytest.mark.parametrize(
    ("breakage", "fragment"),
    [("config_not_json", "malformed JSON"), ("config_missing", "config.json"),
     ("weights_truncated", "truncated or corrupt"), ("weights_pickle", "truncated or corrupt")],
)  # fmt: skip
def test_broken_checkpoint_through_cli_predict(tmp_path, breakage, fragment, default_checkpoint):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(default_checkpoint, ckpt)
    weights = ckpt / "model.safetensors"
    marker = tmp_path / "pwned"
    if breakage == "config_not_json":
        (ckpt / "config.json").write_text("{oops")
    elif breakage == "config_missing":
        (ckpt / "config.json").unlink()
    elif breakage == "weights_truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:  # a pickle (torch.save-style) renamed model.safetensors: never unpickled
        weights.write_bytes(pickle.dumps(_Pwn(marker)))
    assert_one_line_error(cli("predict", "--checkpoint", str(ckpt), str(CAT)), fragment)
    assert not marker.exists()
