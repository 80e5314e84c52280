"""Atomic writes: every artifact is written to a temporary name in its own folder and renamed into place,
so a crash never leaves a half-written file that looks valid."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | os.PathLike) -> Any | None:
    """The parsed JSON at `path`, None when there is no such file; invalid JSON is a one-line user error."""
    from vitdeploy.errors import VitDeployError

    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise VitDeployError(f"'{path}' is not valid JSON") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a temp file (0600) or folder (0700) the mode a plain open()/mkdir() would have, so artifacts copied to a
    device or mounted into a Triton container can be read by other users."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


# ---------------------------------------------------------------------------------------- stale leftovers
# A writer holds an exclusive flock on its temporary file or staging folder for as long as it works on it. The kernel
# drops the lock when the process dies, even by kill -9, so a leftover nobody holds a lock on is a dead run's.
_LEFTOVER = r"^\.{name}\.[a-z0-9_]{{8}}\.(tmp|partial|old)$"
STAGING_SUFFIXES = (".tmp", ".partial", ".old")


def _lock(fd: int) -> None:
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (ImportError, OSError):  # no flock here (Windows, some network filesystems): leftovers stay
        pass


def _lock_dir(path: Path) -> list[int]:
    """[fd] of `path` opened and locked for this process's lifetime of the work; [] where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder
        return []
    _lock(fd)
    return [fd]


def _unowned(path: Path) -> bool:
    """True when no live process holds the lock on `path` (a temp file or staging folder)."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the probe's own lock


def clear_stale(final: str | os.PathLike) -> list[Path]:
    """Remove what killed runs left beside `final`: `.NAME.*.tmp` files and `.NAME.*.partial` staging folders that
    no live process holds. A `.NAME.*.old` folder holds the previous output of a run killed between its two
    renames; it is put back when `final` is missing, else removed. Returns the paths removed or restored."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    pattern = re.compile(_LEFTOVER.format(name=re.escape(final.name)))
    done = []
    for p in sorted(final.parent.iterdir()):
        m = pattern.match(p.name)
        if not m or not _unowned(p):
            continue
        if m.group(1) == "old" and (p / "old").exists() and not os.path.lexists(final):
            os.replace(p / "old", final)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        done.append(p)
    return done


def is_staging_path(path: str | os.PathLike) -> bool:
    """True for the temporary names atomic writes use (a hidden `.NAME.xxxxxxxx.partial` folder, ...): an unfinished
    output, never an artifact to load."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(STAGING_SUFFIXES) and name.count(".") >= 3


# ------------------------------------------------------------------------------------------ atomic writes
def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    _lock(fd)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; a library writes there, and it is renamed into place on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    _lock(fd)  # held until the rename: a later run sees the temp file as a live writer's, not a leftover
    try:
        yield Path(tmp)
        _publish_mode(tmp)
        os.replace(tmp, path)
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Build an output folder under a temporary name beside `final` and move it into place only when the
    block finishes without error. On error the staging folder is removed and `final` is left untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(final)  # what earlier killed runs to the same output left behind
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    locks = _lock_dir(stage)
    _publish_mode(stage, directory=True)
    try:
        yield stage
        if final.exists():
            if not overwrite:
                raise FileExistsError(final)
            # A kill between the two renames leaves the previous output in `.NAME.*.old/old`: clear_stale puts it
            # back, so the output is the old one or the new one, never a mix.
            trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            locks += _lock_dir(trash)
            os.replace(final, trash / "old")
            os.replace(stage, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(stage, final)
    finally:
        for fd in locks:
            os.close(fd)
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ manifests
def manifest_entry(folder: str | os.PathLike, name: str) -> dict:
    """{"file", "bytes", "sha256"} of `folder/name`: what model dirs and deploy dirs record for each file."""
    p = Path(folder) / name
    return {"file": name, "bytes": p.stat().st_size, "sha256": sha256_file(p)}


def member_path(folder: str | os.PathLike, name: Any, what: str) -> Path:
    """`folder/name` for a relative file name read from a manifest; a name that would leave `folder` (absolute, '..',
    a symlink out) is refused, so a tampered manifest cannot make us read or write elsewhere."""
    from vitdeploy.errors import IntegrityError

    folder = Path(folder)
    if not isinstance(name, str) or not name or os.path.isabs(name) or "\\" in name or ".." in Path(name).parts:
        raise IntegrityError(f"{what}: manifest names {name!r}, which is not a file inside {folder}")
    path = folder / name
    if not path.resolve().is_relative_to(folder.resolve()):
        raise IntegrityError(f"{what}: {name!r} points outside {folder}")
    return path


def verify_entry(folder: str | os.PathLike, entry: Any, what: str) -> Path:
    """Check one manifest entry ({"file", "bytes", "sha256"}) against the file; a missing, truncated or changed file
    raises IntegrityError naming it. Size first: a truncated file fails without being read."""
    from vitdeploy.errors import IntegrityError

    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not isinstance(entry.get("bytes"), int):
        raise IntegrityError(f"{what}: a manifest entry is malformed ({str(entry)[:80]})")
    path = member_path(folder, entry.get("file"), what)
    if not path.is_file():
        raise IntegrityError(f"{what} is incomplete: {entry['file']} is missing")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise IntegrityError(f"{what} is damaged: {entry['file']} has {size} bytes, its manifest says {entry['bytes']} "
                             f"(truncated or changed)")
    if sha256_file(path) != entry["sha256"]:
        raise IntegrityError(f"{what} is damaged: {entry['file']} does not match its recorded sha256")
    return path
