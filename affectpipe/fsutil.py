"""Safe file operations: atomic replacement, one-writer locks, disk-full errors, hashes,
regular files opened without blocking."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from affectpipe.errors import AffectpipeError, InputError

logger = logging.getLogger(__name__)

# Locks this process holds, by (device, inode): POSIX record locks are per process, so a
# second lock of the same file from the same process would otherwise succeed silently.
_HELD_LOCKS: set[tuple[int, int]] = set()


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove ``.<name>.tmp-<pid>`` siblings of `path` left by processes that are gone."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.tmp-(\d+)$")
    removed = []
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return removed
    for sibling in siblings:
        match = pattern.match(sibling.name)
        if match and int(match[1]) != os.getpid() and not pid_alive(int(match[1])):
            with contextlib.suppress(OSError):
                if sibling.is_dir() and not sibling.is_symlink():
                    shutil.rmtree(sibling)
                else:
                    sibling.unlink()
                removed.append(sibling)
                logger.info("removed %s, left by a process that is gone", sibling)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces `path` atomically.

    A crash or exception leaves `path` untouched and removes the temporary file, so a
    reader never sees a half-written file. Temporary files of earlier writers of `path`
    that were killed are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed, holds our pid) or fail at once.

    A POSIX record lock (`fcntl.lockf`): the OS drops it when the process dies, and, unlike
    `flock`, forked children (DataLoader workers) do not share it, so no orphaned worker can
    keep a killed run's cache locked. A lock file naming a process that is gone is taken
    over with a note.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        info = path.stat()
        if (info.st_dev, info.st_ino) in _HELD_LOCKS:  # opening and closing it would unlock
            raise AffectpipeError(f"{path} is locked: this process is already writing this cache")
    with open(path, "a+") as handle:
        info = os.fstat(handle.fileno())
        key = (info.st_dev, info.st_ino)
        if key in _HELD_LOCKS:
            raise AffectpipeError(f"{path} is locked: this process is already writing this cache")
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            handle.seek(0)
            owner = handle.read().strip()
            who = f" (process {owner})" if owner.isdigit() else ""
            raise AffectpipeError(
                f"{path} is locked: another affectpipe process{who} is writing this cache"
            ) from None
        _HELD_LOCKS.add(key)
        try:
            handle.seek(0)
            owner = handle.read().strip()
            if owner.isdigit() and int(owner) != os.getpid():
                logger.warning("%s: taking over the lock of process %s, which is gone", path, owner)
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield
        finally:
            with contextlib.suppress(OSError):
                handle.seek(0)
                handle.truncate()  # released cleanly: no owner to report
                handle.flush()
            _HELD_LOCKS.discard(key)
            fcntl.lockf(handle, fcntl.LOCK_UN)


# --- disk full ------------------------------------------------------------------------------

RERUN_HINT = "free space and rerun to resume"


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC (or EDQUOT), raised directly or wrapped by h5py/HDF5 in its message."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, OSError | RuntimeError):
        text = str(exc)
        return "No space left on device" in text or f"errno = {errno.ENOSPC}," in text
    return False


class DiskFullError(AffectpipeError):
    """No space left while writing `path` (exit 1); committed work is kept."""

    def __init__(self, path: str | Path, committed_rows: int | None = None, detail: str = ""):
        self.path = Path(path)
        self.committed_rows = committed_rows
        self.detail = detail
        rows = "" if committed_rows is None else f"; {committed_rows} rows committed"
        detail = f" ({detail})" if detail else ""
        super().__init__(f"no space left on device at {self.path}{detail}{rows}; {RERUN_HINT}")


@contextlib.contextmanager
def disk_full_as_error(path: str | Path, committed_rows: Callable[[], int]) -> Iterator[None]:
    """Turn a disk-full failure while writing `path` into a `DiskFullError` with the rows
    committed so far."""
    try:
        yield
    except DiskFullError as exc:
        if exc.committed_rows is not None:
            raise
        error = DiskFullError(exc.path, committed_rows(), exc.detail)
    except (OSError, RuntimeError) as exc:
        if not is_disk_full(exc):
            raise
        error = DiskFullError(path, committed_rows())
    else:
        return
    # Raised outside the handler, so the traceback does not keep the failed writer's objects.
    raise error


def ensure_free_space(path: str | Path, needed: int) -> None:
    """Refuse (DiskFullError) to start writing about `needed` bytes at `path` without room."""
    path = Path(path)
    free = shutil.disk_usage(path.parent).free
    if free < needed:
        raise DiskFullError(path, detail=f"needs about {_size(needed)}, {_size(free)} free")


def _size(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.1f} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB"


_FALLOC_FL_KEEP_SIZE = 1


def reserve_space(fd: int, nbytes: int) -> bool:
    """Allocate `nbytes` of disk blocks for the open file `fd` without changing its size.

    Later writes up to that size then cannot fail for lack of space; truncating the file
    (HDF5 does so on close) frees what was not used. Raises OSError(ENOSPC) when the space
    is not there; returns False where the system or file system cannot reserve (Linux only).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fallocate = libc.fallocate
    except (OSError, AttributeError):
        return False
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if fallocate(fd, _FALLOC_FL_KEEP_SIZE, 0, nbytes) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSPC, errno.EDQUOT):
        raise OSError(code, os.strerror(code))
    return False


def json_sha256(value: Any) -> str:
    """sha256 of a JSON-serialisable value in canonical form (sorted keys; other objects by
    `str`): the one fingerprint of records, options and identities."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# --- regular files only ---------------------------------------------------------------------

FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def file_kind(mode: int) -> str | None:
    """None for a regular file, else what it is (for messages): "a FIFO"..."""
    if stat.S_ISREG(mode):
        return None
    return FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")


@contextlib.contextmanager
def open_regular(path: str | Path, max_bytes: int | None = None) -> Iterator[BinaryIO]:
    """`path` opened for reading, refused (InputError naming it) unless it is a regular file
    (links followed: a link to /dev/zero is a device) of at most `max_bytes`.

    Checked with `stat` before opening, and opened without blocking, then checked again on
    the open descriptor (the path may have been swapped): a FIFO would block `open` for
    ever, a device never ends.
    """
    try:
        kind = file_kind(os.stat(path).st_mode)
        if kind is None:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if kind is not None:
        raise InputError(f"{path} is {kind}: expected a regular file")
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        kind = file_kind(info.st_mode)
        if kind is not None:
            raise InputError(f"{path} is {kind}: expected a regular file")
        if max_bytes is not None and info.st_size > max_bytes:
            raise InputError(
                f"{path} is {_size(info.st_size)}, over the limit of {_size(max_bytes)}"
            )
        yield handle


def read_regular(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes` (see `open_regular`)."""
    with open_regular(path, max_bytes) as handle:
        data = handle.read(max_bytes + 1)  # the file may have grown since the check
    if len(data) > max_bytes:
        raise InputError(f"{path} is over the limit of {_size(max_bytes)}")
    return data


def sha256_regular(path: str | Path, max_bytes: int) -> str:
    """`sha256_file` of a regular file of at most `max_bytes` (see `open_regular`)."""
    with open_regular(path, max_bytes) as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
