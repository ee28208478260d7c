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

A cache folder (this journal and the content cache) belongs to one vault,
as another vault's commits would delete its unreplayed segments. Its owner
record ``<cache dir>/owner`` is a magic line, the vault id and an AES-GCM
tag under the vault's cache key over both, so a record copied from another
vault's folder and edited to name this one does not authenticate.
:func:`claim_cache_dir` runs at every mount before anything in the folder is
touched: it refuses another vault's folder (:class:`LocalFolderError`), and
adopts a folder without a record (new, or made by older megafs) unless its
journal is another vault's. The journal's ``id`` file, too, holds the vault
id next to the journal id, and one naming another vault is refused; one of
the old form (the journal id alone) gets the vault id added.

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
from collections.abc import Generator, Iterator
from typing import Any

import msgpack

from ..errors import CacheFull, LocalFolderError
from ..format import crypto
from ..format.crypto import Keys

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
_AAD = b"megafs/v1/journal\x00"

#: The most record bytes the tail (:attr:`Journal.tail`) holds: beyond it the
#: tail is dropped and fsync commits instead (a device log object stays small).
TAIL_MAX = 4 << 20


def _segments(folder: str) -> list[int]:
    """The numbers of the ``<n>.log`` segments in journal folder ``folder``, sorted."""
    out = []
    for name in os.listdir(folder):
        if name.endswith(".log"):
            try:
                out.append(int(name[:-4]))
            except ValueError:
                continue
    return sorted(out)


def decode_record(plain: bytes) -> list[Any]:
    """A journal record from its plaintext (a segment's, or a device log's)."""
    rec: list[Any] = msgpack.unpackb(plain, raw=False, strict_map_key=False)
    return rec


def _aad(keys: Keys, seg: int, recno: int) -> bytes:
    return _AAD + keys.vault_id + struct.pack(">QQ", seg, recno)


def foreign_journal(cache_dir: str, keys: Keys) -> str | None:
    """Why the journal in ``cache_dir`` is not this vault's; None if it may be.

    It is another vault's if its ``id`` file names another vault, or if the
    first record of some segment is whole and fails authentication under
    this vault's cache key. Empty segments, segments cut inside their first
    record, and no journal at all prove nothing and pass. Reads only.
    """
    folder = os.path.join(cache_dir, "journal")
    try:
        with open(os.path.join(folder, "id"), "rb") as f:
            data = f.read()
        if len(data) == 2 * crypto.ID_SIZE and data[: crypto.ID_SIZE] != keys.vault_id:
            return f"its journal belongs to vault {data[: crypto.ID_SIZE].hex()}"
    except FileNotFoundError:
        pass
    try:
        segs = _segments(folder)
    except FileNotFoundError:
        return None
    for seg in segs:
        with open(os.path.join(folder, f"{seg:012d}.log"), "rb") as f:
            head = f.read(_LEN.size)
            if len(head) < _LEN.size:
                continue
            sealed = f.read(_LEN.unpack(head)[0])
        if len(sealed) != _LEN.unpack(head)[0]:
            continue
        try:
            crypto.open_sealed(keys.cache, sealed, _aad(keys, seg, 0))
        except crypto.AuthFailed:
            return f"its journal segment {seg} does not authenticate under this vault's key"
    return None


#: The owner record's file name in a cache folder, and its parts.
OWNER_FILE = "owner"
_OWNER_MAGIC = b"megafs cache folder v1\n"
_OWNER_AAD = b"megafs/v1/cache-owner\x00"
_OWNER_LEN = len(_OWNER_MAGIC) + crypto.ID_SIZE + crypto.OVERHEAD


def owner_record(keys: Keys) -> bytes:
    """The owner record of a cache folder that belongs to the vault of ``keys``."""
    tag = crypto.seal(keys.cache, b"", _OWNER_AAD + keys.vault_id)
    return _OWNER_MAGIC + keys.vault_id + tag


def claim_cache_dir(cache_dir: str, keys: Keys) -> None:
    """Make sure ``cache_dir`` is, or becomes, the cache folder of this vault only.

    Creates the folder (0700) if missing. With an owner record
    (:data:`OWNER_FILE`), it must name this vault and authenticate under its
    cache key. Without one (a new folder, or one made before owner records),
    the folder is adopted, and the record written (0600), unless its journal
    is another vault's (:func:`foreign_journal`). Otherwise
    raises LocalFolderError and changes nothing in the folder.
    Run it before anything else in the folder is touched.
    """
    path = os.path.join(cache_dir, OWNER_FILE)
    try:
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            record = None
        else:
            with os.fdopen(fd, "rb") as f:
                record = f.read(_OWNER_LEN + 1)
        if record is None:
            why = foreign_journal(cache_dir, keys)
            if why is not None:
                raise LocalFolderError(
                    f"cache folder {cache_dir} is not this vault's: {why}; "
                    "give each vault its own --cache-dir"
                )
            tmp = f"{path}.tmp.{os.getpid()}"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(owner_record(keys))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            return
    except OSError as e:
        raise LocalFolderError(f"cache folder {cache_dir}: {e.strerror or e}") from None
    _check_owner(cache_dir, record, keys)


def _check_owner(cache_dir: str, record: bytes, keys: Keys) -> None:
    """Raise LocalFolderError unless ``record`` is this vault's owner record."""
    owner = record[len(_OWNER_MAGIC) : len(_OWNER_MAGIC) + crypto.ID_SIZE]
    if len(record) != _OWNER_LEN or not record.startswith(_OWNER_MAGIC):
        problem = "its owner record is damaged"
    elif owner != keys.vault_id:
        raise LocalFolderError(
            f"cache folder {cache_dir} belongs to vault {owner.hex()}, not to this one "
            f"({keys.vault_id.hex()}); give each vault its own --cache-dir"
        )
    else:
        try:
            crypto.open_sealed(
                keys.cache, record[len(_OWNER_MAGIC) + crypto.ID_SIZE :], _OWNER_AAD + owner
            )
            return
        except crypto.AuthFailed:
            problem = "its owner record names this vault but does not authenticate"
    raise LocalFolderError(
        f"cache folder {cache_dir} is not this vault's: {problem}; use another --cache-dir "
        f"(or remove {os.path.join(cache_dir, OWNER_FILE)} if the folder is yours)"
    )


def sync_files(folder: str, paths: list[str]) -> None:
    """Make these journal segments (and their names in ``folder``) durable on
    the local disk: fdatasync each, then fsync the folder. A segment deleted
    meanwhile was committed, so it needs nothing. Blocks on the disk (run it
    in a worker thread)."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _full(e: OSError, path: str) -> CacheFull | OSError:
    """What a failed write to the cache folder raises: CacheFull (errno
    ENOSPC) for a full disk or quota, else the OSError itself, whose errno
    the FUSE adapter passes on."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return CacheFull(f"{e.strerror}: {path}")
    return e


class Journal:
    """One client's journal for one vault. Synchronous file I/O (page cache only,
    until :func:`sync_files` makes segments durable for ``fsync=local``)."""

    def __init__(self, cache_dir: str, keys: Keys) -> None:
        self.dir = os.path.join(cache_dir, "journal")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.keys = keys
        self._fd: int | None = None
        self._seq = 0
        self._recno = 0
        #: segments appended to since the last :meth:`take_unsynced`
        self._unsynced: set[int] = set()
        #: The records not yet in a device log object, in order, as
        #: (segment, record number, plaintext): what the next fsync puts in
        #: the store (docs/concurrency.md, "The device log").
        self.tail: list[tuple[int, int, bytes]] = []
        self._tail_bytes = 0
        #: The tail overflowed (:data:`TAIL_MAX`) in this segment: records up
        #: to it are in no log object, so fsync commits until a commit covers it.
        self.overflow: int | None = None
        self.segment = max(self._segments(), default=0) + 1
        #: (segment, record number) of the record :meth:`pending` gave last
        self.replaying: tuple[int, int] | None = None
        self.id = self._load_id()

    def _load_id(self) -> bytes:
        """This journal's random id, kept in its folder and recorded in each root it commits.

        The client id alone cannot tell journals apart: one client may mount
        with different cache folders, each holding a journal of its own. The
        ``id`` file is ``vault id || journal id``; one naming another vault
        raises LocalFolderError, one of the old form (journal id alone) is
        rewritten with this vault's id, keeping the journal id.
        """
        path = os.path.join(self.dir, "id")
        vault_id = self.keys.vault_id
        jid = None
        with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
            data = f.read()
            if len(data) == 2 * crypto.ID_SIZE:
                if data[: crypto.ID_SIZE] != vault_id:
                    raise LocalFolderError(
                        f"the journal in {self.dir} belongs to vault "
                        f"{data[: crypto.ID_SIZE].hex()}, not to this one ({vault_id.hex()}); "
                        "give each vault its own cache folder"
                    )
                return data[crypto.ID_SIZE :]
            if len(data) == crypto.ID_SIZE:
                jid = data
        jid = jid or crypto.new_id()
        tmp = f"{path}.tmp.{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                f.write(vault_id + jid)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            raise LocalFolderError(
                f"cannot write the journal's id file {path}: {e.strerror or e}"
            ) from None
        return jid

    def has_after(self, mark_client: bytes | None, mark: int) -> bool:
        """Whether this journal holds records a root with this mark does not
        cover: a non-empty segment after ``mark``, of this journal."""
        if mark_client is not None and mark_client != self.id:
            return False
        return any(
            seg > mark and os.path.getsize(self.segment_path(seg)) > 0
            for seg in self._segments()
        )

    def _segments(self) -> list[int]:
        return _segments(self.dir)

    def segment_path(self, seg: int) -> str:
        """The file of segment ``seg`` (it need not exist)."""
        return os.path.join(self.dir, f"{seg:012d}.log")

    def _aad(self, seg: int, recno: int) -> bytes:
        return _aad(self.keys, seg, recno)

    def append(self, record: list[Any]) -> None:
        """Seal and append one record to the current segment: all of it or none.

        A full disk may take part of a record: that part is cut off again and
        CacheFull (errno ENOSPC) raised, so a segment is always whole records numbered
        without gaps (replay stops at the first one that fails).
        """
        path = self.segment_path(self.segment)
        if self._fd is None:
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            except OSError as e:
                raise _full(e, path) from None
            self._recno = 0
        plain = msgpack.packb(record, use_bin_type=True)
        sealed = crypto.seal(self.keys.cache, plain, self._aad(self.segment, self._recno))
        head = _LEN.pack(len(sealed))
        try:
            written = os.writev(self._fd, [head, sealed])  # no copy of the record to frame it
        except OSError as e:
            raise _full(e, path) from None
        if written != len(head) + len(sealed):
            os.ftruncate(self._fd, os.fstat(self._fd).st_size - written)
            raise CacheFull(f"{os.strerror(errno.ENOSPC)}: {self.segment_path(self.segment)}")
        if self.overflow is None:
            self.tail.append((self.segment, self._recno, plain))
            self._tail_bytes += len(plain)
            if self._tail_bytes > TAIL_MAX:
                self.tail, self._tail_bytes = [], 0
                self.overflow = self.segment
        else:
            self.overflow = self.segment
        self._recno += 1
        self._unsynced.add(self.segment)

    def take_tail(self) -> list[tuple[int, int, bytes]]:
        """The records not yet in a device log object (:attr:`tail`); forgets
        them. No I/O."""
        tail, self.tail, self._tail_bytes = self.tail, [], 0
        return tail

    def restore_tail(self, taken: list[tuple[int, int, bytes]]) -> None:
        """Give back what :meth:`take_tail` took, when putting it failed."""
        if self.overflow is None:
            self.tail[:0] = taken
            self._tail_bytes += sum(len(r[2]) for r in taken)
            if self._tail_bytes > TAIL_MAX:
                self.overflow = self.tail[-1][0]
                self.tail, self._tail_bytes = [], 0

    def fill(self, records: list[tuple[int, int, bytes]]) -> int:
        """Make the local segments hold at least ``records`` (a device log
        series read back from the store: whole segments from their first
        record, in order): a segment that holds fewer whole records than the
        log (a crashed machine cut it) is rewritten from the log, durably.
        If the series' last segment is rewritten, the local segments after it
        are set aside (``.stale``): the crash cut that segment, so what
        followed it locally does not continue what the log holds. Returns
        how many records were restored. Blocks on the disk."""
        by_seg: dict[int, list[bytes]] = {}
        for seg, recno, plain in records:
            got = by_seg.setdefault(seg, [])
            if recno != len(got):
                raise ValueError(f"device log skips record {len(got)} of segment {seg}")
            got.append(plain)
        restored = 0
        for seg, plains in by_seg.items():
            path = self.segment_path(seg)
            have = self.read_segment(seg)[0] if os.path.exists(path) else []
            want = [decode_record(p) for p in plains]
            if have[: len(want)] == want:
                continue  # the local segment holds the log's records (and maybe more)
            tmp = f"{path}.tmp"
            with open(tmp, "wb") as f:
                for recno, plain in enumerate(plains):
                    sealed = crypto.seal(self.keys.cache, plain, self._aad(seg, recno))
                    f.write(_LEN.pack(len(sealed)) + sealed)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            restored += max(0, len(plains) - len(have))
            if seg == max(by_seg):
                for later in self._segments():
                    if later > seg:
                        self._stale(later)
                        log.warning(
                            "journal segment %d not applied: segment %d before it was cut "
                            "(a crashed machine?) and restored only up to the device log's "
                            "end; kept in %s",
                            later,
                            seg,
                            self.dir,
                        )
        if restored:
            sync_files(self.dir, [])
            self.segment = max(self.segment, max(by_seg) + 1)
        return restored

    def adopt_id(self, journal_id: bytes, *, borrowed: bool = False) -> None:
        """Take over journal ``journal_id`` (this device's from another cache
        folder, or a lost device's, read back from its log): an empty journal
        only (:meth:`set_aside` first). ``borrowed`` keeps a marker
        (:attr:`borrowed`) until the next call, which gives the journal an id
        of its own again: until then the folder shares its journal id with
        another one."""
        if self._segments():
            raise LocalFolderError(f"the journal in {self.dir} is not empty")
        marker = os.path.join(self.dir, "borrowed")
        if borrowed:
            with open(marker, "wb") as f:
                f.flush()
                os.fsync(f.fileno())
        path = os.path.join(self.dir, "id")
        with open(path + ".tmp", "wb") as f:
            f.write(self.keys.vault_id + journal_id)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
        if not borrowed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(marker)
        sync_files(self.dir, [])
        self.id = journal_id

    @property
    def borrowed(self) -> bool:
        """The journal id was taken over from another cache folder
        (:meth:`adopt_id`) and not yet replaced by one of its own."""
        return os.path.exists(os.path.join(self.dir, "borrowed"))

    def _stale(self, seg: int) -> None:
        """Keep segment ``seg`` aside, never to be replayed (``*.stale``)."""
        os.rename(self.segment_path(seg), self.segment_path(seg) + ".stale")

    def set_aside(self, why: str) -> None:
        """Rename every segment to ``*.stale`` (kept, never replayed), with a
        warning saying ``why``."""
        segs = self._segments()
        for seg in segs:
            self._stale(seg)
        if segs:
            log.warning(
                "%d journal segment(s) kept in %s and not applied: %s", len(segs), self.dir, why
            )

    def take_unsynced(self) -> list[str]:
        """The paths of the segments written since the last call (for
        :func:`sync_files`); forgets them. No I/O."""
        segs, self._unsynced = sorted(self._unsynced), set()
        return [self.segment_path(seg) for seg in segs]

    def restore_unsynced(self, paths: list[str]) -> None:
        """Give back what :meth:`take_unsynced` took, when syncing it failed."""
        for path in paths:
            name = os.path.basename(path)
            if name.endswith(".log") and name[:-4].isdigit():
                self._unsynced.add(int(name[:-4]))

    def rotate(self) -> int:
        """Close the current segment; return its number (the commit's journal mark)."""
        mark = self.segment
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.segment += 1
        return mark

    def committed(self, mark: int) -> None:
        """A root recording ``mark`` is committed: drop segments up to it, and
        the tail's records in them."""
        if self.tail and self.tail[0][0] <= mark:
            self.tail = [r for r in self.tail if r[0] > mark]
            self._tail_bytes = sum(len(r[2]) for r in self.tail)
        if self.overflow is not None and self.overflow <= mark:
            self.overflow = None
        for seg in self._segments():
            if seg <= mark and seg != self.segment:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.segment_path(seg))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def read_segment(self, seg: int) -> tuple[list[list[Any]], bool]:
        """The records of segment ``seg`` before the first torn or unauthentic one,
        and whether the segment was whole (no such record)."""
        with open(self.segment_path(seg), "rb") as f:
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
            out.append(decode_record(plain))
            pos += 4 + n
            recno += 1
        return out, True

    def pending(
        self, mark_client: bytes | None, mark: int, covered: int | None = None
    ) -> Generator[list[Any], None, None]:
        """The records of segments newer than the root's mark, in order, for
        the caller to apply (the journal knows nothing of what they mean).

        ``mark_client``/``mark`` come from the committed root; ``covered``,
        if given, is this journal's own mark in it (this device's record):
        segments up to it are deleted even when the rest is set aside. Segments at or
        below the mark are already committed and are deleted; segments of
        another journal, and those after one cut short, are set aside
        (``.stale``) with a warning. Synchronous file I/O; once the iteration
        ends (or is abandoned), new records go to a segment after them all.
        """
        segs = self._segments()
        if not segs:
            self.segment = max(self.segment, mark + 1)
            return
        try:
            yield from self._pending(segs, mark_client, mark, covered)
        finally:
            self.segment = max(segs[-1], mark) + 1

    def cut_replay(self, why: str) -> None:
        """The record :meth:`pending` gave last cannot be applied (``why``):
        set its segment and every later one aside (``.stale``), as after a
        torn record. Call before ending the iteration."""
        assert self.replaying is not None, "no record was given yet"
        first = self.replaying[0]
        for seg in self._segments():
            if seg >= first:
                self._stale(seg)
        log.warning(
            "journal replay stopped in segment %s (%s; a crashed machine?): it and the "
            "segments after it were not applied further and are kept in %s",
            first,
            why,
            self.dir,
        )

    def _pending(
        self, segs: list[int], mark_client: bytes | None, mark: int, covered: int | None
    ) -> Iterator[list[Any]]:
        if mark_client is not None and mark_client != self.id:
            kept = 0
            for seg in segs:
                if covered is not None and seg <= covered:
                    os.unlink(self.segment_path(seg))  # in a root already
                elif seg > 0:
                    self._stale(seg)
                    kept += 1
            if kept:
                log.warning(
                    "the vault was committed by another client (or with another cache folder) "
                    "since this journal's last run; "
                    "%d unuploaded journal segment(s) were kept in %s and not applied",
                    kept,
                    self.dir,
                )
            return
        cut: int | None = None  # a segment that is not whole: nothing after it applies
        for seg in segs:
            if seg <= mark:
                os.unlink(self.segment_path(seg))
                continue
            if cut is not None:
                self._stale(seg)
                log.warning(
                    "journal segment %d not applied: segment %d before it is cut short "
                    "(a crashed machine?); kept in %s",
                    seg,
                    cut,
                    self.dir,
                )
                continue
            records, whole = self.read_segment(seg)
            for recno, rec in enumerate(records):
                self.replaying = (seg, recno)
                yield rec
            if not whole:
                cut = seg
