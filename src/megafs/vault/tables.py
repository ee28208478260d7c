"""Paged tables on the store: the radix index, and the pack table built on it.

Both the inode table and (format 2) the pack table map small integers to
records kept in sealed *leaf pages* of 256 entries, found through a
two-level radix index (docs/format.md, sections 7 and 8):

    top index {hi: mid id} -> mid index {lo: leaf id} -> leaf {key: record}

with ``page = key >> 8``, ``hi = page >> 10``, ``lo = page & 1023``.
:class:`RadixIndex` owns the two index levels: it loads a mid index the
first time a page under it is asked for, and at commit time turns a set of
changed pages into new leaf and index objects (copy-on-write, fresh ids).

:class:`PackTable` is the table of pack objects: each record says how many
chunks in a pack are still referenced, so that a pack is deleted once the
last of them is dropped. Pages load lazily, like inode pages.

Concurrency: trio, one thread. Methods that fetch from the store are async
and hold a per-page (or per-mid) lock while they do, so concurrent callers
fetch once; :meth:`RadixIndex.snapshot` is synchronous.

May not touch: the store (it reads index and table pages only through
:meth:`Vault.get_meta`, and writes nothing: new objects go back to the caller
as meta jobs), Content or the bytes of pack objects, inodes, the journal, the
filesystem model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import trio

from ..errors import IntegrityError
from ..format import crypto
from .root import expect_bytes
from .vault import KIND_INDEX, KIND_PACKS, Vault, obj_name

PAGE_BITS = 8
MID_BITS = 10

#: A metadata upload: (kind, object id, payload).
MetaJob = tuple[int, bytes, Any]


def check_index(raw: Any, name: str) -> dict[int, bytes]:
    """An index node as decoded from its object: {int: object id}, else IntegrityError."""
    if not isinstance(raw, dict) or not all(
        isinstance(k, int) and isinstance(v, bytes) and len(v) == crypto.ID_SIZE
        for k, v in raw.items()
    ):
        raise IntegrityError(name, "malformed index node")
    return raw


class RadixIndex:
    """The two index levels above one table's leaf pages.

    ``top`` is loaded by :meth:`open`; ``mids[hi]`` the first time a page
    under ``hi`` is looked up. ``top_id`` is the object id of the committed
    (or snapshotted) top index, None for an empty table.
    """

    def __init__(self, vault: Vault, top_id: bytes | None) -> None:
        self.vault = vault
        self.top_id = top_id
        self.top: dict[int, bytes] = {}
        self.mids: dict[int, dict[int, bytes]] = {}
        self._locks: dict[int, trio.Lock] = {}

    async def open(self) -> None:
        """Fetch the top index (one store request; none for an empty table)."""
        if self.top_id is not None:
            raw = await self.vault.get_meta(KIND_INDEX, self.top_id)
            self.top = check_index(raw, obj_name(self.top_id))

    async def mid(self, hi: int) -> dict[int, bytes]:
        """The mid index ``hi`` ({lo: leaf id}); fetched once, then kept."""
        m = self.mids.get(hi)
        if m is not None:
            return m
        lock = self._locks.setdefault(hi, trio.Lock())
        async with lock:
            m = self.mids.get(hi)
            if m is not None:
                return m
            obj = self.top.get(hi)
            if obj is None:
                m = {}
            else:
                raw = await self.vault.get_meta(KIND_INDEX, obj)
                m = check_index(raw, obj_name(obj))
            self.mids[hi] = m
            return m

    async def leaf_id(self, page: int) -> bytes | None:
        """The object id of ``page``'s leaf, None if the page has no entries."""
        mid = await self.mid(page >> MID_BITS)
        return mid.get(page & ((1 << MID_BITS) - 1))

    def snapshot(
        self,
        pages: dict[int, Any],
        leaf_kind: int,
        meta_jobs: list[MetaJob],
        garbage: list[bytes],
    ) -> bytes | None:
        """Replace the leaves of ``pages`` ({page: payload, or None if now empty}).

        Every page's mid index must have been loaded (a page that was
        loaded, or whose mid index :meth:`mid` fetched). Appends the new
        leaf and index objects to ``meta_jobs`` and the replaced ones to
        ``garbage``; returns the new top id (also ``top_id``). Synchronous.
        """
        dirty_his: set[int] = set()
        for page, payload in sorted(pages.items()):
            hi, lo = page >> MID_BITS, page & ((1 << MID_BITS) - 1)
            mid = self.mids.get(hi)
            if mid is None:
                if hi in self.top:
                    raise RuntimeError(f"mid index {hi} changed before it was loaded")
                mid = self.mids[hi] = {}
            old = mid.pop(lo, None)
            if old is not None:
                garbage.append(old)
            if payload is not None:
                obj = crypto.new_id()
                meta_jobs.append((leaf_kind, obj, payload))
                mid[lo] = obj
            dirty_his.add(hi)
        for hi in sorted(dirty_his):
            old = self.top.pop(hi, None)
            if old is not None:
                garbage.append(old)
            if self.mids[hi]:
                obj = crypto.new_id()
                meta_jobs.append((KIND_INDEX, obj, dict(self.mids[hi])))
                self.top[hi] = obj
        if dirty_his or self.top_id is None:
            if self.top_id is not None:
                garbage.append(self.top_id)
            self.top_id = crypto.new_id()
            meta_jobs.append((KIND_INDEX, self.top_id, dict(self.top)))
        return self.top_id


class PackRecord:
    """One pack object: its id, and what of it is still referenced."""

    __slots__ = ("live", "live_bytes", "obj", "size")

    def __init__(self, obj: bytes, live: int, size: int, live_bytes: int) -> None:
        self.obj = obj
        self.live = live  # chunks in it that some chunk map still references
        self.size = size  # sealed bytes of the whole object
        self.live_bytes = live_bytes  # sealed bytes of those chunks

    def encode(self) -> list[Any]:
        return [self.obj, self.live, self.size, self.live_bytes]

    @classmethod
    def decode(cls, raw: Any) -> PackRecord:
        obj, live, size, live_bytes = raw
        rec = cls(expect_bytes(obj), int(live), int(size), int(live_bytes))
        if len(rec.obj) != crypto.ID_SIZE or rec.live <= 0 or not 0 < rec.live_bytes <= rec.size:
            raise ValueError("pack record out of range")
        return rec


class PackTable:
    """Pack number -> :class:`PackRecord`, paged like inodes (format 2).

    Pages are loaded by :meth:`load`; every change goes through
    :meth:`add` and :meth:`drop`, which need the page loaded and mark it
    dirty. Pack numbers are allocated upwards (``Root.next_pack``) and never
    reused, so pages above the one holding ``next_pack`` are always empty.
    """

    def __init__(self, vault: Vault, top_id: bytes | None, next_pack: int) -> None:
        self.index = RadixIndex(vault, top_id)
        self.vault = vault
        self.next_pack = next_pack
        self.pages: dict[int, dict[int, PackRecord]] = {}
        self.dirty: set[int] = set()
        self._opened = False
        self._locks: dict[int, trio.Lock] = {}

    async def load(self, page: int) -> None:
        """Make page ``page`` resident (store requests the first time; the
        top index is fetched on the first call, so a mount that only reads
        never fetches any of the pack table)."""
        if page in self.pages:
            return
        lock = self._locks.setdefault(page, trio.Lock())
        async with lock:
            if page in self.pages:
                return
            if not self._opened:
                await self.index.open()
                self._opened = True
            records: dict[int, PackRecord] = {}
            obj = await self.index.leaf_id(page)
            if obj is not None:
                raw = await self.vault.get_meta(KIND_PACKS, obj)
                records = self.decode_page(raw, page, obj_name(obj))
            self.pages[page] = records

    @staticmethod
    def decode_page(raw: Any, page: int, name: str) -> dict[int, PackRecord]:
        """Validate a decoded pack table page ``page`` of object ``name``;
        raises IntegrityError naming it. Pure."""
        if not isinstance(raw, dict):
            raise IntegrityError(name, "malformed pack table page")
        out: dict[int, PackRecord] = {}
        for pno, rec in raw.items():
            if not isinstance(pno, int) or pno >> PAGE_BITS != page:
                raise IntegrityError(name, f"pack {pno!r} does not belong in page {page}")
            try:
                out[pno] = PackRecord.decode(rec)
            except (TypeError, ValueError) as e:
                raise IntegrityError(name, f"malformed pack record {pno}: {e!r}") from None
        return out

    def missing_pages(self, pnos: Iterable[int], new: bool) -> set[int]:
        """Pages to :meth:`load` before :meth:`drop` of ``pnos`` and, if ``new``,
        :meth:`add` of new packs: theirs, and the page that gets the next pack.
        (Pages above that one hold no pack yet: new packs there need nothing.)"""
        want = {p >> PAGE_BITS for p in pnos}
        if new:
            want.add(self.next_pack >> PAGE_BITS)
        return want - set(self.pages)

    def loaded(self) -> Iterator[tuple[int, PackRecord]]:
        """(pack number, record) of every pack on the pages loaded so far."""
        for records in self.pages.values():
            yield from records.items()

    def get(self, pno: int) -> PackRecord | None:
        """The record of a resident page's pack, None if it has none."""
        return self.pages[pno >> PAGE_BITS].get(pno)

    def add(self, obj: bytes, live: int, size: int) -> int:
        """Record a new pack of ``live`` chunks, all referenced; returns its
        number. The page of the next pack must have been loaded (see
        :meth:`missing_pages`)."""
        pno = self.next_pack
        page = pno >> PAGE_BITS
        if page not in self.pages:
            if pno & ((1 << PAGE_BITS) - 1):
                raise RuntimeError(f"pack table page {page} was not loaded")
            self.pages[page] = {}  # a page no pack has reached yet
        self.next_pack += 1
        self.pages[page][pno] = PackRecord(obj, live, size, size)
        self.dirty.add(page)
        return pno

    def drop(self, pno: int, obj: bytes, sealed_len: int) -> bytes | None:
        """One chunk of pack ``pno`` is no longer referenced. Returns the pack's
        object id if that was its last one (the pack is now garbage)."""
        page = pno >> PAGE_BITS
        rec = self.pages[page].get(pno)
        if rec is None or rec.obj != obj:
            raise IntegrityError(
                obj_name(obj), f"chunk map names pack {pno}, which the pack table does not hold"
            )
        rec.live -= 1
        rec.live_bytes -= sealed_len
        self.dirty.add(page)
        if rec.live > 0:
            return None
        del self.pages[page][pno]
        return rec.obj

    def save(self, pno: int) -> PackRecord | None:
        """A copy of pack ``pno``'s record (its page resident), for :meth:`restore`."""
        rec = self.pages[pno >> PAGE_BITS].get(pno)
        return PackRecord(rec.obj, rec.live, rec.size, rec.live_bytes) if rec else None

    def restore(self, saved: dict[int, PackRecord | None]) -> None:
        """Put records back as :meth:`save` copied them (drops undone)."""
        for pno, rec in saved.items():
            page = self.pages.setdefault(pno >> PAGE_BITS, {})
            if rec is None:
                page.pop(pno, None)
            else:
                page[pno] = rec
            self.dirty.add(pno >> PAGE_BITS)

    def snapshot(
        self, meta_jobs: list[MetaJob], garbage: list[bytes]
    ) -> tuple[bytes | None, set[int]]:
        """Encode the dirty pages; return (new top id, pages snapshotted). Synchronous."""
        if not self.dirty:
            return self.index.top_id, set()
        snap = set(self.dirty)
        payloads = {
            page: ({pno: r.encode() for pno, r in self.pages[page].items()} or None)
            for page in snap
        }
        self.dirty.clear()
        return self.index.snapshot(payloads, KIND_PACKS, meta_jobs, garbage), snap


__all__ = ["MID_BITS", "PAGE_BITS", "PackRecord", "PackTable", "RadixIndex", "check_index"]
