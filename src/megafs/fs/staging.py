"""Staging: a sequential writer's full chunks sealed into their store objects
block by block as the file is written, so that each byte is written once
(docs/concurrency.md, "Writing each byte once (local folders)").

Owns: the stages (which chunk of which inode is being staged into which
object, which of its blocks are there, whether it was spoiled), the decision
whether a write is staged, and reading staged blocks back for a replay.

May not touch: dirty buffers, pending chunks and their accounting (the
:class:`~.data.DataPath` turns a whole stage into its chunk), the journal
(the data path records the ``ws`` record), commits. Garbage goes to the
:class:`~.collector.Collector`.

Concurrency: trio, one thread; nothing here awaits but :meth:`Stager.read_back`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..errors import IntegrityError, StagedDataLost, StoreError
from ..format import crypto
from ..vault.content import ChunkRef, Content
from .collector import Collector
from .inode import Inode
from .oplog import OpLog

log = logging.getLogger(__name__)

#: Chunks being staged at once, at most (each keeps its object's file open).
MAX_STAGES = 64


@dataclass
class Stage:
    """A full-length chunk being sealed into object ``obj`` block by block.
    ``buf`` is the dirty buffer it mirrors (None until its first write is
    applied), ``blocks`` the blocks staged so far. ``spoiled`` once the
    buffer changed other than by a staged write: the object is then kept
    only for the journal records that name it, and is garbage at the next
    snapshot."""

    obj: bytes
    node: Inode
    buf: bytearray | None = None
    blocks: set[int] = field(default_factory=set)
    spoiled: bool = False


async def _no_keep(cname: str, first_block: int, sealed: bytes) -> None:
    """Keeps nothing: staged blocks read back in a replay are garbage soon."""


class Stager:
    """The stages of one filesystem. ``enabled`` where the store can stage
    (a local folder) and the caller allows it: not with ``-o fsync=local``,
    whose fsyncs name only local journal segments, so what they acknowledge
    must not lie in store objects nothing else names."""

    def __init__(
        self, content: Content, collector: Collector, oplog: OpLog, *, enabled: bool = True
    ) -> None:
        self.content = content
        self.collector = collector
        self.oplog = oplog
        self.layout = content.layout
        self.enabled = enabled and content.can_stage()
        self._stages: dict[tuple[int, int], Stage] = {}  # by (inode, chunk index)
        self._replayed: set[bytes] = set()  # objects replayed records named
        self._failing = False  # (warn once until staging works again)

    def active(self) -> bool:
        """Whether any chunk is being staged. No await."""
        return bool(self._stages)

    def start(self, node: Inode, offset: int, data: bytes) -> tuple[Stage, range] | None:
        """Seal a write's blocks straight into the object its chunk will be
        (:meth:`Content.stage_blocks`), if it can be: staging enabled, a
        journal to name them in (not during a replay), whole blocks within
        one chunk, none of them staged before in that chunk's stage (an
        earlier record names them), fewer than MAX_STAGES open. A stage
        starts only with a write at the chunk's start (a sequential writer:
        random writes would leave mostly stages that never fill). Returns
        the stage (a new one is registered by :meth:`applied`) and the blocks
        staged; None for a write to journal with its data. No await."""
        if not self.enabled or self.oplog.journal is None:
            return None
        bs, cs = self.layout.block_size, self.layout.chunk_size
        n = len(data)
        if offset % bs or n % bs or not n or offset // cs != (offset + n - 1) // cs:
            return None
        idx = offset // cs
        blocks = range(*self.layout.block_span(offset % cs, n, cs))
        st = self._stages.get((node.ino, idx))
        if st is None:
            if blocks[0] != 0 or len(self._stages) >= MAX_STAGES:
                return None
            st = Stage(crypto.new_id(), node)
        elif (
            st.spoiled
            or st.node is not node
            or st.buf is not node.dirty.get(idx)
            or not st.blocks.isdisjoint(blocks)
        ):
            return None
        assert node.file_key is not None
        try:
            self.content.stage_blocks(st.obj, node.file_key, node.file_id, idx, blocks[0], data)
        except StoreError as e:
            (log.debug if self._failing else log.warning)(
                "could not stage a write in the store (%s); journalling its data", e
            )
            self._failing = True
            self.not_recorded(st)
            return None
        self._failing = False
        return st, blocks

    def not_recorded(self, st: Stage) -> None:
        """``st``'s last staged write is named by no record (staging or the
        journal append failed): a new stage is garbage; an older one is
        spoiled, since its object holds bytes no record names. No await."""
        if st.buf is None:
            self.drop(st)
        else:
            st.spoiled = True

    def applied(
        self, ino: int, idx: int, buf: bytearray, staged: tuple[Stage, range] | None
    ) -> None:
        """A write changed chunk ``idx`` of ``ino``, now ``buf``: through
        ``staged`` (its stage now mirrors ``buf``), or not (a stage of that
        chunk is spoiled). No await."""
        if staged is not None:
            st, blocks = staged
            st.buf = buf
            st.blocks.update(blocks)
            self._stages[(ino, idx)] = st
        elif (ino, idx) in self._stages:
            self._stages[(ino, idx)].spoiled = True

    def spoil(self, ino: int, idxs: set[int] | None = None) -> None:
        """The buffers of these chunks of ``ino`` (None: all) changed other
        than by a staged write. No await."""
        for (i, idx), st in self._stages.items():
            if i == ino and (idxs is None or idx in idxs):
                st.spoiled = True

    def pop(self, ino: int, idx: int) -> Stage | None:
        """Stop tracking the stage of chunk ``idx`` of ``ino``, if any. No await."""
        return self._stages.pop((ino, idx), None)

    def take_all(self) -> list[tuple[int, Stage]]:
        """Every stage, as (chunk index, stage), no longer tracked. No await."""
        stages, self._stages = self._stages, {}
        return [(idx, st) for (_, idx), st in stages.items()]

    def whole(self, st: Stage, buf: bytearray | None) -> bool:
        """Whether ``st``'s object holds exactly ``buf``, a full-length chunk
        buffer: unspoiled, mirroring ``buf``, every block staged. No await."""
        cs = self.layout.chunk_size
        return (
            not st.spoiled
            and buf is not None
            and buf is st.buf
            and len(buf) == cs
            and len(st.blocks) == cs // self.layout.block_size
        )

    def close(self, st: Stage) -> None:
        """No more blocks go into ``st``'s object. No I/O wait."""
        self.content.end_stage(st.obj)

    def drop(self, st: Stage) -> None:
        """:meth:`close`, and ``st``'s object is garbage once the next commit
        (which covers the records naming it) is in. No await."""
        self.close(st)
        self.collector.retire_chunk(ChunkRef(st.obj, self.layout.chunk_size), unborn=True)

    def retire_replayed(self, obj: bytes) -> None:
        """``obj``, which a replayed ``ws`` record names, is garbage once the
        replay's commit is in (its blocks are written again, or no longer
        needed). No await."""
        if obj not in self._replayed:
            self._replayed.add(obj)
            self.collector.retire_chunk(ChunkRef(obj, self.layout.chunk_size), unborn=True)

    async def read_back(
        self, offset: int, length: int, obj: bytes, file_key: bytes, file_id: bytes
    ) -> bytes:
        """The plaintext a ``ws`` record staged: ``length`` bytes at file
        offset ``offset`` in ``obj``, sealed under ``file_key`` and
        ``file_id``. Raises StagedDataLost if the store does not hold them
        whole and authentic. Blocks on the store."""
        cs = self.layout.chunk_size
        first, last = self.layout.block_span(offset % cs, length, cs)
        try:
            plain = await self.content.open_blocks(
                ChunkRef(obj, cs), file_key, file_id, offset // cs, first, last, keep=_no_keep
            )
        except IntegrityError as e:
            raise StagedDataLost(e.obj, e.detail) from None
        return b"".join(plain)
