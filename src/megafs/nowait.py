"""Reads that never block: a file's bytes if the page cache holds them now.

A trio program hands blocking file I/O to worker threads, and on a small
machine that hand-off (about 100 µs here) costs far more than reading a
block the kernel already has (a few µs). :func:`pread_nowait` reads with
``RWF_NOWAIT`` in the caller's thread and gives up, rather than wait for a
disk, when any of the bytes would need one; the caller then reads in a
worker thread as before.

:class:`KeptFiles` keeps the files read so, least recently used first,
for the next reads. Imports nothing from megafs: the local store and the
local cache use it.
"""

from __future__ import annotations

import errno
import os
import resource
from collections import OrderedDict

#: False once the kernel or a filesystem refused ``RWF_NOWAIT`` for good.
_supported = hasattr(os, "RWF_NOWAIT")


def pread_nowait(fd: int, offset: int, length: int) -> bytes | None:
    """``length`` bytes of ``fd`` at ``offset`` if the page cache holds all
    of them now; None if some would have to come from the disk, if the file
    is shorter, or if the system cannot read without waiting. No wait."""
    global _supported
    if not _supported or length <= 0:
        return None
    buf = bytearray(length)
    try:
        n = os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
    except BlockingIOError:
        return None
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            _supported = False
        return None
    return bytes(buf) if n == length else None


class KeptFiles:
    """Open descriptors of files by name, at most ``limit`` (the least
    recently used closed first), read with :func:`pread_nowait`. For one
    thread (the trio thread): a worker thread must read through a
    descriptor of its own."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._fds: OrderedDict[str, int] = OrderedDict()

    @staticmethod
    def limit_for(share: int, low: int, high: int) -> int:
        """``1/share`` of the descriptors this process may have, within [low, high]."""
        return max(low, min(high, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // share))

    def __contains__(self, name: str) -> bool:
        return name in self._fds

    def read(self, name: str, offset: int, length: int) -> bytes | None:
        """The bytes, if ``name`` is kept and the page cache holds them; else None. No wait."""
        fd = self._fds.get(name)
        if fd is None:
            return None
        self._fds.move_to_end(name)
        return pread_nowait(fd, offset, length)

    def keep(self, name: str, fd: int) -> None:
        """Keep ``fd`` (this object's to close from now on) for reads of ``name``."""
        if fd < 0:
            return
        if name in self._fds:
            os.close(fd)
            return
        self._fds[name] = fd
        while len(self._fds) > self.limit:
            os.close(self._fds.popitem(last=False)[1])

    def forget(self, name: str) -> bool:
        """Close the file kept for ``name``; whether there was one."""
        fd = self._fds.pop(name, None)
        if fd is None:
            return False
        os.close(fd)
        return True

    def close(self) -> None:
        """Close every kept file. Idempotent."""
        while self._fds:
            os.close(self._fds.popitem()[1])


def dup_or_none(fd: int) -> int:
    """A second descriptor of ``fd`` to keep, or -1 if the process has none
    to spare (a read that succeeded still answers; keeping is a bonus)."""
    try:
        return os.dup(fd)
    except OSError:
        return -1


__all__ = ["KeptFiles", "dup_or_none", "pread_nowait"]
