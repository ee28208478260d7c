"""The inode table: which inodes are in memory, loading them lazily, and
forgetting them again.

Owns: the resident inodes and the leaf pages they came in (``page = ino >>
8``), the radix index that finds a page's leaf object, the least-recently
used order of pages and their eviction, the dirty page set, the record
codec, and the lookup counts (kernel references and open handles). Loads
pages and external bodies through the vault's metadata road; encodes dirty
pages into a snapshot for the committer.

May not touch: chunk data, the journal, the root pointer (the committer swaps
it), the store. What a page eviction must not throw away (uncommitted work)
is the caller's check: see :meth:`InodeTable.evict`.

Concurrency: trio, one thread. A load holds a per-key load lock only while
it fetches; concurrent callers wait for one load.
"""

from __future__ import annotations

import collections
import errno
from collections.abc import Iterator
from typing import Any

import trio

from ..errors import FsError, IntegrityError
from ..vault.tables import PAGE_BITS, MetaJob, RadixIndex
from ..vault.vault import KIND_BODY, KIND_LEAF, Vault, obj_name
from .inode import ROOT_INO, Inode
from .records import RecordCodec

#: Inode pages kept in memory (256 inodes each) before clean ones are evicted,
#: least recently used first, down to three quarters of it. 512 pages hold a
#: folder of 100,000 files with room to spare (listed again, it loads
#: nothing); measured about 1 KiB per resident inode with its kernel
#: reference and name hint, so at most about 130 MiB.
MAX_RESIDENT_PAGES = 512


class InodeTable:
    """The resident inodes of one vault, with lookup counts."""

    def __init__(self, vault: Vault, itab: bytes | None, codec: RecordCodec) -> None:
        self.vault = vault
        #: inode records to and from leaf pages
        self.codec = codec
        self.index = RadixIndex(vault, itab)
        self.inodes: dict[int, Inode] = {}
        self.page_members: dict[int, set[int]] = {}
        #: Pages changed since the last snapshot.
        self.dirty_pages: set[int] = set()
        #: Resident pages, least recently used first (see :meth:`evict`).
        self._page_lru: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.max_pages = MAX_RESIDENT_PAGES
        self._evict_retry_at = 0
        self._load_locks: dict[tuple[str, int], trio.Lock] = {}
        #: Kernel references (lookup counts) and open handles per inode.
        self.refs: dict[int, int] = {}
        self.opens: dict[int, int] = {}
        #: Bumped by each merge that rebases the table onto another root:
        #: work that fetched across one (page loads, a write's chunk fetch)
        #: fetches again.
        self.epoch = 0
        #: Inodes changed (touched, inserted, removed) since the last commit
        #: that succeeded: what a merge counts as this device's changes.
        self.changed: set[int] = set()
        #: A name each inode was last seen under, (folder, name): where a merge
        #: puts a conflict copy of a file whose folder it cannot see. A hint:
        #: checked before use.
        self.names: dict[int, tuple[int, bytes]] = {}

    # --- loading ----------------------------------------------------------

    def _lock_for(self, kind: str, key: int) -> trio.Lock:
        lk = self._load_locks.get((kind, key))
        if lk is None:
            lk = self._load_locks[(kind, key)] = trio.Lock()
        return lk

    def _loaded(self, kind: str, key: int) -> None:
        """A load finished: its lock is no longer needed (a task waiting on it
        holds it already, and finds the thing loaded)."""
        self._load_locks.pop((kind, key), None)

    async def load_page(self, page: int) -> None:
        """Make inode page ``page`` resident (its leaf, through the index). May
        block on the store; concurrent callers wait for one load."""
        if page in self.page_members:
            return
        async with self._lock_for("page", page):
            while page not in self.page_members:
                # A merge (:attr:`epoch`) may rebase the table while we fetch:
                # then what was fetched is an older root's, and we fetch again.
                epoch = self.epoch
                obj = await self.index.leaf_id(page)
                raw = await self.vault.get_meta(KIND_LEAF, obj) if obj is not None else None
                if epoch != self.epoch:
                    continue
                members: set[int] = set()
                if obj is not None:
                    name = obj_name(obj)
                    if not isinstance(raw, dict):
                        raise IntegrityError(name, "malformed leaf page")
                    decoded = {}
                    for ino, rec in raw.items():
                        if not isinstance(ino, int) or ino >> PAGE_BITS != page:
                            raise IntegrityError(
                                name, f"inode {ino!r} does not belong in page {page}"
                            )
                        decoded[ino] = self.codec.decode(ino, rec, name)
                        members.add(ino)
                    self.inodes.update(decoded)
                self.page_members[page] = members
                self._page_lru[page] = None
        self._loaded("page", page)

    async def load_body(self, node: Inode) -> None:
        """Load ``node``'s external body object, unless it is loaded already.
        May block on the store; concurrent callers wait for one load."""
        async with self._lock_for("body", node.ino):
            while not node.body_loaded:
                ref = node.body_ref
                assert ref is not None
                body = await self.vault.get_meta(KIND_BODY, ref)
                if node.body_loaded or node.body_ref != ref:
                    continue  # a merge gave the node another record meanwhile
                self.codec.decode_body(node, body, obj_name(ref))
                node.body_loaded = True
                node.body_dirty = False
        self._loaded("body", node.ino)

    async def get(self, ino: int) -> Inode:
        """The inode ``ino`` with its body, loading what is missing (may block
        on the store). Raises FsError(ENOENT) if it does not exist."""
        node = self.inodes.get(ino)
        if node is None:
            await self.load_page(ino >> PAGE_BITS)
            node = self.inodes.get(ino)
            if node is None:
                raise FsError(errno.ENOENT)
        elif (page := ino >> PAGE_BITS) in self._page_lru:  # resident: always, but be safe
            self._page_lru.move_to_end(page)
        if not node.body_loaded:
            await self.load_body(node)
        return node

    def peek(self, ino: int) -> Inode | None:
        """The inode if it is resident, else None. No await, no load."""
        return self.inodes.get(ino)

    def iter_loaded(self) -> Iterator[Inode]:
        return iter(self.inodes.values())

    # --- changes ------------------------------------------------------------

    def touch(self, node: Inode) -> None:
        """``node``'s record changed: its page goes into the next snapshot."""
        self.dirty_pages.add(node.ino >> PAGE_BITS)
        self.changed.add(node.ino)

    def insert(self, node: Inode) -> None:
        """Add a new inode (its page must be resident, or new)."""
        page = node.ino >> PAGE_BITS
        self.inodes[node.ino] = node
        self.page_members.setdefault(page, set()).add(node.ino)
        self._page_lru[page] = None
        self.dirty_pages.add(page)
        self.changed.add(node.ino)

    def remove(self, ino: int) -> None:
        """Delete a purged inode from its page."""
        del self.inodes[ino]
        self.page_members[ino >> PAGE_BITS].discard(ino)
        self.dirty_pages.add(ino >> PAGE_BITS)
        self.changed.add(ino)
        self.names.pop(ino, None)

    def snapshot(
        self, meta_jobs: list[MetaJob], garbage: list[bytes]
    ) -> tuple[bytes | None, set[int]]:
        """Encode every dirty page, and the index nodes above them, into
        ``meta_jobs`` (replaced objects into ``garbage``). No await.

        Returns the new top index id and the pages encoded (for
        :meth:`unsnapshot`); the dirty set is empty afterwards.
        """
        pages = set(self.dirty_pages)
        leaves: dict[int, Any] = {
            page: (
                {ino: self.codec.encode(self.inodes[ino], meta_jobs, garbage) for ino in members}
                if (members := self.page_members.get(page))
                else None
            )
            for page in pages
        }
        self.dirty_pages.clear()
        return self.index.snapshot(leaves, KIND_LEAF, meta_jobs, garbage), pages

    def unsnapshot(self, pages: set[int], new_meta: set[bytes]) -> None:
        """A snapshot's commit failed: its pages are dirty again, and bodies
        it gave fresh objects get fresh ones again next time."""
        self.dirty_pages |= pages
        for page in pages:
            for ino in self.page_members.get(page, ()):
                node = self.inodes.get(ino)
                if node is not None and node.body_ref in new_meta:
                    node.body_dirty = True

    # --- lookup counts ------------------------------------------------------

    def incref(self, ino: int, n: int = 1) -> None:
        """The kernel gained ``n`` references to ``ino``."""
        self.refs[ino] = self.refs.get(ino, 0) + n

    def forget(self, ino: int, n: int) -> bool:
        """The kernel dropped ``n`` references; True if none are left."""
        left = self.refs.get(ino, 0) - n
        if left > 0:
            self.refs[ino] = left
            return False
        self.refs.pop(ino, None)
        return True

    def opened(self, ino: int) -> None:
        self.opens[ino] = self.opens.get(ino, 0) + 1

    def released(self, ino: int) -> bool:
        """One handle closed; True if it was the last one."""
        left = self.opens.get(ino, 0) - 1
        if left > 0:
            self.opens[ino] = left
            return False
        self.opens.pop(ino, None)
        self._evict_retry_at = 0  # its page may be evictable now
        return True

    def in_use(self, ino: int) -> bool:
        """Whether the kernel references ``ino`` or holds it open."""
        return bool(self.refs.get(ino) or self.opens.get(ino))

    # --- eviction -----------------------------------------------------------

    def evict(self) -> tuple[int, list[int]]:
        """Forget clean pages beyond ``max_pages``, least recently used first,
        down to three quarters of it; return how many, and the inode numbers
        forgotten.
        They load again from the store (or the disk cache) when next needed.

        The caller guarantees that nothing is uncommitted, no commit runs and
        no operation is in flight (none holds an Inode across an await). Keeps
        pages with an open file, a held inode lock, or the root directory.
        """
        limit = self.max_pages
        if len(self.page_members) <= max(limit, self._evict_retry_at) or self.dirty_pages:
            return 0, []
        target = limit * 3 // 4
        gone: list[int] = []
        evicted = 0
        for page in list(self._page_lru):
            if len(self.page_members) <= target:
                break
            members = self.page_members.get(page, set())
            if page == ROOT_INO >> PAGE_BITS or any(
                ino in self.opens or ((n := self.inodes.get(ino)) is not None and n.locked)
                for ino in members
            ):
                continue
            for ino in members:
                self.inodes.pop(ino, None)
                self.names.pop(ino, None)  # a hint: gone with the inode
                gone.append(ino)
            del self.page_members[page]
            del self._page_lru[page]
            evicted += 1
        # Found too little to evict (open files hold the pages): do not scan
        # again on every request, only once more pages have loaded or a file
        # has closed.
        self._evict_retry_at = len(self.page_members) + 16 if not evicted else 0
        return evicted, gone
