"""The three-way merge of a commit that lost the root swap (docs/multidevice.md).

When another device committed first, the committer hands this module three
states: *base* (the root this device last committed or loaded), *theirs*
(the newer root in the store) and *ours* (the resident inode table with this
device's changes since base). :class:`Merge` finds what theirs changed (the
leaf pages whose object ids differ, then the records whose decoded values
differ), merges inode by inode and name by name by the rules of the merge
table, and rebases the resident table onto theirs so that the next snapshot
is base-free: ours on top of theirs.

Owns: the read-only :class:`View` of a root's inode table, the diff, and
loading what the rules need (both sides' pages, theirs' ancestors, file
contents to compare or copy). The rules themselves are
:class:`~.merge_rules.Rules`; the record helpers :mod:`.merge_records`.

May not touch: the store directly (pages and bodies come through the vault's
metadata road, file content through Content and the data path), the root
pointer and the journal (the committer's), deleting objects (references
go to the collector).

Concurrency: trio, one thread, under the commit lock. :meth:`Merge.prepare`
loads and may block on the store; operations run meanwhile. :meth:`Merge.apply`
is synchronous: it checks that everything it needs is loaded (else returns
False and the caller prepares again) and then changes the table with no
await, so every operation sees the state before the merge or after it.
"""

from __future__ import annotations

from ..errors import IntegrityError
from ..vault.content import Content
from ..vault.root import Device, Root
from ..vault.tables import MID_BITS, PAGE_BITS, PackRecord, PackTable, RadixIndex
from ..vault.vault import KIND_BODY, KIND_LEAF, KIND_PACKS, Vault, obj_name
from .collector import Collector
from .data import DataPath
from .inode import ROOT_INO, Inode
from .merge_records import Outcome, content_of
from .merge_rules import Rules
from .records import RecordCodec
from .table import InodeTable

COMPARE_MAX = 16 << 20



class View:
    """The inode table of one committed root, read-only: pages load on demand
    and are decoded with their bodies. May block on the store."""

    def __init__(self, vault: Vault, codec: RecordCodec, index: RadixIndex) -> None:
        self.vault = vault
        self.codec = codec
        self.index = index
        self.pages: dict[int, dict[int, Inode]] = {}

    async def page(self, page: int) -> dict[int, Inode]:
        got = self.pages.get(page)
        if got is not None:
            return got
        obj = await self.index.leaf_id(page)
        out: dict[int, Inode] = {}
        if obj is not None:
            raw = await self.vault.get_meta(KIND_LEAF, obj)
            name = obj_name(obj)
            if not isinstance(raw, dict):
                raise IntegrityError(name, "malformed leaf page")
            for ino, rec in raw.items():
                if not isinstance(ino, int) or ino >> PAGE_BITS != page:
                    raise IntegrityError(name, f"inode {ino!r} does not belong in page {page}")
                node = self.codec.decode(ino, rec, name)
                if not node.body_loaded:
                    assert node.body_ref is not None
                    body = await self.vault.get_meta(KIND_BODY, node.body_ref)
                    self.codec.decode_body(node, body, obj_name(node.body_ref))
                    node.body_loaded = True
                    node.body_dirty = False
                out[ino] = node
        self.pages[page] = out
        return out

    async def get(self, ino: int) -> Inode | None:
        return (await self.page(ino >> PAGE_BITS)).get(ino)

    def peek(self, ino: int) -> Inode | None:
        """The record if its page is loaded (None if absent or not loaded)."""
        page = self.pages.get(ino >> PAGE_BITS)
        return page.get(ino) if page is not None else None

    def has(self, ino: int) -> bool:
        return (ino >> PAGE_BITS) in self.pages


async def changed_pages(a: RadixIndex, b: RadixIndex) -> set[int]:
    """Leaf pages whose object differs between two opened indexes (both
    loaded as needed): costs what changed, not the size of the table."""
    out: set[int] = set()
    for hi in set(a.top) | set(b.top):
        if a.top.get(hi) == b.top.get(hi):
            continue
        ma, mb = await a.mid(hi), await b.mid(hi)
        out |= {hi << MID_BITS | lo for lo in set(ma) | set(mb) if ma.get(lo) != mb.get(lo)}
    return out


class Merge:
    """One merge of ours onto theirs (see the module docstring)."""

    def __init__(
        self,
        *,
        vault: Vault,
        table: InodeTable,
        data: DataPath,
        content: Content,
        collector: Collector,
        packs: PackTable | None,
        orphans: set[int],
        base: Root,
        theirs: Root,
        device_id: bytes,
        device: Device,
    ) -> None:
        self.vault = vault
        self.table = table
        self.data = data
        self.content = content
        self.collector = collector
        self.packs = packs
        self.orphans = orphans
        self.base = base
        self.theirs = theirs
        self.device_id = device_id
        self.device = device
        codec = table.codec
        self.bv = View(vault, codec, RadixIndex(vault, base.itab))
        self.tv = View(vault, codec, RadixIndex(vault, theirs.itab))
        self._opened = False
        self.tpages: set[int] = set()  # pages theirs changed
        self.identical: set[int] = set()
        #: theirs' bytes of files both sides changed (for a conflict copy)
        self.theirs_data: dict[int, bytes] = {}
        #: (ours' new file, theirs' new file) created under one name, same content
        self.identical_pairs: set[tuple[int, int]] = set()
        #: (ino, chunk index) -> plaintext of base chunks ours keeps but must
        #: store afresh (theirs dropped them, or a conflict copy shares them)
        self.copies: dict[tuple[int, int], bytes] = {}
        self._read_for: set[int] = set()
        # the pack table on theirs' side
        self.pbase = RadixIndex(vault, base.ptab)
        self.ptheirs = RadixIndex(vault, theirs.ptab)
        self.ptpages: set[int] = set()
        self.ptheirs_pages: dict[int, dict[int, PackRecord]] = {}
        #: [inodes, bytes] the merge added (conflict copies), for the root's stats
        self.root_stats_delta = [0, 0]

    # --- loading (may block; operations run meanwhile) ----------------------

    def ours_changed(self) -> set[int]:
        return set(self.table.changed)

    async def prepare(self) -> None:
        """Load what :meth:`apply` needs: both sides' versions of every page
        theirs changed or ours changed, theirs' ancestors of the folders
        involved, both contents of files changed on both sides (to find
        identical results), and the base chunks ours must store afresh."""
        if not self._opened:
            await self.bv.index.open()
            await self.tv.index.open()
            self.tpages = await changed_pages(self.bv.index, self.tv.index)
            if self.packs is not None:
                await self.pbase.open()
                await self.ptheirs.open()
                self.ptpages = await changed_pages(self.pbase, self.ptheirs)
            self._opened = True
        ours = self.ours_changed()
        for page in sorted(self._pages(ours)):
            await self.bv.page(page)
            await self.tv.page(page)
        # Every resident page's mid index in theirs' index (the snapshot after
        # the rebase needs them), and the pages conflict copies will go to.
        for page in list(self.table.page_members):
            await self.tv.index.mid(page >> MID_BITS)
        nxt = self.device.next_ino
        for page in {nxt >> PAGE_BITS, (nxt + 255) >> PAGE_BITS}:
            await self.tv.index.mid(page >> MID_BITS)
            await self.tv.page(page)
            await self.bv.page(page)
        # theirs' ancestors of every folder involved (the cycle check walks them)
        for ino in self._involved():
            cur: Inode | None = self.tv.peek(ino) or self.bv.peek(ino)
            for _ in range(4096):
                if cur is None or not cur.is_dir or cur.ino == ROOT_INO:
                    break
                cur = await self.tv.get(cur.parent)
        if self.packs is not None:
            for page in sorted(self.ptpages & set(self.packs.pages)):
                if page not in self.ptheirs_pages:
                    obj = await self.ptheirs.leaf_id(page)
                    recs: dict[int, PackRecord] = {}
                    if obj is not None:
                        raw = await self.vault.get_meta(KIND_PACKS, obj)
                        recs = PackTable.decode_page(raw, page, obj_name(obj))
                    self.ptheirs_pages[page] = recs
            for page in list(self.packs.pages):
                await self.ptheirs.mid(page >> MID_BITS)
        await self._read_contents(ours)

    def _pages(self, ours: set[int]) -> set[int]:
        """The pages both sides' versions are needed of: those theirs changed,
        ours' changed inodes', and the folders a conflict copy may go to."""
        pages = self.tpages | {ino >> PAGE_BITS for ino in ours}
        pages |= {self.table.names[i][0] >> PAGE_BITS for i in ours if i in self.table.names}
        pages.add(ROOT_INO >> PAGE_BITS)
        return pages

    def _involved(self) -> set[int]:
        out = set(self.ours_changed())
        for page in self.tpages:
            for side in (self.bv, self.tv):
                out |= set(side.pages.get(page, {}))
        return out

    async def _read_contents(self, ours: set[int]) -> None:
        """Compare files changed on both sides; read the base chunks ours keeps
        of files theirs changed or deleted (they get stored afresh)."""
        for ino in sorted(ours):
            o = self.table.peek(ino)
            b, t = self.bv.peek(ino), self.tv.peek(ino)
            both = (
                o is not None
                and b is not None
                and t is not None
                and o.is_reg
                and t.is_reg
                and content_of(o) != content_of(b) != content_of(t)
            )
            if ino in self._read_for and not (both and ino not in self.theirs_data):
                continue
            if o is not None and b is None and o.is_reg and ino in self.table.names:
                await self._same_new_file(o, *self.table.names[ino])
            if o is not None and b is None and t is not None and o.is_reg and t.is_reg:
                # both brought back one inode the base had not (each after
                # another device's delete): two versions with no common base
                self._read_for.add(ino)
                self.theirs_data[ino] = await self._read_theirs(t)
                mine = await self.data.read(ino, 0, o.size) if o.size <= COMPARE_MAX else None
                if mine == self.theirs_data[ino]:
                    self.identical.add(ino)
                continue
            if o is None or b is None or not o.is_reg or not o.body_loaded:
                continue
            if t is not None and content_of(t) == content_of(b):
                continue  # theirs did not change the content: nothing to copy
            self._read_for.add(ino)
            if t is not None and t.is_reg and content_of(o) != content_of(b):
                # both changed it: theirs' version may become a conflict copy,
                # which gets objects of its own (its bytes are read now)
                theirs = await self._read_theirs(t)
                self.theirs_data[ino] = theirs
                if o.size == t.size <= COMPARE_MAX:
                    mine = await self.data.read(ino, 0, o.size) if o.size else b""
                    if mine == theirs:
                        self.identical.add(ino)
            if t is not None and content_of(o) == content_of(b):
                continue  # ours changed no content: theirs' is taken, nothing to copy
            base_refs = set(b.chunks.values())
            for idx, ref in list(o.chunks.items()):
                if ref in base_refs:
                    try:
                        self.copies[(ino, idx)] = await self.data.read_ref(o, idx, ref)
                    except Exception as e:  # theirs' grace period has passed
                        raise IntegrityError(
                            obj_name(ref.obj),
                            f"merge: chunk {idx} of inode {ino}, kept by this device and "
                            f"dropped by another, is gone from the store: {e}",
                        ) from None

    async def _same_new_file(self, o: Inode, parent: int, name: bytes) -> None:
        """Both sides created ``name``: note if theirs is the same file."""
        tdir = await self.tv.get(parent)
        if tdir is None or not tdir.is_dir or name not in tdir.entries:
            return
        z = tdir.entries[name][0]
        tz = await self.tv.get(z)
        if tz is None or not tz.is_reg or tz.size != o.size or o.size > COMPARE_MAX:
            return
        mine = await self.data.read(o.ino, 0, o.size) if o.size else b""
        if mine == await self._read_theirs(tz):
            self.identical_pairs.add((o.ino, z))

    async def _read_theirs(self, t: Inode) -> bytes:
        if t.small is not None:
            return t.small[: t.size]
        assert t.file_key is not None
        return await self.content.read_file(t.chunks, t.file_key, t.file_id, t.size, 0, t.size)

    # --- the merge (no await) ------------------------------------------------

    def ready(self) -> bool:
        """Whether everything :meth:`apply` needs is loaded now."""
        ours = self.ours_changed()
        pages = self._pages(ours)
        if not all(self.bv.has(p << PAGE_BITS) and self.tv.has(p << PAGE_BITS) for p in pages):
            return False
        if any((p >> MID_BITS) not in self.tv.index.mids for p in self.table.page_members):
            return False
        for ino in ours:
            o, b, t = self.table.peek(ino), self.bv.peek(ino), self.tv.peek(ino)
            if o is not None and not o.body_loaded:
                return False
            if (
                o is not None
                and b is not None
                and t is not None
                and o.is_reg
                and t.is_reg
                and content_of(o) != content_of(b)
                and content_of(t) != content_of(b)
                and ino not in self.theirs_data
            ):
                return False  # both changed it since it was read: read again
            if (
                o is not None
                and o.is_reg
                and ino not in self._read_for
                and (
                    (b is not None and not (t is not None and content_of(t) == content_of(b)))
                    or (b is None and t is not None and t.is_reg)
                )
            ):
                return False
        if self.packs is not None:
            if not (self.ptpages & set(self.packs.pages)) <= set(self.ptheirs_pages):
                return False
            if any((p >> MID_BITS) not in self.ptheirs.mids for p in self.packs.pages):
                return False
        return True

    def apply(self, their_device_name: str) -> Outcome | None:
        """Merge, and rebase the table onto theirs. No await. None (and nothing
        changed) if something it needs is not loaded: prepare again."""
        if not self.ready():
            return None
        st = Rules(self, their_device_name)
        st.run()
        return st.outcome
