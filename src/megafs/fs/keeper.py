"""The keeper: the history a commit adds to and prunes (docs/history.md).

Owns: this filesystem's view of the committed history table, the retention
policy, pending pin and unpin requests, and when to apply the policy. At
each commit the committer asks it to :meth:`prepare` (async: loads the pages
and lists a commit's history changes need) and then to :meth:`stage`
(synchronous, inside the committer's await-free snapshot): add the new
root's entry with what it made (born) and what it no longer references
(dead), drop the entries the policy no longer keeps, and say which objects
that frees. The staged table becomes the committed one only once the root
is in (:meth:`committed`); a merge resets it to theirs (:meth:`reset`).

May not touch: the store (it reads through :class:`~.history.HistoryTable`),
deleting anything (freed objects go back to the committer, which hands them
to the collector), inodes, the inode table.

Concurrency: trio, one thread; called with the commit lock held, except the
request methods (:meth:`pin`, :meth:`unpin`, :meth:`set_policy`), which only
note a request.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..format.share import parse_share_pin, share_pin_expired
from ..vault.history import HIST_PAGE_BITS, RECENT_MAX, Entry, HistoryTable, Lists, fold
from ..vault.retention import Policy
from ..vault.root import Root
from ..vault.tables import MetaJob
from ..vault.vault import Vault

log = logging.getLogger(__name__)

#: Seconds between two applications of the policy by commits (a prune
#: request applies it at the next commit).
PRUNE_EVERY = 60.0
#: Entries one commit drops at most (the rest go with the next ones).
DROPS_PER_COMMIT = 32


@dataclass
class Staged:
    """One commit's history changes, kept once its root is in."""

    table: HistoryTable
    top: bytes | None
    #: the newest entries, kept in the root
    recent: list[Any] = field(default_factory=list)
    #: replaced history pages, index nodes and lists objects (no root of
    #: the history keeps them: they go at once, or after the grace period)
    garbage: list[bytes] = field(default_factory=list)
    #: objects no kept root references any more -> sealed size (0: unknown)
    freed: dict[bytes, int] = field(default_factory=dict)
    dropped: int = 0
    pruned: bool = False
    #: the requests this commit carries out (the ones made while it runs
    #: wait for the next): the pin it names, the unpins, the policy it
    #: stores, the prune request it answers, the expired share pins it drops
    pin: str | None = None
    unpins: list[str] = field(default_factory=list)
    policy: Policy | None = None
    force_seq: int = 0
    expired: list[str] = field(default_factory=list)


@dataclass
class PruneResult:
    """What the last application of the policy did."""

    dropped: int = 0
    freed: int = 0
    freed_bytes: int = 0


class Keeper:
    """A filesystem's history: entries added and dropped by its commits."""

    def __init__(self, vault: Vault, root: Root, device_id: bytes | None) -> None:
        self.vault = vault
        self.device_id = device_id
        self.table = HistoryTable(vault, root.hist, root.hist_recent)
        self.policy = root.retention or Policy()
        self._policy_set: Policy | None = None
        self._pins: list[str] = []
        self._unpins: list[str] = []
        #: share pins past their expiry, found by the prune being prepared
        self._expired: list[str] = []
        #: ids of shares whose expired pins a committed prune dropped: their
        #: pages go next (:meth:`take_released_shares`)
        self._released: list[bytes] = []
        self._last_prune = -PRUNE_EVERY
        self._force = False
        self._force_seq = 0  # prune requests so far
        self._plan: list[Entry] = []
        #: generation -> whether it holds what its successor deleted, found
        #: by this prune (written into the entries by :meth:`stage`)
        self._flags: dict[int, bool] = {}
        #: compares two kept roots (the filesystem's): does the older hold
        #: items the newer deleted? None: no trash check
        #: (None as the newer: the root being committed, whose entry the newest
        #: one is the base of)
        self.holds_deleted: Callable[[Entry, Entry | None], Awaitable[bool]] | None = None
        self._latest: Entry | None = None
        self.last_prune = PruneResult()

    # --- requests ----------------------------------------------------------

    def pin(self, name: str) -> None:
        """A coming commit's root is kept under ``name`` until unpinned (one
        pin per commit: the oldest request first; :meth:`pending` says
        whether it is still waiting)."""
        self._pins.append(name)

    def pending(self, name: str) -> bool:
        """Whether a pin of ``name`` waits for a commit."""
        return name in self._pins

    def withdraw(self, name: str) -> None:
        """Forget a pin request of ``name`` that no commit carried out."""
        if name in self._pins:
            self._pins.remove(name)

    def unpin(self, name: str) -> None:
        """The next commit unpins the root kept under ``name``."""
        self._unpins.append(name)

    def set_policy(self, policy: Policy) -> None:
        """The next commit stores ``policy`` and applies it."""
        self._policy_set = policy
        self.prune_now()

    def prune_now(self) -> None:
        """The next commit applies the policy, whenever it was last applied."""
        self._force = True
        self._force_seq += 1

    @property
    def requests(self) -> bool:
        """A request waits for a commit."""
        return bool(self._pins or self._unpins or self._policy_set or self._force)

    def due(self) -> bool:
        """Whether the next commit applies the policy: when asked to, else at
        most every :data:`PRUNE_EVERY` seconds (more often under a policy
        whose periods are shorter)."""
        policy = self._policy_set or self.policy
        every = min([PRUNE_EVERY, policy.every, *(w for w, _ in policy.tiers)])
        return self._force or time.monotonic() - self._last_prune >= every

    # --- a commit ------------------------------------------------------------

    async def entries(self) -> list[Entry]:
        """Every committed entry, oldest first."""
        return await self.table.entries()

    async def prepare(self, now_ns: int) -> None:
        """Load what :meth:`stage` needs: the newest entry's page (and index),
        and when the policy is due, every entry and the lists of those it
        drops and of their newer neighbours. Blocks on the store."""
        self._latest = await self.table.latest()
        self._plan = []
        self._expired = []
        if self.table.flush_due() or len(self.table.recent) >= RECENT_MAX - 1:
            # this commit may move the recent entries into the pages: load them
            for page in sorted(self.table.pages_to_flush()):
                await self.table.load(page)
        if not (self.due() or self._unpins):
            return
        entries = await self.table.entries()
        if not self.due():
            return
        policy = self._policy_set or self.policy
        # as the policy sees them: unpinned entries without their names
        # (and shares past their expiry: unpinned by this prune)
        now = now_ns / 1e9
        self._expired = [e.name for e in entries if e.name and share_pin_expired(e.name, now)]
        gone = {*self._unpins, *self._expired}
        seen = [
            _Plain(e.gen, e.time_ns) if e.name is not None and e.name in gone else e
            for e in entries
        ]
        keep = policy.keep([*seen, _Now(now_ns)], now_ns)
        drop = [e for e in entries if e.gen not in keep]
        drop = (await self._keep_trash(drop, entries, policy, now_ns))[:DROPS_PER_COMMIT]
        keep = {e.gen for e in entries} - {e.gen for e in drop}
        order = [e.gen for e in entries]
        for e in drop:
            await self.table.lists(e)
            later = [g for g in order if g > e.gen and g in keep]
            if later:
                nxt = next(x for x in entries if x.gen == later[0])
                await self.table.lists(nxt)
        self._plan = drop

    async def _keep_trash(
        self, drop: list[Entry], entries: list[Entry], policy: Policy, now_ns: int
    ) -> list[Entry]:
        """``drop`` less the roots that hold items their successor deleted
        and are younger than the policy's horizon: deleted items stay
        restorable that long. Each root is checked once (a comparison of
        the pages that changed between it and its successor) and the answer
        kept in its entry."""
        if self.holds_deleted is None:
            return drop
        horizon_ns = policy.horizon() * 10**9
        after = {a.gen: b for a, b in itertools.pairwise(entries)}
        out: list[Entry] = []
        checks = 0
        newest = entries[-1].gen if entries else None
        for e in drop:
            nxt = after.get(e.gen)
            if now_ns - e.time_ns >= horizon_ns:
                out.append(e)
                continue
            if nxt is None and e.gen != newest:
                continue  # (not in the listing: never happens)
            held = self._flags.get(e.gen, e.holds_deleted)
            if held is None:
                if checks >= DROPS_PER_COMMIT:
                    continue  # checked by a later commit; kept till then
                checks += 1
                held = self._flags[e.gen] = await self.holds_deleted(e, nxt)
            if not held:
                out.append(e)
        return out

    def stage(
        self,
        gen: int,
        time_ns: int,
        itab: bytes | None,
        stats: tuple[int, int],
        born: dict[bytes, int],
        dead: set[bytes],
        meta_jobs: list[MetaJob],
    ) -> Staged:
        """Add the entry of root ``gen`` and drop what :meth:`prepare` planned.

        ``born``: objects this root references that no older root did (id ->
        sealed size); ``dead``: objects the previous root referenced and this
        one does not. Appends the new history objects to ``meta_jobs``.
        Synchronous: :meth:`prepare` must have run since the last change."""
        assert self.device_id is not None
        t = self.table.copy()
        staged = Staged(t, None)
        staged.pin = self._pins[0] if self._pins else None
        staged.unpins = list(self._unpins)
        staged.policy = self._policy_set
        staged.force_seq = self._force_seq
        staged.expired = list(self._expired)
        latest = self._latest
        mine = Lists(dict(born), set(dead))
        if latest is None:
            # nothing older is kept: what this root no longer references is free
            staged.freed.update(dict.fromkeys(mine.dead, 0))
            mine = Lists({}, set())
        name = self._pins[0] if self._pins else None
        new = Entry(gen, time_ns, self.device_id, itab, stats, None, name, inline=Lists())
        gone = {*self._unpins, *self._expired}
        if name is not None or gone:
            for e in list(_all(t)):
                if e.name is not None and (e.name == name or e.name in gone):
                    t.rename(e, None)  # a name names one root
        for fgen, held in self._flags.items():
            found = t.recent.get(fgen) or t.pages.get(fgen >> HIST_PAGE_BITS, {}).get(fgen)
            if found is not None and found.holds_deleted != held:
                t.put(replace(found, holds_deleted=held))
        order = [*sorted(_all(t), key=lambda e: e.gen), new] if self._plan else [new]
        lists: dict[int, Lists] = {}
        for s in self._plan:
            pos = next((i for i, e in enumerate(order) if e.gen == s.gen), None)
            if pos is None or pos == len(order) - 1:
                continue
            n = order[pos + 1]
            s_lists = lists.get(s.gen) or _cached(t, s)
            n_lists = mine if n is new else (lists.get(n.gen) or _cached(t, n))
            if s_lists is None or n_lists is None:
                continue  # evicted meanwhile: the next commit drops it
            folded, freed = fold(s_lists, n_lists, oldest=pos == 0)
            staged.freed.update(freed)
            if s.lists is not None:
                staged.garbage.append(s.lists)
            if s.gen in lists:  # folded into by an earlier drop: its new lists go too
                del lists[s.gen]
            t.delete(s.gen)
            order.pop(pos)
            if n is new:
                mine = folded
            else:
                lists[n.gen] = folded
            staged.dropped += 1
        for g, folded in lists.items():
            e = next(x for x in order if x.gen == g)
            if e.lists is not None:
                staged.garbage.append(e.lists)
            t.put(t.with_lists(e, folded))
        t.put(Entry(gen, time_ns, self.device_id, itab, stats, None, name, inline=mine))
        staged.top = t.snapshot(meta_jobs, staged.garbage)
        staged.recent = t.recent_raw()
        staged.pruned = bool(self._plan) or self.due()
        return staged

    def committed(self, staged: Staged, root: Root) -> None:
        """The root carrying ``staged`` is in: it is the history from now on."""
        self.table = staged.table
        # only what this commit carried out: requests made while it ran wait
        if staged.pin is not None and staged.pin in self._pins:
            self._pins.remove(staged.pin)
        for name in staged.unpins:
            if name in self._unpins:
                self._unpins.remove(name)
        for name in staged.expired:
            parsed = parse_share_pin(name)
            if parsed is not None:
                self._released.append(parsed[0])
        if staged.policy is not None:
            self.policy = staged.policy
            if self._policy_set is staged.policy:
                self._policy_set = None
        if staged.pruned:
            self._last_prune = time.monotonic()
            if staged.force_seq == self._force_seq:
                self._force = False
            self.last_prune = PruneResult(
                staged.dropped, len(staged.freed), sum(staged.freed.values())
            )
            if staged.dropped:
                log.info(
                    "retention dropped %d past roots, freeing %d objects",
                    staged.dropped,
                    len(staged.freed),
                )
        self._plan = []
        self._flags = {}

    def take_released_shares(self) -> list[bytes]:
        """Ids of shares whose pins expired and were dropped by a committed
        prune since the last call (their pages are deleted next)."""
        out, self._released = self._released, []
        return out

    def policy_for(self, root: Root) -> None:
        """Write the policy a request set into ``root`` (the one being committed)."""
        if self._policy_set is not None:
            root.retention = self._policy_set

    def reset(self, root: Root) -> None:
        """A merge: theirs' history (and policy) is the committed one now."""
        cache = self.table.lists_cache
        self.table = HistoryTable(self.vault, root.hist, root.hist_recent)
        self.table.lists_cache = cache
        self.policy = root.retention or Policy()
        self._plan = []
        self._flags = {}


def _cached(t: HistoryTable, e: Entry) -> Lists | None:
    """``e``'s lists if they are at hand (inline, or loaded by prepare)."""
    if e.inline is not None:
        return e.inline
    return t.lists_cache.get(e.lists) if e.lists is not None else None


class _Now:
    """The root being committed, as the policy sees it."""

    def __init__(self, now_ns: int) -> None:
        self.gen = 1 << 62
        self.time_ns = now_ns
        self.name: str | None = None


def _all(t: HistoryTable) -> list[Entry]:
    """Every entry at hand: the recent ones and those of loaded pages."""
    return [*t.recent.values(), *(e for page in t.pages.values() for e in page.values())]


@dataclass
class _Plain:
    gen: int
    time_ns: int
    name: str | None = None


__all__ = ["DROPS_PER_COMMIT", "PRUNE_EVERY", "Keeper", "PruneResult", "Staged"]
