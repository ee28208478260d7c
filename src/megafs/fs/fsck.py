"""Checking a vault: every object authenticates, everything is reachable.

:func:`check` walks the committed tree from the root (top index, mid
indexes, leaf pages, external bodies, chunk objects; in format 2 also the
pack table and the pack objects), opens every object (chunks block by
block), checks the directory structure (every entry names an existing
inode, link counts match the entries) and the pack table (every packed
chunk names a pack the table holds, and each pack's count of live chunks
is the number of chunk maps naming it), and lists the store to find objects
that are missing and objects nothing references (garbage left by an
interrupted commit). With ``repair`` it deletes the unreferenced objects;
it never deletes anything the root references.

The listing yields only genuine objects (see
:meth:`megafs.stores.base.Store.list`): whatever else lies in the store (a
symlinked fan-out folder planted to aim a repair at the user's own files, a
FIFO, a name of the wrong shape, a sync tool's own files) is *refused*. Each
refusal is reported in :attr:`Report.refused` and never deleted: it is not
megafs's to remove. It is not a problem of the vault (a synced folder often
holds such files), so it alone does not fail the check.

This reads the whole vault: its cost grows with the vault, unlike a mount.

May not touch: the store directly (it lists and deletes through
:class:`~megafs.vault.vault.Vault` and reads through the model's
:class:`~megafs.vault.content.Content`; of :mod:`megafs.stores` only the
:class:`~megafs.stores.base.Refused` record), the journal, pyfuse3,
:mod:`megafs.mount` or :mod:`megafs.cli`; it reads the model's inodes and
never changes one.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from ..client.journal import decode_record
from ..errors import IntegrityError, MegafsError, ObjectNotFound, VaultBusy
from ..format import crypto
from ..stores.base import MAX_OBJECT_SIZE, Refused
from ..vault.content import ChunkRef
from ..vault.devlog import log_id, read_series
from ..vault.history import Entry, HistoryTable
from ..vault.root import Root
from ..vault.tables import MID_BITS, PAGE_BITS, PackRecord, RadixIndex
from ..vault.vault import Vault, obj_name
from .filesystem import Filesystem
from .inode import ROOT_INO
from .replay import staged_object


@dataclass
class Report:
    """What :func:`check` found. ``refused`` lists the store entries the
    listing would not yield (reported, left alone, not counted as problems)."""

    objects: int = 0
    inodes: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    #: unreferenced, but younger than the grace period in a vault several
    #: devices share: another device may be about to commit it, or still read
    #: it (docs/multidevice.md, garbage); left alone, not counted as garbage
    young: list[str] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    removed: int = 0

    @property
    def clean(self) -> bool:
        return not (self.problems or self.missing or self.orphans)


Progress = Callable[[str, int, int], None]


async def check(vault: Vault, *, repair: bool = False, progress: Progress | None = None) -> Report:
    """Verify the vault. Raises VaultBusy if ``repair`` and another writer is active."""
    report = Report()
    if repair:
        await _refuse_unfolded_log(vault)
    # Repair takes the writer lease, so no mount can upload while orphans go.
    fs = await Filesystem.load(vault, writable=repair)
    try:
        await _check(fs, report, repair, progress)
    finally:
        if repair:
            await fs.close()
    return report


async def _refuse_unfolded_log(vault: Vault) -> None:
    """Raise VaultBusy if this device has a log series no commit folded yet
    (its daemon was killed after an fsync): repair's writable open commits
    as this device, and that commit would orphan the series, and with it
    what those fsyncs acknowledged. Mounting first folds it in."""
    root = await vault.read_root()
    me = vault.state.client_id
    mine = root.devices.get(me)
    if mine is None or mine.journal is None:
        return
    jid, mark = mine.journal
    if (await read_series(vault, me, jid, mark, mine.generation))[2]:
        raise VaultBusy(
            "this device's last fsynced changes are in its device log in the store and "
            "no commit holds them yet: mount the vault once (that folds them in), then "
            "run fsck --repair"
        )


async def _check(fs: Filesystem, report: Report, repair: bool, progress: Progress | None) -> None:
    vault = fs.vault
    pack_table = fs.committer.packs
    reachable: set[bytes] = set()

    async def guarded(what: str, work: Awaitable[None]) -> None:
        try:
            await work
        except ObjectNotFound as e:
            report.missing.append(f"{e.name} ({what})")
        except IntegrityError as e:
            report.problems.append(str(e))

    async def walk(index: RadixIndex) -> list[int]:
        """Every page of a table, its index nodes and leaves marked reachable."""
        pages: list[int] = []
        for hi, mid_obj in sorted(index.top.items()):
            reachable.add(mid_obj)
            try:
                mid = await index.mid(hi)
            except (ObjectNotFound, IntegrityError) as e:
                report.problems.append(f"mid index {obj_name(mid_obj)}: {e}")
                continue
            for lo, leaf in mid.items():
                reachable.add(leaf)
                pages.append((hi << MID_BITS) | lo)
        return pages

    # the pack table (format 2)
    packs: dict[int, PackRecord] = {}
    if pack_table is not None and fs.root.ptab is not None:
        reachable.add(fs.root.ptab)
        try:
            await pack_table.load(pack_table.next_pack >> PAGE_BITS)  # fetches the top index
        except (ObjectNotFound, IntegrityError) as e:
            report.problems.append(f"pack table: {e}")
        for page in await walk(pack_table.index):
            await guarded(f"pack table page {page}", pack_table.load(page))
        packs.update(pack_table.loaded())
        for pno, rec in packs.items():
            reachable.add(rec.obj)
            if not fs.root.pack_allocated(pno):
                report.problems.append(f"pack {pno} is beyond the next pack number")

    tree = _Tree(report, reachable, packs, guarded, walk, progress)
    await tree.check(fs, head=True)

    # the history: its table, lists, and every kept root's tree
    if fs.root.hist is not None or fs.root.hist_recent:
        if fs.root.hist is not None:
            reachable.add(fs.root.hist)
        history = fs.committer.keeper.table
        try:
            await history.latest()
            entries = await history.entries()
        except (ObjectNotFound, IntegrityError) as e:
            report.problems.append(f"history table: {e}")
            entries = []
        await walk(history.index)
        for i, entry in enumerate(entries):
            if entry.lists is not None:
                reachable.add(entry.lists)
            await guarded(f"history lists of generation {entry.gen}", _lists(history, entry))
            if entry.itab == fs.root.itab:
                continue  # the live tree, checked above
            if progress:
                progress("history", i, len(entries))
            past = Filesystem(
                vault,
                Root(generation=entry.gen, itab=entry.itab, next_ino=0),
                writable=False,
                block_cache_bytes=1 << 20,
            )
            if entry.itab is not None:
                reachable.add(entry.itab)
                await guarded(f"root of generation {entry.gen}", past.table.index.open())
            await tree.check(past, head=False)

    # each device's log series since its last commit (docs/concurrency.md):
    # read back, so authenticated, and kept
    for dev_id, dev in sorted(fs.root.devices.items()):
        if dev.journal is not None:
            jid, mark = dev.journal
            await guarded(
                f"device log of {dev.name}",
                _series(vault, dev_id, jid, mark, dev.generation, reachable),
            )

    # the store's view
    onames = {obj_name(o) for o in reachable}
    listed: set[str] = set()
    # A store can list names forever; more than this many beyond what the
    # vault references is no vault megafs wrote.
    most = 4 * len(onames) + 1_000_000
    ages: dict[str, float] = {}
    async for oname, _size in vault.list_objects(refused=report.refused, ages=ages):
        listed.add(oname)
        if len(listed) > most:
            report.problems.append(
                f"the store lists more than {most} objects for a vault that references "
                f"{len(onames)}; stopped listing (nothing was removed)"
            )
            return
    report.objects = len(listed)
    for oname in sorted(onames - listed):
        if not any(m.startswith(oname) for m in report.missing):
            report.missing.append(oname)
    unreferenced = sorted(listed - onames)
    if len(fs.root.devices) > 1:
        young_after = time.time() - fs.collector.grace
        report.young = [o for o in unreferenced if ages.get(o, time.time()) > young_after]
        young = set(report.young)
        unreferenced = [o for o in unreferenced if o not in young]
    report.orphans = unreferenced
    if repair and report.orphans:
        for i, oname in enumerate(report.orphans):
            if progress:
                progress("removing", i, len(report.orphans))
            try:
                await vault.delete_object(oname)
                report.removed += 1
            except MegafsError as e:
                report.problems.append(f"could not remove {oname}: {e}")


async def _series(
    vault: Vault, device: bytes, journal: bytes, mark: int, gen: int, into: set[bytes]
) -> None:
    _, records, count = await read_series(vault, device, journal, mark, gen)
    into.update(log_id(vault.keys, device, journal, mark, gen, k) for k in range(count))
    # the objects its records staged blocks into (a local folder's writes)
    for _, _, plain in records:
        obj = staged_object(decode_record(plain))
        if obj is not None:
            into.add(obj)


async def _lists(history: HistoryTable, entry: Entry) -> None:
    await history.lists(entry)


class _Tree:
    """Checks one root's tree (the live one, or a kept past one); objects
    already verified in another tree are not fetched again."""

    def __init__(
        self,
        report: Report,
        reachable: set[bytes],
        packs: dict[int, PackRecord],
        guarded: Callable[[str, Awaitable[None]], Awaitable[None]],
        walk: Callable[[RadixIndex], Awaitable[list[int]]],
        progress: Progress | None,
    ) -> None:
        self.report, self.reachable, self.packs = report, reachable, packs
        self.guarded, self.walk, self.progress = guarded, walk, progress
        self.verified: set[bytes] = set()

    async def check(self, fs: Filesystem, *, head: bool) -> None:
        """Pages, bodies, directory structure and chunks of ``fs``'s root;
        pack counts and orphans only for the live tree (``head``): a past
        root's pack table and orphans are not kept."""
        report, reachable, packs = self.report, self.reachable, self.packs
        guarded, walk, progress = self.guarded, self.walk, self.progress
        vault, table = fs.vault, fs.table
        if fs.root.itab is not None:
            reachable.add(fs.root.itab)
        here = Report()
        if not head:
            report, real = here, report
        # index and leaf pages
        pages = await walk(table.index)
        for i, page in enumerate(pages):
            if progress:
                progress("pages", i, len(pages))
            await guarded(f"leaf page {page}", fs.load_page(page))

        # inodes, bodies, directory structure
        links: dict[int, int] = {}
        chunks: list[tuple[int, int, ChunkRef]] = []
        pack_refs: dict[int, list[ChunkRef]] = {}
        # every device's orphans: open somewhere, so not yet purged
        orphans = fs.namespace.orphans | set(fs.root.all_orphans())
        inodes = sorted(table.inodes)
        for ino in inodes:
            node = table.inodes[ino]
            report.inodes += 1
            if node.body_ref is not None:
                reachable.add(node.body_ref)
            if not node.body_loaded:
                await guarded(f"body of inode {ino}", fs.load_body(node))
                if not node.body_loaded:
                    continue
            if node.is_dir:
                for name, (child, _) in node.entries.items():
                    links[child] = links.get(child, 0) + 1
                    if child not in table.inodes:
                        report.problems.append(
                            f"directory {ino} entry {name!r} names missing inode {child}"
                        )
            if node.is_reg:
                report.bytes += node.size
                for idx, ref in node.chunks.items():
                    chunks.append((ino, idx, ref))
                    if not ref.packed:
                        reachable.add(ref.obj)
                        continue
                    pack_refs.setdefault(ref.pno, []).append(ref)
                    found = packs.get(ref.pno)
                    if not head and (found is None or found.obj != ref.obj):
                        reachable.add(ref.obj)  # a pack no live chunk map names any more
                    elif found is None or found.obj != ref.obj:
                        report.problems.append(
                            f"chunk {idx} of inode {ino} is in pack {ref.pno} "
                            f"({obj_name(ref.obj)}), which the pack table does not hold"
                        )
                    elif ref.off + vault.layout.sealed_len(ref.length) > found.size:
                        report.problems.append(
                            f"chunk {idx} of inode {ino} lies outside pack {ref.pno}"
                        )
        for pno, rec in sorted(packs.items() if head else ()):
            refs = pack_refs.get(pno, [])
            live_bytes = sum(vault.layout.sealed_len(r.length) for r in refs)
            if rec.live != len(refs) or rec.live_bytes != live_bytes:
                report.problems.append(
                    f"pack {pno} ({obj_name(rec.obj)}) counts {rec.live} chunks of "
                    f"{rec.live_bytes} bytes, but {len(refs)} of {live_bytes} bytes name it"
                )
        bad_keys: set[int] = set()  # their chunks cannot be opened: not fetched
        for ino in inodes:
            node = table.inodes[ino]
            if node.has_key:  # unwrapped on first use: here, for every file
                try:
                    node.require_key()
                except IntegrityError as e:
                    report.problems.append(str(e))
                    bad_keys.add(ino)
            if ino == ROOT_INO or not node.body_loaded:
                continue
            expected = links.get(ino, 0)
            if node.is_dir:
                got = 1 if expected else 0
                if expected != 1:
                    report.problems.append(f"directory inode {ino} has {expected} names")
                subdirs = sum(
                    1
                    for c, _ in node.entries.values()
                    if c in table.inodes and table.inodes[c].is_dir
                )
                if got and node.nlink != 2 + subdirs:
                    report.problems.append(
                        f"directory inode {ino} link count {node.nlink} != {2 + subdirs}"
                    )
            elif not head:
                continue  # a past root's orphans are not kept
            elif node.nlink != expected and ino not in orphans:
                report.problems.append(f"inode {ino} link count {node.nlink}, but {expected} names")
            if stat.S_ISREG(node.mode) and node.nlink == 0 and ino not in orphans:
                report.problems.append(f"inode {ino} has no names and is not an orphan")

        # chunk and pack objects: fetch each once and open every block in it
        limiter = trio.CapacityLimiter(8)
        done = 0
        by_object: dict[bytes, list[tuple[int, int, ChunkRef]]] = {}
        for item in chunks:
            if item[0] not in bad_keys and item[2].obj not in self.verified:
                by_object.setdefault(item[2].obj, []).append(item)
        self.verified.update(by_object)

        async def verify_object(obj: bytes, items: list[tuple[int, int, ChunkRef]]) -> None:
            nonlocal done
            name = obj_name(obj)
            # The size the object must have: a pack's from the pack table, a chunk
            # object's from its length; nothing larger is read.
            _, _, first = items[0]
            rec0 = packs.get(first.pno) if first.packed else None
            limit = rec0.size if rec0 is not None else vault.layout.sealed_len(first.length)
            if first.packed and (rec0 is None or rec0.obj != obj):
                limit = MAX_OBJECT_SIZE  # a pack only past roots keep: its size is not kept
            async with limiter:
                try:
                    sealed = await fs.content.read_object(obj, limit)
                except ObjectNotFound:
                    ino, idx, _ = items[0]
                    report.missing.append(f"{name} (chunk {idx} of inode {ino})")
                    return
                except IntegrityError as e:
                    report.problems.append(str(e))
                    return
                for ino, idx, ref in items:
                    node = table.inodes[ino]
                    want = vault.layout.sealed_len(ref.length)
                    if ref.packed:
                        rec = packs.get(ref.pno)
                        size_ok = (
                            rec is not None and len(sealed) == rec.size
                            if rec is not None and rec.obj == obj
                            else not head and len(sealed) >= ref.off + want
                        )
                    else:
                        size_ok = len(sealed) == want
                    if not size_ok:
                        report.problems.append(f"integrity error in object {name}: wrong size")
                        return
                    assert node.file_key is not None
                    part = sealed[ref.off : ref.off + want]
                    try:
                        fs.content.open_chunk(ref, node.file_key, node.file_id, idx, part)
                    except crypto.AuthFailed as e:
                        report.problems.append(f"integrity error in object {name}: {e}")
            done += 1
            if progress:
                progress("objects", done, len(by_object))

        async with trio.open_nursery() as nursery:
            for obj, items in by_object.items():
                nursery.start_soon(verify_object, obj, items)

        if not head:
            real.problems += [f"generation {fs.root.generation}: {p}" for p in here.problems]
            real.missing += here.missing


__all__ = ["Report", "VaultBusy", "check"]
