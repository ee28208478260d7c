"""The pyfuse3 adapter: the only module that imports pyfuse3.

Each handler translates kernel requests into calls on the filesystem model
(:class:`megafs.fs.filesystem.Filesystem`) and nothing else. Errors are mapped to
errno in exactly one place, :func:`_errno_for`: model errors carry their
errno, store and integrity failures become EIO (or ENOSPC/EROFS/EACCES)
with one log line naming the object. No other exception may escape a
handler, because under trio it would stop ``pyfuse3.main``.

Lookup counts: ``lookup``, ``create``, ``mkdir``, ``mknod``, ``symlink``,
``link`` and each accepted ``readdir_reply`` add one reference via
``Filesystem.incref``; ``forget`` drops them. "." and ".." are never returned
by readdir, because the kernel does not count them.

The kernel session (``pyfuse3.init``, ``main``, ``terminate``, ``close``)
is :class:`FuseSession`, so that the mount lifecycle (:mod:`megafs.mount`)
needs no pyfuse3 of its own.

Kernel caching is used on purpose: entry and attribute timeouts are long
and ``keep_cache`` keeps page-cache contents across opens. When another
device's commit is merged in, :meth:`Operations.start_invalidator` tells the
kernel to forget the entries and inodes that changed (from a task of its
own, never inside a request handler).

May not touch: the vault, Content, the stores, the journal or cache, the
model's components (table, namespace, data path, committer): only the
public methods of :class:`~megafs.fs.views.Views` (the live
``Filesystem`` and the read-only past roots under ``.snapshots``) and
:class:`~megafs.fs.inode.Attr`; nor
:mod:`megafs.mount` or :mod:`megafs.cli`.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import math
import os
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio
from pyfuse3 import FileHandleT, FileInfo, FUSEError, InodeT

from ..errors import (
    CacheFull,
    CommitConflict,
    FsError,
    IntegrityError,
    MegafsError,
    MountError,
    StoreAuthError,
    StoreError,
    StoreFull,
    StoreReadOnly,
    first_leaf,
)
from ..fs.filesystem import Filesystem
from ..fs.inode import Attr
from ..fs.views import Views

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

ENTRY_TIMEOUT = 60.0
ATTR_TIMEOUT = 60.0

#: POSIX ACLs reach a FUSE filesystem as these xattrs. megafs does not implement
#: ACLs: storing them as plain xattrs would make ``cp -a`` (which sets the mode
#: through the ACL when it can) believe a mode was applied when it was not.
_ACL_XATTRS = frozenset({b"system.posix_acl_access", b"system.posix_acl_default"})

#: The SELinux label. A host with SELinux answers it in the kernel and never
#: asks the filesystem; without SELinux, a label megafs does not hold is
#: answered "not supported" rather than "absent" (a label copied in with
#: ``rsync -X`` is stored and returned as any other xattr).
_SELINUX_XATTR = b"security.selinux"


def _errno_for(e: BaseException) -> int:
    """The one place where exceptions become errno values.

    Of an exception group (a commit's parallel uploads fail together) one
    leaf is mapped: an unexpected one if any, so that it is never hidden.
    """
    e = first_leaf(e, (MegafsError, OSError))
    if isinstance(e, FsError):
        return e.errno
    if isinstance(e, CacheFull):
        log.error("local I/O error: %s", e)
        return errno.ENOSPC
    if isinstance(e, IntegrityError):
        log.error("%s", e)
        return errno.EIO
    if isinstance(e, StoreFull):
        log.error("store full: %s", e)
        return errno.ENOSPC
    if isinstance(e, StoreReadOnly):
        log.error("store is read-only: %s", e)
        return errno.EROFS
    if isinstance(e, StoreAuthError):
        log.error("store denied access: %s", e)
        return errno.EACCES
    if isinstance(e, StoreError | CommitConflict):
        log.error("%s", e)
        return errno.EIO
    if isinstance(e, OSError) and e.errno:
        log.error("local I/O error: %s", e)
        return e.errno
    log.exception("internal error (please report): %r", e)
    return errno.EIO


#: The names of the request handlers (every method wrapped by :func:`_boundary`).
_HANDLERS: list[str] = []


def _boundary(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Wrap a handler so that only FUSEError leaves it.

    Also counts the handlers in flight: when the last one returns, no
    operation of the model holds an inode across an await, and the model may
    evict clean inode pages (:meth:`Filesystem.evict`).
    """
    _HANDLERS.append(fn.__name__)

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        ops = args[0]
        assert isinstance(ops, Operations)
        ops.active += 1
        try:
            return await fn(*args, **kwargs)
        except FUSEError:
            raise
        except Exception as e:
            raise FUSEError(_errno_for(e)) from None
        finally:
            ops.active -= 1
            if not ops.active:
                try:
                    ops.fs.evict()
                except Exception:  # never let it stop pyfuse3.main; memory only
                    log.exception("evicting inode pages failed (please report)")

    return wrapper


#: The arguments a traced request shows (:func:`_traced`): label and how;
#: names, link targets and xattr values are left out (they are the user's data).
_TRACED_ARGS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "inode": ("ino", str),
    "parent_inode": ("parent", str),
    "parent_inode_old": ("parent", str),
    "new_parent_inode": ("new_parent", str),
    "parent_inode_new": ("new_parent", str),
    "fh": ("fh", str),
    "start_id": ("after", str),
    "off": ("off", str),
    "size": ("size", str),
    "buf": ("size", lambda b: str(len(b))),
    "value": ("size", lambda b: str(len(b))),
    "inode_list": ("inodes", lambda v: str(len(v))),
    "mode": ("mode", lambda m: f"{m:o}"),
    "flags": ("flags", hex),
    "datasync": ("datasync", str),
}


def _outcome(result: Any) -> str:
    """A handler's answer in a trace line: its size, its number, the inode found."""
    if isinstance(result, bytes):
        return f"{len(result)} bytes"
    if isinstance(result, int):
        return str(result)
    if isinstance(result, tuple):  # create: (FileInfo, EntryAttributes)
        return ", ".join(_outcome(r) for r in result)
    if isinstance(result, FileInfo):
        return f"fh={result.fh}"
    if isinstance(result, pyfuse3.EntryAttributes):
        return f"ino={result.st_ino}"
    return "ok"


def _traced(
    name: str, handler: Callable[..., Coroutine[Any, Any, Any]]
) -> Callable[..., Coroutine[Any, Any, Any]]:
    """``handler`` (a bound request handler) logging each request at DEBUG,
    once it is answered: ``fuse: read(fh=3, off=0, size=131072) 131072 bytes
    0.84 ms``, ``fuse: getxattr(ino=5) ENODATA 0.05 ms`` (the errno's name
    instead of the result; a lookup of a missing name answers ``ino=0``)."""
    params = list(inspect.signature(handler).parameters)
    shown = [(i, p, *_TRACED_ARGS[p]) for i, p in enumerate(params) if p in _TRACED_ARGS]

    @functools.wraps(handler)
    async def traced(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        outcome = "cancelled"
        try:
            result = await handler(*args, **kwargs)
            outcome = _outcome(result)
            return result
        except FUSEError as e:
            outcome = errno.errorcode.get(e.errno, str(e.errno))
            raise
        finally:
            ms = (time.perf_counter() - start) * 1000
            what = ", ".join(
                f"{label}={fmt(args[i] if i < len(args) else kwargs[p])}"
                for i, p, label, fmt in shown
                if i < len(args) or p in kwargs
            )
            log.debug("fuse: %s(%s) %s %.2f ms", name, what, outcome, ms)

    return traced


@dataclass(frozen=True)
class Options:
    """Mount options that change what the adapter reports."""

    read_only: bool = False
    uid: int | None = None
    gid: int | None = None
    umask: int | None = None
    #: ``readdir`` of the root lists ``.snapshots``
    snapdir_visible: bool = False


class Operations(pyfuse3.Operations):
    """pyfuse3 handlers over a :class:`Filesystem`. All run in the trio thread.

    With DEBUG logging on when it is made (``megafs mount -d``), every
    request is logged with its main arguments, its result and how long it
    took (:func:`_traced`); otherwise the handlers are not wrapped at all.
    """

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, fs: Filesystem, options: Options | None = None) -> None:
        super().__init__()
        #: the live tree and, under ``.snapshots``, the kept past roots
        self.opts = options or Options()
        self.fs = Views(fs, snapdir_visible=self.opts.snapdir_visible)
        self._handles: dict[int, int] = {}
        self._next_fh = 1
        self.active = 0  # handlers in flight
        if log.isEnabledFor(logging.DEBUG):  # decided once: no cost without -d
            for name in _HANDLERS:
                setattr(self, name, _traced(name, getattr(self, name)))

    # --- other devices' changes ------------------------------------------

    def start_invalidator(self, nursery: trio.Nursery) -> None:
        """From now on, after each merge of another device's commit, tell the
        kernel to forget the names and the inodes (attributes and cached
        pages) it changed, so that the next access asks this filesystem.
        Runs in ``nursery``; only what the kernel holds a reference to is
        invalidated. Never blocks a request handler."""
        send, recv = trio.open_memory_channel[tuple[set[int], set[tuple[int, bytes]]]](
            math.inf
        )
        self.fs.on_merge(lambda changed, entries: send.send_nowait((changed, entries)))
        nursery.start_soon(self._invalidate, recv)

    async def _invalidate(
        self, recv: trio.MemoryReceiveChannel[tuple[set[int], set[tuple[int, bytes]]]]
    ) -> None:
        async for changed, entries in recv:
            for parent, name in sorted(entries):
                if self.fs.known(parent):
                    pyfuse3.invalidate_entry_async(InodeT(parent), name, ignore_enoent=True)
            for ino in sorted(changed):
                if not self.fs.known(ino):
                    continue
                try:
                    # may block (writeback): in a thread, as pyfuse3 advises
                    await trio.to_thread.run_sync(pyfuse3.invalidate_inode, InodeT(ino), False)
                except OSError as e:  # the kernel forgot it meanwhile
                    log.debug("invalidating inode %d: %s", ino, e)

    # --- helpers ------------------------------------------------------

    def _entry(self, a: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = InodeT(a.ino)
        e.generation = 0
        e.entry_timeout = ENTRY_TIMEOUT
        e.attr_timeout = ATTR_TIMEOUT
        mode = a.mode
        if self.opts.umask is not None:
            mode &= ~self.opts.umask
        e.st_mode = pyfuse3.ModeT(mode)
        e.st_nlink = a.nlink
        e.st_uid = self.opts.uid if self.opts.uid is not None else a.uid
        e.st_gid = self.opts.gid if self.opts.gid is not None else a.gid
        e.st_rdev = a.rdev
        e.st_size = a.size
        e.st_blksize = 65536
        e.st_blocks = a.blocks
        e.st_atime_ns = a.atime_ns
        e.st_mtime_ns = a.mtime_ns
        e.st_ctime_ns = a.ctime_ns
        return e

    def _check_rw(self) -> None:
        if self.opts.read_only:
            raise FUSEError(errno.EROFS)

    def _new_fh(self, ino: int) -> FileHandleT:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = ino
        return FileHandleT(fh)

    def _ino(self, fh: int) -> int:
        try:
            return self._handles[fh]
        except KeyError:
            raise FUSEError(errno.EBADF) from None

    # --- lookups and attributes ---------------------------------------------

    @_boundary
    async def lookup(
        self, parent_inode: InodeT, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """Adds one lookup reference on success (also for "." and ".."); a
        missing name is answered with a cacheable negative entry (inode 0)."""
        try:
            a = await self.fs.lookup(parent_inode, name)
        except FsError as e:
            if e.errno != errno.ENOENT:
                raise
            # A negative entry: the kernel remembers that the name does not
            # exist (it forgets when it creates the name through us).
            neg = pyfuse3.EntryAttributes()
            neg.st_ino = InodeT(0)
            neg.entry_timeout = ENTRY_TIMEOUT
            return neg
        self.fs.incref(a.ino)
        return self._entry(a)

    @_boundary
    async def forget(self, inode_list: Any) -> None:
        """Drops lookup references; may purge unlinked inodes (and so await)."""
        for ino, n in inode_list:
            await self.fs.forget(ino, n)

    @_boundary
    async def getattr(
        self, inode: InodeT, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        return self._entry(await self.fs.getattr(inode))

    @_boundary
    async def setattr(
        self,
        inode: InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self._check_rw()
        a = await self.fs.setattr(
            inode,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        return self._entry(a)

    @_boundary
    async def readlink(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.fs.readlink(inode)

    # --- directories ----------------------------------------------------

    @_boundary
    async def opendir(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> FileHandleT:
        a = await self.fs.getattr(inode)
        if not (a.mode & 0o170000 == 0o040000):
            raise FUSEError(errno.ENOTDIR)
        return FileHandleT(inode)

    @_boundary
    async def readdir(self, fh: FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """READDIRPLUS: each accepted entry adds one lookup reference."""
        after = start_id
        while True:
            batch = await self.fs.readdir(fh, after)
            if not batch:
                return
            for name, a, cookie in batch:
                if not pyfuse3.readdir_reply(token, name, self._entry(a), cookie):
                    return
                self.fs.incref(a.ino)
                after = cookie

    @_boundary
    async def releasedir(self, fh: FileHandleT) -> None:
        return None

    @_boundary
    async def fsyncdir(self, fh: FileHandleT, datasync: bool) -> None:
        await self.fs.fsync()

    @_boundary
    async def mkdir(
        self, parent_inode: InodeT, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._check_rw()
        a = await self.fs.mkdir(parent_inode, name, mode, ctx.uid, ctx.gid)
        self.fs.incref(a.ino)
        return self._entry(a)

    @_boundary
    async def mknod(
        self, parent_inode: InodeT, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._check_rw()
        a = await self.fs.mknod(parent_inode, name, mode, rdev, ctx.uid, ctx.gid)
        self.fs.incref(a.ino)
        return self._entry(a)

    @_boundary
    async def symlink(
        self, parent_inode: InodeT, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._check_rw()
        a = await self.fs.symlink(parent_inode, name, target, ctx.uid, ctx.gid)
        self.fs.incref(a.ino)
        return self._entry(a)

    @_boundary
    async def link(
        self, inode: InodeT, new_parent_inode: InodeT, new_name: bytes,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self._check_rw()
        a = await self.fs.link(inode, new_parent_inode, new_name)
        self.fs.incref(a.ino)
        return self._entry(a)

    @_boundary
    async def unlink(self, parent_inode: InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._check_rw()
        await self.fs.unlink(parent_inode, name)

    @_boundary
    async def rmdir(self, parent_inode: InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._check_rw()
        await self.fs.rmdir(parent_inode, name)

    @_boundary
    async def rename(
        self,
        parent_inode_old: InodeT,
        name_old: bytes,
        parent_inode_new: InodeT,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self._check_rw()
        await self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    # --- files ------------------------------------------------------------

    @_boundary
    async def open(self, inode: InodeT, flags: int, ctx: pyfuse3.RequestContext) -> FileInfo:
        """Honours O_TRUNC: libfuse asks the kernel for atomic_o_trunc, so the kernel
        passes O_TRUNC here instead of sending a setattr first."""
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            self._check_rw()
        if flags & os.O_TRUNC:
            await self.fs.truncate(inode, 0)
        await self.fs.open(inode)
        return FileInfo(fh=self._new_fh(inode), keep_cache=True)

    @_boundary
    async def create(
        self,
        parent_inode: InodeT,
        name: bytes,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[FileInfo, pyfuse3.EntryAttributes]:
        """Creates and opens: one lookup reference and one open handle."""
        self._check_rw()
        a = await self.fs.create(parent_inode, name, mode, ctx.uid, ctx.gid)
        self.fs.incref(a.ino)
        await self.fs.open(a.ino)
        return FileInfo(fh=self._new_fh(a.ino), keep_cache=True), self._entry(a)

    @_boundary
    async def read(self, fh: FileHandleT, off: int, size: int) -> bytes:
        """May block on the store for blocks that are not cached."""
        return await self.fs.read(self._ino(fh), off, size)

    @_boundary
    async def write(self, fh: FileHandleT, off: int, buf: bytes) -> int:
        """Lands in memory (and the journal); may block when dirty data is over the limit."""
        self._check_rw()
        return await self.fs.write(self._ino(fh), off, buf)

    @_boundary
    async def flush(self, fh: FileHandleT) -> None:
        return None

    @_boundary
    async def fsync(self, fh: FileHandleT, datasync: bool) -> None:
        """Returns once everything written so far is durable in the store (one
        device log object, or a commit: :meth:`Committer.fsync`)."""
        await self.fs.fsync(self._ino(fh))

    @_boundary
    async def release(self, fh: FileHandleT) -> None:
        ino = self._handles.pop(fh, None)
        if ino is not None:
            await self.fs.release(ino)

    # --- extended attributes -------------------------------------------------

    @_boundary
    async def setxattr(
        self, inode: InodeT, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        self._check_rw()
        if name in _ACL_XATTRS:
            raise FUSEError(errno.EOPNOTSUPP)
        await self.fs.setxattr(inode, name, value)

    @_boundary
    async def getxattr(self, inode: InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        """ACLs, and an SELinux label the file does not have, are answered
        EOPNOTSUPP, not ENODATA: GNU ``ls -l`` then stops asking for every
        other file of the mount, which saves two round trips per entry (the
        kernel forwards both questions to the filesystem each time)."""
        if name in _ACL_XATTRS:
            raise FUSEError(errno.EOPNOTSUPP)
        try:
            return await self.fs.getxattr(inode, name)
        except FsError as e:
            if e.errno == errno.ENODATA:
                if name == _SELINUX_XATTR:
                    raise FUSEError(errno.EOPNOTSUPP) from None
                raise FUSEError(pyfuse3.ENOATTR) from None
            raise

    @_boundary
    async def listxattr(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return await self.fs.listxattr(inode)

    @_boundary
    async def removexattr(
        self, inode: InodeT, name: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        self._check_rw()
        if name in _ACL_XATTRS:
            raise FUSEError(errno.EOPNOTSUPP)
        try:
            await self.fs.removexattr(inode, name)
        except FsError as e:
            if e.errno == errno.ENODATA:
                raise FUSEError(pyfuse3.ENOATTR) from None
            raise

    # --- filesystem -------------------------------------------------------

    @_boundary
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = self.fs.statfs()
        s = pyfuse3.StatvfsData()
        s.f_bsize = st["bsize"]
        s.f_frsize = st["bsize"]
        s.f_blocks = st["blocks"]
        s.f_bfree = st["bfree"]
        s.f_bavail = st["bfree"]
        s.f_files = st["files"]
        s.f_ffree = st["ffree"]
        s.f_favail = st["ffree"]
        s.f_namemax = st["namemax"]
        return s


class FuseSession:
    """The kernel side of one mount: pyfuse3's ``init``, ``main``, ``terminate``
    and ``close``, in that order. pyfuse3 serves one mount per process, so at
    most one session is open at a time.

    This touches no lock and no lookup count itself; :meth:`run` answers
    kernel requests with the handlers of the :class:`Operations` given to
    :meth:`open` (which take those locks and counts as they document).
    """

    def __init__(self, mountpoint: str) -> None:
        self.mountpoint = mountpoint

    @classmethod
    def open(cls, ops: Operations, mountpoint: str, options: Iterable[str]) -> FuseSession:
        """Mount ``ops`` at ``mountpoint`` with FUSE mount ``options``.

        Raises MountError if the kernel refuses. Once this returns, the
        session must be closed (:meth:`close`), whatever happens.
        """
        try:
            pyfuse3.init(ops, mountpoint, set(options))
        except RuntimeError as e:
            raise MountError(f"could not mount {mountpoint}: {e}") from None
        return cls(mountpoint)

    async def run(self) -> None:
        """Answer kernel requests until the kernel unmounts or :meth:`terminate`."""
        await pyfuse3.main()

    def terminate(self) -> None:
        """Make :meth:`run` return (from a signal handler task, say)."""
        pyfuse3.terminate()

    def close(self) -> None:
        """Unmount and end the session; call once :meth:`run` has returned or failed."""
        pyfuse3.close(unmount=True)
