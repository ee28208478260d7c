"""The vault's history: kept past roots, their retention, and what each keeps.

Every commit adds an :class:`Entry` for the root it makes (its time, device,
inode table and statistics) to the *history table*, keyed by generation and
paged like the pack table (:class:`~.tables.RadixIndex`, 64 entries a
page). Each entry names a sealed *lists object* (:class:`Lists`) with

* ``born``: objects first referenced by a root after the previous kept
  entry's, up to and including this one (with their sealed size), and
* ``dead``: objects the previous kept entry's root referenced that this
  one's does not.

These are the dead lists of ZFS snapshots, kept per root: dropping an
entry S whose neighbours are P (older) and N (newer) frees exactly
``N.dead & S.born`` (objects no kept root but S references), and S's lists
fold into N's. An oldest entry's own ``dead`` is always empty (nothing older
is kept), and dropping it frees ``N.dead`` whole. So the cost of a commit,
and of dropping a root, grows with what changed, never with the size of the
vault or the number of kept roots (docs/history.md).

:class:`Policy` says which entries to keep (every root for a while, then one
per hour, day, week...); pinned entries (a name) are kept until unpinned.

May not touch: the store (objects come and go through :meth:`Vault.get_meta`
and meta jobs), the inode table, the filesystem model, deleting anything (the
caller hands freed objects to the collector).

Concurrency: trio, one thread. Loading is async; :meth:`HistoryTable.copy`,
the staging methods and :meth:`HistoryTable.snapshot` are synchronous.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import msgpack
import trio

from ..errors import IntegrityError
from ..format import crypto
from .retention import Policy, duration_text, parse_duration
from .root import _expect_str, _int, expect_bytes
from .tables import MetaJob, RadixIndex
from .vault import KIND_HIST, KIND_HLIST, Vault, obj_name

#: Entries per history table page (generations ``page << 6`` and up).
HIST_PAGE_BITS = 6


@dataclass(frozen=True)
class Entry:
    """One kept root: generation, time, the device that made it, its inode
    table and statistics, its lists object, its name if pinned, and whether
    it holds items the next root deleted (the trash; None: not checked)."""

    gen: int
    time_ns: int
    device: bytes
    itab: bytes | None
    stats: tuple[int, int]
    lists: bytes | None  # the lists object's id; None: the lists are inline
    name: str | None = None
    holds_deleted: bool | None = None
    inline: Lists | None = None

    def encode(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "t": self.time_ns,
            "d": self.device,
            "i": self.itab,
            "s": list(self.stats),
        }
        if self.inline is not None:
            d["L"] = self.inline.encode()
        else:
            d["l"] = self.lists
        if self.name is not None:
            d["n"] = self.name
        if self.holds_deleted is not None:
            d["x"] = int(self.holds_deleted)
        return d

    @classmethod
    def decode(cls, gen: int, raw: Any) -> Entry:
        itab = raw["i"]
        ino, size = raw["s"]
        e = cls(
            gen=_int(gen),
            time_ns=_int(raw["t"]),
            device=expect_bytes(raw["d"]),
            itab=expect_bytes(itab) if itab is not None else None,
            stats=(_signed(ino), _signed(size)),
            lists=expect_bytes(raw["l"]) if "L" not in raw else None,
            name=_expect_str(raw["n"]) if "n" in raw else None,
            holds_deleted=bool(_int(raw["x"])) if "x" in raw else None,
            inline=Lists.decode(raw["L"], "history entry") if "L" in raw else None,
        )
        ids = (e.device, e.lists or bytes(16), e.itab or bytes(16))
        if any(len(b) != crypto.ID_SIZE for b in ids):
            raise ValueError("an id is not 16 bytes")
        return e


#: ``recent`` goes into the pages once it holds this many entries or its
#: encoding is larger than this (the root stays a few KiB).
RECENT_MAX = 32
RECENT_BYTES = 6144
#: Lists of at most this many ids stay inline in their entry.
INLINE_IDS = 24


def _small(lists: Lists) -> bool:
    return len(lists.born) + len(lists.dead) <= INLINE_IDS


def _signed(value: Any) -> int:
    """A statistic (the root's may go below zero for a while after a merge)."""
    if not isinstance(value, int) or isinstance(value, bool) or abs(value) >= 1 << 63:
        raise ValueError(f"not a statistic: {value!r}")
    return value


@dataclass
class Lists:
    """An entry's born objects (id -> sealed size, 0 when not known) and dead ones."""

    born: dict[bytes, int] = field(default_factory=dict)
    dead: set[bytes] = field(default_factory=set)

    def encode(self) -> dict[str, Any]:
        return {
            "b": [[k, v] for k, v in sorted(self.born.items())],
            "d": sorted(self.dead),
        }

    @classmethod
    def decode(cls, raw: Any, name: str) -> Lists:
        try:
            born = {expect_bytes(k): _int(v) for k, v in raw["b"]}
            dead = {expect_bytes(k) for k in raw["d"]}
        except (KeyError, TypeError, ValueError) as e:
            raise IntegrityError(name, f"malformed history lists: {e!r}") from None
        if any(len(k) != crypto.ID_SIZE for k in (*born, *dead)):
            raise IntegrityError(name, "malformed history lists: an id is not 16 bytes")
        return cls(born, dead)


def fold(older: Lists, newer: Lists, *, oldest: bool) -> tuple[Lists, dict[bytes, int]]:
    """Drop the entry with lists ``older``; ``newer`` are its newer kept
    neighbour's. Returns the neighbour's new lists and the freed objects (id
    -> size as far as known). ``oldest``: nothing older than the dropped
    entry is kept. Pure."""
    if oldest:
        freed_ids = older.dead | newer.dead
        dead: set[bytes] = set()
    else:
        freed_ids = newer.dead & older.born.keys()
        dead = older.dead | (newer.dead - freed_ids)
    born = {k: v for k, v in older.born.items() if k not in freed_ids}
    born.update(newer.born)
    if oldest:
        born = {}  # the oldest entry's born list is never consulted
    sizes = {k: older.born.get(k, 0) for k in freed_ids}
    return Lists(born, dead), sizes


class HistoryTable:
    """Generation -> :class:`Entry`, and the entries' lists, loaded lazily.

    A committed table is changed only through a :meth:`copy` that a commit
    stages its changes in (:meth:`put`, :meth:`delete`, :meth:`put_lists`)
    and snapshots; the committer keeps the copy once its root is in.
    """

    def __init__(self, vault: Vault, top_id: bytes | None, recent: Any = None) -> None:
        self.vault = vault
        self.index = RadixIndex(vault, top_id)
        #: the newest entries, kept in the root (``hnew``) until a flush
        #: moves them into the pages: most commits write no history object
        self.recent: dict[int, Entry] = self.decode_recent(recent or [])
        self.pages: dict[int, dict[int, Entry]] = {}
        self.dirty: set[int] = set()
        #: lists objects read or made (immutable, by object id)
        self.lists_cache: dict[bytes, Lists] = {}
        #: lists objects to upload with the next snapshot
        self.new_lists: dict[bytes, Lists] = {}
        self._opened = top_id is None
        self._lock = trio.Lock()

    @property
    def top_id(self) -> bytes | None:
        return self.index.top_id

    def copy(self) -> HistoryTable:
        """A table to stage a commit's changes in; this one stays as it is. No I/O."""
        out = HistoryTable(self.vault, self.index.top_id)
        out.recent = dict(self.recent)
        out.index.top = dict(self.index.top)
        out.index.mids = {hi: dict(m) for hi, m in self.index.mids.items()}
        out.pages = dict(self.pages)  # each page copied when first changed there
        out.lists_cache = self.lists_cache
        out._opened = self._opened
        return out

    async def _open(self) -> None:
        if not self._opened:
            async with self._lock:
                if not self._opened:
                    await self.index.open()
                    self._opened = True

    async def load(self, page: int) -> dict[int, Entry]:
        """Page ``page`` ({gen: entry}), fetched the first time."""
        got = self.pages.get(page)
        if got is not None:
            return got
        await self._open()
        obj = await self.index.leaf_id(page)
        entries: dict[int, Entry] = {}
        if obj is not None:
            raw = await self.vault.get_meta(KIND_HIST, obj)
            entries = self.decode_page(raw, page, obj_name(obj))
        return self.pages.setdefault(page, entries)

    @staticmethod
    def decode_recent(raw: Any) -> dict[int, Entry]:
        """The root's ``hnew``: [[generation, entry], ...]."""
        try:
            out = {_int(g): Entry.decode(g, e) for g, e in raw}
        except (KeyError, TypeError, ValueError, IntegrityError) as e:
            raise IntegrityError("root", f"malformed recent history entries: {e!r}") from None
        return out

    def recent_raw(self) -> list[Any]:
        """``recent`` as the root stores it."""
        return [[g, self.recent[g].encode()] for g in sorted(self.recent)]

    @staticmethod
    def decode_page(raw: Any, page: int, name: str) -> dict[int, Entry]:
        if not isinstance(raw, dict):
            raise IntegrityError(name, "malformed history page")
        out: dict[int, Entry] = {}
        for gen, rec in raw.items():
            if not isinstance(gen, int) or gen >> HIST_PAGE_BITS != page:
                raise IntegrityError(name, f"generation {gen!r} does not belong in page {page}")
            try:
                out[gen] = Entry.decode(gen, rec)
            except (KeyError, TypeError, ValueError) as e:
                raise IntegrityError(name, f"malformed history entry {gen}: {e!r}") from None
        return out

    async def pages_in_use(self) -> list[int]:
        """Every page that holds entries (reads the whole index: one request
        per 1,024 pages)."""
        await self._open()
        out: list[int] = []
        for hi in sorted(self.index.top):
            mid = await self.index.mid(hi)
            out += [(hi << 10) | lo for lo in sorted(mid)]
        return out

    async def entries(self) -> list[Entry]:
        """Every entry, oldest first (one request per page not loaded yet)."""
        out: list[Entry] = list(self.recent.values())
        for page in set(await self.pages_in_use()) | set(self.pages):
            out += (await self.load(page)).values()
        return sorted(out, key=lambda e: e.gen)

    async def latest(self) -> Entry | None:
        """The newest entry (none, or two or three requests the first time)."""
        if self.recent:
            return self.recent[max(self.recent)]
        pages = [p for p in self.pages if self.pages[p]]
        await self._open()
        if self.index.top:
            hi = max(self.index.top)
            mid = await self.index.mid(hi)
            if mid:
                pages.append((hi << 10) | max(mid))
        if not pages:
            return None
        page = await self.load(max(pages))
        return page[max(page)] if page else None

    async def lists(self, entry: Entry) -> Lists:
        """The lists of ``entry`` (one request the first time)."""
        if entry.inline is not None:
            return entry.inline
        assert entry.lists is not None
        got = self.lists_cache.get(entry.lists) or self.new_lists.get(entry.lists)
        if got is not None:
            return got
        raw = await self.vault.get_meta(KIND_HLIST, entry.lists)
        got = Lists.decode(raw, obj_name(entry.lists))
        if len(self.lists_cache) > 64:
            self.lists_cache.pop(next(iter(self.lists_cache)))
        self.lists_cache[entry.lists] = got
        return got

    # --- staging (synchronous; pages must be loaded) -------------------------

    def _own(self, page: int) -> dict[int, Entry]:
        """Page ``page``, copied first if this table shares it with the one
        it was copied from (a staged commit never changes the committed one)."""
        if page not in self.dirty:
            self.pages[page] = dict(self.pages.get(page, {}))
            self.dirty.add(page)
        return self.pages[page]

    def _in_pages(self, gen: int) -> bool:
        return gen in self.pages.get(gen >> HIST_PAGE_BITS, {})

    def put(self, entry: Entry) -> None:
        """Add or replace an entry: a new one, or one of ``recent``, goes to
        ``recent`` (with its lists inline); one of a page, to its page."""
        if self._in_pages(entry.gen):
            self._own(entry.gen >> HIST_PAGE_BITS)[entry.gen] = entry
        else:
            if entry.inline is None:
                raise ValueError("a recent entry keeps its lists inline")
            self.recent[entry.gen] = entry

    def delete(self, gen: int) -> None:
        if gen in self.recent:
            del self.recent[gen]
        else:
            del self._own(gen >> HIST_PAGE_BITS)[gen]

    def with_lists(self, entry: Entry, lists: Lists) -> Entry:
        """``entry`` with new lists: inline in ``recent`` or when small, else a
        new lists object (uploaded by :meth:`snapshot`)."""
        if entry.gen in self.recent or not self._in_pages(entry.gen) or _small(lists):
            return replace(entry, lists=None, inline=lists)
        obj = crypto.new_id()
        self.new_lists[obj] = lists
        return replace(entry, lists=obj, inline=None)

    def flush_due(self) -> bool:
        """Whether ``recent`` is big enough to go into the pages."""
        if len(self.recent) >= RECENT_MAX:
            return True
        return len(msgpack.packb(self.recent_raw(), use_bin_type=True)) > RECENT_BYTES

    def pages_to_flush(self) -> set[int]:
        """The pages a flush writes (they must be loaded first)."""
        return {g >> HIST_PAGE_BITS for g in self.recent}

    def _flush(self) -> None:
        moving, self.recent = self.recent, {}
        for gen, e in sorted(moving.items()):
            assert e.inline is not None
            page = self._own(gen >> HIST_PAGE_BITS)
            if _small(e.inline):
                page[gen] = e
            else:
                obj = crypto.new_id()
                self.new_lists[obj] = e.inline
                page[gen] = replace(e, lists=obj, inline=None)

    def rename(self, entry: Entry, name: str | None) -> Entry:
        new = replace(entry, name=name)
        self.put(new)
        return new

    def snapshot(self, meta_jobs: list[MetaJob], garbage: list[bytes]) -> bytes | None:
        """Move ``recent`` into the pages if it is due and they are loaded;
        encode the dirty pages and new lists objects; return the new top id.
        Replaced objects go to ``garbage``. Synchronous."""
        if self.recent and self.flush_due() and all(p in self.pages for p in self.pages_to_flush()):
            self._flush()
        for obj, lists in self.new_lists.items():
            meta_jobs.append((KIND_HLIST, obj, lists.encode()))
            self.lists_cache[obj] = lists
        self.new_lists = {}
        if not self.dirty:
            return self.index.top_id
        payloads = {
            page: ({g: e.encode() for g, e in self.pages[page].items()} or None)
            for page in self.dirty
        }
        self.dirty = set()
        return self.index.snapshot(payloads, KIND_HIST, meta_jobs, garbage)


__all__ = [
    "HIST_PAGE_BITS",
    "Entry",
    "HistoryTable",
    "Lists",
    "Policy",
    "duration_text",
    "fold",
    "parse_duration",
]
