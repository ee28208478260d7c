"""The merge rules (docs/multidevice.md, the merge table), applied with no
await once :class:`~.merge.Merge` has loaded both sides: entries name by
name, records field by field, conflict copies, edit against delete, moves
and cycles, link counts, which objects each merged record keeps, and the
rebase of the resident table onto theirs.

May not touch: the store (everything it reads was loaded by
:meth:`Merge.prepare`), the root pointer, the journal, deleting objects
(references go to the collector).
"""

from __future__ import annotations

import collections
from typing import Any, Protocol

from sortedcontainers import SortedDict  # type: ignore[import-untyped]

from ..format import crypto
from ..vault.content import ChunkRef
from ..vault.root import Device, Root
from ..vault.tables import PAGE_BITS, RadixIndex
from ..vault.vault import Vault
from .collector import Collector
from .data import DataPath
from .inode import ROOT_INO, Inode
from .merge_records import (
    Entries,
    Outcome,
    assign,
    clone,
    conflict_name,
    content_of,
    refs_of,
    same_record,
)
from .table import InodeTable


class Side(Protocol):
    """One root's inode table as the loader holds it (:class:`~.merge.View`)."""
    index: RadixIndex
    pages: dict[int, dict[int, Inode]]

    def peek(self, ino: int) -> Inode | None: ...
    def has(self, ino: int) -> bool: ...


class Loaded(Protocol):
    """What :class:`Rules` reads from :class:`~.merge.Merge`: both sides,
    the table, and what ``prepare`` read."""
    vault: Vault
    table: InodeTable
    data: DataPath
    collector: Collector
    orphans: set[int]
    theirs: Root
    device_id: bytes
    device: Device
    @property
    def bv(self) -> Side: ...

    @property
    def tv(self) -> Side: ...

    tpages: set[int]
    identical: set[int]
    identical_pairs: set[tuple[int, int]]
    theirs_data: dict[int, bytes]
    copies: dict[tuple[int, int], bytes]
    root_stats_delta: list[int]

    def ours_changed(self) -> set[int]: ...


class Rules:
    """The merge rules, applied once: the working state of one :meth:`Merge.apply`."""

    def __init__(self, m: Loaded, their_name: str) -> None:
        self.m = m
        self.their_name = their_name
        self.when = m.theirs.devices.get(self._their_maker(), m.device).time_ns
        self.table = m.table
        self.O = m.ours_changed()
        self.T: set[int] = set()
        for page in m.tpages:
            bp, tp = m.bv.pages[page], m.tv.pages[page]
            for ino in set(bp) | set(tp):
                if not same_record(bp.get(ino), tp.get(ino)):
                    self.T.add(ino)
        #: merged records of the inodes whose merged state is not theirs'
        self.merged: dict[int, Inode | None] = {}
        #: merged entries of folders whose entries are not theirs'
        self.dirs: dict[int, Entries] = {}
        self.outcome = Outcome()
        #: files both sides changed: theirs' version becomes a conflict copy
        self.conflict_copies: set[int] = set()
        #: per child inode: names in the merged folders, names in theirs'
        #: versions of those folders, and where (see :meth:`_put_dir`)
        self._mcount: collections.Counter[int] = collections.Counter()
        self._tcount: collections.Counter[int] = collections.Counter()
        self._where: dict[int, set[tuple[int, bytes]]] = {}
        #: theirs' files dropped as duplicates of ours' (identical content)
        self.dropped: set[int] = set()

    def _their_maker(self) -> bytes:
        gen = self.m.theirs.generation
        for k, d in self.m.theirs.devices.items():
            if d.generation == gen:
                return k
        return self.m.device_id

    # --- sides ---
    def b(self, ino: int) -> Inode | None:
        return self.m.bv.peek(ino)

    def t(self, ino: int) -> Inode | None:
        return self.m.tv.peek(ino)

    def o(self, ino: int) -> Inode | None:
        if ino in self.O:
            return self.table.peek(ino)
        return self.b(ino) if self.m.bv.has(ino) else self.table.peek(ino)

    def cur(self, ino: int) -> Inode | None:
        """The merged record so far."""
        if ino in self.merged:
            return self.merged[ino]
        return self.t(ino)

    def entries(self, d: int) -> Entries | None:
        if d in self.dirs:
            return self.dirs[d]
        n = self.cur(d)
        return n.entries if n is not None and n.is_dir else None

    def _is_dir(self, ino: int) -> bool:
        for n in (self.cur(ino), self.o(ino), self.b(ino)):
            if n is not None:
                return n.is_dir
        return False

    def _edit(self, d: int) -> Entries:
        if d not in self.dirs:
            e = self.entries(d)
            self._put_dir(d, dict(e) if e is not None else {})
        return self.dirs[d]

    # The merged folders' entries are indexed by child, so that counting an
    # inode's names costs what it has, not the size of the merge.
    def _put_dir(self, d: int, ents: Entries) -> None:
        """Make ``ents`` the merged entries of folder ``d``."""
        old = self.dirs.get(d)
        if old is None:
            te = self.t(d)
            if te is not None and te.is_dir:
                for c, _ in te.entries.values():
                    self._tcount[c] += 1
        else:
            for name, (c, _) in old.items():
                self._uncount(d, name, c)
        self.dirs[d] = ents
        for name, (c, _) in ents.items():
            self._count(d, name, c)

    def _count(self, d: int, name: bytes, c: int) -> None:
        self._mcount[c] += 1
        self._where.setdefault(c, set()).add((d, name))

    def _uncount(self, d: int, name: bytes, c: int) -> None:
        self._mcount[c] -= 1
        self._where.get(c, set()).discard((d, name))

    def _next_cookie(self, d: int) -> int:
        c = 3
        for n in (self.t(d), self.o(d), self.b(d)):
            if n is not None and n.is_dir:
                c = max(c, n.next_cookie)
        for _, (_, ck) in self._edit(d).items():
            c = max(c, ck + 1)
        return c

    def _set(self, d: int, name: bytes, ino: int) -> None:
        ents = self._edit(d)
        cookie = self._next_cookie(d)
        old = ents.get(name)
        if old is not None:
            self._uncount(d, name, old[0])
        ents[name] = (ino, cookie)
        self._count(d, name, ino)
        self.outcome.entries.add((d, name))

    def _unset(self, d: int, name: bytes) -> None:
        old = self._edit(d).pop(name, None)
        if old is not None:
            self._uncount(d, name, old[0])
            self.outcome.entries.add((d, name))

    # --- the steps ---
    def run(self) -> None:
        self._records()
        self._entries()
        self._duplicate_moves()
        self._resurrect()
        self._dangling()
        self._cycles()
        self._folders_once()
        self._links()
        self._account()
        self._rebase()

    def _records(self) -> None:
        """Per inode: attributes per field, xattrs per name, content by the rules."""
        for ino in sorted(self.O):
            o, b, t = self.table.peek(ino), self.b(ino), self.t(ino)
            if ino not in self.T:
                self.merged[ino] = o
                continue
            if o is None or t is None:
                self.merged[ino] = o  # deletions: settled with the entries
                continue
            if b is not None:
                for f in ("mode", "uid", "gid", "atime", "mtime", "ctime"):
                    if getattr(o, f) == getattr(b, f):
                        setattr(o, f, getattr(t, f))
                for k in set(b.xattrs) | set(t.xattrs):
                    if o.xattrs.get(k) == b.xattrs.get(k):
                        if k in t.xattrs:
                            o.xattrs[k] = t.xattrs[k]
                        else:
                            o.xattrs.pop(k, None)
            if o.is_reg and b is None and t.is_reg and ino in self.m.theirs_data:
                if ino not in self.m.identical:
                    self.conflict_copies.add(ino)  # no base: both are versions
            elif o.is_reg and b is not None and t.is_reg:
                ours_c, theirs_c = content_of(o) != content_of(b), content_of(t) != content_of(b)
                if theirs_c and not ours_c:
                    self._take_content(o, t)
                elif theirs_c and ours_c and ino not in self.m.identical:
                    self.conflict_copies.add(ino)  # made once the entries are merged
            self.merged[ino] = o

    def _take_content(self, o: Inode, t: Inode) -> None:
        """Ours changed only attributes: theirs' content."""
        o.size, o.small, o.chunks = t.size, t.small, dict(t.chunks)
        o.body_ref = t.body_ref
        o.body_dirty = t.body_ref is None
        o.take_key(t)

    def _entries(self) -> None:
        """Folders ours changed: ours' changes since base applied on theirs."""
        for d in sorted(self.O):
            o, b = self.table.peek(d), self.b(d)
            if not ((o is not None and o.is_dir) or (b is not None and b.is_dir)):
                continue
            eo = o.entries if o is not None and o.is_dir else {}
            eb = b.entries if b is not None and b.is_dir else {}
            t = self.t(d)
            if t is not None and t.is_dir and d not in self.T:
                self._put_dir(d, dict(eo))  # theirs did not change it: ours as it is
                continue
            self._put_dir(d, dict(t.entries) if t is not None and t.is_dir else {})
            for name in sorted(set(eo) | set(eb)):
                x = eb[name][0] if name in eb else None
                y = eo[name][0] if name in eo else None
                if x == y:
                    continue
                cur = self.entries(d) or {}
                z = cur[name][0] if name in cur else None
                if y is None:
                    if z == x and z is not None:
                        self._unset(d, name)
                    continue
                if z in (x, None, y):
                    if z != y:
                        self._set(d, name, y)
                    continue
                # both put something different under one name
                self._set(d, name, y)
                if self._identical_files(y, z):
                    self.dropped.add(z)  # the same file twice: one is enough
                    continue
                taken = self._edit(d)
                cname = conflict_name(name, self.their_name, self.when, taken)
                self._set(d, cname, z)
                self.outcome.conflicts.append((d, cname, z))

    def _identical_files(self, a: int, b: int) -> bool:
        if (a, b) in self.m.identical_pairs:
            return True
        # ours' record if ours changed it, else the merged one (theirs'): an
        # unchanged view of it here may be older than theirs
        oa = self.table.peek(a) if a in self.O else self.cur(a)
        tb = self.t(b)
        if oa is None or tb is None or not (oa.is_reg and tb.is_reg):
            return False
        if oa.size != tb.size or oa.dirty:
            return False
        if oa.size == 0:
            return True
        return oa.small is not None and tb.small is not None and oa.small == tb.small

    def _adds_removes(
        self, side: str
    ) -> tuple[dict[int, list[tuple[int, bytes]]], dict[int, int]]:
        """Entries ``side`` ("o" or "t") added since base, by child; and the
        children it removed an entry of."""
        adds: dict[int, list[tuple[int, bytes]]] = {}
        rems: dict[int, int] = {}
        dirs = self.O if side == "o" else self.T
        for d in sorted(dirs):
            n = self.table.peek(d) if side == "o" else self.t(d)
            b = self.b(d)
            en = n.entries if n is not None and n.is_dir else {}
            eb = b.entries if b is not None and b.is_dir else {}
            if not ((n is not None and n.is_dir) or (b is not None and b.is_dir)):
                continue
            for name in set(en) | set(eb):
                x = eb[name][0] if name in eb else None
                y = en[name][0] if name in en else None
                if x == y:
                    continue
                if y is not None:
                    adds.setdefault(y, []).append((d, name))
                if x is not None:
                    rems[x] = rems.get(x, 0) + 1
                if side == "t":  # the kernel's cached names (even negative) are stale
                    self.outcome.entries.add((d, name))
        return adds, rems

    def _duplicate_moves(self) -> None:
        """One entry renamed differently on both sides: ours wins. A folder
        both sides linked somewhere new keeps only ours' place."""
        self.adds_o, self.rems_o = self._adds_removes("o")
        adds_t, rems_t = self._adds_removes("t")
        for x, places in adds_t.items():
            if x not in self.adds_o:
                continue
            if self._is_dir(x):
                drop = list(places)  # a folder has one place: ours'
            else:
                # as many of theirs' new names as theirs removed old ones
                # (renames; new hard links stay)
                drop = sorted(places)[: min(rems_t.get(x, 0), self.rems_o.get(x, 0))]
            for d, name in drop:
                e = self.entries(d)
                ours_place = (d, name) in self.adds_o[x]
                if e is not None and name in e and e[name][0] == x and not ours_place:
                    self._unset(d, name)

    def _links_of(self, ino: int) -> int:
        """How many entries name ``ino`` in the merged tree."""
        t = self.t(ino)
        n = 0
        if t is not None:
            n = (1 if t.nlink > 0 else 0) if t.is_dir else t.nlink
            if ino == ROOT_INO:
                return 1
        return n + self._mcount[ino] - self._tcount[ino]

    def _alive_dir(self, d: int) -> bool:
        n = self.cur(d)
        return n is not None and n.is_dir and (d == ROOT_INO or self._links_of(d) > 0)

    def _base_place(self, ino: int) -> tuple[int, bytes] | None:
        for d in sorted(self.O | self.T):
            b = self.b(d)
            if b is not None and b.is_dir:
                for name, (c, _) in b.entries.items():
                    if c == ino:
                        return d, name
        return None

    def _relink(self, ino: int, depth: int = 0) -> None:
        """Put ``ino`` back where base had it (its folder restored first if it
        is gone); under a conflict name if that name is taken; at the top of
        the vault if its place is unknown."""
        place = self._base_place(ino)
        if place is None or depth > 64:
            d, name = ROOT_INO, b"recovered " + str(ino).encode()
        else:
            d, name = place
            if not self._alive_dir(d):
                rec = self.cur(d) or self.t(d) or self.table.peek(d) or self.b(d)
                if rec is not None and rec.is_dir and self.merged.get(d) is None:
                    self.merged[d] = rec
                    self.O.add(d)
                if rec is None or not rec.is_dir:
                    d, name = ROOT_INO, name
                else:
                    self._relink(d, depth + 1)
        ents = self._edit(d)
        if name in ents:
            name = conflict_name(name, self.their_name, self.when, ents)
        self._set(d, name, ino)

    def _resurrect(self) -> None:
        """Edit against delete: the edit wins. A folder one side deleted and the
        other added to survives with what was added. An inode ours deleted
        that theirs still names (a link or a new name of its own) stays."""
        for ino, node in list(self.merged.items()):
            t = self.t(ino)
            if node is None and t is not None and self._links_of(ino) > 0:
                self.merged[ino] = t
        for ino in sorted(self.O | self.T):
            if ino == ROOT_INO or ino in self.dropped or self._links_of(ino) > 0:
                continue
            o, b, t = self.table.peek(ino) if ino in self.O else None, self.b(ino), self.t(ino)
            keep: Inode | None = None
            if o is not None and self._changed_content(o, b) and self._live(o):
                keep = o
            elif t is not None and ino in self.T and self._changed_content(t, b) and self._live(t):
                keep = t
                if o is None:
                    self.merged[ino] = t  # ours deleted it: theirs' record comes back
            if keep is None:
                continue
            if b is None and keep is o:
                continue  # new here: its own folder's entry holds it, or ours dropped it
            self._relink(ino)

    def _dangling(self) -> None:
        """A name ours gave (a rename) to an inode theirs deleted, unedited
        here: the delete wins, the name goes."""
        for d in sorted(self.dirs):
            for name, (c, _) in sorted(self.dirs[d].items()):
                if not self._exists(c):
                    self._unset(d, name)

    def _exists(self, ino: int) -> bool:
        """Whether ``ino`` has a record in the merged tree."""
        if ino in self.merged:
            return self.merged[ino] is not None
        if (ino >> PAGE_BITS) in self.m.tpages:
            return self.t(ino) is not None
        return True  # a page theirs did not change: as base, as here

    @staticmethod
    def _live(n: Inode) -> bool:
        return n.nlink > 0

    def _changed_content(self, n: Inode, b: Inode | None) -> bool:
        if b is None:
            return True
        if n.is_dir:
            return any(
                name not in b.entries or b.entries[name] != e for name, e in n.entries.items()
            )
        return bool(content_of(n) != content_of(b))

    def _parent(self, ino: int) -> int | None:
        where = self._where.get(ino)
        if where:
            return min(where)[0]
        t = self.t(ino)
        if t is not None and t.is_dir and self._links_of(ino) > 0:
            return t.parent
        return None

    def _cycles(self) -> None:
        """Moves that would form a cycle: ours' move of the folder is undone."""
        for x in sorted(self.adds_o):
            if not self._is_dir(x):
                continue
            seen = {x}
            cur = self._parent(x)
            cycle = False
            for _ in range(4096):
                if cur is None or cur == ROOT_INO:
                    break
                if cur in seen:
                    cycle = True
                    break
                seen.add(cur)
                cur = self._parent(cur)
            if not cycle:
                continue
            for d, name in self.adds_o[x]:
                e = self.entries(d)
                if e is not None and name in e and e[name][0] == x:
                    self._unset(d, name)
            self._relink(x)

    def _folders_once(self) -> None:
        """A folder has one name: where both sides put it somewhere (a move
        and a conflict name, say), ours' place is kept, else the first."""
        places: dict[int, list[tuple[int, bytes]]] = {}
        for d in sorted(self.dirs):
            for name, (c, _) in sorted(self.dirs[d].items()):
                if self._is_dir(c):
                    places.setdefault(c, []).append((d, name))
        for c, ps in sorted(places.items()):
            if len(ps) < 2:
                continue
            ours = [p for p in ps if p in self.adds_o.get(c, [])]
            keep = ours[0] if ours else ps[0]
            for d, name in ps:
                if (d, name) != keep:
                    self._unset(d, name)

    def _links(self) -> None:
        """Link counts, folder parents and subfolder counts from the merged entries."""
        # every merged record (ours' link count may predate theirs' links)
        affected: set[int] = {i for i, n in self.merged.items() if n is not None}
        for d, ents in self.dirs.items():
            affected |= {c for c, _ in ents.values()}
            te = self.t(d)
            if te is not None and te.is_dir:
                affected |= {c for c, _ in te.entries.values()}
            affected.add(d)
        for ino in sorted(affected):
            rec = self.cur(ino)
            if (
                ino not in self.merged
                and rec is not None
                and (
                    ino in self.dirs
                    or self._links_of(ino)
                    != ((1 if rec.nlink > 0 else 0) if rec.is_dir else rec.nlink)
                )
            ):
                rec = self._own(ino)
            if rec is None:
                continue
            if rec.is_dir:
                ents = self.entries(ino) or {}
                if ino in self.dirs:
                    rec = self._own(ino)
                    rec.entries = dict(ents)
                    rec.order = SortedDict({c: n for n, (_, c) in ents.items()})
                    rec.next_cookie = max([rec.next_cookie, *(c + 1 for _, c in ents.values())])
                    rec.body_dirty = True
                links = self._links_of(ino)
                nlink = (2 + self._subdirs(ino, ents)) if (links > 0 or ino == ROOT_INO) else 0
                parent = self._parent(ino)
                if nlink != rec.nlink or (parent is not None and parent != rec.parent):
                    rec = self._own(ino)
                    rec.nlink = nlink
                    if parent is not None and parent != rec.parent:
                        rec.parent = parent
                        rec.body_dirty = True
            else:
                links = self._links_of(ino)
                if links != rec.nlink:
                    self._own(ino).nlink = max(links, 0)

    def _subdirs(self, d: int, ents: Entries) -> int:
        """Subfolders of ``d`` in the merged tree: a side's count, corrected by
        the names that differ from that side (their inodes are loaded: a side
        changed them); children nobody touched need not be loaded."""
        for ref in (self.t(d), self.table.peek(d) if d in self.O else None, self.b(d)):
            if ref is not None and ref.is_dir:
                break
        else:
            return sum(1 for c, _ in ents.values() if self._is_dir(c))
        n = ref.nlink - 2 if ref.nlink >= 2 else 0
        if ref.nlink < 2:  # a side's deleted folder: count what it named
            n = sum(1 for c, _ in ref.entries.values() if self._is_dir(c))
        for name in set(ents) | set(ref.entries):
            new = ents[name][0] if name in ents else None
            old = ref.entries[name][0] if name in ref.entries else None
            if new != old:
                n += (new is not None and self._is_dir(new)) - (
                    old is not None and self._is_dir(old)
                )
        return max(n, 0)

    def _own(self, ino: int) -> Inode:
        """The merged record of ``ino`` as one this merge may change: ours'
        object if ours has it resident, else a copy of theirs'."""
        if ino in self.merged and self.merged[ino] is not None:
            n = self.merged[ino]
            assert n is not None
            return n
        res = self.table.peek(ino)
        t = self.t(ino)
        src = t if t is not None else (res if res is not None else self.b(ino))
        assert src is not None, ino
        if res is not None and res is not src:
            assign(res, src)
            node = res
        else:
            node = clone(src, ino)
        self.merged[ino] = node
        return node

    def _account(self) -> None:
        """Which objects each merged file keeps; conflict copies made.

        Invariants after the merge: each chunk reference and body object is
        held by one record; pack live counts (theirs' tables) count each
        reference once; a base object theirs retired is never referenced again
        (ours' files keep its content as a new chunk, stored afresh)."""
        m = self.m
        cancel: set[Any] = set()
        drop: list[Any] = []
        for ino in sorted(set(self.O) | set(self.merged)):
            b, t = self.b(ino), self.t(ino)
            if b is None or ino not in self.O:
                continue  # new since base, or ours did not change it: nothing to settle
            o = self.table.peek(ino)
            merged = self.merged.get(ino, o)
            if merged is t and t is not None and o is None:
                # ours deleted it, the merge keeps theirs' record (renamed,
                # linked or edited there): none of its objects is garbage
                cancel |= refs_of(b)
                continue
            if t is not None and content_of(t) == content_of(b) and t.body_ref == b.body_ref:
                continue  # theirs holds what base held: ours' retirements stand
            rb, rt = refs_of(b), refs_of(t)
            # theirs' version kept as it is (ours deleted it, theirs edited):
            # a conflict copy is not that, it gets objects of its own
            keep_t = merged is t and t is not None
            if merged is not None and merged is not t:
                # ours' version: base objects it shares with a kept theirs, or
                # that theirs dropped, are stored afresh
                for idx, ref in list(merged.chunks.items()):
                    if ref in rb and (keep_t or ref not in rt):
                        data = m.copies.get((ino, idx))
                        if data is None:
                            continue
                        merged.chunks.pop(idx)
                        m.data.adopt(merged, idx, bytearray(data))
                if (
                    merged.body_ref is not None
                    and merged.body_ref in rb
                    and (keep_t or merged.body_ref not in rt)
                ):
                    merged.body_ref = None
                    merged.body_dirty = True
            cancel |= {r for r in rb if keep_t or r not in rt}
            if not keep_t:
                ro = refs_of(merged)
                drop += [r for r in rt - rb - ro]
        for ino in sorted(self.conflict_copies):
            t = self.t(ino)
            assert t is not None
            copy_ino = self._new_ino()
            node = clone(t, copy_ino)
            node.nlink = 1
            node.body_dirty = True
            node.body_ref = None  # a body object of its own
            # its own key, id and chunks: theirs' objects go with theirs' version
            node.file_id = crypto.new_id()
            node.file_key = crypto.random_bytes(crypto.KEY_SIZE)
            node.wrapped_key = None
            node.chunks, node.small = {}, None
            data = m.theirs_data[ino]
            cs = m.vault.layout.chunk_size
            for off in range(0, len(data), cs):
                m.data.adopt(node, off // cs, bytearray(data[off : off + cs]))
            self.merged[copy_ino] = node
            d, name = self._place_of(ino)
            cname = conflict_name(name, self.their_name, self.when, self._edit(d))
            self._set(d, cname, copy_ino)
            parent = self._own(d)
            parent.entries = dict(self._edit(d))
            parent.order = SortedDict({c: n for n, (_, c) in parent.entries.items()})
            parent.next_cookie = max(
                [parent.next_cookie, *(c + 1 for _, c in parent.entries.values())]
            )
            parent.body_dirty = True
            self.outcome.conflicts.append((d, cname, copy_ino))
            m.root_stats_delta[0] += 1
            m.root_stats_delta[1] += t.size
        m.collector.cancel(cancel)
        for r in drop:
            if isinstance(r, ChunkRef):
                m.collector.retire_chunk(r)
            else:
                m.collector.retire(r)

    def _place_of(self, ino: int) -> tuple[int, bytes]:
        where = self._where.get(ino)
        if where:
            return min(where)
        hint = self.table.names.get(ino)
        if hint is not None:
            d, name = hint
            e = self.entries(d)
            if e is not None and e.get(name, (None,))[0] == ino:
                return d, name
        return ROOT_INO, str(ino).encode()

    def _new_ino(self) -> int:
        dev = self.m.device
        ino = dev.next_ino
        dev.next_ino += 1
        return ino

    def _rebase(self) -> None:
        """Make the resident table ours-on-theirs, its index theirs'."""
        m, table = self.m, self.table
        table.index = m.tv.index
        table.epoch += 1
        for ino, node in self.merged.items():
            self.outcome.changed.add(ino)
            page = ino >> PAGE_BITS
            if node is None:
                if ino in table.inodes:
                    del table.inodes[ino]
                    table.page_members.get(page, set()).discard(ino)
                table.dirty_pages.add(page)
                continue
            if table.peek(ino) is not node:
                if page not in table.page_members:
                    # load theirs' page first: its other records stay theirs'
                    for k, rec in m.tv.pages.get(page, {}).items():
                        if k not in self.merged:
                            table.inodes[k] = clone(rec, k)
                    table.page_members[page] = set(m.tv.pages.get(page, {}))
                    table._page_lru[page] = None
                table.inodes[ino] = node
                table.page_members[page].add(ino)
            table.dirty_pages.add(page)
            table.changed.add(ino)
        # pages theirs changed: records ours did not change become theirs'
        for page in m.tpages:
            if page not in table.page_members:
                continue
            tp = m.tv.pages[page]
            members = table.page_members[page]
            for ino in list(members):
                if ino in self.merged:
                    continue
                if ino not in tp:
                    del table.inodes[ino]
                    members.discard(ino)
                    self.outcome.changed.add(ino)
                else:
                    res = table.inodes[ino]
                    if not same_record(res, tp[ino]):
                        assign(res, tp[ino])
                        self.outcome.changed.add(ino)
            for ino, rec in tp.items():
                if ino not in members and ino not in self.merged:
                    table.inodes[ino] = clone(rec, ino)
                    members.add(ino)
                    self.outcome.changed.add(ino)
        # orphans: merged inodes left without a link
        for ino, node in self.merged.items():
            if node is not None and node.nlink == 0 and ino != ROOT_INO:
                if any(ino in dev.orphans for dev in self.m.theirs.devices.values()):
                    continue  # open on another device: its orphan, not ours
                t = self.t(ino)
                if t is not None and t.nlink == 0:
                    continue  # already unlinked there: that device's to purge
                self.m.orphans.add(ino)
                if not node.entries:  # never a folder that still names something
                    self.outcome.orphans.add(ino)
