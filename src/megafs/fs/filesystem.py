"""The filesystem model of one vault: the objects that own its parts, put
together, and the calls the FUSE adapter makes.

No FUSE here: the pyfuse3 adapter (:mod:`megafs.fuse.operations`) calls these
methods, and tests do too. :class:`Filesystem` owns nothing but the wiring,
opening (lease, orphans, the journal replay that :mod:`.restore` runs) and
closing, the dirty limit, and the lookup-count calls that span parts. The
parts, each owning its state:

* :class:`~.table.InodeTable`: resident inodes and pages, loading, eviction,
  lookup counts;
* :class:`~.namespace.Namespace`: names, links, attributes, orphans;
* :class:`~.data.DataPath`: reads, writes, dirty and pending chunks;
* :class:`~.staging.Stager`: chunks sealed into their objects as they are
  written (a local folder);
* :class:`~.committer.Committer`: snapshot, upload, the root swap, fsync;
* :class:`~.collector.Collector`: what is retired, and deleting it;
* :class:`~.oplog.OpLog`: timestamps and journalling of each mutation;
* :class:`~megafs.vault.content.Content`: the only road to the store for
  chunk and pack objects (metadata goes through the vault).

Errors are :class:`~megafs.errors.FsError` with an errno; store and
integrity failures propagate as their own classes for the adapter to map.

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

Concurrency (trio, one thread): an operation's mutations happen with no
``await`` between them once everything it needs is loaded, so each operation
is atomic with respect to commits. Data operations on one inode (write,
truncate) hold that inode's lock while they fetch and mutate; a commit holds
the commit lock. Lock order: no method holds two inode locks, and none waits
for the commit lock while it holds an inode lock (a write that passes the
dirty limit commits here, after the data path left the inode lock; a commit
takes no inode lock). Loads of pages and bodies hold a per-key load lock only
while they fetch; a page load may then take the load lock of the index node
above it (``RadixIndex``), and a commit may take pack-table page load locks
under the commit lock. These orders never reverse, so they cannot deadlock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

import trio

from ..client.cache import ContentCache
from ..client.journal import Journal
from ..errors import (
    CommitConflict,
    FsError,
    IntegrityError,
    MegafsError,
    RollbackError,
    StagedDataLost,
    UnsupportedVersion,
    first_leaf,
)
from ..format import crypto
from ..vault.content import Content
from ..vault.devlog import Series
from ..vault.history import Entry
from ..vault.retention import Policy
from ..vault.root import RECORD_VERSION, Root
from ..vault.vault import Vault
from .collector import Collector
from .committer import MERGE_RETRIES, Committer
from .data import DataPath
from .inode import ROOT_INO, Attr, Inode
from .keeper import PruneResult
from .merge_records import Outcome
from .namespace import NAME_MAX, Namespace
from .oplog import OpLog
from .records import RecordCodec
from .replay import apply_record
from .restore import replay_journal, restore_logged
from .table import InodeTable
from .trash import deleted_between

log = logging.getLogger(__name__)

#: Backoff jitter of merge retries (the system random source: nothing here
#: uses a predictable one).
_JITTER = secrets.SystemRandom()


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
        device_id: bytes | None = None,
    ) -> None:
        self.vault = vault
        self.root = root
        #: this device's record in the root (:meth:`Root.register`), None read-only
        device = root.devices[device_id] if device_id is not None else None
        #: Dirty chunk bytes beyond which a write commits.
        self.dirty_limit = dirty_limit
        self.cache = cache
        packed = vault.header.packs_small_chunks
        self.oplog = OpLog(writable=writable)
        #: chunk and pack objects go through here, never through the store directly
        self.content = Content(vault, cache)
        #: what is retired, and deleting it (the retention hook)
        self.collector = Collector(self.content)
        self.collector.shared = lambda: len(root.devices) > 1
        if writable:
            # garbage deferred for other devices outlives this mount
            self.collector.persist = vault.state.path.removesuffix(".json") + ".garbage"
            self.collector.load_deferred()
        self.table = InodeTable(
            vault, root.itab, RecordCodec(vault.keys, vault.layout, packed=packed)
        )
        self.data = DataPath(
            self.table,
            self.content,
            self.collector,
            self.oplog,
            root,
            cache=cache,
            block_cache_bytes=block_cache_bytes,
            packs_small_chunks=packed,
            stages=not fsync_local,
        )
        self.namespace = Namespace(self.table, self.data, self.collector, self.oplog, root, device)
        self.committer = Committer(
            vault,
            root,
            self.table,
            self.data,
            self.collector,
            self.oplog,
            self.namespace.orphans,
            device_id=device_id,
            fsync_local=fsync_local,
        )
        self.committer.purge = self.namespace.purge_if_unused
        # the trash: a root holding what its successor deleted is kept
        self.committer.keeper.holds_deleted = self._holds_deleted
        #: conflict copies merges made (folder, name, time), newest last
        self.conflicts: list[tuple[int, bytes, float]] = []
        self.committer.on_merge.append(self._note_conflicts)
        #: when the oldest change not yet committed was made (None: none)
        self.changed_since: float | None = None
        #: Journal records applied when this filesystem was opened.
        self.replayed = 0

    async def history(self) -> list[Entry]:
        """The kept past roots (this one's included), oldest first: one
        request per 64 generations of history the first time."""
        return await self.committer.keeper.entries()

    async def past(self, entry: Entry, *, block_cache_bytes: int = 8 << 20) -> Filesystem:
        """A read-only filesystem on the kept root ``entry``, loaded lazily
        like this one (one request to open it; the content cache shared)."""
        root = Root(generation=entry.gen, itab=entry.itab, next_ino=0, stats=list(entry.stats))
        fs = Filesystem(
            self.vault, root, writable=False, cache=self.cache, block_cache_bytes=block_cache_bytes
        )
        if entry.itab is not None:
            await fs.table.index.open()
        else:
            fs.namespace.make_root_dir()
        return fs

    async def _holds_deleted(self, older: Entry, newer: Entry | None) -> bool:
        """Whether kept root ``older`` holds items ``newer`` deleted (None:
        the root being committed, i.e. this filesystem, built on ``older``)."""
        small = 1 << 20
        past = await self.past(older, block_cache_bytes=small)
        if newer is None:
            found = await deleted_between(
                past, self, older, older, pages=set(self.table.dirty_pages)
            )
        else:
            found = await deleted_between(
                past, await self.past(newer, block_cache_bytes=small), older, newer
            )
        return bool(found)

    def _note_conflicts(self, outcome: Outcome) -> None:
        now = time.time()
        self.conflicts += [(d, name, now) for d, name, _ in outcome.conflicts]
        del self.conflicts[:-20]

    async def status(self) -> dict[str, Any]:
        """What ``megafs status`` shows of the model (:mod:`megafs.mount.status`)."""
        c = self.committer
        pending_ops = max(0, self.oplog.mutations - c.durable_mutations)
        if pending_ops == 0 and not self.has_changes():
            self.changed_since = None
        elif self.changed_since is None:
            self.changed_since = time.time()
        journal = 0
        if self.journal is not None:
            with contextlib.suppress(OSError):
                journal = sum(e.stat().st_size for e in os.scandir(self.journal.dir))
        mine = self.root.devices.get(c.device_id) if c.device_id is not None else None
        cache = self.cache
        return {
            "pending": {
                "operations": pending_ops,
                "dirty_bytes": self.data.dirty_bytes,
                "uploads": len(self.data.pending),
                "since": self.changed_since,
                "journal_bytes": journal,
            },
            "last_commit": {
                "time": mine.time_ns / 1e9 if mine is not None and mine.time_ns else None,
                "generation": self.root.generation,
                "commits": c.commits,
                "log_puts": c.log_puts,
            },
            "cache": {
                "bytes": cache.bytes if cache is not None else 0,
                "limit": cache.max_bytes if cache is not None else 0,
                "hits": cache.hits if cache is not None else 0,
                "misses": cache.misses if cache is not None else 0,
            },
            "devices": [
                {
                    "name": d.name,
                    "last_commit": d.time_ns / 1e9 if d.time_ns else None,
                    "generation": d.generation,
                    "this": k == c.device_id,
                }
                for k, d in sorted(self.root.devices.items(), key=lambda kv: -kv[1].time_ns)
            ],
            "conflicts": [
                {"folder": d, "name": os.fsdecode(n), "time": t} for d, n, t in self.conflicts
            ],
            "history": {"kept": len(await self.history())},
        }

    async def pin(self, name: str) -> None:
        """Keep the current state under ``name`` until unpinned: commits
        (more than once if other pins wait: a commit makes one). If a commit
        fails, the request is withdrawn and the error raised."""
        keeper = self.committer.keeper
        keeper.pin(name)
        try:
            while keeper.pending(name):
                await self.commit()
        except BaseException:
            keeper.withdraw(name)
            raise

    async def unpin(self, name: str) -> None:
        """Let the retention policy decide about the root pinned as ``name``: commits."""
        self.committer.keeper.unpin(name)
        await self.commit()

    @property
    def retention(self) -> Policy:
        """The retention policy every device of the vault applies."""
        return self.committer.keeper.policy

    async def set_retention(self, policy: Policy) -> None:
        """Store ``policy`` in the vault and apply it: commits."""
        self.committer.keeper.set_policy(policy)
        await self.commit()

    async def prune(self) -> PruneResult:
        """Apply the retention policy now: commits; returns what it dropped and freed."""
        self.committer.keeper.prune_now()
        await self.commit()
        return self.committer.keeper.last_prune

    @property
    def writable(self) -> bool:
        return self.oplog.writable

    @property
    def journal(self) -> Journal | None:
        return self.oplog.journal

    # --- opening and closing ---------------------------------------------

    @classmethod
    async def load(
        cls,
        vault: Vault,
        *,
        writable: bool = True,
        force: bool = False,
        journal: Journal | None = None,
        device_name: str | None = None,
        set_aside: bool = True,
        **kw: Any,
    ) -> Filesystem:
        """Open the vault's filesystem. Costs a constant number of store requests.

        ``set_aside=False``: a journal that cannot be replayed onto the root
        it was written against raises instead of being set aside.

        A writable open takes the writer lease (raises VaultBusy if another
        client holds it), registers this client as a device of the vault
        (``device_name``, default the host name; the first one upgrades the
        root to record version 2: docs/multidevice.md), replays ``journal``
        segments that the root does not cover yet if this client made the
        root (else they are set aside: :meth:`Journal.pending`), then commits
        once to record the lease, the registration and the replay.
        """
        root = await vault.read_root()
        device_id = None
        # The journal covers only this client's changes since the root it made:
        # replayed onto another client's root they would undo that client's
        # work, so the journal applies only if the root's maker's mark is its own.
        last_mark = root.last_mark(vault.state.client_id)
        if writable:
            if root.record > RECORD_VERSION:
                raise UnsupportedVersion(
                    f"the vault's root has record version {root.record}, newer than this "
                    f"megafs writes ({RECORD_VERSION}); it can only be mounted read-only"
                )
            if not root.devices:  # version 1: an older megafs may be writing it
                vault.check_lease(root, force=force)
            device_id = vault.state.client_id
            if device_id not in root.devices:
                root = await cls._register(vault, root, device_id, device_name)
                last_mark = root.last_mark(device_id)
            root.register(device_id, device_name or socket.gethostname())
            root.lease = None
        logged = None
        if writable and journal is not None:
            assert device_id is not None
            logged = await restore_logged(vault, root, device_id, journal)
        base = cls._journal_base(vault, root, journal) if writable else None
        if base is not None:
            # Another device committed since this one's journal was written:
            # replay it onto the root it was written against, then merge.
            try:
                return await cls._open(
                    vault, base, device_id, journal, base=True, logged=logged,
                    set_aside=set_aside, **kw,
                )
            except* (RollbackError, StagedDataLost):
                # the store's fault, not the journal's (a rollback, or staged
                # blocks an fsync acknowledged that it lost): keep the journal
                raise
            except* (IntegrityError, FsError) as failed:
                if not set_aside:
                    raise
                log.warning(
                    "could not replay the journal onto this device's last root (%s); "
                    "it is set aside instead",
                    first_leaf(failed),
                )
            # The merge may have read a newer root: open the newest one.
            root = await vault.read_root()
            assert device_id is not None
            root.register(device_id, device_name or socket.gethostname())
            root.lease = None
            last_mark = (bytes(16), 0)  # names no journal: set aside
            logged = None  # and its copy in the store stays (fsck --repair collects it)
        fs = await cls._open(
            vault, root, device_id, journal, last_mark=last_mark, logged=logged,
            set_aside=set_aside, **kw,
        )
        return fs

    @staticmethod
    def _journal_base(vault: Vault, root: Root, journal: Journal | None) -> Root | None:
        """The root this device's journal was written against, if it must be
        replayed there rather than onto ``root``: another device made
        ``root``, the journal holds segments, and the local state kept a base
        that carries this device's last commit as ``root`` does."""
        me = vault.state.client_id
        mine = root.devices.get(me)
        saved = vault.state.base
        if journal is None or mine is None or saved is None:
            return None
        mark_client, mark = mine.journal or (None, 0)
        if mine.generation == root.generation or not journal.has_after(mark_client, mark):
            return None
        try:
            base = vault.open_root(saved)
        except IntegrityError:
            return None
        bm = base.devices.get(me)
        if bm is None or (bm.generation, bm.journal) != (mine.generation, mine.journal):
            return None
        base.register(me, mine.name)
        base.lease = None
        return base

    @classmethod
    async def _open(
        cls,
        vault: Vault,
        root: Root,
        device_id: bytes | None,
        journal: Journal | None,
        *,
        base: bool = False,
        last_mark: tuple[bytes, int] | None = None,
        logged: Series | None = None,
        set_aside: bool = True,
        **kw: Any,
    ) -> Filesystem:
        """Build the filesystem on ``root``; writable (``device_id``): purge
        orphans, replay the journal, merge if ``root`` is a base older than the
        store's, and commit. A record whose staged blocks the store lacks
        ends the replay (the rest set aside), unless ``set_aside`` is False
        or the device log ``logged`` holds it (an fsync acknowledged it):
        then StagedDataLost is raised."""
        writable = device_id is not None
        fs = cls(vault, root, writable=writable, device_id=device_id, **kw)
        if root.itab is not None:
            await fs.table.index.open()
        else:
            fs.namespace.make_root_dir()
        if writable:
            vault.read_only = False
            for ino in sorted(fs.namespace.orphans):
                await fs.namespace.purge_if_unused(ino)
            if journal is not None:
                if base:
                    last_mark = root.devices[vault.state.client_id].journal
                mark_client, mark = last_mark or (None, 0)
                covered = None
                if mark_client != journal.id:
                    logged = None  # the journal is set aside: its store copy stays
                    own = root.devices[vault.state.client_id].journal
                    if own is not None and own[0] == journal.id:
                        covered = own[1]  # this device's own commit holds those
                fs.replayed = await replay_journal(
                    journal, mark_client, mark, covered, fs.apply_record,
                    logged=logged, set_aside=set_aside,
                )
                if fs.replayed:
                    log.warning("applied %d journalled changes left by a previous run", fs.replayed)
                fs.oplog.journal = journal
            if base:
                await fs.committer.merge_now()
            if logged is not None:
                fs.committer.fold_series(logged)
            fs.committer.renew_lease()
            await fs.commit()
            if journal is not None and journal.borrowed:
                # Another cache folder holding that journal must never replay
                # it again over this: go on under a journal id of our own.
                journal.adopt_id(crypto.new_id())
                fs.committer.renew_lease()
                await fs.commit()
        return fs

    @staticmethod
    async def _register(
        vault: Vault, root: Root, device_id: bytes, device_name: str | None
    ) -> Root:
        """Commit this client's device record before anything is allocated
        from its prefix; a registration that loses the swap reads the newer
        root and registers again, so two devices never hold one prefix."""
        for attempt in range(MERGE_RETRIES * 2):
            new = root.copy()
            new.register(device_id, device_name or socket.gethostname())
            new.lease = None
            new.generation = vault.next_generation()
            mine = new.devices[device_id]
            mine.time_ns, mine.generation = time.time_ns(), new.generation
            try:
                await vault.commit_root(new)
                return new
            except CommitConflict:
                await trio.sleep(_JITTER.uniform(0, 0.02 * (1 << min(attempt, 6))))
                root = await vault.read_root()
                if device_id in root.devices:
                    return root
        raise CommitConflict("could not register this device: the vault changes too fast")

    async def apply_record(self, rec: list[Any]) -> None:
        """Replay one journal record (no commit). Records that no longer apply are skipped."""
        await apply_record(rec, self.namespace, self.data, self.oplog)

    def start_background(self, nursery: trio.Nursery) -> None:
        """Let the model run background work (uploads of full chunks, read-ahead,
        deletion of garbage) in ``nursery``, which must outlive every operation.
        Without it, all of that happens in commits and reads themselves."""
        self.data.start_background(nursery)
        self.collector.start(nursery)

    def stop_background(self) -> None:
        """No new background work; what runs finishes in its nursery (the
        garbage collector deletes what is queued, then ends)."""
        self.data.start_background(None)
        self.collector.stop()

    async def close(self) -> None:
        """Commit everything and delete the garbage (so a clean unmount of a
        vault no other device shares leaves no unreferenced object behind)."""
        if self.writable:
            await self.commit()
            self.oplog.writable = False
        await self.collector.drain()

    # --- lookup counts and memory -------------------------------------------

    def incref(self, ino: int, n: int = 1) -> None:
        """The kernel gained ``n`` references to ``ino`` (lookup, create, readdirplus)."""
        self.table.incref(ino, n)

    async def forget(self, ino: int, n: int) -> None:
        """The kernel dropped ``n`` references. May purge an unlinked inode."""
        if self.table.forget(ino, n):
            await self.namespace.purge_if_unused(ino)

    async def open(self, ino: int) -> Attr:
        node = await self.table.get(ino)
        self.table.opened(ino)
        return node.attr()

    async def release(self, ino: int) -> None:
        """A handle closed. May purge an unlinked inode."""
        if self.table.released(ino):
            self.data.closed(ino)
            await self.namespace.purge_if_unused(ino)

    def evict(self) -> int:
        """Forget clean inode pages beyond the table's limit; return how many
        (see :meth:`InodeTable.evict`). They load again when next needed.

        The caller guarantees that no operation is in flight: the adapter
        calls this between requests. Does nothing while anything is
        uncommitted or a commit runs.
        """
        if not self.data.quiet() or self.collector.pack_drops or self.committer.busy:
            return 0
        pages, inos = self.table.evict()
        self.data.forget(inos)
        return pages

    async def load_page(self, page: int) -> None:
        await self.table.load_page(page)

    async def load_body(self, node: Inode) -> None:
        await self.table.load_body(node)

    # --- the namespace --------------------------------------------------------

    async def getattr(self, ino: int) -> Attr:
        return await self.namespace.getattr(ino)

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
        return await self.namespace.setattr(
            ino, mode=mode, uid=uid, gid=gid, size=size, atime_ns=atime_ns, mtime_ns=mtime_ns
        )

    async def lookup(self, parent: int, name: bytes) -> Attr:
        return await self.namespace.lookup(parent, name)

    async def readdir(self, ino: int, after: int) -> list[tuple[bytes, Attr, int]]:
        return await self.namespace.readdir(ino, after)

    async def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Attr:
        return await self.namespace.mkdir(parent, name, mode, uid, gid)

    async def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Attr:
        return await self.namespace.create(parent, name, mode, uid, gid)

    async def mknod(
        self, parent: int, name: bytes, mode: int, rdev: int, uid: int, gid: int
    ) -> Attr:
        return await self.namespace.mknod(parent, name, mode, rdev, uid, gid)

    async def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Attr:
        return await self.namespace.symlink(parent, name, target, uid, gid)

    async def readlink(self, ino: int) -> bytes:
        return await self.namespace.readlink(ino)

    async def link(self, ino: int, parent: int, name: bytes) -> Attr:
        return await self.namespace.link(ino, parent, name)

    async def unlink(self, parent: int, name: bytes) -> None:
        await self.namespace.unlink(parent, name)

    async def rmdir(self, parent: int, name: bytes) -> None:
        await self.namespace.rmdir(parent, name)

    async def rename(
        self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int = 0
    ) -> None:
        await self.namespace.rename(old_parent, old_name, new_parent, new_name, flags)

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        return await self.namespace.getxattr(ino, name)

    async def listxattr(self, ino: int) -> list[bytes]:
        return await self.namespace.listxattr(ino)

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        await self.namespace.setxattr(ino, name, value, flags)

    async def removexattr(self, ino: int, name: bytes) -> None:
        await self.namespace.removexattr(ino, name)

    # --- file data ----------------------------------------------------------

    async def read(self, ino: int, offset: int, size: int) -> bytes:
        return await self.data.read(ino, offset, size)

    async def write(self, ino: int, offset: int, data: bytes) -> int:
        """Write (see :meth:`DataPath.write`). May commit when dirty data
        exceeds the limit (and so block on the store); a failed commit is
        logged and retried by the next one, the write itself stands."""
        n = await self.data.write(ino, offset, data)
        if self.data.dirty_bytes > self.dirty_limit:
            try:
                await self.commit()
            except* MegafsError as eg:
                # The write itself is applied and journalled; the commit is
                # retried by the next one (memory pressure, not this write).
                log.warning("commit over the dirty limit failed, will retry: %s", first_leaf(eg))
        return n

    async def truncate(self, ino: int, size: int) -> None:
        await self.data.truncate(ino, size)

    async def fallocate(self, ino: int, offset: int, length: int) -> None:
        await self.data.fallocate(ino, offset, length)

    # --- commits ------------------------------------------------------------

    async def fsync(self, ino: int | None = None) -> None:
        """Make everything written so far durable (see :meth:`Committer.fsync`)."""
        await self.committer.fsync()

    async def commit(self) -> bool:
        """Commit all changes (see :meth:`Committer.commit`)."""
        return await self.committer.commit()

    def has_changes(self) -> bool:
        return self.committer.has_changes()

    def on_merge(self, callback: Callable[[set[int], set[tuple[int, bytes]]], None]) -> None:
        """Call ``callback(inodes, entries)`` after each merge with another
        device's commit: the inodes whose state changed here, and the
        (folder, name) entries. Called synchronously, with no await: it must
        not block (queue the work)."""
        self.committer.on_merge.append(lambda o: callback(o.changed, o.entries))

    def known(self, ino: int) -> bool:
        """Whether the kernel holds a reference to ``ino`` (a lookup count)."""
        return ino == ROOT_INO or bool(self.table.refs.get(ino))

    async def refresh(self) -> bool:
        """Catch up with other devices' commits (see :meth:`Committer.refresh`)."""
        return await self.committer.refresh()

    def renew_lease(self) -> None:
        self.committer.renew_lease()

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
