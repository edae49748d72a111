"""Where commands write: the one rule for what an `enet` command may create, replace or lock.

Every command that writes a directory goes through `claim()`:

- it never writes into, over, or around its own inputs (the output may not be an input, a
  parent of one, or inside one);
- an existing non-empty directory is replaced only with `--force`, and only when it is
  itself the output of the same kind of command and holds nothing but what that command
  recorded writing there (its marker file lists them; names are never guessed);
- one process at a time writes an output: an OS lock (`fcntl.flock`) that dies with its
  process; a second writer is refused with a line naming the owner's PID;
- the new output is built in a hidden sibling and renamed into place when complete; the old
  one goes only after that. Leftovers of a process that died (its staging directory, or an
  old output set aside just before the rename) are cleaned up, or put back, by the next run.

A file a user names (`--json`, `--summary`, `--confusion-csv`) follows the same first rule
(`check_file_target`): it may not be one of the command's inputs nor lie inside one. Files
are written with `write_atomic()` (temp name, then rename). OS errors on the way out become
one line naming the path (`OutputError`).
"""

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Union

from enet_cli import __version__
from enet_cli.core.errors import NO_SPACE, OutputError, disk_full, reason

# {"kind": ..., "created_by": ..., "files": [...]} in every directory we make: "files" lists
# what the command wrote there, which is what a later --force may replace.
MARKER = ".enet-output.json"
LOCK = ".enet.lock"  # inside a run directory; outputs being built lock `.<name>.lock` beside them

COMMAND = {
    "preprocess": "enet preprocess",
    "export": "enet export",
    "demo": "enet demo",
    "download": "enet jobs download",
    "report": "enet report",
}


def _legacy_kind(directory: Path) -> Optional[str]:
    """Outputs written before the marker existed: recognised by their own metadata."""
    manifest = directory / "manifest.json"
    if manifest.is_file():
        try:
            created = json.loads(manifest.read_text()).get("created_by", "")
        except (OSError, ValueError, AttributeError):
            return None
        return "preprocess" if str(created).startswith("enet-cli") else None
    if (directory / "enet.json").is_file():
        return "export"
    return None


def _read_marker(directory: Path) -> Optional[dict]:
    try:
        found = json.loads((Path(directory) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def kind_of(directory: Path) -> Optional[str]:
    """Which command made `directory` (None: not an enet output, or unreadable marker)."""
    directory = Path(directory)
    if (directory / MARKER).is_file():
        marker = _read_marker(directory)
        kind = None if marker is None else marker.get("kind")
        return str(kind) if kind is not None else None
    return _legacy_kind(directory)


def recorded_files(directory: Path) -> Optional[List[str]]:
    """The entries of `directory` its command recorded writing (None: no record, as in an
    output of an enet-cli older than the list)."""
    listed = (_read_marker(directory) or {}).get("files")
    return [str(name) for name in listed] if isinstance(listed, list) else None


def foreign_entries(directory: Path, owned: Sequence[str]) -> list:
    """Entries of `directory` that are not in `owned` (what enet recorded writing there)."""
    return sorted(
        p.name for p in Path(directory).iterdir() if p.name != MARKER and p.name not in owned
    )


def json_text(data, indent: Optional[int] = 2) -> str:
    """Strict JSON for what we write: NumPy numbers as numbers, NaN and infinities (an IoU of
    a class absent from a split) as null, which jq, browsers and JSON libraries accept."""
    import math

    import numpy as np

    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, np.ndarray):
            return clean(value.tolist())
        if isinstance(value, (np.floating, np.integer)):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    return json.dumps(clean(data), indent=indent, allow_nan=False) + "\n"


def write_marker(directory: Path, kind: str, files: Optional[Sequence[str]] = None) -> None:
    """Mark `directory` as a `kind` output; `files`: the entries the command wrote in it."""
    marker = {"kind": kind, "created_by": f"enet-cli {__version__}"}
    if files is not None:
        marker["files"] = sorted(files)
    write_atomic(Path(directory) / MARKER, json.dumps(marker) + "\n")


def _overlap(out: Path, other: Path) -> Optional[str]:
    if out == other:
        return "is"
    if other in out.parents:
        return "is inside"
    if out in other.parents:
        return "contains"
    return None


# A staged output is written as `.NAME.partial-<pid>` (or `.NAME.lock`) beside NAME.
STAGING_ROOM = len(".") + len(".partial-") + 10


def check_path_length(path: Path, option: str) -> None:
    """Refuse, before any work, a path the file system cannot hold: a name longer than its
    NAME_MAX (with room for the staging name beside it), or the whole over PATH_MAX."""
    absolute = Path(os.path.abspath(path))
    existing = next((p for p in absolute.parents if _exists(p)), Path("/"))
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
        path_max = os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for index, part in enumerate(absolute.parts[1:]):
        room = STAGING_ROOM if index == len(absolute.parts) - 2 else 0
        if len(os.fsencode(part)) + room > name_max:
            raise OutputError(
                f"{option}: the name {part[:24]}... is {len(os.fsencode(part))} bytes, more than "
                f"this file system takes ({name_max - room}); choose a shorter name"
            )
    if len(os.fsencode(str(absolute))) + STAGING_ROOM > path_max:
        raise OutputError(
            f"{option}: the path is {len(os.fsencode(str(absolute)))} bytes long, more than the "
            f"system takes ({path_max - STAGING_ROOM}); choose a shorter path"
        )


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long to even look up
        return False


def check_apart(out: Path, inputs: Iterable[Path], option: str, may_contain: bool = False) -> None:
    """Refuse an output that is, contains, or lies inside one of `inputs`. `may_contain`:
    for a folder that only receives new files (predict's --out), around an input is fine."""
    resolved = Path(out).resolve()
    for item in inputs:
        if item is None:
            continue
        relation = _overlap(resolved, Path(item).resolve())
        if relation == "contains" and may_contain:
            continue
        if relation:
            raise OutputError(
                f"{option} {out} {relation} the input {item}; write the output somewhere "
                f"outside the input"
            )


def check_replaceable(out: Path, kind: str, force: bool, option: str) -> None:
    """May `out` be replaced by a `kind` output? Missing or empty: yes; else only with force,
    and only if it is a `kind` output holding nothing else."""
    out = Path(out)
    check_path_length(out, option)
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise OutputError(f"{option} {out} exists and is not a directory; choose another path")
    try:
        empty = not any(out.iterdir())
    except OSError as err:
        raise OutputError(f"cannot read {option} {out}: {err.strerror}") from None
    if empty:
        return
    found = kind_of(out)
    command = COMMAND[kind]
    if found != kind:
        raise OutputError(
            f"{option} {out} exists and is not the output of {command}; it is never replaced: "
            f"choose a new directory"
        )
    owned = recorded_files(out)
    if owned is None:  # ownership is what enet recorded, never guessed from names
        raise OutputError(
            f"{option} {out} was written by an older {command} that did not record its files; "
            f"it is never replaced: remove it yourself or choose a new directory"
        )
    foreign = foreign_entries(out, owned)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise OutputError(
            f"{option} {out} holds files {command} did not write ({shown}); it is never "
            f"replaced: move them or choose a new directory"
        )
    if not force:
        raise OutputError(f"{option} {out} already exists; use --force to replace it")


# ---------------------------------------------------------------------------------------
# Locks
# ---------------------------------------------------------------------------------------
class Lock:
    """An exclusive `flock` on a file, held while the process lives (the kernel drops it when
    the process dies, however it dies). The file records the owner's PID for the refusal."""

    def __init__(self, path: Path, what: str):
        self.path = Path(path)
        self.what = what
        self._fd: Optional[int] = None

    def acquire(self) -> "Lock":
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise OutputError(
                    f"cannot write to {self.path.parent}: {err.strerror}; choose a writable path"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                owner = _read_pid(fd)
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputError(
                        f"{self.what} is in use by another enet process (PID {owner or '?'}); "
                        f"wait for it to finish or stop it"
                    ) from None
                raise
            # The previous owner may have unlinked the file between our open and our lock.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self, remove: bool = False) -> None:
        if self._fd is None:
            return
        if remove:
            with contextlib.suppress(OSError):
                self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "Lock":
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> Optional[int]:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None


class RunDirLock(Lock):
    """The lock of a run directory, which knows whether this process created it."""

    created: Optional[Path] = None  # the topmost directory lock_run_dir made

    def release(self, remove: bool = False) -> None:
        undo = remove and self._fd is not None
        super().release(remove)
        if undo:
            remove_empty(self.created)


def lock_run_dir(run_dir: Path, inputs: Sequence[Optional[Path]] = ()) -> RunDirLock:
    """The training process owns its run directory for as long as it lives; the run
    directory is never one of the inputs (the dataset), inside one, or around one."""
    run_dir = Path(run_dir)
    check_path_length(run_dir, "--run-dir")
    check_apart(run_dir, inputs, "--run-dir")
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"--run-dir {run_dir} exists and is not a directory; choose another")
    created = _make_parent(run_dir / LOCK, "--run-dir")
    lock = RunDirLock(run_dir / LOCK, f"run directory {run_dir}")
    lock.created = created
    try:
        return lock.acquire()
    except BaseException:
        remove_empty(created)
        raise


def remove_untouched(made: Sequence[Path]) -> None:
    """After a refusal: remove the directories in `made` (which this run created) if they
    are still empty, so that a refused run leaves the disk as it found it; the caller's
    `release(remove=True)` then removes the lock and a run directory it created."""
    for directory in sorted(map(Path, made), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            directory.rmdir()


# ---------------------------------------------------------------------------------------
# Building a directory beside its final place
# ---------------------------------------------------------------------------------------
def _siblings(out: Path, tag: str) -> list:
    return sorted(out.parent.glob(f".{out.name}.{tag}-*"))


def _recover(out: Path) -> None:
    """Clean up after a writer of `out` that died (we hold the lock, so none is alive)."""
    for old in _siblings(out, "old"):
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)  # it died after publishing
        else:
            os.replace(old, out)  # it died between the two renames: put the old one back
    for partial in _siblings(out, "partial"):
        shutil.rmtree(partial, ignore_errors=True)


class Staged:
    """A directory under construction: `path` while writing, `out` once `publish()` ran."""

    def __init__(self, out: Path, kind: str, lock: Lock):
        self.out = out
        self.kind = kind
        self.lock = lock
        self.path = out.parent / f".{out.name}.partial-{os.getpid()}"

    def publish(self) -> Path:
        """Move the finished directory into place; the old one is removed only after. Not
        after a signal: the command is stopping, and says the old output is kept."""
        from enet_cli.core.ui import check_interrupts  # here: the handler's image has no rich

        check_interrupts()
        written = [p.name for p in self.path.iterdir() if p.name != MARKER]
        write_marker(self.path, self.kind, written)
        old = None
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
            os.replace(self.out, old)
        os.replace(self.path, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out


@contextlib.contextmanager
def claim(
    out: Path,
    kind: str,
    force: bool = False,
    inputs: Sequence[Optional[Path]] = (),
    option: str = "output",
) -> Iterator[Staged]:
    """Check, lock and stage `out` for a `kind` command; the caller fills `staged.path` and
    calls `staged.publish()`. On any error or signal nothing of the new output remains and
    the old output is untouched."""
    out = Path(out)
    check_apart(out, inputs, option)
    check_replaceable(out, kind, force, option)
    created = _make_parent(out, option)
    try:
        lock = Lock(out.parent / f".{out.name}.lock", f"{option} {out}").acquire()
    except BaseException:
        remove_empty(created)
        raise
    staged = Staged(out, kind, lock)
    published = False
    try:
        _recover(out)
        check_replaceable(out, kind, force, option)  # again: another process may have written
        try:
            staged.path.mkdir()
        except OSError as err:
            raise OutputError(f"cannot write to {out.parent}: {err.strerror}") from None
        try:
            yield staged
            published = out.exists()
        except Exception as err:
            if disk_full(err) and not isinstance(err, OutputError):
                raise OutputError(
                    f"cannot write {option} {out}: {NO_SPACE}; free space or choose another "
                    f"path (nothing was written)"
                ) from None
            raise
        finally:
            shutil.rmtree(staged.path, ignore_errors=True)
    finally:
        lock.release(remove=True)
        if not published:
            remove_empty(created)


def make_dirs(directory: Path, option: str) -> Optional[Path]:
    """Create `directory` and its parents; returns the topmost one this created (None: it
    existed), for remove_empty to undo."""
    directory = Path(directory)
    missing = [p for p in [directory, *directory.parents] if not p.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create {directory} for {option}: {err.strerror}") from None
    return missing[-1] if missing else None


def _make_parent(out: Path, option: str) -> Optional[Path]:
    return make_dirs(out.parent, option)


def remove_empty(top: Optional[Path]) -> None:
    """Undo make_dirs after a failure: the directories it made, if still empty."""
    if top is None:
        return
    for directory in sorted((p for p in top.rglob("*") if p.is_dir()), reverse=True):
        with contextlib.suppress(OSError):
            directory.rmdir()
    with contextlib.suppress(OSError):
        top.rmdir()


@contextlib.contextmanager
def claim_in_place(
    out: Path,
    kind: str,
    force: bool,
    files: Sequence[str],
    inputs: Sequence[Optional[Path]] = (),
    option: str = "--out",
) -> Iterator[Path]:
    """Like claim(), for an output whose parts other commands read while it is being made
    (enet demo): checked and locked the same way, then emptied and written where it is.
    `files`: the entries the command will write, recorded first (a later --force may replace
    them even when this run dies half-way)."""
    out = Path(out)
    check_apart(out, inputs, option)
    check_replaceable(out, kind, force, option)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create {out.parent} for {option}: {err.strerror}") from None
    lock = Lock(out.parent / f".{out.name}.lock", f"{option} {out}").acquire()
    try:
        check_replaceable(out, kind, force, option)
        if out.exists():
            shutil.rmtree(out)  # an earlier `kind` output holding only its own files
        try:
            out.mkdir()
        except OSError as err:
            raise OutputError(f"cannot create {option} {out}: {err.strerror}") from None
        write_marker(out, kind, files)
        yield out
    finally:
        lock.release(remove=True)


def check_file_target(path: Path, option: str, inputs: Sequence[Optional[Path]] = ()) -> None:
    """Refuse, before any work, a file output that could not be written at the end, or
    that would replace one of `inputs` (a file given as input, or anything inside an input
    directory: a dataset's manifest or shard, a model's enet.json)."""
    path = Path(path)
    check_path_length(path, option)
    resolved = path.resolve()
    for item in inputs:
        if item is None:
            continue
        relation = _overlap(resolved, Path(item).resolve())
        if relation in ("is", "is inside"):
            raise OutputError(
                f"{option} {path} {relation} the input {item}; write it outside the inputs"
            )
    if path.is_dir():
        raise OutputError(f"{option} {path} is a directory; give a file name")
    parent = next((p for p in [path.parent, *path.parent.parents] if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise OutputError(f"{option} {path}: {parent} is a file, not a directory")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: {parent} is not writable; choose another path")


def write_file(
    path: Path, data: Union[str, bytes], option: str, inputs: Sequence[Optional[Path]] = ()
) -> None:
    """A user-named output file: its folder created, written atomically, errors one line."""
    path = Path(path)
    check_file_target(path, option, inputs)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create {path.parent} for {option}: {err.strerror}") from None
    write_atomic(path, data)


class StagedFile:
    """An output file (or folder of files) written under a hidden temporary name in its
    final folder (`.NAME.partial-<pid>`, as staged directories are named) and renamed over
    NAME when complete, so a file named like an output is always whole: what streams (a
    video, a CSV) writes to `temp` as it goes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.temp = self.path.parent / f".{self.path.name}.partial-{os.getpid()}"

    def publish(self) -> Path:
        """Rename into place; a folder replaces an earlier one of the same name."""
        if self.temp.is_dir() and self.path.is_dir():
            shutil.rmtree(self.path)
        os.replace(self.temp, self.path)
        return self.path

    def discard(self) -> None:
        if self.temp.is_dir():
            shutil.rmtree(self.temp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                self.temp.unlink()


_PARTIAL = re.compile(r"^\..+\.partial-(\d+)$")


def sweep_partials(directory: Path) -> None:
    """Remove what writers that died left in `directory` (`.NAME.partial-<pid>` of a PID no
    longer running): a killed predict's half video, say. A live writer's are left alone."""
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return
    for entry in entries:
        found = _PARTIAL.match(entry.name)
        if found is None or _running(int(found.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def write_atomic(path: Path, data: Union[str, bytes]) -> None:
    """Write a whole file under a temporary name, then rename it over `path`."""
    staged = StagedFile(path)
    try:
        if isinstance(data, str):
            staged.temp.write_text(data)
        else:
            staged.temp.write_bytes(data)
        staged.publish()
    except OSError as err:
        with contextlib.suppress(OSError):
            staged.discard()
        raise OutputError(f"cannot write {path}: {reason(err)}; {remedy(err)}") from None


def remedy(err: BaseException) -> str:
    """What to do when writing failed with `err`."""
    return "free space or choose another path" if disk_full(err) else "choose a writable path"


def set_aside(directory: Path) -> Optional[Path]:
    """Rename `directory` to `<name>-replaced-<UTC time>` beside it (instead of deleting);
    an empty directory has nothing to keep, and is removed."""
    directory = Path(directory)
    if not directory.exists():
        return None
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = directory.parent / f"{directory.name}-replaced-{stamp}"
    n = 1
    while target.exists():
        n += 1
        target = directory.parent / f"{directory.name}-replaced-{stamp}-{n}"
    os.replace(directory, target)
    return target
