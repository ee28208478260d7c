"""The local write-ahead journal: uncommitted changes survive a killed daemon.

Every mutating operation of the filesystem model appends one record (the
operation, its arguments, its timestamp and any inode number it allocated)
to the current *segment* under ``<cache dir>/journal/``, before the call
returns to the kernel. Records are sealed with AES-256-GCM under the vault's
cache key, with the vault id, segment number and record number in the
associated data: nothing is on disk in plaintext, and records cannot be
reordered or moved between segments.

Segments are numbered upwards. A commit snapshot closes the current segment
*k* and records *k* (with this journal's id) in the new root; once that root
is committed, segments up to *k* are deleted. On the next writable mount,
segments above the root's mark are replayed, in order, on top of the
committed root before anything else changes it: operations are
deterministic given the same starting state, so the replay reproduces what
the killed daemon had acknowledged. If the root was last committed from a
different journal (another client, or this client with another cache
folder), the segments are kept aside (renamed ``.stale``) and a warning says
so; they are never silently dropped, and never applied to a state they do
not continue.

Writes are plain ``write(2)`` calls (page cache), which a killed process
cannot lose; a crashed *machine* can lose the tail, which only ``fsync``
protects: fsync commits to the store. Writeback keeps no order between
files, so a crash may also cut one segment and keep a later one whole: the
replay stops at the first record that is torn or fails authentication, and
sets the later segments aside (``.stale``) instead of applying them to a
state they do not continue.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
from typing import TYPE_CHECKING, Any

import msgpack

from . import crypto
from .crypto import Keys

if TYPE_CHECKING:
    from .model import Filesystem

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
_AAD = b"megafs/v1/journal\x00"


class Journal:
    """One client's journal for one vault. Synchronous file I/O (page cache only)."""

    def __init__(self, cache_dir: str, keys: Keys) -> None:
        self.dir = os.path.join(cache_dir, "journal")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.keys = keys
        self._fd: int | None = None
        self._seq = 0
        self._recno = 0
        self.segment = max(self._segments(), default=0) + 1
        self.id = self._load_id()

    def _load_id(self) -> bytes:
        """This journal's random id, kept in its folder and recorded in each root it commits.

        The client id alone cannot tell journals apart: one client may mount
        with different cache folders, each holding a journal of its own.
        """
        path = os.path.join(self.dir, "id")
        with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
            jid = f.read()
            if len(jid) == crypto.ID_SIZE:
                return jid
        jid = crypto.new_id()
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(jid)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return jid

    def _segments(self) -> list[int]:
        out = []
        for name in os.listdir(self.dir):
            if name.endswith(".log"):
                try:
                    out.append(int(name[:-4]))
                except ValueError:
                    continue
        return sorted(out)

    def _path(self, seg: int) -> str:
        return os.path.join(self.dir, f"{seg:012d}.log")

    def _aad(self, seg: int, recno: int) -> bytes:
        return _AAD + self.keys.vault_id + struct.pack(">QQ", seg, recno)

    def append(self, record: list[Any]) -> None:
        """Seal and append one record to the current segment: all of it or none.

        A full disk may take part of a record: that part is cut off again and
        OSError(ENOSPC) raised, so a segment is always whole records numbered
        without gaps (replay stops at the first one that fails).
        """
        if self._fd is None:
            self._fd = os.open(
                self._path(self.segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
            )
            self._recno = 0
        plain = msgpack.packb(record, use_bin_type=True)
        sealed = crypto.seal(self.keys.cache, plain, self._aad(self.segment, self._recno))
        head = _LEN.pack(len(sealed))
        written = os.writev(self._fd, [head, sealed])  # no copy of the record to frame it
        if written != len(head) + len(sealed):
            os.ftruncate(self._fd, os.fstat(self._fd).st_size - written)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._path(self.segment))
        self._recno += 1

    def rotate(self) -> int:
        """Close the current segment; return its number (the commit's journal mark)."""
        mark = self.segment
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.segment += 1
        return mark

    def committed(self, mark: int) -> None:
        """A root recording ``mark`` is committed: drop segments up to it."""
        for seg in self._segments():
            if seg <= mark and seg != self.segment:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(seg))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _read(self, seg: int) -> tuple[list[list[Any]], bool]:
        """The records of segment ``seg`` before the first torn or unauthentic one,
        and whether the segment was whole (no such record)."""
        with open(self._path(seg), "rb") as f:
            data = f.read()
        out: list[list[Any]] = []
        pos = 0
        recno = 0
        while pos < len(data):
            n = _LEN.unpack_from(data, pos)[0] if pos + 4 <= len(data) else -1
            sealed = data[pos + 4 : pos + 4 + n]
            if len(sealed) != n:
                log.warning("journal segment %d ends in a torn record; ignoring its tail", seg)
                return out, False
            try:
                plain = crypto.open_sealed(self.keys.cache, sealed, self._aad(seg, recno))
            except crypto.AuthFailed:
                log.warning("journal segment %d record %d fails authentication", seg, recno)
                return out, False
            out.append(msgpack.unpackb(plain, raw=False, strict_map_key=False))
            pos += 4 + n
            recno += 1
        return out, True

    async def replay(self, fs: Filesystem, mark_client: bytes | None, mark: int) -> int:
        """Re-apply segments newer than the root's mark. Returns records applied.

        ``mark_client``/``mark`` come from the committed root. Segments at or
        below the mark are already committed and are deleted.
        """
        segs = self._segments()
        if not segs:
            return 0
        if mark_client is not None and mark_client != self.id:
            for seg in segs:
                if seg > 0:
                    os.rename(self._path(seg), self._path(seg) + ".stale")
            log.warning(
                "the vault was committed by another client (or with another cache folder) "
                "since this journal's last run; "
                "%d unuploaded journal segment(s) were kept in %s and not applied",
                len(segs),
                self.dir,
            )
            return 0
        applied = 0
        cut: int | None = None  # a segment that is not whole: nothing after it applies
        for seg in segs:
            if seg <= mark:
                os.unlink(self._path(seg))
                continue
            if cut is not None:
                os.rename(self._path(seg), self._path(seg) + ".stale")
                log.warning(
                    "journal segment %d not applied: segment %d before it is cut short "
                    "(a crashed machine?); kept in %s",
                    seg,
                    cut,
                    self.dir,
                )
                continue
            records, whole = self._read(seg)
            for rec in records:
                await fs.apply_record(rec)
                applied += 1
            if not whole:
                cut = seg
        self.segment = max(segs[-1], mark) + 1
        return applied
