"""Safe file operations below a local store's folder: nothing below it is
followed through a symbolic link, nothing but a regular file is read, and
every OSError becomes the matching StoreError.

Owns: opening folders and files relative to their parent (``O_NOFOLLOW``,
then ``fstat``), capped reads, writes renamed into place, and the error
translation (:func:`guarded`). Used by :class:`~.local.LocalStore` only.
May not touch: anything above the stores; of megafs it imports only
:mod:`megafs.errors` and :mod:`.base`.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from typing import TypeVar

from ..errors import (
    IntegrityError,
    StoreAuthError,
    StoreError,
    StoreFull,
    StoreReadOnly,
)
from .base import Refused

T = TypeVar("T")

#: A folder below the root: never through a symbolic link.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: A file to read: never through a symbolic link, never blocking (a FIFO).
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Refusal(Exception):
    """Internal: an entry that is not what its place says (a symlink, a FIFO, ...)."""

    def __init__(self, entry: str, reason: str) -> None:
        super().__init__(f"{entry}: {reason}")
        self.refused = Refused(entry, reason)


class SyncLost(Exception):
    """Internal: an fsync failed; the kernel may have dropped writes (no retry helps)."""


def timed(fn: Callable[[], T]) -> Callable[[], tuple[T, float]]:
    """``fn`` made to return how long it took too (in whichever thread)."""

    def run() -> tuple[T, float]:
        started = time.monotonic()
        got = fn()
        return got, time.monotonic() - started

    return run


def guarded(fn: Callable[[], T], what: str, reading: bool) -> T:
    """``fn()``, its OSError the matching StoreError; a refused entry an
    IntegrityError of ``what`` when ``reading`` (something that cannot be a
    stored object was served), else a StoreError (we will not write or
    delete through it)."""
    try:
        return fn()
    except Refusal as r:
        if reading:
            raise IntegrityError(what, f"refused {r.refused}") from None
        raise StoreError(f"local store refuses {r.refused} ({what})") from None
    except OSError as e:
        raise translate(e, what) from None


def kind(mode: int) -> str:
    """What a non-regular file is, for messages."""
    if stat.S_ISLNK(mode):
        return "a symbolic link (never followed)"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def translate(e: OSError, what: str) -> StoreError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(f"local store is full while writing {what}: {e.strerror}")
    if e.errno == errno.EROFS:
        return StoreReadOnly(f"local store is read-only: {what}")
    if e.errno in (errno.EACCES, errno.EPERM):
        return StoreAuthError(f"permission denied on local store: {what}")
    return StoreError(f"local store I/O error on {what}: {e.strerror or e}")


def open_dir(parent: int, name: str, entry: str, *, create: bool = False) -> int | None:
    """Open folder ``name`` in folder ``parent`` without following a symlink.

    Returns None if it does not exist (with ``create``, makes it first).
    Raises Refusal if it is a symbolic link or not a folder.
    """
    while True:
        try:
            return os.open(name, DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                return None
            try:
                os.mkdir(name, 0o777, dir_fd=parent)
            except FileExistsError:
                pass
            else:
                os.fsync(parent)  # a new folder's name is durable before anything in it
            create = False  # made (or raced into existence): one more open
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            try:
                mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
            except FileNotFoundError:
                return None
            raise Refusal(entry, f"{kind(mode)} where a folder belongs") from None


def open_regular(folder: int, name: str, entry: str) -> tuple[int, int]:
    """Open regular file ``name`` in ``folder`` for reading: ``(fd, size)``.

    Raises FileNotFoundError if absent, Refusal for anything but a regular
    file (checked before opening, so a device is never opened, and again
    after, on the open file, so nothing swapped in between slips through).
    """
    mode = os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode
    if not stat.S_ISREG(mode):
        raise Refusal(entry, kind(mode))
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=folder)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise Refusal(entry, kind(stat.S_IFLNK)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refusal(entry, kind(st.st_mode))
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def read_capped(fd: int, size: int, max_size: int, obj: str) -> bytes:
    """Read the file to its end, but never more than ``max_size + 1`` bytes.

    ``size`` is its fstat size. Raises IntegrityError if it is (or grows)
    larger than ``max_size``.
    """
    if size > max_size:
        raise IntegrityError(obj, f"larger than {max_size} bytes ({size} bytes in the store)")
    limit = max_size + 1
    parts: list[bytes] = []
    total = 0
    while total < limit:
        part = os.read(fd, min(limit - total, max(size - total + 1, 1 << 16)))
        if not part:
            break
        parts.append(part)
        total += len(part)
    if total > max_size:
        raise IntegrityError(obj, f"larger than {max_size} bytes (it grew while read)")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def atomic_write(folder: int, name: str, data: bytes, *, durable: bool = True) -> None:
    """Write ``name`` in ``folder`` under a temporary name and rename it into
    place: old or new, never torn. A symlink at ``name`` is replaced, never
    followed.

    With ``durable`` the file and its folder are fsynced before returning;
    without, durability waits for the next :meth:`LocalStore.sync`.
    """
    tmp = f"{name}.tmp.{os.getpid()}.{os.urandom(4).hex()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600, dir_fd=folder)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp, dir_fd=folder)
        raise
    os.close(fd)
    os.rename(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
    if durable:
        os.fsync(folder)
