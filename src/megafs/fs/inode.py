"""An inode in memory, and the attributes it reports.

Owns: :class:`Inode` (one file, folder, symlink or special file as the
filesystem model holds it: attributes, xattrs, its content key, and its body
once loaded), :class:`Attr` (the plain snapshot getattr returns) and
:class:`Mutex` (the per-inode lock). No I/O.

May not touch: the store, the vault, Content, the journal, or other inodes
(the filesystem model links them); of the vault it knows only
:class:`~megafs.vault.content.ChunkRef`.
"""

from __future__ import annotations

import stat
from typing import Any, NamedTuple, Protocol

import trio
from sortedcontainers import SortedDict  # type: ignore[import-untyped]

from ..errors import IntegrityError
from ..format import crypto
from ..vault.content import ChunkRef

#: The root directory's inode number.
ROOT_INO = 1


class Attr(NamedTuple):
    """What getattr returns: a plain snapshot of an inode's attributes (a
    tuple: a folder listing makes one per entry)."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int

    @property
    def blocks(self) -> int:
        return (self.size + 511) // 512


class Mutex:
    """A trio lock whose uncontended acquisition does not yield to the scheduler.

    ``async with trio.Lock()`` always passes through the scheduler, even when
    nobody holds the lock: a run-loop iteration on every write. Contended,
    this waits exactly as a trio.Lock does (fair, FIFO).
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = trio.Lock()

    def locked(self) -> bool:
        return self._lock.locked()

    async def __aenter__(self) -> None:
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()


class KeyOpener(Protocol):
    """Unwraps the content key of an inode decoded from a record
    (:class:`~megafs.fs.records.RecordCodec`)."""

    def unwrap_key(self, node: Inode, origin: str) -> bytes: ...


class Inode:
    """One inode in memory. Body fields are valid only when ``body_loaded``.

    The content key of an inode read from a record is unwrapped (and so
    authenticated) on first use of :attr:`file_key`, not when its page
    loads (unless the record holds inline content, which is opened then):
    listing a folder of files that are empty or stored in chunks touches no
    key. A key that fails then raises IntegrityError, naming the object the
    record came from. So that this never happens halfway through a change,
    the data path reads the key before a write or a truncation changes
    anything, a merge copies keys with :meth:`take_key` (which never
    unwraps), and fsck unwraps every key it walks past."""

    __slots__ = (
        "_file_key",
        "_key_opener",
        "_key_origin",
        "_lock",
        "atime",
        "body_dirty",
        "body_loaded",
        "body_ref",
        "chunks",
        "ctime",
        "dirty",
        "entries",
        "file_id",
        "gid",
        "ino",
        "mode",
        "mtime",
        "next_cookie",
        "nlink",
        "order",
        "parent",
        "rdev",
        "size",
        "small",
        "target",
        "uid",
        "wrapped_key",
        "xattrs",
    )

    def __init__(
        self, ino: int, mode: int, uid: int, gid: int, now: int = 0, file_id: bytes | None = None
    ) -> None:
        self.ino = ino
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.nlink = 1
        self.size = 0
        self.rdev = 0
        self.atime = self.mtime = self.ctime = now
        self.file_id = crypto.new_id() if file_id is None else file_id
        self._file_key: bytes | None = None
        self._key_opener: KeyOpener | None = None
        self._key_origin = ""
        #: ``file_key`` as wrapped in the inode record, kept so that a record
        #: written again reuses it rather than sealing the key once more
        self.wrapped_key: bytes | None = None
        self.xattrs: dict[bytes, bytes] = {}
        self.body_ref: bytes | None = None
        self.body_loaded = True
        self.body_dirty = True
        self.chunks: dict[int, ChunkRef] = {}
        self.dirty: dict[int, bytearray] = {}
        self.small: bytes | None = None
        self.entries: dict[bytes, tuple[int, int]] = {}
        self.order: Any = None  # cookie -> name (a SortedDict), directories only
        self.next_cookie = 3  # 1 and 2 are "." and ".."
        self.parent = ROOT_INO
        self.target = b""
        self._lock: Mutex | None = None

    @property
    def file_key(self) -> bytes | None:
        """The content key (regular files); unwrapped on first use."""
        if self._key_opener is not None:
            self._file_key = self._key_opener.unwrap_key(self, self._key_origin)
            self._key_opener = None
        return self._file_key

    @file_key.setter
    def file_key(self, key: bytes | None) -> None:
        self._file_key = key
        self._key_opener = None

    def key_from(self, wrapped: bytes, opener: KeyOpener, origin: str) -> None:
        """The content key is ``wrapped``, to be unwrapped by ``opener`` when
        first used (``origin``: the object the record came from)."""
        self.wrapped_key = wrapped
        self._key_opener = opener
        self._key_origin = origin

    def take_key(self, src: Inode) -> None:
        """Take ``src``'s file id and content key as they are: a key not yet
        unwrapped stays so (copying never fails on a key)."""
        self.file_id, self.wrapped_key = src.file_id, src.wrapped_key
        self._file_key, self._key_opener, self._key_origin = (
            src._file_key,
            src._key_opener,
            src._key_origin,
        )

    def require_key(self) -> bytes:
        """The content key, unwrapped now if it is not yet: IntegrityError if
        it fails authentication (or, a bug, if the inode has none)."""
        key = self.file_key
        if key is None:
            raise IntegrityError(f"inode {self.ino}", "regular file without a content key")
        return key

    @property
    def has_key(self) -> bool:
        """Whether the inode has a content key (without unwrapping it)."""
        return self._file_key is not None or self._key_opener is not None

    @property
    def locked(self) -> bool:
        return self._lock is not None and self._lock.locked()

    @property
    def lock(self) -> Mutex:
        """The lock of this file's data (made on first use: most inodes never need one)."""
        if self._lock is None:
            self._lock = Mutex()
        return self._lock

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    def attr(self) -> Attr:
        return Attr(
            self.ino,
            self.mode,
            self.nlink,
            self.uid,
            self.gid,
            self.rdev,
            self.size,
            self.atime,
            self.mtime,
            self.ctime,
        )

    def add_entry(self, name: bytes, ino: int) -> None:
        cookie = self.next_cookie
        self.next_cookie += 1
        self.entries[name] = (ino, cookie)
        if self.order is None:
            self.order = SortedDict()
        self.order[cookie] = name
        self.body_dirty = True

    def remove_entry(self, name: bytes) -> int:
        ino, cookie = self.entries.pop(name)
        del self.order[cookie]
        self.body_dirty = True
        return ino
