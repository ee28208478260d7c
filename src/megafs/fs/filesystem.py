"""The filesystem model: inodes, directories and file data over a vault.

No FUSE here: the pyfuse3 adapter (:mod:`megafs.fuse.operations`) calls these
methods directly, and tests do too. The model is composed of objects that
own their part: :class:`~megafs.fs.records.RecordCodec` (inode records),
:class:`~megafs.vault.content.Content` (chunk and pack objects: the only road to
the store for file bytes), :class:`~megafs.fs.collector.Collector` (deleting
garbage) and :class:`~megafs.fs.inode.Inode`; it owns the inode table, the
POSIX namespace, the read and write paths and commits, and touches the store
only through the vault and those objects. Errors are :class:`~megafs.errors.FsError`
with an errno; store and integrity failures propagate as their own classes
for the adapter to map.

On-store shape (see docs/format.md):

* root pointer -> top index (``hi -> mid id``) -> mid index (``lo -> leaf id``)
  -> leaf page (``ino -> inode record``), where ``page = ino >> 8``,
  ``hi = page >> 10``, ``lo = page & 1023``;
* an inode record holds attributes, xattrs, the wrapped per-file content key,
  and a body: the chunk map of a file (or its content inline when small),
  a directory's entries, a symlink's target. A body over 8 KiB is stored as
  an object of its own.
* file content: chunks of ``layout.chunk_size``, sealed in blocks; a chunk is
  an object of its own, or (format 2) a chunk of at most half a chunk
  shares a *pack* object with other small chunks of the same commit. The
  pack table (:class:`~megafs.vault.tables.PackTable`) counts each pack's chunks
  still referenced; the pack is deleted when that reaches zero.

Laziness: opening costs the root and the top index; a page, a mid index, a
body or a block is fetched the first time it is needed and kept in memory.

Commits: :meth:`Filesystem.commit` takes a synchronous snapshot of every
dirty chunk, body, page and index node (giving each a fresh random object
id), uploads them in parallel, then compare-and-swaps the root. Objects the
new root no longer references are deleted after that succeeds. A crash at any
moment leaves the old root (plus unreferenced garbage) or the new one.

Concurrency (trio, one thread): a method's mutations happen with no ``await``
between them once everything they need is loaded, so each operation is atomic
with respect to commits. Data operations on one inode (write, truncate) hold
that inode's lock while they fetch and mutate; :meth:`commit` holds the
commit lock. No method holds two inode locks, and none waits for the commit
lock while it holds an inode lock: a write that passes the dirty limit
leaves its inode lock before it commits. (A commit takes no inode lock.)
Loads of pages and bodies hold a per-key load lock only while they fetch.
"""

from __future__ import annotations

import collections
import errno
import functools
import itertools
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import cachetools
import trio

from ..client.cache import ContentCache
from ..client.journal import Journal, sync_files
from ..errors import FsError, IntegrityError, MegafsError
from ..format import crypto
from ..vault.content import ChunkRef, Content, PackPart
from ..vault.tables import MID_BITS as MID_BITS
from ..vault.tables import PAGE_BITS, MetaJob, PackTable, RadixIndex
from ..vault.vault import (
    KIND_BODY,
    KIND_LEAF,
    Root,
    Vault,
    obj_name,
)
from .collector import Collector
from .inode import ROOT_INO as ROOT_INO
from .inode import Attr as Attr
from .inode import Inode as Inode
from .records import RecordCodec

log = logging.getLogger(__name__)

#: Full chunks uploaded in the background while writes go on (and at most
#: this many chunk-sized buffers waiting for the store).
EARLY_UPLOADS = 16
#: Disk cache writes in the background at most (each holds its sealed bytes).
CACHE_WRITES = 8
#: Chunks fetched ahead of a sequential reader.
READ_AHEAD_CHUNKS = 4
#: Pack objects are closed once they hold this many sealed bytes (format 2).
PACK_TARGET = 4 << 20
#: Packs sealed and uploading at once, at most.
PACK_UPLOADS = 4
#: Inode pages kept in memory (256 inodes each) before clean ones are evicted,
#: least recently used first, down to three quarters of it: about 50 MiB.
MAX_RESIDENT_PAGES = 256
NAME_MAX = 255
INLINE_MAX = 2048  # files up to this size live inside their inode record
XATTR_CREATE = 1
XATTR_REPLACE = 2
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


@dataclass
class _Pending:
    """A chunk whose object is not committed yet; reads use ``data``.

    ``uploaded`` once its object is in the store; ``busy`` is set while an
    upload is in flight (and fires when it ends, however it ends).
    """

    inode: Inode
    index: int
    data: bytes | bytearray | None  # None once uploaded: read it from the store then
    uploaded: bool = False
    busy: trio.Event | None = None
    pack: _PackJob | None = None  # set for a packed chunk: uploaded with its pack


@dataclass
class _Snap:
    """What a snapshot encoded: inode pages and pack table pages."""

    pages: set[int]
    pack_pages: set[int] = field(default_factory=set)


@dataclass
class _PackJob:
    """A pack object made by a snapshot and not committed yet."""

    obj: bytes
    parts: list[tuple[ChunkRef, _Pending]]
    uploaded: bool = False


F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, Any]])


def _operation(fn: F) -> F:
    """Mark a journalled, mutating operation: it starts with a fresh timestamp."""

    @functools.wraps(fn)
    async def wrapper(self: Filesystem, *args: Any, **kwargs: Any) -> Any:
        self._op_time = None
        return await fn(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]




class Filesystem:
    """The inode-style model of one vault.

    Lookup counts: the adapter reports kernel references with :meth:`incref`
    and :meth:`forget`; open handles with :meth:`open` and :meth:`release`.
    An inode whose link count is 0 is kept (and listed as an orphan in the
    root, so a crash cannot leak it) until both reach zero, then purged.
    """

    def __init__(
        self,
        vault: Vault,
        root: Root,
        *,
        writable: bool,
        dirty_limit: int = 64 << 20,
        block_cache_bytes: int = 64 << 20,
        cache: ContentCache | None = None,
        fsync_local: bool = False,
    ) -> None:
        self.vault = vault
        self.layout = vault.layout
        self.writable = writable
        self.root = root
        self.dirty_limit = dirty_limit
        #: ``-o fsync=local``: fsync returns once the change is durable in the
        #: local journal; the upload follows with the next periodic commit.
        self.fsync_local = fsync_local
        self.inodes: dict[int, Inode] = {}
        self.page_members: dict[int, set[int]] = {}
        #: Resident pages, least recently used first (see :meth:`evict`).
        self._page_lru: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.max_pages = MAX_RESIDENT_PAGES
        self._evict_retry_at = 0
        self.index = RadixIndex(vault, root.itab)
        self.dirty_pages: set[int] = set()
        self.dirty_inodes: set[int] = set()  # inodes with dirty chunk buffers
        self.pending: dict[ChunkRef, _Pending] = {}
        #: The pack table, in a vault that packs small chunks (format 2).
        self.packs: PackTable | None = (
            PackTable(vault, root.ptab, root.next_pack)
            if vault.header.packs_small_chunks
            else None
        )
        #: Packed chunks dropped since the last snapshot (it updates the table).
        self.pack_drops: list[ChunkRef] = []
        self.pending_packs: dict[bytes, _PackJob] = {}
        self.garbage: list[bytes] = []
        self.dirty_bytes = 0
        self.refs: dict[int, int] = {}
        self.opens: dict[int, int] = {}
        self.orphans: set[int] = set(root.orphans)
        self.meta_dirty = False
        # (file id, object id, offset, block) -> plaintext: keyed by the file
        # too, so that a block is only ever served to the file it was verified for.
        self.blocks: cachetools.LRUCache[tuple[bytes, bytes, int, int], bytes] = (
            cachetools.LRUCache(maxsize=block_cache_bytes, getsizeof=len)
        )
        self._load_locks: dict[tuple[str, int], trio.Lock] = {}
        self.cache = cache
        #: chunk and pack objects go through here, never through the store directly
        self.content = Content(vault, cache)
        #: deletes what no committed root references (the retention hook)
        self.collector = Collector(self.content)
        #: inode records to and from leaf pages
        self.codec = RecordCodec(vault.keys, vault.layout, packed=vault.header.packs_small_chunks)
        self._read_end: dict[int, int] = {}  # ino -> end of the last read (readahead)
        self._nursery: trio.Nursery | None = None
        self._upload_slots = trio.Semaphore(EARLY_UPLOADS)
        self._cache_slots = trio.Semaphore(CACHE_WRITES)
        self._pack_slots = trio.Semaphore(PACK_UPLOADS)
        self._inflight: dict[ChunkRef, trio.Event] = {}  # chunk -> prefetch running
        self._commit_lock = trio.Lock()
        #: Mutations logged so far, and how many of them the last successful
        #: commit covered (group commit: see :meth:`fsync`).
        self._mutations = 0
        self._durable_mutations = 0
        #: with ``fsync_local``: how many mutations the journal holds durably
        self._journal_durable = 0
        self._journal_sync_lock = trio.Lock()
        self.commits = 0
        self.root_for_commit = root
        self.journal: Journal | None = None
        self._replay_time: int | None = None
        self._op_time: int | None = None
        self._replay_ino: int | None = None
        self._journal_mark: int | None = None
        self.replayed = 0

    # --- opening -------------------------------------------------------

    @classmethod
    async def load(
        cls,
        vault: Vault,
        *,
        writable: bool = True,
        force: bool = False,
        journal: Journal | None = None,
        **kw: Any,
    ) -> Filesystem:
        """Open the vault's filesystem. Costs a constant number of store requests.

        A writable open takes the writer lease (raises VaultBusy if another
        client holds it), replays ``journal`` segments that the root does not
        cover yet, then commits once to record the lease and the replay.
        """
        root = await vault.read_root()
        fs = cls(vault, root, writable=writable, **kw)
        if root.itab is not None:
            await fs.index.open()
        else:
            fs._make_root_dir()
        if writable:
            vault.check_lease(root, force=force)
            vault.read_only = False
            fs.root.lease = vault.my_lease()
            for ino in sorted(fs.orphans):
                await fs._maybe_purge(ino)
            if journal is not None:
                mark_client, mark = root.journal or (None, 0)
                limit, fs.dirty_limit = fs.dirty_limit, 1 << 62  # no commit mid-replay
                for rec in journal.pending(mark_client, mark):
                    await fs.apply_record(rec)
                    fs.replayed += 1
                fs.dirty_limit = limit
                if fs.replayed:
                    log.warning("applied %d journalled changes left by a previous run", fs.replayed)
                fs.journal = journal
            fs.meta_dirty = True
            await fs.commit()
        return fs

    def _now(self) -> int:
        """The operation's timestamp: one per operation, the journalled one in replay.

        The first call in an operation fixes it (``@_operation`` starts each
        operation afresh). Every call happens in an operation's final,
        await-free section.
        """
        if self._replay_time is not None:
            return self._replay_time
        if self._op_time is None:
            self._op_time = time.time_ns()
        return self._op_time

    def _log(self, *record: Any) -> None:
        """Journal a mutation (op, timestamp, args...) *before* applying it.

        Called after every check and fetch and right before the await-free
        section that mutates: if the journal cannot be written (a full cache
        disk) the operation fails with nothing changed.
        """
        self._mutations += 1
        if self.journal is not None:
            self.journal.append([record[0], self._now(), *record[1:]])

    async def apply_record(self, rec: list[Any]) -> None:
        """Replay one journal record. Records that no longer apply are skipped."""
        op, t, *args = rec
        self._replay_time = int(t)
        try:
            if op in ("mk", "cr", "mn", "sl"):
                self._replay_ino = int(args[0])
                args = args[1:]
            await _REPLAY[op](self, *args)
        except FsError as e:
            log.info("journal record %s no longer applies: %s", op, e)
        finally:
            self._replay_time = None
            self._replay_ino = None

    def start_background(self, nursery: trio.Nursery) -> None:
        """Let the model run background work (uploads of full chunks, read-ahead,
        deletion of garbage) in ``nursery``, which must outlive every operation.
        Without it, all of that happens in commits and reads themselves."""
        self._nursery = nursery
        self.collector.start(nursery)

    def stop_background(self) -> None:
        """No new background work; what runs finishes in its nursery (the
        garbage collector deletes what is queued, then ends)."""
        self._nursery = None
        self.collector.stop()

    def _make_root_dir(self) -> None:
        ino = Inode(ROOT_INO, stat.S_IFDIR | 0o755, os.getuid(), os.getgid(), self._now())
        ino.nlink = 2
        ino.parent = ROOT_INO
        self._insert(ino)

    async def close(self) -> None:
        """Commit everything, release the writer lease, and delete the garbage
        (so a clean unmount leaves no unreferenced object behind)."""
        if self.writable:
            self.root.lease = None
            self.meta_dirty = True
            await self.commit()
            self.writable = False
        await self.collector.drain()

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
            if page in self.page_members:
                return
            obj = await self.index.leaf_id(page)
            members: set[int] = set()
            if obj is not None:
                raw = await self.vault.get_meta(KIND_LEAF, obj)
                name = obj_name(obj)
                if not isinstance(raw, dict):
                    raise IntegrityError(name, "malformed leaf page")
                for ino, rec in raw.items():
                    if not isinstance(ino, int) or ino >> PAGE_BITS != page:
                        raise IntegrityError(name, f"inode {ino!r} does not belong in page {page}")
                    self.inodes[ino] = self.codec.decode(ino, rec, name)
                    members.add(ino)
            self.page_members[page] = members
            self._page_lru[page] = None
        self._loaded("page", page)

    async def _get(self, ino: int) -> Inode:
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

    def evict(self) -> int:
        """Forget clean inode pages beyond MAX_RESIDENT_PAGES, least recently
        used first; return how many. They load again from the store (or the
        disk cache) when next needed.

        The caller guarantees that no operation is in flight (none holds an
        Inode across an await): the adapter calls this between requests.
        Does nothing while anything is uncommitted or a commit runs, and
        keeps pages with an open file, a held lock, or the root directory.
        """
        limit = self.max_pages
        if len(self.page_members) <= max(limit, self._evict_retry_at):
            return 0
        if (
            self.dirty_pages
            or self.dirty_inodes
            or self.pending
            or self.pack_drops
            or self._commit_lock.locked()
        ):
            return 0
        target = limit * 3 // 4
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
                self._read_end.pop(ino, None)
            del self.page_members[page]
            del self._page_lru[page]
            evicted += 1
        # Found too little to evict (open files hold the pages): do not scan
        # again on every request, only once more pages have loaded or a file
        # has closed.
        self._evict_retry_at = len(self.page_members) + 16 if not evicted else 0
        return evicted

    async def load_body(self, node: Inode) -> None:
        """Load ``node``'s external body object, unless it is loaded already.
        May block on the store; concurrent callers wait for one load."""
        async with self._lock_for("body", node.ino):
            if node.body_loaded:
                return
            assert node.body_ref is not None
            body = await self.vault.get_meta(KIND_BODY, node.body_ref)
            self.codec.decode_body(node, body, obj_name(node.body_ref))
            node.body_loaded = True
            node.body_dirty = False
        self._loaded("body", node.ino)

    # --- bookkeeping ----------------------------------------------------

    def _touch(self, node: Inode) -> None:
        self.dirty_pages.add(node.ino >> PAGE_BITS)

    def _insert(self, node: Inode) -> None:
        page = node.ino >> PAGE_BITS
        self.inodes[node.ino] = node
        self.page_members.setdefault(page, set()).add(node.ino)
        self._page_lru[page] = None
        self.dirty_pages.add(page)

    def _check_writable(self) -> None:
        if not self.writable:
            raise FsError(errno.EROFS)

    async def _new_inode(self, mode: int, uid: int, gid: int) -> Inode:
        if self._replay_ino is not None:
            ino = self._replay_ino
            self.root.next_ino = max(self.root.next_ino, ino + 1)
        else:
            ino = self.root.next_ino
            self.root.next_ino += 1
        await self.load_page(ino >> PAGE_BITS)
        node = Inode(ino, mode, uid, gid, self._now())
        if node.is_reg:
            node.file_key = crypto.random_bytes(crypto.KEY_SIZE)
        return node

    def incref(self, ino: int, n: int = 1) -> None:
        """The kernel gained ``n`` references to ``ino`` (lookup, create, readdirplus)."""
        self.refs[ino] = self.refs.get(ino, 0) + n

    async def forget(self, ino: int, n: int) -> None:
        """The kernel dropped ``n`` references. May purge an unlinked inode."""
        left = self.refs.get(ino, 0) - n
        if left > 0:
            self.refs[ino] = left
        else:
            self.refs.pop(ino, None)
            await self._maybe_purge(ino)

    async def open(self, ino: int) -> Attr:
        node = await self._get(ino)
        self.opens[ino] = self.opens.get(ino, 0) + 1
        return node.attr()

    async def release(self, ino: int) -> None:
        left = self.opens.get(ino, 0) - 1
        if left > 0:
            self.opens[ino] = left
        else:
            self.opens.pop(ino, None)
            self._read_end.pop(ino, None)
            self._evict_retry_at = 0  # its page may be evictable now
            await self._maybe_purge(ino)

    async def _maybe_purge(self, ino: int) -> None:
        node = self.inodes.get(ino)
        if node is None and ino in self.orphans:
            try:
                node = await self._get(ino)
            except FsError:
                self.orphans.discard(ino)
                self.meta_dirty = True
                return
        if node is None or node.nlink > 0 or self.refs.get(ino) or self.opens.get(ino):
            return
        if not self.writable:
            return
        if not node.body_loaded:
            await self.load_body(node)
        node.body_dirty = True
        for ref in node.chunks.values():
            self._drop_ref(ref)
        node.chunks.clear()
        self.dirty_bytes -= sum(len(b) for b in node.dirty.values())
        node.dirty.clear()
        if node.body_ref is not None:
            self.garbage.append(node.body_ref)
        if node.is_reg:
            self.root.stats[1] -= node.size
        self.root.stats[0] -= 1
        del self.inodes[ino]
        self.page_members[ino >> PAGE_BITS].discard(ino)
        self.dirty_pages.add(ino >> PAGE_BITS)
        if ino in self.orphans:
            self.orphans.discard(ino)
            self.meta_dirty = True

    def _drop_ref(self, ref: ChunkRef) -> None:
        """No chunk map references ``ref`` any more: its object (or its share of
        a pack) is garbage once the next commit is in."""
        self.pending.pop(ref, None)
        if ref.packed:
            self.pack_drops.append(ref)
        else:
            self.garbage.append(ref.obj)

    def _unlinked(self, node: Inode) -> None:
        """``node`` lost a link; if it has none left, remember it as an orphan."""
        if node.nlink == 0:
            self.orphans.add(node.ino)
            self.meta_dirty = True

    # --- attributes -----------------------------------------------------

    async def getattr(self, ino: int) -> Attr:
        return (await self._get(ino)).attr()

    @_operation
    async def setattr(
        self,
        ino: int,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
    ) -> Attr:
        """chmod/chown/truncate/utimens in one call; ``None`` leaves a field alone."""
        self._check_writable()
        node = await self._get(ino)
        if size is not None:
            if node.is_dir:
                raise FsError(errno.EISDIR)
            if not node.is_reg:
                raise FsError(errno.EINVAL)
        record = ("sa", ino, mode, uid, gid, size, atime_ns, mtime_ns)
        if size is not None:
            await self._truncate(ino, size, record)  # logs, then mutates
        else:
            self._log(*record)
        if mode is not None:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(mode)
        if uid is not None:
            node.uid = uid
        if gid is not None:
            node.gid = gid
        if atime_ns is not None:
            node.atime = atime_ns
        if mtime_ns is not None:
            node.mtime = mtime_ns
        node.ctime = self._now()
        self._touch(node)
        return node.attr()

    async def _replay_setattr(
        self,
        ino: int,
        mode: int | None,
        uid: int | None,
        gid: int | None,
        size: int | None,
        atime_ns: int | None,
        mtime_ns: int | None,
    ) -> None:
        await self.setattr(
            ino, mode=mode, uid=uid, gid=gid, size=size, atime_ns=atime_ns, mtime_ns=mtime_ns
        )

    # --- directories ----------------------------------------------------

    async def _dir(self, ino: int) -> Inode:
        node = await self._get(ino)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        return node

    @staticmethod
    def _check_name(name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
            raise FsError(errno.EINVAL)

    async def lookup(self, parent: int, name: bytes) -> Attr:
        """Return the attributes of ``name`` in ``parent``. Does not change lookup counts."""
        d = await self._dir(parent)
        if name == b".":
            return d.attr()
        if name == b"..":
            return (await self._get(d.parent)).attr()
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        ent = d.entries.get(name)
        if ent is None:
            raise FsError(errno.ENOENT)
        return (await self._get(ent[0])).attr()

    async def readdir(self, ino: int, after: int) -> list[tuple[bytes, Attr, int]]:
        """Entries of directory ``ino`` with a cookie greater than ``after``.

        Returns (name, attr, cookie) in cookie order; "." and ".." are not
        listed (the kernel would not count their references). Cookies are
        stable while entries change: an entry keeps its cookie until it is
        removed or renamed. Loads the children's pages (READDIRPLUS needs
        their attributes); returns at most 256 entries.
        """
        d = await self._dir(ino)
        out: list[tuple[bytes, Attr, int]] = []
        if d.order is None:
            return []
        names = [d.order[c] for c in itertools.islice(d.order.irange(minimum=after + 1), 256)]
        for name in names:
            ent = d.entries.get(name)
            if ent is None:
                continue
            try:
                attr = (await self._get(ent[0])).attr()
            except FsError:
                continue
            out.append((name, attr, ent[1]))
        return out

    async def _make(
        self,
        parent: int,
        name: bytes,
        mode: int,
        uid: int,
        gid: int,
        record: Callable[[int], tuple[Any, ...]],
        rdev: int = 0,
        target: bytes = b"",
    ) -> Inode:
        """Create an inode and its entry; ``record(ino)`` is the journal record."""
        self._check_writable()
        self._check_name(name)
        d = await self._dir(parent)
        if name in d.entries:
            raise FsError(errno.EEXIST)
        node = await self._new_inode(mode, uid, gid)
        if name in d.entries:  # created while we awaited the page
            raise FsError(errno.EEXIST)
        self._log(*record(node.ino))
        node.rdev = rdev
        if target:
            node.target = target
            node.size = len(target)
        node.parent = parent
        if node.is_dir:
            node.nlink = 2
            d.nlink += 1
        d.add_entry(name, node.ino)
        d.mtime = d.ctime = node.ctime
        self._touch(d)
        self._insert(node)
        self.root.stats[0] += 1
        return node

    @_operation
    async def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Attr:
        node = await self._make(
            parent,
            name,
            stat.S_IFDIR | stat.S_IMODE(mode),
            uid,
            gid,
            lambda ino: ("mk", ino, parent, name, mode, uid, gid),
        )
        return node.attr()

    @_operation
    async def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Attr:
        """Create a regular file (``mode`` permission bits only or with S_IFREG)."""
        node = await self._make(
            parent,
            name,
            stat.S_IFREG | stat.S_IMODE(mode),
            uid,
            gid,
            lambda ino: ("cr", ino, parent, name, mode, uid, gid),
        )
        return node.attr()

    @_operation
    async def mknod(
        self, parent: int, name: bytes, mode: int, rdev: int, uid: int, gid: int
    ) -> Attr:
        fmt = stat.S_IFMT(mode) or stat.S_IFREG
        if fmt not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise FsError(errno.EINVAL)
        node = await self._make(
            parent,
            name,
            fmt | stat.S_IMODE(mode),
            uid,
            gid,
            lambda ino: ("mn", ino, parent, name, mode, rdev, uid, gid),
            rdev=rdev,
        )
        return node.attr()

    @_operation
    async def symlink(
        self, parent: int, name: bytes, target: bytes, uid: int, gid: int
    ) -> Attr:
        if len(target) > 4095:
            raise FsError(errno.ENAMETOOLONG)
        node = await self._make(
            parent,
            name,
            stat.S_IFLNK | 0o777,
            uid,
            gid,
            lambda ino: ("sl", ino, parent, name, target, uid, gid),
            target=target,
        )
        return node.attr()

    async def readlink(self, ino: int) -> bytes:
        node = await self._get(ino)
        if not stat.S_ISLNK(node.mode):
            raise FsError(errno.EINVAL)
        return node.target

    @_operation
    async def link(self, ino: int, parent: int, name: bytes) -> Attr:
        self._check_writable()
        self._check_name(name)
        node = await self._get(ino)
        if node.is_dir:
            raise FsError(errno.EPERM)
        d = await self._dir(parent)
        if name in d.entries:
            raise FsError(errno.EEXIST)
        if node.nlink == 0:
            raise FsError(errno.ENOENT)
        self._log("ln", ino, parent, name)
        d.add_entry(name, ino)
        node.nlink += 1
        node.ctime = d.mtime = d.ctime = self._now()
        self._touch(node)
        self._touch(d)
        return node.attr()

    @_operation
    async def unlink(self, parent: int, name: bytes) -> None:
        self._check_writable()
        d = await self._dir(parent)
        ent = d.entries.get(name)
        if ent is None:
            raise FsError(errno.ENOENT)
        node = await self._get(ent[0])
        if node.is_dir:
            raise FsError(errno.EISDIR)
        self._log("ul", parent, name)
        d.remove_entry(name)
        node.nlink -= 1
        node.ctime = d.mtime = d.ctime = self._now()
        self._touch(d)
        self._touch(node)
        self._unlinked(node)
        await self._maybe_purge(node.ino)

    @_operation
    async def rmdir(self, parent: int, name: bytes) -> None:
        self._check_writable()
        d = await self._dir(parent)
        ent = d.entries.get(name)
        if ent is None:
            raise FsError(errno.ENOENT)
        node = await self._get(ent[0])
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        if node.entries:
            raise FsError(errno.ENOTEMPTY)
        self._log("rd", parent, name)
        d.remove_entry(name)
        d.nlink -= 1
        node.nlink = 0
        node.ctime = d.mtime = d.ctime = self._now()
        self._touch(d)
        self._touch(node)
        self._unlinked(node)
        await self._maybe_purge(node.ino)

    async def _is_ancestor(self, anc: int, ino: int) -> bool:
        """True if directory ``anc`` is ``ino`` or one of its ancestors."""
        cur = ino
        for _ in range(100000):
            if cur == anc:
                return True
            if cur == ROOT_INO:
                return False
            cur = (await self._get(cur)).parent
        raise FsError(errno.ELOOP)

    @_operation
    async def rename(
        self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int = 0
    ) -> None:
        """rename(2) with RENAME_NOREPLACE and RENAME_EXCHANGE."""
        self._check_writable()
        self._check_name(new_name)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            raise FsError(errno.EINVAL)
        od = await self._dir(old_parent)
        nd = await self._dir(new_parent)
        ent = od.entries.get(old_name)
        if ent is None:
            raise FsError(errno.ENOENT)
        src = await self._get(ent[0])
        tent = nd.entries.get(new_name)
        dst = await self._get(tent[0]) if tent is not None else None
        if src.is_dir and await self._is_ancestor(src.ino, new_parent):
            raise FsError(errno.EINVAL)
        if flags & RENAME_EXCHANGE:
            if dst is None:
                raise FsError(errno.ENOENT)
            if dst.is_dir and await self._is_ancestor(dst.ino, old_parent):
                raise FsError(errno.EINVAL)
            self._log("rn", old_parent, old_name, new_parent, new_name, flags)
            self._exchange(od, old_name, src, nd, new_name, dst)
            return
        if dst is not None:
            if flags & RENAME_NOREPLACE:
                raise FsError(errno.EEXIST)
            if dst.ino == src.ino:
                return
            if src.is_dir and not dst.is_dir:
                raise FsError(errno.ENOTDIR)
            if dst.is_dir and not src.is_dir:
                raise FsError(errno.EISDIR)
            if dst.is_dir and dst.entries:
                raise FsError(errno.ENOTEMPTY)
        # All checks done and everything loaded: mutate with no await.
        self._log("rn", old_parent, old_name, new_parent, new_name, flags)
        now = self._now()
        if dst is not None:
            nd.remove_entry(new_name)
            if dst.is_dir:
                dst.nlink = 0
                nd.nlink -= 1
            else:
                dst.nlink -= 1
            dst.ctime = now
            self._touch(dst)
            self._unlinked(dst)
        od.remove_entry(old_name)
        nd.add_entry(new_name, src.ino)
        if src.is_dir and od.ino != nd.ino:
            src.parent = nd.ino
            od.nlink -= 1
            nd.nlink += 1
            src.body_dirty = True
        src.ctime = od.mtime = od.ctime = nd.mtime = nd.ctime = now
        for n in (src, od, nd):
            self._touch(n)
        if dst is not None:
            await self._maybe_purge(dst.ino)

    def _exchange(
        self, od: Inode, old_name: bytes, src: Inode, nd: Inode, new_name: bytes, dst: Inode
    ) -> None:
        now = self._now()
        od.remove_entry(old_name)
        nd.remove_entry(new_name)
        od.add_entry(old_name, dst.ino)
        nd.add_entry(new_name, src.ino)
        if od.ino != nd.ino:
            if src.is_dir:
                src.parent = nd.ino
                src.body_dirty = True
                od.nlink -= 1
                nd.nlink += 1
            if dst.is_dir:
                dst.parent = od.ino
                dst.body_dirty = True
                nd.nlink -= 1
                od.nlink += 1
        for n in (src, dst, od, nd):
            n.ctime = now
            self._touch(n)

    # --- xattrs -----------------------------------------------------------

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        node = await self._get(ino)
        try:
            return node.xattrs[name]
        except KeyError:
            raise FsError(errno.ENODATA) from None

    async def listxattr(self, ino: int) -> list[bytes]:
        return list((await self._get(ino)).xattrs)

    @_operation
    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        self._check_writable()
        node = await self._get(ino)
        if not name or len(name) > 255:
            raise FsError(errno.ERANGE)
        if len(value) > 65536:
            raise FsError(errno.E2BIG)
        if flags & XATTR_CREATE and name in node.xattrs:
            raise FsError(errno.EEXIST)
        if flags & XATTR_REPLACE and name not in node.xattrs:
            raise FsError(errno.ENODATA)
        self._log("sx", ino, name, value, flags)
        node.xattrs[name] = value
        node.ctime = self._now()
        self._touch(node)

    @_operation
    async def removexattr(self, ino: int, name: bytes) -> None:
        self._check_writable()
        node = await self._get(ino)
        if name not in node.xattrs:
            raise FsError(errno.ENODATA)
        self._log("rx", ino, name)
        del node.xattrs[name]
        node.ctime = self._now()
        self._touch(node)

    # --- file data ------------------------------------------------------

    async def _file(self, ino: int) -> Inode:
        node = await self._get(ino)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        if not node.is_reg:
            raise FsError(errno.EINVAL)
        return node

    async def _fetch_blocks(
        self,
        node: Inode,
        idx: int,
        ref: ChunkRef,
        lo: int,
        hi: int,
        ahead: bool = False,
        prefetching: bool = False,
    ) -> bytes:
        """Plaintext [lo, hi) of a committed chunk, fetching only the blocks needed.

        With ``ahead`` (a sequential reader) the fetch runs on to the end of
        the chunk, so a streaming read costs one request per chunk. Looks in
        the memory block cache, then the disk cache, then the store.
        """
        bs = self.layout.block_size
        first, last = self.layout.block_span(lo, hi - lo, ref.length)
        if first == last:
            return b""
        fid, obj, off = node.file_id, ref.obj, ref.off
        blocks = self.blocks
        missing = [b for b in range(first, last) if (fid, obj, off, b) not in blocks]
        running = self._inflight.get(ref)
        if missing and running is not None and not prefetching:
            await running.wait()  # a read-ahead is fetching this chunk: use its result
            missing = [b for b in range(first, last) if (fid, obj, off, b) not in blocks]
        parts: list[bytes] = []
        if missing:
            m0, m1 = missing[0], missing[-1] + 1
            if ahead:
                m1 = -(-ref.length // bs)
            plain = await self._open_blocks(node, idx, ref, m0, m1)
            for b, blk in enumerate(plain, m0):
                blocks[(fid, obj, off, b)] = blk
            for b in range(first, last):
                got = blocks.get((fid, obj, off, b))
                parts.append(got if got is not None else plain[b - m0])
        else:
            parts = [blocks[(fid, obj, off, b)] for b in range(first, last)]
        start, end = lo - first * bs, hi - first * bs
        joined = parts[0] if len(parts) == 1 else b"".join(parts)
        if start == 0 and end >= len(joined):
            return joined  # the common aligned read: no copy beyond the join
        return joined[start:end]

    async def _open_blocks(
        self, node: Inode, idx: int, ref: ChunkRef, m0: int, m1: int
    ) -> list[bytes]:
        """Fetch (disk cache, else store) and open blocks [m0, m1) of a chunk.

        Raises IntegrityError naming the object if they fail to verify.
        """
        assert node.file_key is not None
        keep = self._cache_later if self.cache is not None else None
        return await self.content.open_blocks(
            ref, node.file_key, node.file_id, idx, m0, m1, keep=keep
        )

    async def _cache_later(self, cname: str, first_block: int, sealed: bytes) -> None:
        """Keep sealed blocks in the disk cache without making the reader wait
        for the disk: in the background when there is room (CACHE_WRITES in
        flight), else now."""
        assert self.cache is not None
        if self._nursery is None or self._cache_slots.value == 0:
            await self.cache.store(cname, first_block, sealed)
            return
        self._cache_slots.acquire_nowait()

        async def write() -> None:
            try:
                assert self.cache is not None
                await self.cache.store(cname, first_block, sealed)
            except Exception as e:  # a cache that fails costs speed, never data
                log.warning("could not keep %s in the disk cache: %s", cname, e)
            finally:
                self._cache_slots.release()

        self._nursery.start_soon(write)

    async def _chunk_range(
        self, node: Inode, idx: int, lo: int, hi: int, ahead: bool = False
    ) -> bytes:
        """Stored plaintext of chunk ``idx`` in [lo, hi); may be shorter (zeros follow)."""
        buf = node.dirty.get(idx)
        if buf is not None:
            return bytes(buf[lo:hi])
        if idx == 0 and node.small is not None:
            return node.small[lo:hi]
        ref = node.chunks.get(idx)
        if ref is None:
            return b""
        pend = self.pending.get(ref)
        if pend is not None and pend.data is not None:
            return bytes(memoryview(pend.data)[lo:hi])
        hi = min(hi, ref.length)
        if hi <= lo:
            return b""
        return await self._fetch_blocks(node, idx, ref, lo, hi, ahead)

    async def read(self, ino: int, offset: int, size: int) -> bytes:
        """Read up to ``size`` bytes at ``offset``; short only at end of file.

        Fetches only the blocks that cover the range (plus none around it).
        Raises IntegrityError naming the object if a block fails to verify.
        """
        node = await self._file(ino)
        end = min(offset + size, node.size)
        if offset >= end:
            return b""
        cs = self.layout.chunk_size
        ahead = self._read_end.get(ino) == offset and offset > 0
        self._read_end[ino] = end
        if ahead and self._nursery is not None:
            self._read_ahead(node, (end - 1) // cs + 1)
        first, last = offset // cs, (end - 1) // cs
        if first == last:  # within one chunk (nearly every read): no copy here
            lo, hi = offset - first * cs, end - first * cs
            piece = await self._chunk_range(node, first, lo, hi, ahead)
            return piece if len(piece) == hi - lo else piece + bytes(hi - lo - len(piece))
        out = bytearray()
        for idx in range(first, last + 1):
            base = idx * cs
            lo = max(offset, base) - base
            hi = min(end, base + cs) - base
            piece = await self._chunk_range(node, idx, lo, hi, ahead)
            out += piece
            if len(piece) < hi - lo:
                out += bytes(hi - lo - len(piece))
        return bytes(out)

    def _read_ahead(self, node: Inode, start: int) -> None:
        """Fetch the next READ_AHEAD_CHUNKS committed chunks in the background."""
        assert self._nursery is not None
        bs = self.layout.block_size
        for idx in range(start, start + READ_AHEAD_CHUNKS):
            ref = node.chunks.get(idx)
            if (
                ref is None
                or idx in node.dirty
                or ref in self.pending
                or ref in self._inflight
                or (node.file_id, ref.obj, ref.off, (ref.length - 1) // bs) in self.blocks
            ):
                continue
            done = self._inflight[ref] = trio.Event()
            self._nursery.start_soon(self._prefetch, node, idx, ref, done)

    async def _prefetch(self, node: Inode, idx: int, ref: ChunkRef, done: trio.Event) -> None:
        try:
            await self._fetch_blocks(node, idx, ref, 0, ref.length, prefetching=True)
        except Exception as e:  # the reader will fetch (and report) it itself
            log.debug("read-ahead of %s failed: %s", ref.cache_name, e)
        finally:
            del self._inflight[ref]
            done.set()

    async def _whole_chunk(self, node: Inode, idx: int) -> bytearray:
        return bytearray(await self._chunk_range(node, idx, 0, self.layout.chunk_size))

    def _unsmall(self, node: Inode) -> None:
        if node.small == b"":
            node.small = None
        elif node.small is not None:
            node.dirty[0] = bytearray(node.small)
            self.dirty_inodes.add(node.ino)
            self.dirty_bytes += len(node.small)
            node.small = None

    @_operation
    async def write(self, ino: int, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset`` (any offset; holes read as zeros).

        Holds the inode's lock. Partially covered chunks that are not in
        memory are fetched first; then the write is applied with no await,
        so a commit sees all of it or none of it. May commit when dirty data
        exceeds the limit (and so block on the store).
        """
        self._check_writable()
        if not data:
            return 0
        node = await self._file(ino)
        cs = self.layout.chunk_size
        end = offset + len(data)
        async with node.lock:
            first, last = offset // cs, (end - 1) // cs
            bases: dict[int, bytearray] = {}

            def needs_base(idx: int) -> bool:
                if idx in bases or idx in node.dirty or (idx == 0 and node.small is not None):
                    return False
                base = idx * cs
                covered_from = max(offset, base) - base
                covered_to = min(end, base + cs) - base
                existing = min(cs, max(0, node.size - base))
                return not (covered_from == 0 and covered_to >= existing)

            # A commit may move a dirty chunk to pending while we await, so
            # check again until a pass needs no fetch.
            while need := [i for i in {first, last} if needs_base(i)]:
                for idx in need:
                    bases[idx] = await self._whole_chunk(node, idx)
            # No await from here on.
            self._log("wr", ino, offset, data)
            view = memoryview(data)
            self._unsmall(node)
            node.body_dirty = True
            for idx in range(first, last + 1):
                base = idx * cs
                lo = max(offset, base) - base
                hi = min(end, base + cs) - base
                buf = node.dirty.get(idx)
                if buf is None:
                    buf = bases.get(idx, bytearray())
                    old = node.chunks.pop(idx, None)
                    if old is not None:
                        self._drop_ref(old)
                    node.dirty[idx] = buf
                    self.dirty_inodes.add(node.ino)
                    self.dirty_bytes += len(buf)
                if len(buf) < lo:
                    self.dirty_bytes += lo - len(buf)
                    buf.extend(bytes(lo - len(buf)))
                before = len(buf)
                buf[lo:hi] = view[base + lo - offset : base + hi - offset]
                self.dirty_bytes += len(buf) - before
            if end > node.size:
                self.root.stats[1] += end - node.size
                node.size = end
            node.mtime = node.ctime = self._now()
            self._touch(node)
        if self._nursery is not None:
            for idx in range(first, last + 1):
                if end >= (idx + 1) * cs:  # the writer is past this chunk
                    await self._upload_early(node, idx)
        if self.dirty_bytes > self.dirty_limit:
            try:
                await self.commit()
            except* MegafsError as eg:
                # The write itself is applied and journalled; the commit is
                # retried by the next one (memory pressure, not this write).
                log.warning("commit over the dirty limit failed, will retry: %s", eg.exceptions[0])
        return len(data)

    async def _upload_early(self, node: Inode, idx: int) -> None:
        """Start uploading a completely written chunk now, not at the next commit.

        Waits while EARLY_UPLOADS uploads are in flight (this bounds memory).
        The chunk becomes pending under a fresh object id; the next commit
        waits for the upload and references it.
        """
        assert self._nursery is not None
        await self._upload_slots.acquire()
        buf = node.dirty.get(idx)
        if (
            buf is None
            or len(buf) != self.layout.chunk_size
            or self.inodes.get(node.ino) is not node
        ):
            self._upload_slots.release()
            return
        del node.dirty[idx]
        self.dirty_bytes -= len(buf)
        pend = _Pending(node, idx, buf)  # out of node.dirty: nothing changes it now
        ref = ChunkRef(crypto.new_id(), len(buf))
        self.pending[ref] = pend
        node.chunks[idx] = ref
        node.body_dirty = True
        self._touch(node)
        self._nursery.start_soon(self._early_task, ref, pend)

    async def _early_task(self, ref: ChunkRef, pend: _Pending) -> None:
        try:
            await self._ensure_uploaded(ref, pend)
            if ref not in self.pending:  # dropped meanwhile: nothing references it
                await self.collector.collect([ref.obj])
        except Exception as e:  # the next commit uploads it again
            log.warning("background upload of %s failed, will retry: %s", ref.cache_name, e)
        finally:
            self._upload_slots.release()

    async def _ensure_uploaded(self, ref: ChunkRef, pend: _Pending) -> None:
        """Upload a pending chunk unless it is (being) uploaded; one upload at a time."""
        while not pend.uploaded:
            if pend.busy is not None:
                await pend.busy.wait()
                continue
            pend.busy = trio.Event()
            try:
                await self._upload_chunk(ref, pend)
                pend.uploaded = True
                pend.data = None  # in the store now: do not hold it in memory
            finally:
                done, pend.busy = pend.busy, None
                done.set()

    @_operation
    async def truncate(self, ino: int, size: int) -> None:
        """Set the file's length; growing makes a hole. Holds the inode's lock."""
        await self._truncate(ino, size, ("tr", ino, size))

    async def _truncate(self, ino: int, size: int, record: tuple[Any, ...]) -> None:
        """Truncate; journals ``record`` once all fetches are done, then mutates."""
        self._check_writable()
        if size < 0:
            raise FsError(errno.EINVAL)
        node = await self._file(ino)
        cs = self.layout.chunk_size
        async with node.lock:
            cut_idx, cut_at = divmod(size, cs)
            base: bytearray | None = None
            while (
                base is None
                and size < node.size
                and cut_at
                and cut_idx not in node.dirty
                and not (cut_idx == 0 and node.small is not None)
            ):
                base = await self._whole_chunk(node, cut_idx)
            self._log(*record)
            self._unsmall(node)
            node.body_dirty = True
            if size < node.size:
                for idx in [i for i in node.chunks if i > cut_idx or (i == cut_idx and not cut_at)]:
                    self._drop_ref(node.chunks.pop(idx))
                for idx in [i for i in node.dirty if i > cut_idx or (i == cut_idx and not cut_at)]:
                    self.dirty_bytes -= len(node.dirty.pop(idx))
                if cut_at:
                    buf = node.dirty.get(cut_idx)
                    if buf is None:
                        assert base is not None
                        buf = base
                        old = node.chunks.pop(cut_idx, None)
                        if old is not None:
                            self._drop_ref(old)
                        node.dirty[cut_idx] = buf
                        self.dirty_inodes.add(node.ino)
                        self.dirty_bytes += len(buf)
                    if len(buf) > cut_at:
                        self.dirty_bytes -= len(buf) - cut_at
                        del buf[cut_at:]
            self.root.stats[1] += size - node.size
            node.size = size
            node.mtime = node.ctime = self._now()
            self._touch(node)

    async def fallocate(self, ino: int, offset: int, length: int) -> None:
        """posix_fallocate: make the file at least offset+length long (no preallocation)."""
        node = await self._file(ino)
        if offset + length > node.size:
            await self.truncate(ino, offset + length)

    # --- commits ----------------------------------------------------------

    @property
    def pack_max(self) -> int:
        """Chunks up to this length are packed (format 2): half a chunk."""
        return self.layout.chunk_size // 2

    def renew_lease(self) -> None:
        """Make the next commit write the root even with no other change, so
        that it renews the writer lease. No await."""
        self.meta_dirty = True

    def has_changes(self) -> bool:
        return bool(self.dirty_pages or self.meta_dirty or self.pending or self.pack_drops)

    async def fsync(self, ino: int | None = None) -> None:
        """Make everything written so far durable in the store. Blocks on the store.

        Group commit: the call returns as soon as a commit whose snapshot was
        taken after it began has succeeded, whoever ran it. Every mutation is
        logged (:meth:`_log`) right before the await-free section that applies
        it, so a snapshot taken once ``_mutations`` reached ``n`` holds the
        first ``n`` mutations. Calls that arrive while a commit is in flight
        queue on the commit lock (FIFO); the first of them commits for all of
        them, and the rest find their mutations covered and return: one root
        swap acknowledges every fsync that waited for it.

        With ``fsync_local`` (and a journal), it returns instead once the
        journal segments written since the last such call are durable on the
        local disk (fdatasync, in a worker thread); the store gets the change
        with the next periodic commit, or at unmount.
        """
        if not self.writable:
            return
        want = self._mutations
        if self._durable_mutations >= want:
            return
        if self.fsync_local and self.journal is not None:
            # One sync at a time: a later call must not return while the
            # segments holding its records are still being synced by another.
            async with self._journal_sync_lock:
                if self._journal_durable >= want:
                    return
                upto = self._mutations  # every record so far is in what is taken now
                paths = self.journal.take_unsynced()
                try:
                    await trio.to_thread.run_sync(sync_files, self.journal.dir, paths)
                except BaseException:
                    self.journal.restore_unsynced(paths)
                    raise
                self._journal_durable = max(self._journal_durable, upto)
            return
        async with self._commit_lock:
            if self._durable_mutations >= want:
                return
            await self._commit_locked()

    async def commit(self) -> bool:
        """Commit all changes: upload new objects, then compare-and-swap the root.

        Returns False if there was nothing to commit. Blocks on the store.
        Raises CommitConflict if another client moved the root; store errors
        propagate, and then the changes stay in memory for the next attempt.
        """
        if not self.writable:
            return False
        async with self._commit_lock:
            return await self._commit_locked()

    async def _commit_locked(self) -> bool:
        """:meth:`commit`, with the commit lock held by the caller."""
        covers = self._mutations
        if not self.has_changes():
            self._durable_mutations = max(self._durable_mutations, covers)
            return False
        await self._load_pack_pages()
        chunk_jobs, pack_jobs, meta_jobs, snap, garbage = self._snapshot()
        try:
            async with trio.open_nursery() as nursery:
                for ref, pend in chunk_jobs:
                    nursery.start_soon(self._ensure_uploaded, ref, pend)
                for job in pack_jobs:
                    nursery.start_soon(self._upload_pack, job)
                for kind, obj_id, payload in meta_jobs:
                    nursery.start_soon(self.vault.put_meta, kind, obj_id, payload)
            await self.vault.commit_root(self.root_for_commit)
        except BaseException:
            self._unsnapshot(snap, meta_jobs, garbage)
            raise
        self.root.generation = self.root_for_commit.generation
        self.root.orphans = self.root_for_commit.orphans
        # Committed chunks are read from the store (or the disk cache) from
        # now on; the kernel's page cache still holds what was just written.
        for ref, _ in chunk_jobs:
            self.pending.pop(ref, None)
        for job in pack_jobs:
            self.pending_packs.pop(job.obj, None)
            for ref, _ in job.parts:
                self.pending.pop(ref, None)
        self.commits += 1
        self._durable_mutations = max(self._durable_mutations, covers)
        mark = self.root_for_commit.journal
        if self.journal is not None and mark is not None:
            self.journal.committed(mark[1])
        await self.collector.collect(garbage)
        return True

    async def _load_pack_pages(self) -> None:
        """Make resident the pack table pages the next snapshot changes.

        Loops because chunks may be dropped while a page loads; returns
        with no await between its last check and the caller's snapshot.
        """
        if self.packs is None:
            return
        while missing := self.packs.missing_pages(
            (ref.pno for ref in self.pack_drops), new=self._will_pack()
        ):
            for page in sorted(missing):
                await self.packs.load(page)

    def _will_pack(self) -> bool:
        """Whether the next snapshot makes a pack (it has a small dirty chunk)."""
        limit = self.pack_max
        for ino in self.dirty_inodes:
            node = self.inodes.get(ino)
            if node is not None and any(0 < len(b) <= limit for b in node.dirty.values()):
                return True
        return False

    def _unsnapshot(self, snap: _Snap, meta_jobs: list[MetaJob], garbage: list[bytes]) -> None:
        """Undo a snapshot whose commit failed: nothing it made is referenced.

        Chunks stay pending (their ids are in the live chunk maps and they are
        uploaded again next time; so do packs, whole); pages, bodies and index
        nodes are marked dirty so they get fresh objects; everything the
        snapshot made is garbage.
        """
        new_meta = {obj for _, obj, _ in meta_jobs}
        self.dirty_pages |= snap.pages
        for page in snap.pages:
            for ino in self.page_members.get(page, ()):
                node = self.inodes.get(ino)
                if node is not None and node.body_ref in new_meta:
                    node.body_dirty = True
        if self.packs is not None:
            self.packs.dirty |= snap.pack_pages
        self.meta_dirty = True
        self.garbage.extend(garbage)
        self.garbage.extend(new_meta)

    async def _upload_chunk(self, ref: ChunkRef, p: _Pending) -> None:
        node = p.inode
        assert node.file_key is not None and p.data is not None
        await self.content.put_chunk(ref, node.file_key, node.file_id, p.index, p.data)

    async def _upload_pack(self, job: _PackJob) -> None:
        """Seal every chunk of a pack at its offset and upload the pack object.

        At most PACK_UPLOADS at a time: each holds its sealed pack (about
        4 MiB) besides its chunks' plaintext until it is stored.
        """
        async with self._pack_slots:
            if job.uploaded:
                return
            parts = []
            for ref, p in job.parts:
                assert p.inode.file_key is not None and p.data is not None
                parts.append(PackPart(ref, p.inode.file_key, p.inode.file_id, p.index, p.data))
            await self.content.put_pack(job.obj, parts)
            job.uploaded = True
            for _, p in job.parts:
                p.uploaded = True
                p.data = None  # in the store now: do not hold it in memory

    def _snapshot(
        self,
    ) -> tuple[
        list[tuple[ChunkRef, _Pending]], list[_PackJob], list[MetaJob], _Snap, list[bytes]
    ]:
        """Freeze the dirty state into upload jobs and the next root. No await.

        Returns (chunk jobs, pack jobs, metadata jobs, what was snapshotted,
        garbage). The garbage is what the new root no longer references;
        what is dropped while the upload runs is still referenced by it and
        waits for the commit after. The pack table pages the snapshot
        changes must be resident (:meth:`_load_pack_pages`).
        """
        # Left over from a failed commit, or uploading early:
        chunk_jobs = [(ref, p) for ref, p in self.pending.items() if p.pack is None]
        meta_jobs: list[MetaJob] = []
        packs = self.packs
        if packs is not None:
            drops, self.pack_drops = self.pack_drops, []
            sealed_len = self.layout.sealed_len
            for i, ref in enumerate(drops):
                try:
                    dead = packs.drop(ref.pno, ref.obj, sealed_len(ref.length))
                except IntegrityError:
                    self.pack_drops = drops[i:] + self.pack_drops  # nothing is lost
                    raise
                if dead is not None:
                    self.garbage.append(dead)
                    self.pending_packs.pop(dead, None)
        small: list[tuple[Inode, int, bytes | bytearray]] = []
        dirty_inodes, self.dirty_inodes = self.dirty_inodes, set()
        for ino in sorted(dirty_inodes):
            node = self.inodes.get(ino)
            if node is None or not node.dirty:
                continue
            if node.size <= INLINE_MAX and not node.chunks and set(node.dirty) <= {0}:
                buf = node.dirty.pop(0, bytearray())
                self.dirty_bytes -= len(buf)
                node.small = bytes(buf[: node.size])
                node.body_dirty = True
                continue
            for idx, buf in node.dirty.items():
                self.dirty_bytes -= len(buf)
                if not buf:  # nothing stored: a hole
                    continue
                data = buf  # out of node.dirty (cleared below): nothing changes it now
                if packs is not None and len(data) <= self.pack_max:
                    small.append((node, idx, data))
                    continue
                pend = _Pending(node, idx, data)
                ref = ChunkRef(crypto.new_id(), len(data))
                self.pending[ref] = pend
                node.chunks[idx] = ref
                chunk_jobs.append((ref, pend))
            node.dirty.clear()
            node.body_dirty = True
            self._touch(node)
        if small:
            assert packs is not None
            self._pack(packs, small)
        pack_jobs = list(self.pending_packs.values())
        snap = _Snap(set(self.dirty_pages))
        leaves = {
            page: (
                {
                    ino: self.codec.encode(self.inodes[ino], meta_jobs, self.garbage)
                    for ino in members
                }
                if (members := self.page_members.get(page))
                else None
            )
            for page in self.dirty_pages
        }
        self.dirty_pages.clear()
        itab = self.index.snapshot(leaves, KIND_LEAF, meta_jobs, self.garbage)
        ptab = self.root.ptab
        if packs is not None:
            ptab, snap.pack_pages = packs.snapshot(meta_jobs, self.garbage)
        if self.writable and self.root.lease is not None:
            self.root.lease = self.vault.my_lease()
        if self.journal is not None:
            self._journal_mark = self.journal.rotate()
            self.root.journal = (self.journal.id, self._journal_mark)
        self.root.itab = itab
        self.root.ptab = ptab
        self.root.next_pack = packs.next_pack if packs is not None else 0
        self.root_for_commit = Root(
            generation=self.vault.next_generation(),
            itab=itab,
            next_ino=self.root.next_ino,
            orphans=sorted(self.orphans),
            lease=self.root.lease,
            stats=list(self.root.stats),
            journal=self.root.journal,
            ptab=ptab,
            next_pack=self.root.next_pack,
        )
        self.meta_dirty = False
        garbage, self.garbage = self.garbage, []
        return chunk_jobs, pack_jobs, meta_jobs, snap, garbage

    def _pack(
        self, packs: PackTable, small: list[tuple[Inode, int, bytes | bytearray]]
    ) -> None:
        """Put small chunks into new packs of about PACK_TARGET sealed bytes. No await."""
        sealed_len = self.layout.sealed_len
        group: list[tuple[Inode, int, bytes | bytearray]] = []
        size = 0
        for i, item in enumerate(small):
            group.append(item)
            size += sealed_len(len(item[2]))
            if size < PACK_TARGET and i + 1 < len(small):
                continue
            obj = crypto.new_id()
            pno = packs.add(obj, len(group), size)
            job = _PackJob(obj, [])
            off = 0
            for node, idx, data in group:
                ref = ChunkRef(obj, len(data), off, pno)
                pend = _Pending(node, idx, data, pack=job)
                job.parts.append((ref, pend))
                self.pending[ref] = pend
                node.chunks[idx] = ref
                off += sealed_len(len(data))
            self.pending_packs[obj] = job
            group, size = [], 0

    # --- misc -------------------------------------------------------------

    def statfs(self) -> dict[str, int]:
        files, used = self.root.stats
        bsize = 4096
        total = max(1 << 40, used * 2) // bsize
        return {
            "bsize": bsize,
            "blocks": total,
            "bfree": total - used // bsize,
            "files": max(files, 0) + (1 << 24),
            "ffree": 1 << 24,
            "namemax": NAME_MAX,
        }

    def iter_loaded(self) -> Iterator[Inode]:
        return iter(self.inodes.values())


#: Journal record codes and the operation each replays. The codes are part of
#: the journal's format (docs/format.md section 12) and never change; the
#: table names the methods themselves, so renaming one fails here, at import,
#: rather than silently leaving old journals unreplayable.
_REPLAY: dict[str, Callable[..., Coroutine[Any, Any, Any]]] = {
    "sa": Filesystem._replay_setattr,
    "mk": Filesystem.mkdir,
    "cr": Filesystem.create,
    "mn": Filesystem.mknod,
    "sl": Filesystem.symlink,
    "ln": Filesystem.link,
    "ul": Filesystem.unlink,
    "rd": Filesystem.rmdir,
    "rn": Filesystem.rename,
    "sx": Filesystem.setxattr,
    "rx": Filesystem.removexattr,
    "wr": Filesystem.write,
    "tr": Filesystem.truncate,
}
