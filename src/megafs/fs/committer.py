"""The committer: turns what changed into objects and swaps the root.

Owns: the commit lock, the snapshot (every dirty chunk, pack, body, page,
index node and pack table page, each given a fresh random object id), the
parallel upload, the compare-and-swap of the root pointer, undoing a
snapshot whose commit failed, the pack table, the writer lease renewal, and
group commit (which fsync calls a commit already covers). This is the
merge point: a commit that finds another device's root is where the two
will be reconciled.

May not touch: the store directly (objects go through the vault and
:class:`~megafs.vault.content.Content`), names or file content beyond
freezing them (the :class:`~.data.DataPath` and :class:`~.table.InodeTable`
hand their dirty state over), deleting anything (garbage goes to the
:class:`~.collector.Collector` once the new root is in).

Concurrency: trio, one thread. :meth:`Committer.commit` holds the commit
lock; the snapshot is await-free, so every operation is in it entirely or
not at all. A commit takes no inode lock.
"""

from __future__ import annotations

import time

import trio

from ..client.journal import sync_files
from ..errors import IntegrityError
from ..vault.root import Device, Root
from ..vault.tables import MetaJob, PackTable
from ..vault.vault import Vault
from .collector import Collector
from .data import ChunkJobs, DataPath, PackJob
from .oplog import OpLog
from .table import InodeTable


class _Snapshot:
    """What one snapshot made: the jobs to upload, and what to undo if its
    commit fails."""

    def __init__(self) -> None:
        self.chunk_jobs: ChunkJobs = []
        self.pack_jobs: list[PackJob] = []
        self.meta_jobs: list[MetaJob] = []
        self.pages: set[int] = set()
        self.pack_pages: set[int] = set()
        #: What the new root no longer references.
        self.garbage: list[bytes] = []


class Committer:
    """Commits one filesystem's changes to its vault."""

    def __init__(
        self,
        vault: Vault,
        root: Root,
        table: InodeTable,
        data: DataPath,
        collector: Collector,
        oplog: OpLog,
        orphans: set[int],
        *,
        device_id: bytes | None = None,
        fsync_local: bool = False,
    ) -> None:
        self.vault = vault
        self.root = root
        #: This device's id and record (root record version 2), None in a
        #: read-only filesystem: its journal mark, orphans and pack counter
        #: live there instead of in the root's version 1 fields.
        self.device_id = device_id
        self.device: Device | None = root.devices[device_id] if device_id is not None else None
        if oplog.writable and self.device is None:
            raise ValueError("a writable filesystem commits as a device: give its device_id")
        self.table = table
        self.data = data
        self.collector = collector
        self.oplog = oplog
        #: The namespace's orphan set: read here, to write it into the root.
        self.orphans = orphans
        #: ``-o fsync=local``: fsync returns once the change is durable in the
        #: local journal; the upload follows with the next periodic commit.
        self.fsync_local = fsync_local
        #: The pack table, in a vault that packs small chunks (format 2).
        self.packs: PackTable | None = (
            PackTable(
                vault,
                root.ptab,
                self.device.next_pack if self.device is not None else root.next_pack,
            )
            if vault.header.packs_small_chunks
            else None
        )
        #: The root must be written even with nothing else changed (the lease).
        self.meta_dirty = False
        self.commits = 0
        self.root_for_commit = root
        self._lock = trio.Lock()
        #: How many mutations the last successful commit covered (group commit).
        self._durable_mutations = 0
        #: with ``fsync_local``: how many mutations the journal holds durably
        self._journal_durable = 0
        self._journal_sync_lock = trio.Lock()

    @property
    def busy(self) -> bool:
        """A commit runs now."""
        return self._lock.locked()

    def renew_lease(self) -> None:
        """Make the next commit write the root even with no other change, so
        that it renews the writer lease. No await."""
        self.meta_dirty = True

    def has_changes(self) -> bool:
        return bool(
            self.table.dirty_pages
            or self.meta_dirty
            or self.data.pending
            or self.collector.pack_drops
            or (self.device is not None and sorted(self.orphans) != self.device.orphans)
        )

    async def fsync(self) -> None:
        """Make everything written so far durable in the store. Blocks on the store.

        Group commit: the call returns as soon as a commit whose snapshot was
        taken after it began has succeeded, whoever ran it. Every mutation is
        recorded (:meth:`~.oplog.OpLog.record`) right before the await-free
        section that applies it, so a snapshot taken once ``mutations``
        reached ``n`` holds the first ``n`` mutations. Calls that arrive while
        a commit is in flight queue on the commit lock (FIFO); the first of
        them commits for all of them, and the rest find their mutations
        covered and return: one root swap acknowledges every fsync that
        waited for it.

        With ``fsync_local`` (and a journal), it returns instead once the
        journal segments written since the last such call are durable on the
        local disk (fdatasync, in a worker thread); the store gets the change
        with the next periodic commit, or at unmount.
        """
        if not self.oplog.writable:
            return
        want = self.oplog.mutations
        if self._durable_mutations >= want:
            return
        journal = self.oplog.journal
        if self.fsync_local and journal is not None:
            # One sync at a time: a later call must not return while the
            # segments holding its records are still being synced by another.
            async with self._journal_sync_lock:
                if self._journal_durable >= want:
                    return
                upto = self.oplog.mutations  # every record so far is in what is taken now
                paths = journal.take_unsynced()
                try:
                    await trio.to_thread.run_sync(sync_files, journal.dir, paths)
                except BaseException:
                    journal.restore_unsynced(paths)
                    raise
                self._journal_durable = max(self._journal_durable, upto)
            return
        async with self._lock:
            if self._durable_mutations >= want:
                return
            await self._commit_locked()

    async def commit(self) -> bool:
        """Commit all changes: upload new objects, then compare-and-swap the root.

        Returns False if there was nothing to commit. Blocks on the store.
        Raises CommitConflict if another client moved the root; store errors
        propagate, and then the changes stay in memory for the next attempt.
        """
        if not self.oplog.writable:
            return False
        async with self._lock:
            return await self._commit_locked()

    async def _commit_locked(self) -> bool:
        """:meth:`commit`, with the commit lock held by the caller."""
        covers = self.oplog.mutations
        if not self.has_changes():
            self._durable_mutations = max(self._durable_mutations, covers)
            return False
        await self._load_pack_pages()
        snap = self._snapshot()
        try:
            async with trio.open_nursery() as nursery:
                for ref, pend in snap.chunk_jobs:
                    nursery.start_soon(self.data.ensure_uploaded, ref, pend)
                for job in snap.pack_jobs:
                    nursery.start_soon(self.data.upload_pack, job)
                for kind, obj_id, payload in snap.meta_jobs:
                    nursery.start_soon(self.vault.put_meta, kind, obj_id, payload)
            await self.vault.commit_root(self.root_for_commit)
        except BaseException:
            self._unsnapshot(snap)
            raise
        assert self.device is not None and self.device_id is not None  # writable: see __init__
        done = self.root_for_commit.devices[self.device_id]
        self.root.generation = self.root_for_commit.generation
        self.device.orphans = list(done.orphans)
        self.device.time_ns, self.device.generation = done.time_ns, done.generation
        self.data.committed(snap.chunk_jobs, snap.pack_jobs)
        self.commits += 1
        self._durable_mutations = max(self._durable_mutations, covers)
        mark = done.journal
        if self.oplog.journal is not None and mark is not None:
            self.oplog.journal.committed(mark[1])
        await self.collector.collect(snap.garbage)
        return True

    async def _load_pack_pages(self) -> None:
        """Make resident the pack table pages the next snapshot changes.

        Loops because chunks may be dropped while a page loads; returns
        with no await between its last check and the caller's snapshot.
        """
        if self.packs is None:
            return
        while missing := self.packs.missing_pages(
            (ref.pno for ref in self.collector.pack_drops), new=self.data.will_pack()
        ):
            for page in sorted(missing):
                await self.packs.load(page)

    def _snapshot(self) -> _Snapshot:
        """Freeze the dirty state into upload jobs and the next root. No await.

        The garbage is what the new root no longer references; what is
        retired while the upload runs is still referenced by it and waits
        for the commit after. The pack table pages the snapshot changes
        must be resident (:meth:`_load_pack_pages`).
        """
        snap = _Snapshot()
        garbage = snap.garbage = self.collector.take_retired()
        packs = self.packs
        if packs is not None:
            drops = self.collector.take_pack_drops()
            sealed_len = self.vault.layout.sealed_len
            for i, ref in enumerate(drops):
                try:
                    dead = packs.drop(ref.pno, ref.obj, sealed_len(ref.length))
                except IntegrityError:
                    self.collector.return_pack_drops(drops[i:])  # nothing is lost
                    self.collector.unretire(garbage)
                    raise
                if dead is not None:
                    garbage.append(dead)
                    self.data.dead_pack(dead)
        snap.chunk_jobs, snap.pack_jobs = self.data.freeze(packs)
        itab, snap.pages = self.table.snapshot(snap.meta_jobs, garbage)
        ptab = self.root.ptab
        if packs is not None:
            ptab, snap.pack_pages = packs.snapshot(snap.meta_jobs, garbage)
        root, dev = self.root, self.device
        assert dev is not None and self.device_id is not None  # writable: see __init__
        if root.lease is not None:
            root.lease = self.vault.my_lease()
        journal = self.oplog.journal
        if journal is not None:
            dev.journal = (journal.id, journal.rotate())
        root.itab = itab
        root.ptab = ptab
        if packs is not None:
            dev.next_pack = packs.next_pack
        new = root.copy()
        new.generation = self.vault.next_generation()
        mine = new.devices[self.device_id]
        mine.orphans = sorted(self.orphans)
        mine.time_ns, mine.generation = time.time_ns(), new.generation
        self.root_for_commit = new
        self.meta_dirty = False
        return snap

    def _unsnapshot(self, snap: _Snapshot) -> None:
        """Undo a snapshot whose commit failed: nothing it made is referenced.

        Chunks stay pending (their ids are in the live chunk maps and they are
        uploaded again next time; so do packs, whole); pages, bodies and index
        nodes are marked dirty so they get fresh objects; everything the
        snapshot made is garbage.
        """
        new_meta = {obj for _, obj, _ in snap.meta_jobs}
        self.table.unsnapshot(snap.pages, new_meta)
        if self.packs is not None:
            self.packs.dirty |= snap.pack_pages
        self.meta_dirty = True
        self.collector.unretire(snap.garbage)
        self.collector.unretire(list(new_meta))
