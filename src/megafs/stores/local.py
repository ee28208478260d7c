"""A store in a local folder (a USB disk, or a folder a sync tool carries).

Objects are files under ``objects/`` in fan-out folders named by the first
two characters of the object name's last component; pointers are files
under ``pointers/``. Every write goes to a temporary file in the same folder,
is fsynced, renamed into place, and the folder is fsynced: a crash leaves the
old or the new file, never a torn one.

Pointer compare-and-swap holds an exclusive ``flock`` on ``pointers/.lock``
for the read-compare-rename sequence, so it is safe between processes on one
machine (and on network filesystems that honour flock). The version tag of a
pointer is the SHA-256 of its content.

File I/O runs in worker threads (``trio.to_thread``) so it never blocks the
trio loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

import trio

from ..errors import (
    NoSuchBucket,
    ObjectNotFound,
    PreconditionFailed,
    StoreAuthError,
    StoreError,
    StoreFull,
    StoreReadOnly,
)
from .base import Pointer, Store

T = TypeVar("T")

_LIMITER = trio.CapacityLimiter(16)


def _translate(e: OSError, what: str) -> StoreError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(f"local store is full while writing {what}: {e.strerror}")
    if e.errno == errno.EROFS:
        return StoreReadOnly(f"local store is read-only: {what}")
    if e.errno in (errno.EACCES, errno.EPERM):
        return StoreAuthError(f"permission denied on local store: {what}")
    return StoreError(f"local store I/O error on {what}: {e.strerror or e}")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs(path: str) -> None:
    """Flush the whole filesystem holding ``path`` (one syscall for many files)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _LIBC.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


_LIBC = ctypes.CDLL(None, use_errno=True)


def _atomic_write(path: str, data: bytes, *, durable: bool = True) -> None:
    """Write to a temporary name and rename into place: old or new, never torn.

    With ``durable`` the file and its folder are fsynced before returning;
    without, durability waits for the next :func:`_syncfs`.
    """
    folder = os.path.dirname(path)
    tmp = f"{path}.tmp.{os.getpid()}.{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)
    if durable:
        _fsync_dir(folder)


class LocalStore(Store):
    """Store in a local folder. ``root`` must exist (``create=True`` makes it)."""

    def __init__(self, root: str, *, create: bool = False) -> None:
        self.root = os.path.abspath(root)
        self.url = f"file://{self.root}"
        self._create = create
        self._dirs_made: set[str] = set()
        self._puts = 0  # objects written so far
        self._synced = 0  # of which known durable

    async def _run(self, fn: Callable[[], T], what: str) -> T:
        """Run blocking ``fn`` in a thread; OSError becomes the matching StoreError."""

        def guarded() -> T:
            try:
                return fn()
            except FileNotFoundError as e:
                if not os.path.isdir(self.root):
                    raise NoSuchBucket(
                        f"local store folder does not exist: {self.root}"
                    ) from None
                if e.filename and str(e.filename).startswith(
                    os.path.join(self.root, "objects")
                ):
                    raise ObjectNotFound(what) from None
                raise _translate(e, what) from None
            except OSError as e:
                raise _translate(e, what) from None

        return await trio.to_thread.run_sync(guarded, limiter=_LIMITER)

    def _obj_path(self, name: str) -> str:
        base = name.rsplit("/", 1)[-1]
        return os.path.join(self.root, "objects", base[:2], base)

    def _ptr_path(self, name: str) -> str:
        return os.path.join(self.root, "pointers", name)

    def _ensure_root(self) -> None:
        """The folder must exist (``create`` makes it); subfolders appear on first write."""
        if not os.path.isdir(self.root):
            if not self._create:
                raise FileNotFoundError(errno.ENOENT, "no such folder", self.root)
            os.makedirs(self.root, exist_ok=True)

    async def check(self) -> None:
        await self._run(self._ensure_root, self.root)

    async def put(self, name: str, data: bytes) -> None:
        path = self._obj_path(name)

        def work() -> None:
            folder = os.path.dirname(path)
            if folder not in self._dirs_made:
                if not os.path.isdir(self.root):
                    raise FileNotFoundError(errno.ENOENT, "no such folder", self.root)
                os.makedirs(folder, exist_ok=True)
                self._dirs_made.add(folder)
            _atomic_write(path, data, durable=False)

        await self._run(work, name)
        self._puts += 1

    async def sync(self) -> None:
        """One ``syncfs`` makes every object put so far durable (objects are
        renamed into place unsynced: a crash can leave them torn, but only
        objects no committed root references yet)."""
        target = self._puts
        if target > self._synced:
            await self._run(lambda: _syncfs(self.root), "sync")
            self._synced = max(self._synced, target)

    async def get(self, name: str) -> bytes:
        path = self._obj_path(name)

        def work() -> bytes:
            with open(path, "rb") as f:
                return f.read()

        return await self._run(work, name)

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        path = self._obj_path(name)

        def work() -> bytes:
            fd = os.open(path, os.O_RDONLY)
            try:
                return os.pread(fd, length, offset)
            finally:
                os.close(fd)

        return await self._run(work, name)

    async def delete(self, name: str) -> None:
        path = self._obj_path(name)

        def work() -> None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

        await self._run(work, name)

    async def delete_many(self, names: Sequence[str]) -> list[str]:
        """Unlink them all in one worker-thread job (one thread hand-off, not one each)."""
        paths = [(name, self._obj_path(name)) for name in names]

        def work() -> list[str]:
            failed = []
            for name, path in paths:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError:
                    failed.append(name)
            return failed

        return await self._run(work, f"{len(paths)} objects")

    async def list(self, prefix: str = "") -> AsyncIterator[tuple[str, int]]:
        objdir = os.path.join(self.root, "objects")

        def work() -> list[tuple[str, int]]:
            out = []
            try:
                fans = sorted(os.listdir(objdir))
            except FileNotFoundError:
                return []
            for fan in fans:
                d = os.path.join(objdir, fan)
                for entry in os.scandir(d):
                    if ".tmp." in entry.name or not entry.name.startswith(prefix):
                        continue
                    out.append((entry.name, entry.stat().st_size))
            return out

        for item in await self._run(work, "listing"):
            yield item

    async def read_pointer(self, name: str) -> Pointer | None:
        path = self._ptr_path(name)

        def work() -> Pointer | None:
            if not os.path.isdir(self.root):
                raise FileNotFoundError(errno.ENOENT, "no such folder", self.root)
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                return None
            return Pointer(data, hashlib.sha256(data).hexdigest())

        return await self._run(work, name)

    async def cas_pointer(self, name: str, data: bytes, expected: str | None) -> str:
        path = self._ptr_path(name)
        lockpath = os.path.join(self.root, "pointers", ".lock")

        def work() -> str:
            if not os.path.isdir(self.root):
                raise FileNotFoundError(errno.ENOENT, "no such folder", self.root)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            lfd = os.open(lockpath, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lfd, fcntl.LOCK_EX)
                try:
                    with open(path, "rb") as f:
                        current: str | None = hashlib.sha256(f.read()).hexdigest()
                except FileNotFoundError:
                    current = None
                if current != expected:
                    raise PreconditionFailed(f"pointer {name} changed concurrently")
                _atomic_write(path, data)
                return hashlib.sha256(data).hexdigest()
            finally:
                os.close(lfd)

        return await self._run(work, name)
