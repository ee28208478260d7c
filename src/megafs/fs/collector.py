"""The garbage collector: deletes objects no committed root references.

Owns: what the model *retired* since the last snapshot (objects, and shares
of packs, that the committed root still references and the next one will
not), the queue of garbage handed over by commits (and by background
uploads that turned out to be unneeded), the background task that deletes
it in batches, and the wake-ups of callers waiting for it to drain. It is
also the one place a retention policy will hook in (keeping what old roots
still need), so nothing else deletes objects of a vault being written.

It gets object ids and chunk references, and deletes through
:class:`~megafs.vault.content.Content`. Best effort: garbage left behind (a
failed delete, a crash) is harmless, and fsck lists it.

May not touch: the store or :class:`~megafs.vault.vault.Vault` (only through
Content, whose cache it tells to forget deleted objects), inodes, the inode
table, commits, the journal.

Concurrency: trio, the caller's thread. :meth:`run` is the one long-lived
task (in the mount's background nursery); without it, :meth:`collect`
deletes at once and blocks on the store.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable

import trio

from ..format import crypto
from ..vault.content import ChunkRef, Content
from ..vault.vault import obj_name

log = logging.getLogger(__name__)

#: Objects per delete batch (one S3 DeleteObjects request).
BATCH = 1000

#: Seconds garbage waits before deletion once several devices share the vault:
#: another device may still read (or merge against) the root that held it.
GRACE = 24 * 3600.0


class Collector:
    """Deletes unreferenced objects, in the background once :meth:`run` runs."""

    def __init__(self, content: Content) -> None:
        self.content = content
        self._queue: list[bytes] = []
        self._wake = trio.Event()
        self._waiters: list[trio.Event] = []  # drain() callers
        self._running = False
        self._stopping = False
        self._background = False
        #: Retired since the last snapshot: whole objects, and packed chunks
        #: (the committer updates the pack table with those).
        self._retired: list[bytes] = []
        self._retired_head: list[bytes] = []
        self.pack_drops: list[ChunkRef] = []
        #: Whether other devices share the vault (then deletion is deferred).
        self.shared: Callable[[], bool] = lambda: False
        self.grace = GRACE
        #: (time due, seconds since the epoch; object ids): garbage waiting
        #: out the grace period, oldest first.
        self._deferred: list[tuple[float, list[bytes]]] = []
        #: The file that keeps ``_deferred`` across mounts (None: memory only).
        self.persist: str | None = None
        #: Objects this filesystem made that no committed root referenced yet
        #: (a snapshot's uploads until its root is in; chunks dropped before
        #: any snapshot took them): garbage among them was never in a root,
        #: so no past root keeps it (docs/history.md).
        self.unborn: set[bytes] = set()

    # --- retiring (before a commit) ----------------------------------------

    def retire(self, obj: bytes) -> None:
        """``obj`` is garbage once the next commit is in. No await."""
        self._retired.append(obj)

    def retire_chunk(self, ref: ChunkRef, *, unborn: bool = False) -> None:
        """No chunk map references ``ref`` any more: its object (or its share
        of a pack) is garbage once the next commit is in. ``unborn``: it was
        made here and not committed yet (it may still be, by a commit in
        flight). No await."""
        if unborn and not ref.packed:
            self.unborn.add(ref.obj)
        if ref.packed:
            self.pack_drops.append(ref)
        else:
            self._retired.append(ref.obj)

    def retire_head(self, objs: list[bytes]) -> None:
        """Objects only the newest root needs (pack table and history pages):
        garbage once the next commit is in, kept by no past root. No await."""
        self._retired_head.extend(objs)

    def take_retired_head(self) -> list[bytes]:
        out, self._retired_head = self._retired_head, []
        return out

    def take_retired(self) -> list[bytes]:
        """What was retired so far, for the snapshot being taken. No await."""
        out, self._retired = self._retired, []
        return out

    def take_pack_drops(self) -> list[ChunkRef]:
        out, self.pack_drops = self.pack_drops, []
        return out

    def return_pack_drops(self, drops: list[ChunkRef]) -> None:
        """Drops a snapshot could not apply: they stay first in line."""
        self.pack_drops = drops + self.pack_drops

    def unretire(self, objs: list[bytes]) -> None:
        """A commit failed: what its snapshot retired (and made) waits for the next."""
        self._retired.extend(objs)

    def cancel(self, refs: set[object]) -> None:
        """A merge found these still referenced, or retired already by the
        device that committed first: they are not garbage of the next commit.
        ``refs`` holds chunk references and object ids. No await."""
        objs = {
            r.obj if isinstance(r, ChunkRef) else r
            for r in refs
            if not (isinstance(r, ChunkRef) and r.packed)
        }
        self._retired = [o for o in self._retired if o not in objs]
        self.pack_drops = [r for r in self.pack_drops if r not in refs]

    # --- deleting (after a commit) -----------------------------------------

    async def collect(self, garbage: list[bytes]) -> None:
        """Delete ``garbage`` (object ids): queued for the background task if
        it runs, so a commit (and the fsync waiting on it) does not wait for
        deletions; else deleted now. Cached copies are forgotten at once."""
        if not garbage:
            return
        if self.content.cache is not None:
            for obj in garbage:
                self.content.cache.forget(obj_name(obj))
        if self.shared():
            # another device may still use the root that held it: later
            due = time.time() + self.grace
            self._deferred.append((due, list(garbage)))
            self._append(due, garbage)
            self._wake.set()
            return
        if self._background and not self._stopping:
            self._queue.extend(garbage)
            self._wake.set()
            return
        await self._delete(garbage)

    async def _delete(self, garbage: list[bytes]) -> None:
        try:
            failed = await self.content.delete(garbage)
        except Exception as e:  # garbage is harmless: fsck collects it
            log.info("could not delete %d unreferenced objects: %s", len(garbage), e)
            return
        if failed:
            log.info("could not delete %d unreferenced objects, e.g. %s", len(failed), failed[0])

    def start(self, nursery: trio.Nursery) -> None:
        """Run :meth:`run` in ``nursery`` from now on."""
        self._stopping = False
        self._background = True
        nursery.start_soon(self.run)

    def stop(self) -> None:
        """Queue no more; the task deletes what is queued, then ends."""
        self._background = False
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """The background task deleting queued garbage, in batches. Ends once
        stopped and the queue is empty; wakes :meth:`drain` callers whenever
        the queue runs dry."""
        self._running = True
        try:
            while True:
                self._due()
                if not self._queue:
                    waiters, self._waiters = self._waiters, []
                    for w in waiters:
                        w.set()
                    if self._stopping:
                        if self._deferred:
                            log.info(
                                "%d unreferenced objects kept for the other devices' sake; "
                                "a later mount deletes them once their grace period is over",
                                sum(len(g) for _, g in self._deferred),
                            )
                        return
                    self._wake = trio.Event()
                    wait = min((t for t, _ in self._deferred), default=math.inf) - time.time()
                    with trio.move_on_after(max(wait, 0.0)):
                        await self._wake.wait()
                    continue
                batch, self._queue = self._queue[:BATCH], self._queue[BATCH:]
                await self._delete(batch)
        finally:
            self._running = False
            for w in self._waiters:
                w.set()

    def _due(self) -> None:
        """Deferred garbage whose grace period is over joins the queue."""
        now = time.time()
        moved = False
        while self._deferred and self._deferred[0][0] <= now:
            self._queue.extend(self._deferred.pop(0)[1])
            moved = True
        if moved:
            self._rewrite()

    # --- the deferred garbage on the local disk --------------------------------

    def load_deferred(self) -> None:
        """Take up the deferred garbage an earlier run of this device left in
        :attr:`persist` (lines it cannot read are dropped: at worst their
        objects stay until ``fsck --repair``). Synchronous file I/O."""
        if self.persist is None:
            return
        try:
            with open(self.persist) as f:
                lines = f.readlines()
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning("could not read the deferred garbage list %s: %s", self.persist, e)
            return
        for line in lines:
            try:
                rec = json.loads(line)
                due, ids = float(rec["due"]), [bytes.fromhex(x) for x in rec["ids"]]
            except (ValueError, KeyError, TypeError):
                continue
            if ids and all(len(i) == crypto.ID_SIZE for i in ids):
                self._deferred.append((due, ids))
        self._deferred.sort(key=lambda d: d[0])

    def _append(self, due: float, ids: list[bytes]) -> None:
        if self.persist is None:
            return
        try:
            with open(self.persist, "a") as f:
                f.write(json.dumps({"due": due, "ids": [i.hex() for i in ids]}) + "\n")
        except OSError as e:  # at worst a leak that fsck --repair collects
            log.info("could not note deferred garbage in %s: %s", self.persist, e)

    def _rewrite(self) -> None:
        if self.persist is None:
            return
        tmp = f"{self.persist}.tmp.{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                for due, ids in self._deferred:
                    f.write(json.dumps({"due": due, "ids": [i.hex() for i in ids]}) + "\n")
            os.replace(tmp, self.persist)
        except OSError as e:
            log.info("could not rewrite the deferred garbage list %s: %s", self.persist, e)

    @property
    def deferred(self) -> int:
        """Objects waiting out the grace period."""
        return sum(len(g) for _, g in self._deferred)

    async def drain(self) -> None:
        """Return once the garbage queued so far is deleted (or failed to be)."""
        if not self._running:
            self._due()
            batch, self._queue = self._queue, []
            if batch:
                await self._delete(batch)
            return
        done = trio.Event()
        self._waiters.append(done)
        self._wake.set()
        await done.wait()
