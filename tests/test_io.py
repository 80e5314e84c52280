"""Atomic writes: renamed into place whole, nothing left on failure, and readable by others like a plain write."""
import os
import stat

import pytest

from vitdeploy.io import atomic_file, atomic_write_text, staged_dir


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def test_modes_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        f = atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_file(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
        with staged_dir(tmp_path / "deploy") as stage:
            (stage / "c.txt").write_text("c")
        assert _mode(f) == 0o644 and _mode(tmp_path / "b.bin") == 0o644 and _mode(tmp_path / "deploy") == 0o755
    finally:
        os.umask(old)


def test_failures_leave_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with staged_dir(tmp_path / "out") as stage:
            (stage / "half.onnx").write_bytes(b"partial")
            raise RuntimeError("killed")
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "model.onnx") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_staged_dir_replaces_a_previous_output_whole(tmp_path):
    with staged_dir(tmp_path / "out") as stage:
        (stage / "old.txt").write_text("old")
    with staged_dir(tmp_path / "out") as stage:
        (stage / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in (tmp_path / "out").iterdir()] == ["new.txt"]
