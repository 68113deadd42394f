"""Sharded index builds (#13): `index build --shard I/N` (or torchrun's RANK/WORLD_SIZE) writes one
part per process, `index merge` joins them into the index a single process would have built (same
rows in the same order, same arrays), a killed shard resumes from its own part, and bad shard specs
or parts of different builds are refused with one line."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_coco_index import PHOTOS, coco  # noqa: F401 - the COCO fixture built with the real default
from test_index import FakePredictor, folder  # noqa: F401 - the stand-in predictor and its folder
from test_reliability_crash import ROOT, SAVE_EVERY, _build_cmd, _build_killed_at, _env, clean_index, photos  # noqa: F401

from cocoattr.cli import main
from cocoattr.index import Index, build_index
from cocoattr.index_shards import merge_parts, part_path, rank_device, selector, shard_from_env, shard_of


def assert_same_index(a: Index, b: Index, exact: bool = True) -> None:
    assert a.paths == b.paths and a.root_spec == b.root_spec and a.info == b.info
    assert a.complete and b.complete and a.checkpoint == b.checkpoint and a.attributes == b.attributes
    np.testing.assert_array_equal(a.sizes, b.sizes)
    np.testing.assert_array_equal(a.mtimes, b.mtimes)
    assert a.probs.dtype == b.probs.dtype == np.float16 and a.embeddings.dtype == b.embeddings.dtype
    if exact:
        np.testing.assert_array_equal(a.probs, b.probs)
        np.testing.assert_array_equal(a.embeddings, b.embeddings)
    else:  # other batches: the same numbers up to float rounding
        np.testing.assert_allclose(a.probs.astype(np.float32), b.probs.astype(np.float32), atol=2e-3)
        np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-4)
    assert a.records == b.records and a.thumbnails == b.thumbnails and a.temperature == b.temperature
    assert (a.attribute_text is None) == (b.attribute_text is None) and (a.text_proj is None) == (
        b.text_proj is None
    )
    for x, y in [
        (a.attribute_text, b.attribute_text),
        *zip(a.text_proj or (), b.text_proj or (), strict=True),
    ]:
        np.testing.assert_array_equal(x, y)


def build_shard(images: Path, out: Path, shard: tuple[int, int], predictor: FakePredictor, **kw) -> Path:
    part = part_path(out, shard)
    build_index(images, part, predictor, select=selector(shard), info={"shard": list(shard)}, progress=False,
                **kw)  # fmt: skip
    return part


@pytest.mark.parametrize("n", [2, 3])
def test_shards_merged_equal_a_single_build(tmp_path, folder, n):  # noqa: F811 - the fixture
    single = build_index(
        folder, tmp_path / "single.npz", FakePredictor(tmp_path / "ck"), progress=False
    ).index
    calls, parts = [], []
    for i in range(n):
        pred = FakePredictor(tmp_path / "ck")
        parts.append(build_shard(folder, tmp_path / "sharded.npz", (i, n), pred))
        calls += pred.calls
        assert Index.load(parts[-1]).info == {"shard": [i, n]}
    assert sorted(calls) == sorted(Path(p).name for p in single.paths)  # each image run once, in one shard
    assert [p.name for p in parts] == [f"sharded.shard-{i}-of-{n}.npz" for i in range(n)]
    assert_same_index(merge_parts(parts[::-1]), single)  # the order the parts are given in is irrelevant


def test_shard_of_is_a_stable_split_of_every_path():
    paths = [f"{i:012d}.jpg" for i in range(2000)]
    counts = np.bincount([shard_of(p, 4) for p in paths], minlength=4)
    assert counts.sum() == 2000 and counts.min() > 400  # roughly even
    assert [shard_of(p, 4) for p in paths] == [shard_of(p, 4) for p in paths]


def test_killed_shard_resumes_from_its_part(tmp_path, folder):  # noqa: F811
    single = build_index(
        folder, tmp_path / "single.npz", FakePredictor(tmp_path / "ck"), progress=False
    ).index
    out = tmp_path / "i.npz"
    other = build_shard(folder, out, (1, 2), FakePredictor(tmp_path / "ck"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_shard(folder, out, (0, 2), FakePredictor(tmp_path / "ck", fail_after=1), save_every=1)
    part = part_path(out, (0, 2))
    partial = Index.load(part)
    assert not partial.complete and len(partial) == 1
    with pytest.raises(Exception, match=r"shard 0/2 is incomplete .* --shard 0/2` again"):
        merge_parts([part, other])
    resumed = FakePredictor(tmp_path / "ck")
    build_shard(folder, out, (0, 2), resumed)
    assert resumed.calls == ["c.png"]  # only what the killed run had not saved
    assert_same_index(merge_parts([part, other]), single)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cocoattr: error: "), err
    return err[0]


@pytest.mark.parametrize("spec", ["2/2", "a/b", "-1/2", "1/0", "", "1", "0/2/3"])
def test_bad_shard_spec_is_one_line(tmp_path, folder, capsys, spec):  # noqa: F811
    out = tmp_path / "i.npz"
    assert main(["index", "build", "--images", str(folder), "--out", str(out), f"--shard={spec}"]) == 2
    assert f"--shard {spec!r}: expected I/N" in _one_line(capsys)
    assert list(tmp_path.glob("i*.npz")) == []


@pytest.mark.parametrize("rank, world", [("abc", "2"), ("2", "2"), ("0", "x")])
def test_bad_torchrun_environment_is_one_line(tmp_path, folder, capsys, monkeypatch, rank, world):  # noqa: F811
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", world)
    assert main(["index", "build", "--images", str(folder), "--out", str(tmp_path / "i.npz")]) == 2
    assert f"RANK={rank!r} WORLD_SIZE={world!r}" in _one_line(capsys)


def test_shard_from_env_reads_torchrun_like_training_does():
    assert shard_from_env({}) is None and shard_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert shard_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4)
    assert rank_device("cuda", {"LOCAL_RANK": "1"}) == "cuda:1"  # one GPU per rank
    assert (
        rank_device("cuda:0", {"LOCAL_RANK": "1"}) == "cuda:0"
        and rank_device("cpu", {"LOCAL_RANK": "1"}) == "cpu"
    )


@pytest.fixture
def parts(tmp_path, folder) -> dict[str, Path]:  # noqa: F811
    out = tmp_path / "i.npz"
    made = {f"{i}": build_shard(folder, out, (i, 2), FakePredictor(tmp_path / "ck")) for i in range(2)}
    made["other-checkpoint"] = build_shard(folder, tmp_path / "o.npz", (1, 2),
                                           FakePredictor(tmp_path / "ck2", weights=b"weights-v2"))  # fmt: skip
    made["whole"] = tmp_path / "whole.npz"
    build_index(folder, made["whole"], FakePredictor(tmp_path / "ck"), progress=False)
    made["of-three"] = build_shard(folder, tmp_path / "t.npz", (1, 3), FakePredictor(tmp_path / "ck"))
    return made


@pytest.mark.parametrize(
    "given, fragment",
    [(["0", "other-checkpoint"], "made with checkpoint"), (["0"], "missing shard(s) 1/2"),
     (["0", "0", "1"], "shard 0/2 given twice"), (["0", "whole"], "not a shard part"),
     (["0", "of-three"], "is one of 2 shards")],
)  # fmt: skip
def test_merge_refuses_parts_of_different_builds_in_one_line(tmp_path, parts, capsys, given, fragment):
    out = tmp_path / "merged.npz"
    assert main(["index", "merge", *[str(parts[g]) for g in given], "--out", str(out)]) == 2
    line = _one_line(capsys)
    assert fragment in line, line
    if fragment == "made with checkpoint":
        assert "ck2" in line and "ck " in line and "rebuild the shards with one checkpoint" in line
    assert not out.exists()


def test_merge_never_overwrites_a_part_or_a_non_index_file(tmp_path, parts, capsys):
    given = [str(parts["0"]), str(parts["1"])]
    assert main(["index", "merge", *given, "--out", given[0]]) == 2
    assert "is one of the parts" in _one_line(capsys)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    assert main(["index", "merge", *given, "--out", str(notes)]) == 2
    assert "not a readable cocoattr index" in _one_line(capsys) and notes.read_text() == "mine"


# ----------------------------------------------------------------------------- the real CLI


def test_cli_shards_of_a_coco_split_merge_to_the_single_build(
    coco,  # noqa: F811 - the fixture
    default_checkpoint,
    tmp_path,
    monkeypatch,
):
    """Shard 0 by --shard, shard 1 as torchrun would start it (RANK/WORLD_SIZE), then `index merge`."""
    root, single, _ = coco
    out = tmp_path / "val2017.npz"
    base = ["index", "build", "--coco", str(root), "--split", "val2017", "--out", str(out),
            "--checkpoint", str(default_checkpoint)]  # fmt: skip
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert main([*base, "--shard", "0/2"]) == 0
    with monkeypatch.context() as env:
        env.setenv("RANK", "1")
        env.setenv("WORLD_SIZE", "2")
        assert main(base) == 0
    said = err.getvalue()
    assert f"into {part_path(out, (1, 2))} (shard 1/2): 2 computed" in said
    assert f"cocoattr index merge {tmp_path}/val2017.shard-*-of-2.npz --out {out}" in said
    parts = sorted(tmp_path.glob("val2017.shard-*-of-2.npz"))
    assert [len(Index.load(p)) for p in parts] == [2, 2] and not out.exists()
    assert main(["index", "merge", *map(str, parts), "--out", str(out)]) == 0
    merged = Index.load(out)
    assert [r["coco_id"] for r in merged.records] == sorted(PHOTOS)
    assert_same_index(merged, Index.load(single), exact=False)  # bit-equal here; batches differ


@pytest.mark.slow
def test_sigkilled_shard_resumes_to_its_rows_of_the_single_build(photos, clean_index, tmp_path):  # noqa: F811
    """A real `index build --shard 0/2` process SIGKILLed after a partial save, then run again."""
    out = tmp_path / "i.npz"
    part = part_path(out, (0, 2))
    cmd = [*_build_cmd(photos, out), "--shard", "0/2"]
    code = _build_killed_at(cmd, part, SAVE_EVERY)
    assert code == -signal.SIGKILL, "the shard finished before it could be killed"
    partial = Index.load(part)
    mine = [p for p in clean_index.paths if shard_of(p, 2) == 0]
    assert not partial.complete and SAVE_EVERY <= len(partial) < len(mine)
    rerun = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(mine) - len(partial)} computed, {len(partial)} unchanged" in rerun.stderr, rerun.stderr
    final = Index.load(part)
    rows = [clean_index.paths.index(p) for p in mine]
    assert final.complete and final.paths == mine and final.info == {"shard": [0, 2]}
    np.testing.assert_array_equal(final.mtimes, clean_index.mtimes[rows])
    np.testing.assert_allclose(
        final.probs.astype(np.float32), clean_index.probs[rows].astype(np.float32), atol=2e-3
    )
    np.testing.assert_allclose(final.embeddings, clean_index.embeddings[rows], atol=1e-4)
