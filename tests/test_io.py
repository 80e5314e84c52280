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
        (stage / "export.json").write_text("{}")  # what marks a folder as an output vitdeploy wrote
    with staged_dir(tmp_path / "out") as stage:
        (stage / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in (tmp_path / "out").iterdir()] == ["new.txt"]


def test_a_folder_vitdeploy_did_not_write_is_never_replaced(tmp_path):
    """`--out ~/projects` or `--out .` in a user's folder: refused before anything is staged, the folder untouched."""
    from vitdeploy.errors import OutputError

    mine = tmp_path / "projects"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="vitdeploy did not write"):
        with staged_dir(mine) as stage:
            (stage / "vitdeploy.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["projects"] and (mine / "notes.txt").read_text() == "mine"
    with staged_dir(tmp_path / "empty") as stage:  # an empty folder, or a missing one, is fine
        (stage / "a.txt").write_text("a")


def test_staged_dir_works_for_dot_and_relative_paths(tmp_path, monkeypatch):
    """`--out .` names the folder it runs in: the staging folder is its sibling and the final rename swaps it."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with staged_dir(".") as stage:
        assert stage.parent == tmp_path and stage.name.startswith(".work.")
        (stage / "report.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"] and (tmp_path / "work" / "report.json").is_file()
    monkeypatch.chdir(tmp_path)
    with staged_dir("sub/out") as stage:
        (stage / "a.txt").write_text("a")
    assert (tmp_path / "sub" / "out" / "a.txt").is_file()


def test_a_failed_write_removes_the_parent_folders_it_made(tmp_path):
    with pytest.raises(RuntimeError):
        with staged_dir(tmp_path / "a" / "b" / "out") as stage:
            (stage / "x").write_text("x")
            raise RuntimeError("failed")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_one_line_naming_the_output(tmp_path):
    """ENOSPC (and EDQUOT, EFBIG, EROFS, EACCES) inside a staged write becomes one OutputError naming --out."""
    import errno

    from vitdeploy.errors import OutputError

    with pytest.raises(OutputError, match=r"cannot write '.*out': No space left on device"):
        with staged_dir(tmp_path / "out") as stage:
            (stage / "half").write_bytes(b"x")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(stage / "half"))
    assert list(tmp_path.iterdir()) == []
