"""cocoattr.atomic: the one write path leaves the old file or the new one, never half, with the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cocoattr.atomic import atomic_folder, atomic_write, atomic_write_json


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "index.npz"
    target.write_bytes(b"old and complete")

    def half_then_crash(tmp: Path) -> None:
        tmp.write_bytes(b"new but ha")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        atomic_write(target, half_then_crash)
    assert target.read_bytes() == b"old and complete"
    assert [p.name for p in tmp_path.iterdir()] == ["index.npz"]


def test_the_writer_never_writes_to_the_target_itself(tmp_path):
    target = tmp_path / "a.json"
    seen = []
    atomic_write(target, lambda tmp: (seen.append(tmp), tmp.write_text("{}")))
    assert seen[0] != target and seen[0].parent == target.parent and not seen[0].exists()
    assert target.read_text() == "{}"


def test_files_and_folders_follow_the_umask(tmp_path, umask_022):
    """mkstemp alone gives 0600 / 0700: an app running as another user could not read them."""
    f = atomic_write_json(tmp_path / "x" / "metrics.json", {"a": 1})
    assert _mode(f) == 0o644
    with atomic_folder(tmp_path / "ckpt") as staging:
        atomic_write_json(staging / "config.json", {})
    assert _mode(tmp_path / "ckpt") == 0o755 and _mode(tmp_path / "ckpt" / "config.json") == 0o644
    os.umask(0o077)
    assert _mode(atomic_write_json(tmp_path / "private.json", {})) == 0o600


def test_an_interrupted_folder_save_keeps_the_previous_folder_whole(tmp_path):
    folder = tmp_path / "ckpt"
    with atomic_folder(folder) as staging:
        (staging / "model.safetensors").write_bytes(b"v1")
        (staging / "config.json").write_text("v1")
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(folder) as staging:
            (staging / "model.safetensors").write_bytes(b"v2")
            raise KeyboardInterrupt
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert (folder / "model.safetensors").read_bytes() == b"v1"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging or .old folder left
    with atomic_folder(folder) as staging:
        (staging / "model.safetensors").write_bytes(b"v3")
    assert [p.name for p in folder.iterdir()] == ["model.safetensors"]  # replaced whole, not merged


def test_a_failed_final_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    """The old folder is moved aside before the staging folder is renamed in: if that rename
    fails (disk full, a reader holding the name on some filesystems) the old one must return."""
    folder = tmp_path / "ckpt"
    with atomic_folder(folder) as staging:
        (staging / "model.safetensors").write_bytes(b"v1")
    real_rename = Path.rename

    def rename(self: Path, target):  # noqa: ANN001
        if self.name.startswith(".ckpt.") and not self.name.endswith(".old") and Path(target) == folder:
            raise OSError("rename failed")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        with atomic_folder(folder) as staging:
            (staging / "model.safetensors").write_bytes(b"v2")
    assert (folder / "model.safetensors").read_bytes() == b"v1"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging or .old folder left
