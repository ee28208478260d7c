"""File content between the filesystem and the store: the one road for chunk
and pack objects.

Owns: sealing a chunk into its object or into its place in a pack
(:meth:`Content.put_chunk`, :meth:`Content.put_pack`), fetching sealed blocks
(from the disk cache when it holds them, else with a ranged read of the
store) and opening them (:meth:`Content.open_blocks`), reading one whole
object for a check (:meth:`Content.read_object`), and deleting objects
(:meth:`Content.delete`). :class:`ChunkRef` says where a chunk is.
:func:`read_chunked` is the one statement of how a file's byte range is put
together from its chunks (holes and short chunks read as zeros), shared by
the filesystem's read path and :meth:`Content.read_file`, which reads a
committed file with no filesystem at all (what a share link's reader needs).

Knows nothing of inodes, pages or commits: callers hand it a chunk's
reference, its file's id and key and its index. It does not touch metadata
objects or the root (that is :class:`~megafs.vault.vault.Vault`'s), and keeps no
state of its own besides the cache handle: a reader of one file (a share
link) needs only a Vault, a Content and the file's chunk map, key and id.

Every method that reads or writes the store is async and may block on the
network; sealing and opening run inline (AES-GCM at about 11 GB/s here holds
the GIL, so a thread would only add hand-offs: docs/performance.md).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from ..client.cache import ContentCache
from ..errors import IntegrityError, ObjectNotFound
from ..format import crypto
from .vault import Vault, obj_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkRef:
    """Where a chunk's sealed blocks are: the whole object ``obj``, or, for a
    packed chunk (``pno`` >= 0, pack number ``pno``), ``obj``'s bytes from
    ``off`` on. ``length`` is the chunk's plaintext length."""

    obj: bytes
    length: int
    off: int = 0
    pno: int = -1

    @property
    def packed(self) -> bool:
        return self.pno >= 0

    @property
    def pack_off(self) -> int | None:
        """The offset bound into a packed chunk's AAD; None for a whole object."""
        return self.off if self.packed else None

    @property
    def cache_name(self) -> str:
        """Its name in the content cache: the object's, or the object's and offset's."""
        name = obj_name(self.obj)
        return f"{name}.{self.off}" if self.packed else name


@dataclass(frozen=True)
class PackPart:
    """One chunk of a pack to seal: where it goes, whose it is, its plaintext."""

    ref: ChunkRef
    file_key: bytes
    file_id: bytes
    index: int
    data: bytes | bytearray


#: Called with (cache name, first block, sealed bytes) once blocks fetched from
#: the store have been authenticated, to keep them in the disk cache.
KeepFn = Callable[[str, int, bytes], Awaitable[None]]


#: Called with (chunk index, lo, hi): that chunk's plaintext in [lo, hi),
#: which may be shorter (the rest reads as zeros: a hole, a short chunk).
PieceFn = Callable[[int, int, int], Awaitable[bytes]]


async def read_chunked(
    offset: int, size: int, file_size: int, chunk_size: int, piece: PieceFn
) -> bytes:
    """Up to ``size`` bytes at ``offset`` of a file of ``file_size`` bytes kept
    in chunks of ``chunk_size``, each chunk's part from ``piece``; short only at
    the end of the file. A range within one chunk (nearly every read) is
    returned as ``piece`` gave it when it is whole: no copy here."""
    end = min(offset + size, file_size)
    if offset >= end:
        return b""
    first, last = offset // chunk_size, (end - 1) // chunk_size
    if first == last:
        lo, hi = offset - first * chunk_size, end - first * chunk_size
        got = await piece(first, lo, hi)
        return got if len(got) == hi - lo else got + bytes(hi - lo - len(got))
    out = bytearray()
    for idx in range(first, last + 1):
        base = idx * chunk_size
        lo = max(offset, base) - base
        hi = min(end, base + chunk_size) - base
        got = await piece(idx, lo, hi)
        out += got
        if len(got) < hi - lo:
            out += bytes(hi - lo - len(got))
    return bytes(out)


class Content:
    """Chunk and pack objects of one vault, through an optional disk cache."""

    def __init__(self, vault: Vault, cache: ContentCache | None = None) -> None:
        self.vault = vault
        self.cache = cache
        self.layout = vault.layout

    # --- writing ----------------------------------------------------------

    def seal_chunk(
        self, ref: ChunkRef, file_key: bytes, file_id: bytes, index: int,
        data: bytes | bytearray,
    ) -> bytes:
        """The sealed bytes of one chunk, at ``ref``'s place. CPU-heavy, no I/O."""
        return crypto.seal_chunk(
            self.vault.keys, self.layout, file_key, file_id, ref.obj, index, data, ref.pack_off
        )

    def can_stage(self) -> bool:
        """Whether chunks can be sealed into their objects block by block as
        they are written (:meth:`stage_blocks`): a local folder."""
        return self.vault.store.can_stage()

    def stage_blocks(
        self, obj: bytes, file_key: bytes, file_id: bytes, index: int, first_block: int,
        data: bytes | bytearray | memoryview,
    ) -> None:
        """Seal whole blocks of what is to be the full-length chunk ``index``
        of a file into object ``obj``, at their place (blocks
        ``first_block`` on): once every block is there, ``obj`` is that
        chunk's object, as :meth:`put_chunk` would have made it. Sealing is
        inline; the write goes to the page cache in this thread
        (:meth:`Store.stage`). Raises StoreError."""
        cs = self.layout.chunk_size
        sealed = crypto.seal_blocks(
            self.vault.keys, self.layout, file_key, file_id, obj, index, cs, first_block, data
        )
        self.vault.store.stage(obj_name(obj), first_block * self.layout.sealed_block, sealed)

    def end_stage(self, obj: bytes) -> None:
        """No more blocks go into ``obj`` (:meth:`stage_blocks`). No I/O wait."""
        self.vault.store.unstage(obj_name(obj))

    async def put_chunk(
        self, ref: ChunkRef, file_key: bytes, file_id: bytes, index: int,
        data: bytes | bytearray,
    ) -> None:
        """Seal a whole-object chunk and store it under ``ref.obj``. Blocks on the store."""
        sealed = self.seal_chunk(ref, file_key, file_id, index, data)
        await self.vault.store.put(obj_name(ref.obj), sealed)

    async def put_pack(self, obj: bytes, parts: Sequence[PackPart]) -> None:
        """Seal every chunk of a pack at its offset and store the pack object.

        ``parts`` must lie end to end from offset 0, in order. Blocks on the store.
        """
        sealed: list[bytes] = []
        size = 0
        for p in parts:
            if p.ref.off != size or p.ref.obj != obj:
                raise ValueError("pack parts must lie end to end in their pack")
            piece = self.seal_chunk(p.ref, p.file_key, p.file_id, p.index, p.data)
            sealed.append(piece)
            size += len(piece)
        await self.vault.store.put(obj_name(obj), b"".join(sealed))

    async def delete(self, objs: Sequence[bytes]) -> list[str]:
        """Delete these objects, batched; returns the names that could not be
        deleted (never raises for one object). Forgets their cached copies."""
        if self.cache is not None:
            for obj in objs:
                self.cache.forget(obj_name(obj))
        return await self.vault.store.delete_many([obj_name(o) for o in objs])

    # --- reading ----------------------------------------------------------

    async def open_blocks(
        self,
        ref: ChunkRef,
        file_key: bytes,
        file_id: bytes,
        index: int,
        first: int,
        last: int,
        keep: KeepFn | None = None,
        *,
        again: bool = True,
    ) -> list[bytes]:
        """Fetch and open blocks [first, last) of a chunk; their plaintexts.

        From the disk cache when it holds all of them, else one ranged read of
        the store; blocks from the store are handed to ``keep`` (default: the
        cache, now) only once they authenticated. A cached copy that fails is
        forgotten and the store asked. Raises IntegrityError naming the object
        when the store's bytes do not verify, are missing or are cut short.
        """
        sb = self.layout.sealed_block
        want = self.layout.sealed_len(min(ref.length, last * self.layout.block_size)) - first * sb
        name = obj_name(ref.obj)
        cname = ref.cache_name
        sealed: bytes | None = None
        from_store = False
        if self.cache is not None and self.cache.has(cname, first, last):
            sealed = await self.cache.read(cname, first * sb, want)
        if sealed is None or len(sealed) != want:
            try:
                sealed = await self.vault.store.get_range(name, ref.off + first * sb, want)
            except ObjectNotFound:
                raise IntegrityError(name, "chunk object is missing from the store") from None
            from_store = True
        if len(sealed) != want:
            # A store that cut whole blocks off the end would otherwise
            # give open_blocks fewer blocks than asked, read back as zeros.
            if from_store and self.vault.store.forget_cached(name) and again:
                return await self.open_blocks(
                    ref, file_key, file_id, index, first, last, keep, again=False
                )
            raise IntegrityError(name, "chunk object is shorter than its recorded length")
        try:
            plain = crypto.open_blocks(
                self.vault.keys, self.layout, file_key, file_id, ref.obj, index, ref.length,
                first, sealed, ref.pack_off,
            )
        except crypto.AuthFailed as e:
            if from_store and self.vault.store.forget_cached(name) and again:
                # read through a file kept open since: the store may hold
                # other bytes under the name now (healed): ask it once more
                return await self.open_blocks(
                    ref, file_key, file_id, index, first, last, keep, again=False
                )
            if from_store or self.cache is None:
                raise IntegrityError(name, str(e)) from None
            # A damaged local cache is not a damaged store: forget it, ask the store.
            log.warning("cached copy of %s fails authentication; refetching", cname)
            self.cache.forget(cname)
            return await self.open_blocks(ref, file_key, file_id, index, first, last, keep)
        if from_store and self.cache is not None:
            # Only once authenticated: a tampered answer must not outlive the tampering.
            if keep is not None:
                await keep(cname, first, sealed)
            else:
                await self.cache.store(cname, first, sealed)
        return plain

    async def read_file(
        self,
        chunks: Mapping[int, ChunkRef],
        file_key: bytes,
        file_id: bytes,
        file_size: int,
        offset: int,
        size: int,
    ) -> bytes:
        """Up to ``size`` bytes at ``offset`` of a committed file, from its chunk
        map, key, id and size alone: no filesystem, no inode table. Fetches only
        the blocks that cover the range. A small file whose bytes are inline in
        its inode record has no chunks: that record is the reader's to open.
        Raises IntegrityError naming the object if a block fails to verify."""
        bs = self.layout.block_size

        async def piece(idx: int, lo: int, hi: int) -> bytes:
            ref = chunks.get(idx)
            if ref is None:
                return b""
            hi = min(hi, ref.length)
            if hi <= lo:
                return b""
            m0, m1 = self.layout.block_span(lo, hi - lo, ref.length)
            blocks = await self.open_blocks(ref, file_key, file_id, idx, m0, m1)
            joined = blocks[0] if len(blocks) == 1 else b"".join(blocks)
            return joined[lo - m0 * bs : hi - m0 * bs]

        return await read_chunked(offset, size, file_size, self.layout.chunk_size, piece)

    async def read_object(self, obj: bytes, size: int) -> bytes:
        """A whole chunk or pack object, which must be ``size`` bytes: no more
        is read (IntegrityError if larger). Raises ObjectNotFound. For checks
        (fsck); readers use :meth:`open_blocks`."""
        return await self.vault.store.get(obj_name(obj), max_size=size)

    def open_chunk(
        self, ref: ChunkRef, file_key: bytes, file_id: bytes, index: int, sealed: bytes
    ) -> bytes:
        """Open a whole chunk from its sealed bytes (as :meth:`read_object`
        gave them, already cut to the chunk). Raises crypto.AuthFailed."""
        return b"".join(
            crypto.open_blocks(
                self.vault.keys, self.layout, file_key, file_id, ref.obj, index, ref.length, 0,
                sealed, ref.pack_off,
            )
        )
