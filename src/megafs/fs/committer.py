"""The committer: turns what changed into objects and swaps the root.

Owns: the commit lock, the snapshot (every dirty chunk, pack, body, page,
index node and pack table page, each given a fresh random object id), the
parallel upload, the compare-and-swap of the root pointer, undoing a
snapshot whose commit failed, the pack table, the writer lease renewal,
group commit (which fsync calls a commit already covers), and this device's
log series (an fsync's one PUT, folded and deleted by the next commit:
:mod:`megafs.vault.devlog`). This is the
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

import logging
import secrets
import time
from collections.abc import Awaitable, Callable

import trio

from ..client.journal import sync_files
from ..errors import CommitConflict, IntegrityError, RollbackError, StoreError
from ..vault.devlog import Series
from ..vault.root import ROOT, Device, Root
from ..vault.tables import MetaJob, PackRecord, PackTable
from ..vault.vault import Vault, obj_name
from .collector import Collector
from .data import ChunkJobs, DataPath, PackJob
from .keeper import Keeper, Staged
from .merge import Merge
from .merge_records import Outcome
from .oplog import OpLog
from .table import InodeTable

log = logging.getLogger(__name__)

#: Backoff jitter of merge retries (the system random source: nothing here
#: uses a predictable one).
_JITTER = secrets.SystemRandom()

#: Merges one commit tries before it gives up (and retries at the next one):
#: with the backoff below, about 20 s of other devices committing without a
#: pause.
MERGE_RETRIES = 30


class _Snapshot:
    """What one snapshot made: the jobs to upload, and what to undo if its
    commit fails."""

    def __init__(self) -> None:
        self.chunk_jobs: ChunkJobs = []
        self.pack_jobs: list[PackJob] = []
        self.meta_jobs: list[MetaJob] = []
        self.pages: set[int] = set()
        self.pack_pages: set[int] = set()
        #: What the new root no longer references (and past roots may).
        self.garbage: list[bytes] = []
        #: What the new root no longer references and no past root needs:
        #: replaced pack table pages.
        self.head_garbage: list[bytes] = []
        #: Objects the new root references and no older root did.
        self.born: dict[bytes, int] = {}
        #: Garbage never referenced by a committed root (deleted at once).
        self.fresh: list[bytes] = []
        #: The history as it is once the root is in.
        self.history: Staged | None = None
        #: Pack records as they were before this snapshot's drops, the drops,
        #: and the packs they killed (with their upload jobs): undone on failure.
        self.pack_saved: dict[int, PackRecord | None] = {}
        self.drops: list[object] = []
        self.dead: list[tuple[bytes, PackJob | None]] = []
        #: The table's changed inodes this snapshot took.
        self.changed: set[int] = set()


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
        #: The root this device's state is based on: the last one it committed
        #: or merged with (a merge's base).
        self.base = root.copy()
        #: Merges done, and callbacks told of each (the kernel's caches).
        self.merges = 0
        self.on_merge: list[Callable[[Outcome], None]] = []
        #: purges an inode with no link left if nothing uses it (the namespace's)
        self.purge: Callable[[int], Awaitable[None]] | None = None
        #: the history this device's commits add to and prune
        self.keeper = Keeper(vault, root, device_id)
        self._lock = trio.Lock()
        #: How many mutations the last successful commit covered (group commit).
        self._durable_mutations = 0
        #: with ``fsync_local``: how many mutations the journal holds durably
        self._journal_durable = 0
        self._journal_sync_lock = trio.Lock()
        #: A commit whose root write got no answer (an error after it was
        #: sent, or cancelled at unmount): its snapshot and the mutations it
        #: covers, until :meth:`_resolve_doubt` finds out whether it landed.
        self._doubt: tuple[_Snapshot, int] | None = None
        #: The device log series since this device's last commit (fsync
        #: durable with one PUT: docs/concurrency.md, "The device log"), and
        #: how many mutations the objects put so far hold.
        self._series: Series | None = None
        self._logged_mutations = 0
        #: device log objects put
        self.log_puts = 0
        #: set once a log object is put, renewed by the commit that folds it
        self._logged = trio.Event()
        #: a merge met records or changes of this device that no commit has
        #: carried since: the journal's records no longer apply to one base,
        #: so fsync commits until a commit clears this
        self._merged_dirty = False
        #: this device's record was refused (RollbackError: rolled back,
        #: forked, or adopted by another machine): fsync never logs again
        self._refused = False

    @property
    def durable_mutations(self) -> int:
        """How many mutations are durable in the store (a commit or the
        device log holds them)."""
        return max(self._durable_mutations, self._logged_mutations)

    @property
    def busy(self) -> bool:
        """A commit runs now."""
        return self._lock.locked()

    async def wait_logged(self) -> None:
        """Return once a device log object is in the store that no commit
        has folded into a root yet (at once if there is one)."""
        await self._logged.wait()

    def fold_series(self, series: Series) -> None:
        """The next commit covers ``series`` (a log series read back at open)
        and deletes it. No await."""
        self._series = series

    def renew_lease(self) -> None:
        """Make the next commit write the root even with no other change, so
        that it renews the writer lease. No await."""
        self.meta_dirty = True

    def has_changes(self) -> bool:
        return bool(
            self._doubt is not None  # its changes are in no root this device knows of
            or self.table.dirty_pages
            or self.meta_dirty
            or self.data.pending
            or self.collector.pack_drops
            or self.keeper.requests
            or (self.device is not None and sorted(self.orphans) != self.device.orphans)
            or (self._series is not None and self._series.next > 0)  # to fold into a root
        )

    async def fsync(self) -> None:
        """Make everything written so far durable in the store. Blocks on the store.

        Usually one PUT: the journal's records not yet in the store go into
        the next object of this device's log series (:meth:`_log_locked`),
        which the next commit folds into the root. Otherwise (no journal, a
        tail too large to log, a commit in doubt or a merge not yet
        committed) a whole commit.

        Group commit: the call returns as soon as a log object or a commit
        whose snapshot was taken after it began has succeeded, whoever ran it. Every mutation is
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
        if self.durable_mutations >= want:
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
            if self.durable_mutations >= want:
                return
            await self._resolve_doubt()
            if not await self._log_locked():
                await self._commit_locked()

    async def _log_locked(self) -> bool:
        """Put the journal's records not yet in the store as the next object
        of this device's log series; False (nothing done) if that cannot make
        them durable and a commit must. Blocks on the store; the caller holds
        the commit lock."""
        journal, me = self.oplog.journal, self.device_id
        if journal is None or me is None or journal.overflow is not None:
            return False
        if self._merged_dirty or self._refused:  # (a commit in doubt: resolved by fsync)
            return False
        mine = self.base.devices[me]
        mark = mine.journal
        if mark is None or mark[0] != journal.id:
            return False
        series = self._series
        if series is None:
            series = Series(
                me, journal.id, mark[1], mine.generation, base_generation=self.base.generation
            )
        elif (series.mark, series.base_generation) != (mark[1], self.base.generation):
            return False  # merged since the series began, and not committed yet
        upto = self.oplog.mutations  # every record so far is in the tail taken now
        records = journal.take_tail()
        if records:
            base = self.vault.seal_root(self.base) if series.next == 0 else None
            try:
                if self.data.stager.enabled:
                    await self.vault.store.sync()  # the staged blocks records name
                await series.put(self.vault, records, base)
            except BaseException:
                journal.restore_tail(records)
                raise
            self._series = series
            self.log_puts += 1
            self._logged.set()
        self._logged_mutations = max(self._logged_mutations, upto)
        return True

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
        if self._refused:
            # Never write a root over one that refused this device's record
            # (its read moved the version tag the swap compares against).
            self._logged = trio.Event()  # nothing for the fold loop to retry
            raise RollbackError(
                ROOT,
                self.base.generation,
                self.base.generation,
                "an earlier root in the store did not hold this device's last commit "
                "(rollback, forked history, or this device was adopted by another "
                "machine); nothing more is committed until it is remounted",
            )
        covers = self.oplog.mutations
        await self._resolve_doubt()
        if not self.has_changes():
            self._durable_mutations = max(self._durable_mutations, covers)
            return False
        for attempt in range(MERGE_RETRIES + 1):
            await self._load_pack_pages()
            await self.keeper.prepare(time.time_ns())
            snap = self._snapshot()
            try:
                async with trio.open_nursery() as nursery:
                    for ref, pend in snap.chunk_jobs:
                        nursery.start_soon(self.data.ensure_uploaded, ref, pend)
                    for job in snap.pack_jobs:
                        nursery.start_soon(self.data.upload_pack, job)
                    for kind, obj_id, payload in snap.meta_jobs:
                        nursery.start_soon(self.vault.put_meta, kind, obj_id, payload)
            except BaseException:
                self._unsnapshot(snap)
                raise
            try:
                await self.vault.commit_root(self.root_for_commit)
            except CommitConflict:
                self._unsnapshot(snap)
                if attempt == MERGE_RETRIES:
                    raise CommitConflict(
                        f"other devices committed {MERGE_RETRIES + 1} times in a row while "
                        "this one merged; its changes stay in memory and in the journal "
                        "and are committed next time"
                    ) from None
                await self._merge()
                await trio.sleep(_JITTER.uniform(0, 0.02 * (1 << min(attempt, 5))))
                continue
            except BaseException:
                # The root may be in the store or not: the next commit (or
                # merge) asks the store before anything else.
                self._doubt = (snap, covers)
                raise
            break
        await self._committed(snap, covers)
        return True

    async def _committed(self, snap: _Snapshot, covers: int) -> None:
        """The root of ``snap`` is in the store: it is the base from now on,
        what it covers is durable, and what it replaced goes to the collector."""
        assert self.device is not None and self.device_id is not None  # writable: see __init__
        self.base = self.root_for_commit.copy()
        done = self.root_for_commit.devices[self.device_id]
        self.root.generation = self.root_for_commit.generation
        self.device.orphans = list(done.orphans)
        self.device.time_ns, self.device.generation = done.time_ns, done.generation
        self.data.committed(snap.chunk_jobs, snap.pack_jobs)
        self.root.hist = self.root_for_commit.hist
        self.root.hist_recent = self.root_for_commit.hist_recent
        self.root.retention = self.root_for_commit.retention
        staged = snap.history
        assert staged is not None
        self.keeper.committed(staged, self.root_for_commit)
        self.collector.unborn.difference_update(snap.born, snap.fresh)
        self.commits += 1
        self._durable_mutations = max(self._durable_mutations, covers)
        mark = done.journal
        if self.oplog.journal is not None and mark is not None:
            self.oplog.journal.committed(mark[1])
        folded, self._series = self._series, None
        self._merged_dirty = False
        if self._logged.is_set():
            self._logged = trio.Event()
        if folded is not None and folded.next:
            names = [obj_name(i) for i in folded.ids(self.vault.keys)]
            try:
                await self.vault.store.delete_many(names)
            except StoreError as e:  # leaks only: fsck --repair collects them
                log.warning("%d device log objects stay in the store: %s", len(names), e)
        await self.collector.collect(
            snap.fresh + snap.head_garbage + staged.garbage + list(staged.freed)
        )
        for share_id in self.keeper.take_released_shares():
            try:
                await self.vault.delete_page(share_id)
            except StoreError as e:  # harmless: it holds an expired manifest only
                log.warning("the page of expired share %s stays: %s", share_id.hex(), e)

    async def _resolve_doubt(self) -> None:
        """If a commit's root write got no answer, ask the store whether it
        landed (one read of the root pointer): if so, finish that commit as
        if the answer had come; if not, undo its snapshot. Until then every
        other commit or merge would take this device's own root for a
        rollback. Blocks on the store; the caller holds the commit lock."""
        if self._doubt is None:
            return
        snap, covers = self._doubt
        landed = await self.vault.attempt_landed()
        self._doubt = None
        if landed:
            log.info("the root write that got no answer had landed")
            await self._committed(snap, covers)
        else:
            self._unsnapshot(snap)

    async def refresh(self) -> bool:
        """Catch up with other devices' commits: if the root in the store is
        newer than the base, merge onto it (a fast-forward when nothing here
        changed), and if anything here is uncommitted, commit it. Returns
        whether the root moved. Blocks on the store; holds the commit lock."""
        if self.device is None:
            return False
        async with self._lock:
            await self._resolve_doubt()
            if not await self.vault.root_changed():
                return False
            await self._merge()
            if self.has_changes():
                # merged with changes here: commit them now, so that the base a
                # crash would replay the journal onto moves on at once
                await self._commit_locked()
            return True

    async def merge_now(self) -> None:
        """Merge with the newest root now, whether or not it moved (a journal
        replayed onto this device's base, at open). Blocks on the store."""
        async with self._lock:
            await self._resolve_doubt()
            await self._merge()

    async def _merge(self) -> None:
        """Another device committed first: read its root (theirs), merge this
        device's changes onto it, and make it the base. Blocks on the store.

        Refuses (RollbackError) a newer root that does not hold this device's
        own last commit as it made it: a store that rolled back or forked it.
        """
        assert self.device is not None and self.device_id is not None
        journal = self.oplog.journal
        if self.has_changes() or (journal is not None and journal.tail):
            self._merged_dirty = True
        try:
            theirs = await self.vault.read_root()
        except RollbackError:
            self._refused = True
            raise
        me, mine = theirs.devices.get(self.device_id), self.base.devices.get(self.device_id)
        if (
            me is None
            or mine is None
            or (me.generation, me.journal)
            != (
                mine.generation,
                mine.journal,
            )
        ):
            self._refused = True
            raise RollbackError(
                ROOT,
                mine.generation if mine else 0,
                theirs.generation,
                "the store served a newer root without this device's last commit "
                "(rollback or forked history)",
            )
        maker = next(
            (d for d in theirs.devices.values() if d.generation == theirs.generation), None
        )
        merge = Merge(
            vault=self.vault,
            table=self.table,
            data=self.data,
            content=self.data.content,
            collector=self.collector,
            packs=self.packs,
            orphans=self.orphans,
            base=self.base,
            theirs=theirs,
            device_id=self.device_id,
            device=self.device,
        )
        for _ in range(16):
            await merge.prepare()
            outcome = merge.apply(maker.name if maker is not None else "another device")
            if outcome is not None:
                break
        else:
            raise CommitConflict("the vault changes faster than this device can merge")
        base_dev = self.base.devices[self.device_id]
        if self.packs is not None:
            for page in merge.ptpages & set(self.packs.pages):
                recs = dict(merge.ptheirs_pages[page])
                for pno, rec in self.packs.pages[page].items():
                    if self.device.owns(pno) and pno >= base_dev.next_pack:
                        recs[pno] = rec
                self.packs.pages[page] = recs
            self.packs.index = merge.ptheirs
        root = self.root
        delta = [a - b for a, b in zip(root.stats, self.base.stats, strict=True)]
        root.stats[:] = [
            t + d + x for t, d, x in zip(theirs.stats, delta, merge.root_stats_delta, strict=True)
        ]
        root.generation = theirs.generation
        root.itab, root.ptab = theirs.itab, theirs.ptab
        root.next_ino, root.next_pack = theirs.next_ino, theirs.next_pack
        root.orphans, root.journal, root.lease = list(theirs.orphans), theirs.journal, None
        root.hist, root.retention = theirs.hist, theirs.retention
        root.hist_recent = list(theirs.hist_recent)
        self.keeper.reset(theirs)
        for k, d in theirs.devices.items():
            if k != self.device_id:
                root.devices[k] = d.copy()
        self.base = theirs.copy()
        if not self.has_changes():
            # A crash from here on replays (nothing) onto theirs. With changes
            # here, the journal holds records against the old base: that stays
            # the base a crash replays onto until the next commit.
            self.vault.keep_base()
        self.merges += 1
        log.info(
            "merged with %s's commit (generation %d): %d inodes, %d conflict copies",
            maker.name if maker else "another device",
            theirs.generation,
            len(outcome.changed),
            len(outcome.conflicts),
        )
        if self.purge is not None:
            for ino in sorted(outcome.orphans):
                await self.purge(ino)
        for cb in self.on_merge:
            cb(outcome)

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
        self.data.end_stages()  # (their garbage is this commit's: it covers their records)
        garbage = snap.garbage = self.collector.take_retired()
        packs = self.packs
        snap.changed, self.table.changed = self.table.changed, set()
        if packs is not None:
            drops = self.collector.take_pack_drops()
            snap.drops = list(drops)
            sealed_len = self.vault.layout.sealed_len
            for ref in drops:
                if ref.pno not in snap.pack_saved:
                    snap.pack_saved[ref.pno] = packs.save(ref.pno)
                if len(self.root.devices) > 1 and packs.save(ref.pno) is None:
                    # Another device's commit dropped this pack's last chunk
                    # already (a merge let both count one reference): it is
                    # gone, there is nothing left to count. fsck checks that
                    # no chunk map still names it.
                    log.warning("pack %d was already deleted by another device", ref.pno)
                    continue
                try:
                    dead = packs.drop(ref.pno, ref.obj, sealed_len(ref.length))
                except IntegrityError:
                    self._undo_drops(snap)  # nothing is lost
                    dead_objs = {obj for obj, _ in snap.dead}
                    self.collector.unretire([g for g in garbage if g not in dead_objs])
                    self.table.changed |= snap.changed
                    raise
                if dead is not None:
                    garbage.append(dead)
                    snap.dead.append((dead, self.data.dead_pack(dead)))
        snap.chunk_jobs, snap.pack_jobs = self.data.freeze(packs)
        itab, snap.pages = self.table.snapshot(snap.meta_jobs, garbage)
        sealed_len = self.vault.layout.sealed_len
        born = snap.born
        for ref, _ in snap.chunk_jobs:
            born[ref.obj] = sealed_len(ref.length)
        for job in snap.pack_jobs:
            born[job.obj] = sum(sealed_len(ref.length) for ref, _ in job.parts)
        for _, obj, _ in snap.meta_jobs:
            born[obj] = 0
        snap.head_garbage = self.collector.take_retired_head()
        ptab = self.root.ptab
        if packs is not None:
            ptab, snap.pack_pages = packs.snapshot(snap.meta_jobs, snap.head_garbage)
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
        # What was never in a committed root goes at once; what the last
        # root held is kept by the history as long as a kept root needs it.
        unborn = self.collector.unborn
        unborn.update(born)  # (not |= born.keys(): that makes a new set)
        snap.fresh = [g for g in garbage if g in unborn]
        dead_objs = {g for g in garbage if g not in unborn}
        snap.history = self.keeper.stage(
            new.generation,
            mine.time_ns,
            itab,
            (new.stats[0], new.stats[1]),
            born,
            dead_objs,
            snap.meta_jobs,
        )
        unborn.update(obj for _, obj, _ in snap.meta_jobs)
        new.hist, new.hist_recent = snap.history.top, snap.history.recent
        self.keeper.policy_for(new)
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
        self.table.changed |= snap.changed
        if self.packs is not None:
            self.packs.dirty |= snap.pack_pages
        self.meta_dirty = True
        dead = {obj for obj, _ in snap.dead}
        self._undo_drops(snap)
        self.collector.unretire([g for g in snap.garbage if g not in dead])
        self.collector.unretire(list(new_meta))
        self.collector.retire_head(snap.head_garbage)

    def _undo_drops(self, snap: _Snapshot) -> None:
        """Pack records as before the snapshot's drops; the drops wait again."""
        if self.packs is None or not snap.drops:
            return
        self.packs.restore(snap.pack_saved)
        for obj, job in snap.dead:
            if job is not None:
                self.data.pending_packs[obj] = job
        self.collector.return_pack_drops(snap.drops)  # type: ignore[arg-type]
