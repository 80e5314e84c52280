"""Atomic writes: every artifact is written to a temporary name in its own folder and renamed into place,
so a crash never leaves a half-written file that looks valid."""
from __future__ import annotations

import contextlib
import errno
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


def refuse_staged(path: str | os.PathLike, what: str = "an artifact") -> None:
    """Refuse `path` when it is a staging name or lies inside a staging folder (an unfinished output: a graph in
    `.deploy.*.partial/` may be whole while the export around it is not)."""
    from vitdeploy.errors import IntegrityError

    p = Path(os.path.abspath(path))
    for part in (p, *p.parents):
        if is_staging_path(part):
            raise IntegrityError(f"'{path}' is inside the staging folder '{part}' of a run that did not finish; "
                                 f"it is not {what}")


# ------------------------------------------------------------------------------------------ atomic writes
def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    with _write_errors(path):
        return _atomic_write_bytes(path, data)


def _atomic_write_bytes(path: Path, data: bytes) -> Path:
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
    with _write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        clear_stale(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    _lock(fd)  # held until the rename: a later run sees the temp file as a live writer's, not a leftover
    try:
        with _write_errors(path):
            yield Path(tmp)
            _publish_mode(tmp)
            os.replace(tmp, path)
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# Files whose presence marks a folder as something vitdeploy wrote: only such a folder (or an empty one) is replaced.
OUTPUT_MARKERS = ("vitdeploy.json", "export.json", "report.json", "study.json", "sweep.json")
# errno values that mean "this path cannot be written": disk or quota full, file too large, read-only, no permission
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def write_failure(e: BaseException, final: str | os.PathLike) -> Exception | None:
    """The one-line OutputError for an OSError that says `final` cannot be written (disk full, read-only, no
    permission), or None for any other exception."""
    from vitdeploy.errors import OutputError

    if not isinstance(e, OSError) or e.errno not in WRITE_ERRNOS or not _on_the_way(e.filename, Path(final)):
        return None
    return OutputError(f"cannot write '{final}': {e.strerror or os.strerror(e.errno)} (nothing was written)")


def _on_the_way(filename: Any, final: Path) -> bool:
    """True when a failed call's file is one a write to `final` touches (the output, a file beside or under it, or a
    folder made on the way to it); False for an input that could not be read, which is not a write failure."""
    if filename is None:
        return True  # write() and fsync() report no file name
    p, final = Path(os.path.abspath(os.fsdecode(filename))), Path(os.path.abspath(final))
    return p == final or final.parent == p or final.parent in p.parents or p in final.parents


@contextlib.contextmanager
def _write_errors(final: Path) -> Iterator[None]:
    """OSErrors that mean `final` cannot be written become one OutputError naming it. Inside a staging folder the
    error is left to the staged_dir around it, which names the user's --out rather than a temporary path."""
    try:
        yield
    except OSError as e:
        inside_stage = any(is_staging_path(p) for p in Path(final).parents)
        err = None if inside_stage else write_failure(e, final)
        if err is None:
            raise
        raise err from None


def _make_parents(folder: Path) -> list[Path]:
    """mkdir -p `folder`; returns the folders it created, deepest first, so a failed run can remove them again."""
    made = []
    for p in (folder, *folder.parents):
        if p.exists():
            break
        made.append(p)
    folder.mkdir(parents=True, exist_ok=True)
    return made


def _remove_empty(folders: list[Path]) -> None:
    for p in folders:
        with contextlib.suppress(OSError):
            p.rmdir()


def check_replaceable(final: Path) -> None:
    """An existing `final` is replaced only when it is an empty folder or one vitdeploy wrote (it holds one of
    OUTPUT_MARKERS): `--out .` or `--out ~/projects` must never swap a user's folder for an output."""
    from vitdeploy.errors import OutputError

    if not final.is_dir() or final.is_symlink():
        if os.path.lexists(final):
            raise OutputError(f"--out '{final}' exists and is not a folder; choose another --out")
        return
    if any(final.iterdir()) and not any((final / m).is_file() for m in OUTPUT_MARKERS):
        raise OutputError(f"--out '{final}' is a folder vitdeploy did not write (it has files but no "
                          f"{' / '.join(OUTPUT_MARKERS)}); choose a new or empty folder")


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Build an output folder under a temporary name beside `final` and move it into place only when the
    block finishes without error. On error the staging folder (and any parent folder made for it) is removed and
    `final` is left untouched. `final` may be relative or '.': it is made absolute first, so the staging folder
    is named after the real folder and the final rename works."""
    final = Path(os.path.abspath(final))
    if final.parent == final:
        from vitdeploy.errors import OutputError

        raise OutputError(f"--out '{final}' is the root of the file system; choose a folder")
    check_replaceable(final)
    with _write_errors(final):
        made = _make_parents(final.parent)
        try:
            clear_stale(final)  # what earlier killed runs to the same output left behind
            stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
        except BaseException:
            _remove_empty(made)
            raise
    locks = _lock_dir(stage)
    ok = False
    try:
        with _write_errors(final):
            _publish_mode(stage, directory=True)
            yield stage
            if final.exists():
                if not overwrite:
                    raise FileExistsError(final)
                check_replaceable(final)  # the block may have run for hours: check again just before the swap
                # A kill between the two renames leaves the previous output in `.NAME.*.old/old`: clear_stale puts it
                # back, so the output is the old one or the new one, never a mix.
                trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
                locks += _lock_dir(trash)
                os.replace(final, trash / "old")
                os.replace(stage, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(stage, final)
            ok = True
    finally:
        for fd in locks:
            os.close(fd)
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
        if not ok:
            _remove_empty(made)


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


# -------------------------------------------------------------------------------------------- output guard
def _listed_files(folder: Path) -> set[str]:
    """The files a model dir's or deploy dir's manifest lists, with the manifest files themselves."""
    names = set()
    for marker, key in (("vitdeploy.json", "files"), ("export.json", "files")):
        try:
            rec = json.loads((folder / marker).read_text())
        except (OSError, ValueError):
            continue
        names.add(marker)
        files = rec.get(key) if isinstance(rec, dict) else None
        if isinstance(files, dict):
            names.update(str(k) for k in files)
        elif isinstance(files, list):
            names.update(str(e.get("file")) for e in files if isinstance(e, dict))
    return names


def guard_output(out: str | os.PathLike, inputs: list[tuple[Any, str]]) -> None:
    """Refuse, in one line, an output path whose writing would replace or delete an input.

    `inputs` are (path, kind) pairs; kind is "data" for a data folder (nothing may be written inside it: a new
    folder there becomes a class) or anything else for a model dir, deploy dir or file (an output inside a model or
    deploy dir is allowed, as `export DIR --out DIR/deploy` is, unless it is or holds a file its manifest lists).
    Paths that do not exist, and None, are skipped; symlinks are followed."""
    from vitdeploy.errors import OutputError

    o = Path(os.path.abspath(out)).resolve()
    for path, kind in inputs:
        if path is None or not os.path.exists(path):
            continue
        i = Path(path).resolve()
        if o == i:
            raise OutputError(f"--out '{out}' is the input '{path}' itself; writing it would replace the input")
        if o in i.parents:
            raise OutputError(f"--out '{out}' contains the input '{path}'; writing it would delete the input")
        if i in o.parents and i.is_dir():
            if kind == "data":
                raise OutputError(f"--out '{out}' is inside the data folder '{path}'; write outputs elsewhere")
            first = o.relative_to(i).parts
            listed = {Path(n).parts for n in _listed_files(i)}
            if any(n[:len(first)] == first or first[:len(n)] == n for n in listed):
                raise OutputError(f"--out '{out}' would replace {'/'.join(first)}, a file that '{path}' lists in "
                                  f"its manifest")


def check_writable(out: str | os.PathLike) -> None:
    """Fail now, in one line, when `out` cannot be written (read-only, no permission): not after an hour of training.
    Makes the parent folders and a temporary file beside `out`, and removes both again."""
    final = Path(os.path.abspath(out))
    with _write_errors(final):
        made = _make_parents(final.parent)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
            os.close(fd)
            os.unlink(tmp)
        finally:
            _remove_empty(made)


# ----------------------------------------------------------------------------------------- sealed records
# vitdeploy.json and export.json describe how to rebuild and feed the model (architecture, attention scales,
# normalisation, input size). The file manifests inside them cover the weights and graphs; the seal covers the
# description itself: a sha256 over its canonical JSON, stored beside it in the same record.
SEAL = "record_sha256"


def record_digest(record: dict) -> str:
    """sha256 of `record`'s canonical JSON (sorted keys, no blanks), the seal itself left out."""
    body = {k: v for k, v in record.items() if k != SEAL}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def seal(record: dict) -> dict:
    """`record` with its seal added (written as the last key)."""
    body = {k: v for k, v in record.items() if k != SEAL}
    return {**body, SEAL: record_digest(body)}


def check_seal(record: dict, what: str, name: str) -> None:
    """Refuse a record whose seal is missing or does not match: `name` (vitdeploy.json, export.json) was edited
    after vitdeploy wrote it, or written by a vitdeploy that did not seal it."""
    from vitdeploy.errors import IntegrityError

    digest = record.get(SEAL)
    if not isinstance(digest, str):
        raise IntegrityError(f"{what}: {name} carries no {SEAL} (written by an older vitdeploy, or edited); "
                             f"write it again with this version")
    if digest != record_digest(record):
        raise IntegrityError(f"{what}: {name} was changed after it was written (its {SEAL} does not match); "
                             f"write it again instead of editing it")
