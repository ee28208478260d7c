"""The data path: reading and writing file content.

Owns: the dirty chunk buffers' accounting (which inodes have them, how many
bytes), chunks that are sealed or uploading but not committed yet
(*pending*, with the packs they go into), the memory cache of opened
blocks, read-ahead, background uploads of full chunks and background disk
cache writes, and turning a chunk staged whole into that chunk (the
stages themselves are the :class:`~.staging.Stager`'s). Chunk and pack
objects go through :class:`~megafs.vault.content.Content` only; replaced
chunks are handed to the :class:`~.collector.Collector` (retired).

May not touch: directories and names (the namespace), inode pages (it marks
an inode's page dirty through the table), the root pointer or the journal
(it records its mutations through the :class:`~.oplog.OpLog`). It does not
commit: the owner checks :attr:`DataPath.dirty_bytes` against its limit.

Concurrency: trio, one thread. ``write`` and ``truncate`` hold the inode's
lock while they fetch and mutate, and never wait for the commit lock while
holding it. Snapshot helpers (:meth:`DataPath.freeze`) are await-free.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from typing import Any

import cachetools
import trio

from ..client.cache import ContentCache
from ..errors import FsError
from ..format import crypto
from ..vault.content import ChunkRef, Content, KeepFn, PackPart, read_chunked
from ..vault.root import Root
from ..vault.tables import PackTable
from .collector import Collector
from .inode import Inode
from .oplog import OpLog, operation
from .staging import Stage, Stager
from .table import InodeTable

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
INLINE_MAX = 2048  # files up to this size live inside their inode record


@dataclass
class Pending:
    """A chunk whose object is not committed yet; reads use ``data``.

    ``uploaded`` once its object is in the store; ``busy`` is set while an
    upload is in flight (and fires when it ends, however it ends).
    """

    inode: Inode
    index: int
    data: bytes | bytearray | None  # None once uploaded: read it from the store then
    uploaded: bool = False
    busy: trio.Event | None = None
    pack: PackJob | None = None  # set for a packed chunk: uploaded with its pack


@dataclass
class PackJob:
    """A pack object made by a snapshot and not committed yet."""

    obj: bytes
    parts: list[tuple[ChunkRef, Pending]]
    uploaded: bool = False


ChunkJobs = list[tuple[ChunkRef, Pending]]


class DataPath:
    """Reads and writes of file content over chunk objects."""

    def __init__(
        self,
        table: InodeTable,
        content: Content,
        collector: Collector,
        oplog: OpLog,
        root: Root,
        *,
        cache: ContentCache | None,
        block_cache_bytes: int,
        packs_small_chunks: bool,
        stages: bool = True,
    ) -> None:
        """``stages``: whether full chunks may be sealed into their objects as
        they are written, where the store can (:class:`~.staging.Stager`)."""
        self.table = table
        self.content = content
        self.collector = collector
        self.oplog = oplog
        self.root = root
        self.layout = content.vault.layout
        self.cache = cache
        self.packs_small_chunks = packs_small_chunks
        self.dirty_inodes: set[int] = set()  # inodes with dirty chunk buffers
        self.dirty_bytes = 0
        self.pending: dict[ChunkRef, Pending] = {}
        self.pending_packs: dict[bytes, PackJob] = {}
        # (file id, object id, offset, block) -> plaintext: keyed by the file
        # too, so that a block is only ever served to the file it was verified for.
        self.blocks: cachetools.LRUCache[tuple[bytes, bytes, int, int], bytes] = (
            cachetools.LRUCache(maxsize=block_cache_bytes, getsizeof=len)
        )
        self._read_end: dict[int, int] = {}  # ino -> end of the last read (readahead)
        self._inflight: dict[ChunkRef, trio.Event] = {}  # chunk -> prefetch running
        self._nursery: trio.Nursery | None = None
        self._upload_slots = trio.Semaphore(EARLY_UPLOADS)
        self._cache_slots = trio.Semaphore(CACHE_WRITES)
        self._pack_slots = trio.Semaphore(PACK_UPLOADS)
        #: full chunks written once, into their objects (a local folder)
        self.stager = Stager(content, collector, oplog, enabled=stages)
        #: what keeps blocks fetched from the store: nothing when there is no
        #: disk cache, or one of size 0 (a local store's)
        self._keep: KeepFn | None = (
            self._cache_later if cache is not None and cache.max_bytes > 0 else None
        )

    def start_background(self, nursery: trio.Nursery | None) -> None:
        """Run early uploads, read-ahead and cache writes in ``nursery`` (None:
        none of that; it then happens in commits and reads themselves)."""
        self._nursery = nursery

    @property
    def pack_max(self) -> int:
        """Chunks up to this length are packed (format 2): half a chunk."""
        return self.layout.chunk_size // 2

    def quiet(self) -> bool:
        """Nothing uncommitted here (no dirty or pending chunk, no stage). No await."""
        return not (self.dirty_inodes or self.pending or self.stager.active())

    async def file(self, ino: int) -> Inode:
        """The regular file ``ino``, its content key unwrapped: a key that
        fails raises IntegrityError here, before a read, write or truncation
        has changed anything (and never later, inside a commit)."""
        node = await self.table.get(ino)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        if not node.is_reg:
            raise FsError(errno.EINVAL)
        node.require_key()
        return node

    # --- reading ------------------------------------------------------------

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
        return await self.content.open_blocks(
            ref, node.file_key, node.file_id, idx, m0, m1, keep=self._keep
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
        node = await self.file(ino)
        end = min(offset + size, node.size)
        if offset >= end:
            return b""
        cs = self.layout.chunk_size
        ahead = self._read_end.get(ino) == offset and offset > 0
        self._read_end[ino] = end
        if ahead and self._nursery is not None:
            self._read_ahead(node, (end - 1) // cs + 1)

        async def piece(idx: int, lo: int, hi: int) -> bytes:
            return await self._chunk_range(node, idx, lo, hi, ahead)

        return await read_chunked(offset, size, node.size, cs, piece)

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

    def closed(self, ino: int) -> None:
        """The last handle of ``ino`` closed: forget its read position."""
        self._read_end.pop(ino, None)

    def forget(self, inos: list[int]) -> None:
        """Evicted inodes: forget what is kept per inode."""
        for ino in inos:
            self._read_end.pop(ino, None)

    # --- writing ------------------------------------------------------------

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

    def _drop_ref(self, ref: ChunkRef) -> None:
        """No chunk map references ``ref`` any more: it is retired."""
        pend = self.pending.pop(ref, None)
        self.collector.retire_chunk(ref, unborn=pend is not None)

    @operation
    async def write(self, ino: int, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset`` (any offset; holes read as zeros).

        Holds the inode's lock. Partially covered chunks that are not in
        memory are fetched first; then the write is applied with no await,
        so a commit sees all of it or none of it. With a background nursery,
        chunks the writer is past start uploading (waits while EARLY_UPLOADS
        are in flight).
        """
        self.oplog.check_writable()
        if not data:
            return 0
        node = await self.file(ino)
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
            # check again until a pass needs no fetch; a merge may give the
            # file another device's content meanwhile: then fetch again.
            while True:
                epoch = self.table.epoch
                while need := [i for i in {first, last} if needs_base(i)]:
                    for idx in need:
                        bases[idx] = await self._whole_chunk(node, idx)
                if epoch == self.table.epoch:
                    break
                bases.clear()
            if self.table.peek(ino) is not node:
                # another device deleted it and a merge took that in
                raise FsError(errno.ESTALE, "the file was deleted on another device")
            # No await from here on.
            staged = self.stager.start(node, offset, data)
            try:
                if staged is None:
                    self.oplog.record("wr", ino, offset, data)
                else:
                    st = staged[0]
                    self.oplog.record(
                        "ws", ino, offset, len(data), st.obj, node.file_key, node.file_id
                    )
            except BaseException:
                if staged is not None:
                    self.stager.not_recorded(staged[0])
                raise
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
                self.stager.applied(ino, idx, buf, staged)
            if end > node.size:
                self.root.stats[1] += end - node.size
                node.size = end
            node.mtime = node.ctime = self.oplog.now()
            self.table.touch(node)
        if self._nursery is not None:
            for idx in range(first, last + 1):
                if end >= (idx + 1) * cs:  # the writer is past this chunk
                    await self._upload_early(node, idx)
        return len(data)

    def _end_stage(self, st: Stage, idx: int) -> bool:
        """End ``st``: if it holds chunk ``idx``'s whole content, the chunk
        becomes pending, already in the store (no seal, no upload: its bytes
        were written once); else its object is garbage
        (:meth:`Stager.drop`). Returns whether it became the chunk. No await."""
        node, cs = st.node, self.layout.chunk_size
        buf = node.dirty.get(idx)
        if not self.stager.whole(st, buf) or self.table.peek(node.ino) is not node:
            self.stager.drop(st)
            return False
        assert buf is not None
        self.stager.close(st)
        pend = Pending(node, idx, None, uploaded=True)  # its bytes are in the store
        self._make_pending(node, idx, buf, ChunkRef(st.obj, cs), pend)
        return True

    def _make_pending(
        self, node: Inode, idx: int, buf: bytearray, ref: ChunkRef, pend: Pending
    ) -> None:
        """Dirty chunk ``idx`` of ``node`` (``buf``) becomes ``pend``, under
        ``ref``: the next commit references it. No await."""
        del node.dirty[idx]
        self.dirty_bytes -= len(buf)
        self.pending[ref] = pend
        node.chunks[idx] = ref
        node.body_dirty = True
        self.table.touch(node)

    def end_stages(self) -> None:
        """End every stage (:meth:`_end_stage`): a snapshot is being taken,
        and the journal records naming them are in the segments it closes.
        No await."""
        for idx, st in self.stager.take_all():
            self._end_stage(st, idx)

    @operation
    async def write_staged(
        self, ino: int, offset: int, length: int, obj: bytes, file_key: bytes, file_id: bytes
    ) -> int:
        """Replay a write whose blocks were staged into ``obj`` (a ``ws``
        record): read them back (:meth:`Stager.read_back`, sealed under the
        key and id the file had then) and write them again. Raises
        StagedDataLost if the store does not hold them (a crashed machine
        lost them: :func:`~.restore.replay_journal` decides whether the
        replay stops there or the open fails). Blocks on the store."""
        self.stager.retire_replayed(obj)
        await self.file(ino)  # (a record that no longer applies is skipped unread)
        data = await self.stager.read_back(offset, length, obj, file_key, file_id)
        return await self.write(ino, offset, data)

    async def _upload_early(self, node: Inode, idx: int) -> None:
        """Start uploading a completely written chunk now, not at the next commit.

        A chunk staged whole needs no upload: it just becomes pending
        (:meth:`_end_stage`). Else waits while EARLY_UPLOADS uploads are in
        flight (this bounds memory). The chunk becomes pending under a
        fresh object id; the next commit waits for the upload and
        references it.
        """
        assert self._nursery is not None
        st = self.stager.pop(node.ino, idx)
        if st is not None and self._end_stage(st, idx):
            return
        await self._upload_slots.acquire()
        buf = node.dirty.get(idx)
        if (
            buf is None
            or len(buf) != self.layout.chunk_size
            or self.table.peek(node.ino) is not node
        ):
            self._upload_slots.release()
            return
        pend = Pending(node, idx, buf)  # out of node.dirty: nothing changes it now
        ref = ChunkRef(crypto.new_id(), len(buf))
        self._make_pending(node, idx, buf, ref, pend)
        self._nursery.start_soon(self._early_task, ref, pend)

    async def _early_task(self, ref: ChunkRef, pend: Pending) -> None:
        try:
            await self.ensure_uploaded(ref, pend)
            if ref not in self.pending:  # dropped meanwhile: nothing references it
                await self.collector.collect([ref.obj])
        except Exception as e:  # the next commit uploads it again
            log.warning("background upload of %s failed, will retry: %s", ref.cache_name, e)
        finally:
            self._upload_slots.release()

    async def ensure_uploaded(self, ref: ChunkRef, pend: Pending) -> None:
        """Upload a pending chunk unless it is (being) uploaded; one upload at a time."""
        while not pend.uploaded:
            if pend.busy is not None:
                await pend.busy.wait()
                continue
            pend.busy = trio.Event()
            try:
                node = pend.inode
                assert node.file_key is not None and pend.data is not None
                await self.content.put_chunk(
                    ref, node.file_key, node.file_id, pend.index, pend.data
                )
                pend.uploaded = True
                pend.data = None  # in the store now: do not hold it in memory
            finally:
                done, pend.busy = pend.busy, None
                done.set()

    @operation
    async def truncate(self, ino: int, size: int) -> None:
        """Set the file's length; growing makes a hole. Holds the inode's lock."""
        await self.resize(ino, size, ("tr", ino, size))

    async def resize(self, ino: int, size: int, record: tuple[Any, ...]) -> None:
        """Truncate; records ``record`` once all fetches are done, then mutates
        (setattr's record carries the size too)."""
        self.oplog.check_writable()
        if size < 0:
            raise FsError(errno.EINVAL)
        node = await self.file(ino)
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
            self.oplog.record(*record)
            self._unsmall(node)
            node.body_dirty = True
            if size < node.size:
                self.stager.spoil(ino, {i for i in node.dirty if i >= cut_idx})
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
            node.mtime = node.ctime = self.oplog.now()
            self.table.touch(node)

    async def fallocate(self, ino: int, offset: int, length: int) -> None:
        """posix_fallocate: make the file at least offset+length long (no preallocation)."""
        node = await self.file(ino)
        if offset + length > node.size:
            await self.truncate(ino, offset + length)

    async def read_ref(self, node: Inode, idx: int, ref: ChunkRef) -> bytes:
        """The plaintext of chunk ``idx`` of ``node`` as stored under ``ref``
        (a merge copies it into a new chunk). May block on the store."""
        assert node.file_key is not None
        cs = self.layout.chunk_size
        return await self.content.read_file(
            {idx: ref}, node.file_key, node.file_id, idx * cs + ref.length, idx * cs, ref.length
        )

    def adopt(self, node: Inode, idx: int, buf: bytearray) -> None:
        """Make ``buf`` chunk ``idx`` of ``node``, dirty: stored afresh at the
        next commit (a merge's copy of a chunk another device retired). The
        caller removed the old reference without retiring it. No await."""
        self.stager.spoil(node.ino, {idx})
        node.dirty[idx] = buf
        self.dirty_inodes.add(node.ino)
        self.dirty_bytes += len(buf)
        node.body_dirty = True
        self.table.touch(node)

    def discard(self, node: Inode) -> None:
        """A purged file: retire its chunks and drop its dirty buffers. No await."""
        self.stager.spoil(node.ino)
        for ref in node.chunks.values():
            self._drop_ref(ref)
        node.chunks.clear()
        self.dirty_bytes -= sum(len(b) for b in node.dirty.values())
        node.dirty.clear()

    # --- the committer's side -------------------------------------------------

    def will_pack(self) -> bool:
        """Whether the next snapshot makes a pack (it has a small dirty chunk)."""
        if not self.packs_small_chunks:
            return False
        limit = self.pack_max
        for ino in self.dirty_inodes:
            node = self.table.peek(ino)
            if node is not None and any(0 < len(b) <= limit for b in node.dirty.values()):
                return True
        return False

    def dead_pack(self, obj: bytes) -> PackJob | None:
        """The pack table dropped pack ``obj``: it is not to be uploaded.
        Returns its job, if it had one (to put back if the commit fails)."""
        return self.pending_packs.pop(obj, None)

    def freeze(self, packs: PackTable | None) -> tuple[ChunkJobs, list[PackJob]]:
        """Turn every dirty chunk buffer into a pending chunk (or packed chunk,
        with ``packs``) under a fresh object id, and inline small files. No await.

        Returns every chunk and pack the next root references and the store
        may not hold yet: left over from a failed commit, uploading early,
        or new now.
        """
        chunk_jobs = [(ref, p) for ref, p in self.pending.items() if p.pack is None]
        small: list[tuple[Inode, int, bytes | bytearray]] = []
        dirty_inodes, self.dirty_inodes = self.dirty_inodes, set()
        for ino in sorted(dirty_inodes):
            node = self.table.peek(ino)
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
                pend = Pending(node, idx, data)
                ref = ChunkRef(crypto.new_id(), len(data))
                self.pending[ref] = pend
                node.chunks[idx] = ref
                chunk_jobs.append((ref, pend))
            node.dirty.clear()
            node.body_dirty = True
            self.table.touch(node)
        if small:
            assert packs is not None
            self._pack(packs, small)
        return chunk_jobs, list(self.pending_packs.values())

    def _pack(self, packs: PackTable, small: list[tuple[Inode, int, bytes | bytearray]]) -> None:
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
            job = PackJob(obj, [])
            off = 0
            for node, idx, data in group:
                ref = ChunkRef(obj, len(data), off, pno)
                pend = Pending(node, idx, data, pack=job)
                job.parts.append((ref, pend))
                self.pending[ref] = pend
                node.chunks[idx] = ref
                off += sealed_len(len(data))
            self.pending_packs[obj] = job
            group, size = [], 0

    async def upload_pack(self, job: PackJob) -> None:
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

    def committed(self, chunk_jobs: ChunkJobs, pack_jobs: list[PackJob]) -> None:
        """A root referencing these is in: they are read from the store (or
        the disk cache) from now on. No await."""
        for ref, _ in chunk_jobs:
            self.pending.pop(ref, None)
        for job in pack_jobs:
            self.pending_packs.pop(job.obj, None)
            for ref, _ in job.parts:
                self.pending.pop(ref, None)
