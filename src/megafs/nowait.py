"""Reads that never block, or block only briefly, in the trio thread.

A trio program hands blocking file I/O to worker threads, and on a small
machine that hand-off (100 to 300 µs on the 2-core VM of
docs/performance.md) costs far more than reading a block the kernel
already has (a few µs), and more than a random read of a solid-state disk.
:func:`pread_nowait` reads with ``RWF_NOWAIT`` in the caller's thread and
gives up, rather than wait for a disk, when any of the bytes would need
one. :class:`InlineReads` then decides whether the caller may read from the
disk in its own thread all the same (a disk that has been answering fast)
or must hand the read to a worker thread.

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


class InlineReads:
    """When a small read that has to wait for the disk may run in the trio
    thread (blocking the loop for it) instead of a worker thread.

    Every read, in either thread, reports how long it took (:meth:`note`).
    Reads of at most ``max_len`` bytes run inline once ``after`` reads have
    been timed and their moving average (weight 0.1) is under ``slow``
    seconds. An average over ``slow`` (a spinning or remote disk: about
    three reads of 10 ms), or one read over ``stall`` (a disk that had to
    wake up), sends reads to worker threads for ``pause`` seconds, twice as
    long at each such trip up to ``pause_max``, and the timing starts over
    (so a disk that stays slow never runs inline again). Never inline
    where ``RWF_NOWAIT`` is refused. Times are the caller's clock (trio's);
    no I/O, no await, one thread.
    """

    def __init__(
        self,
        max_len: int = 256 << 10,
        *,
        slow: float = 0.002,
        stall: float = 0.05,
        after: int = 4,
        pause: float = 10.0,
        pause_max: float = 600.0,
    ) -> None:
        self.max_len = max_len
        self.slow, self.stall, self.after = slow, stall, after
        self.pause, self.pause_max = pause, pause_max
        self.average = 0.0
        self.samples = 0
        self.until = -float("inf")  # worker threads until then

    def allowed(self, length: int, now: float) -> bool:
        """Whether a read of ``length`` bytes may run in the caller's thread now."""
        return (
            length <= self.max_len
            and self.samples >= self.after
            and now >= self.until
            and _supported
        )

    def note(self, took: float, now: float) -> bool:
        """One read took ``took`` seconds; True if that sent reads to worker
        threads (a trip)."""
        self.samples += 1
        self.average = 0.9 * self.average + 0.1 * took
        if self.average <= self.slow and took <= self.stall:
            return False
        self.until = now + self.pause
        self.pause = min(self.pause * 2, self.pause_max)
        self.average, self.samples = 0.0, 0
        return True


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

    def pread(self, name: str, offset: int, length: int) -> bytes | None:
        """Up to ``length`` bytes at ``offset`` if ``name`` is kept (None if
        not), waiting for the disk if need be: blocks this thread."""
        fd = self._fds.get(name)
        if fd is None:
            return None
        return os.pread(fd, length, offset)

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


__all__ = ["InlineReads", "KeptFiles", "dup_or_none", "pread_nowait"]
