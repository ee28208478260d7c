"""Reads that never block: a file's bytes if the page cache holds them now.

A trio program hands blocking file I/O to worker threads, and on a small
machine that hand-off (about 100 µs here) costs far more than reading a
block the kernel already has (a few µs). :func:`pread_nowait` reads with
``RWF_NOWAIT`` in the caller's thread and gives up, rather than wait for a
disk, when any of the bytes would need one; the caller then reads in a
worker thread as before.

Imports nothing from megafs: the stores and the local cache use it.
"""

from __future__ import annotations

import errno
import os

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


__all__ = ["pread_nowait"]
