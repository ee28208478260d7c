"""The local content cache: store bytes kept on disk, bounded, LRU.

It holds exactly the *sealed* bytes the store holds (or that were just
uploaded to it), never plaintext, so a stolen cache reveals no more than the
store does, and every byte read from it is authenticated again on use like a
byte from the store. Each cached object is one sparse file under
``<cache dir>/objects/`` with sealed blocks at their store offsets; which
blocks are present is tracked in memory (the cache starts empty at each
mount, and stale files are removed then).

Bounded by ``max_bytes`` (``--cache-size``): when over, the least recently
used objects are deleted. File I/O runs in worker threads.

May not touch: the store, the vault, keys or crypto (it never seals, opens or
authenticates a byte: :mod:`megafs.vault.content` does), the journal, the
filesystem model, or any file outside ``<cache dir>/objects/``; of megafs it
imports only :mod:`megafs.nowait`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections import OrderedDict

import trio

from ..nowait import KeptFiles, dup_or_none

_LIMITER = trio.CapacityLimiter(8)

#: Cached objects whose files stay open for reads: at most 256, and an
#: eighth of the descriptors the process may have.
OPEN_FILES = KeptFiles.limit_for(8, 8, 256)


class ContentCache:
    """On-disk cache of sealed chunk blocks. Methods may block on local disk I/O."""

    def __init__(self, cache_dir: str, max_bytes: int, sealed_block: int) -> None:
        self.dir = os.path.join(cache_dir, "objects")
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.max_bytes = max_bytes
        self.sealed_block = sealed_block
        self._present: OrderedDict[str, set[int]] = OrderedDict()
        #: cached objects' files kept open for reads, least recently used first
        self._open = KeptFiles(OPEN_FILES)
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def has(self, name: str, first: int, last: int) -> bool:
        """True if blocks [first, last) of object ``name`` are all cached."""
        blocks = self._present.get(name)
        ok = blocks is not None and all(b in blocks for b in range(first, last))
        if ok:
            self._present.move_to_end(name)
            self.hits += 1
        else:
            self.misses += 1
        return ok

    async def read(self, name: str, offset: int, length: int) -> bytes | None:
        """Sealed bytes [offset, offset+length) of a cached object, None if
        gone. At once when the object was read before and the page cache
        holds the bytes (:func:`~megafs.nowait.pread_nowait`); else in a
        worker thread, which keeps the file open for the next reads."""
        data = self._open.read(name, offset, length)
        if data is not None:
            return data
        path = self._path(name)

        def work() -> tuple[bytes, int] | None:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
            try:
                return os.pread(fd, length, offset), dup_or_none(fd)
            finally:
                os.close(fd)

        got = await trio.to_thread.run_sync(work, limiter=_LIMITER)
        if got is None:
            return None
        data, kept = got
        if name in self._present:  # (evicted meanwhile: a new file may come under its name)
            self._open.keep(name, kept)
        elif kept >= 0:
            os.close(kept)
        return data

    async def store(self, name: str, first_block: int, sealed: bytes) -> None:
        """Remember sealed bytes starting at block ``first_block`` of ``name``."""
        if self.max_bytes <= 0 or not sealed:
            return
        path = self._path(name)
        offset = first_block * self.sealed_block

        def work() -> None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                if os.pwrite(fd, sealed, offset) != len(sealed):  # a nearly full disk
                    raise OSError(errno.ENOSPC, "short write to the cache")
            finally:
                os.close(fd)

        try:
            await trio.to_thread.run_sync(work, limiter=_LIMITER)
        except OSError:
            return  # a full or failing cache disk only costs speed
        nblocks = -(-len(sealed) // self.sealed_block)
        blocks = self._present.setdefault(name, set())
        new = {b for b in range(first_block, first_block + nblocks)} - blocks
        blocks.update(new)
        self._present.move_to_end(name)
        self.bytes += len(new) * self.sealed_block
        await self._evict()

    def forget(self, name: str) -> None:
        """Drop an object that no longer exists in the store (no I/O wait)."""
        self._open.forget(name)
        blocks = self._present.pop(name, None)
        if blocks is not None:
            self.bytes -= len(blocks) * self.sealed_block
            with contextlib.suppress(OSError):
                os.unlink(self._path(name))

    async def _evict(self) -> None:
        victims: list[str] = []
        while self.bytes > self.max_bytes and self._present:
            name, blocks = self._present.popitem(last=False)
            self.bytes -= len(blocks) * self.sealed_block
            self._open.forget(name)
            victims.append(name)
        if victims:

            def work() -> None:
                for name in victims:
                    with contextlib.suppress(OSError):
                        os.unlink(self._path(name))

            await trio.to_thread.run_sync(work, limiter=_LIMITER)
