"""A store in a local folder (a USB disk, or a folder a sync tool carries).

Objects are files under ``objects/`` in fan-out folders named by the first
two characters of the object name; pointers are files under ``pointers/``.
Every write goes to a temporary file in the same folder and is renamed into
place, so a crash leaves the old or the new file, never a torn one; except a
*staged* object (:meth:`LocalStore.stage`), written piece by piece under its
own name while a file is written, which a crash may leave partial (its
blocks authenticate, or the journal's replay does not get past them). A pointer
is fsynced before the rename and its folder after it; objects are not when
written: :meth:`LocalStore.sync` (before every root swap) fdatasyncs the
objects put since the last sync and their folders.

Whoever can write to the folder (a sync tool's other devices, a borrowed USB
disk) is not trusted. Below the store's own folder (which may itself be
reached through a symbolic link of the user's choosing) nothing is ever
followed: each folder is opened relative to its parent with ``O_NOFOLLOW``
and every file with ``O_NOFOLLOW | O_NONBLOCK``, then ``fstat``\\ ed and
refused unless it is a regular file. So a symlinked ``objects``, ``pointers``
or fan-out folder, or a FIFO, a device or a symlink in place of an object or
pointer, is never listed, read, written through or deleted through. Reads
read at most their maximum size plus one byte.

Pointer compare-and-swap holds an exclusive ``flock`` on ``pointers/.lock``
for the read-compare-rename sequence, so it is safe between processes on one
machine (and on network filesystems that honour flock). The version tag of a
pointer is the SHA-256 of its content.

File I/O runs in worker threads (``trio.to_thread``) so that it does not
block the trio loop, with one exception: a ranged read of at most 256 KiB
opens and reads its object in the trio thread while the disk has been
answering fast (:class:`~megafs.nowait.InlineReads`), since the hand-off
costs more than such a read; a slow disk sends reads back to the threads.

May not touch: the format or the vault (objects are opaque bytes: no keys, no
crypto), any layer above the stores, or anything outside the store's own
folder; of megafs it imports only :mod:`megafs.errors`, :mod:`megafs.nowait`,
:mod:`.base` and :mod:`.files` (the safe file operations it is built on).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import stat
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

import trio

from ..errors import (
    NoSuchBucket,
    ObjectNotFound,
    PreconditionFailed,
    StoreError,
    UsageError,
)
from ..nowait import InlineReads, KeptFiles, dup_or_none
from .base import (
    MAX_OBJECT_SIZE,
    MAX_PAGE_SIZE,
    MAX_POINTER_SIZE,
    Pointer,
    Refused,
    Store,
    check_object_name,
    check_pointer_name,
    check_share_name,
    is_object_name,
)
from .files import (
    Refusal,
    SyncLost,
    atomic_write,
    guarded,
    kind,
    open_dir,
    open_regular,
    read_capped,
    timed,
)

T = TypeVar("T")

log = logging.getLogger(__name__)

_LIMITER = trio.CapacityLimiter(16)

#: Objects a local store keeps open for reads (random reads of blocks): a
#: 1 GiB file's chunks, or a quarter of the descriptors the process may have.
OPEN_OBJECTS = KeptFiles.limit_for(4, 16, 1024)

_FAN = re.compile(r"[0-9a-f]{2}")


class LocalStore(Store):
    """Store in a local folder. ``root`` must exist (``create=True`` makes it)."""

    def __init__(self, root: str, *, create: bool = False) -> None:
        self.root = os.path.abspath(root)
        self.url = f"file://{self.root}"
        self._create = create
        #: objects put since the last sync, by fan-out folder: not durable yet
        self._unsynced: dict[str, set[str]] = {}
        #: objects kept open for reads, least recently used first (trio thread only)
        self._open = KeptFiles(OPEN_OBJECTS)
        #: whether a small read may wait for the disk in the trio thread
        self.inline_reads = InlineReads()
        self._sync_lock = trio.Lock()  # one sync at a time (each takes what is owed)
        self._sync_lost: StoreError | None = None  # a failed fsync: writes may be lost
        #: objects being staged (:meth:`stage`), by name: their descriptors
        self._staged: dict[str, int] = {}

    async def _run(self, fn: Callable[[], T], what: str, *, reading: bool = True) -> T:
        """Run blocking ``fn`` in a worker thread, errors as :func:`guarded` says."""
        return await trio.to_thread.run_sync(guarded, fn, what, reading, limiter=_LIMITER)

    def _note_read(self, took: float, what: str) -> None:
        """A read took ``took`` seconds: tell :attr:`inline_reads`."""
        if self.inline_reads.note(took, trio.current_time()):
            log.debug("slow local read (%s: %.1f ms): worker threads for a while", what, took * 1e3)

    def _open_root(self, stack: contextlib.ExitStack) -> int:
        """Open the store's folder (a symlink here is the user's choice, so followed)."""
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise NoSuchBucket(f"local store folder does not exist: {self.root}") from None
        stack.callback(os.close, fd)
        return fd

    def _folder(self, stack: contextlib.ExitStack, *parts: str, create: bool = False) -> int | None:
        """Open ``root/parts...`` one folder at a time, never through a symlink.

        The descriptors close with ``stack``. None if a folder is missing
        (unless ``create``); Refusal if one is not a real folder.
        """
        fd = self._open_root(stack)
        entry = ""
        for part in parts:
            entry = f"{entry}/{part}" if entry else part
            sub = open_dir(fd, part, entry, create=create)
            if sub is None:
                return None
            stack.callback(os.close, sub)
            fd = sub
        return fd

    def _ensure_root(self) -> None:
        """The folder must exist (``create`` makes it); subfolders appear on first write."""
        if not os.path.isdir(self.root):
            if not self._create:
                raise NoSuchBucket(f"local store folder does not exist: {self.root}")
            os.makedirs(self.root, exist_ok=True)

    async def check(self) -> None:
        await self._run(self._ensure_root, self.root)

    async def put(self, name: str, data: bytes) -> None:
        await self._put(name, data, durable=False)
        self._unsynced.setdefault(name[:2], set()).add(name)

    async def _put(self, name: str, data: bytes, *, durable: bool) -> None:
        """Write object ``name`` in one worker job (:func:`atomic_write`)."""
        check_object_name(name)
        self._open.forget(name)  # (never rewritten by megafs; a test or a repair may)
        if len(data) > MAX_OBJECT_SIZE:
            raise ValueError(f"object {name} is larger than {MAX_OBJECT_SIZE} bytes")

        def work() -> None:
            with contextlib.ExitStack() as stack:
                folder = self._folder(stack, "objects", name[:2], create=True)
                assert folder is not None
                atomic_write(folder, name, data, durable=durable)

        await self._run(work, name, reading=False)

    def can_stage(self) -> bool:
        return True

    def stage(self, name: str, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` of object ``name`` under its own name
        (no temporary name: it is whole only once every piece is written),
        with ``pwrite`` in the calling thread, as the journal's appends are:
        a hand-off would cost more than a write to the page cache. The file
        stays open until :meth:`unstage`. Owed to the next :meth:`sync`
        like a put. Raises StoreError (a full disk: its errno)."""
        fd = self._staged.get(name)
        if fd is None:
            check_object_name(name)

            def make() -> int:
                with contextlib.ExitStack() as stack:
                    folder = self._folder(stack, "objects", name[:2], create=True)
                    assert folder is not None
                    # a new name: O_EXCL makes sure it is a regular file of ours
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                    return os.open(name, flags, 0o600, dir_fd=folder)

            fd = guarded(make, name, reading=False)
            self._staged[name] = fd
            self._open.forget(name)
        self._unsynced.setdefault(name[:2], set()).add(name)  # (again after each sync)

        def write() -> None:
            view = memoryview(data)
            at = offset
            while view:
                n = os.pwrite(fd, view, at)
                view, at = view[n:], at + n

        guarded(write, name, reading=False)

    def unstage(self, name: str) -> None:
        fd = self._staged.pop(name, None)
        if fd is not None:
            os.close(fd)

    async def sync(self) -> None:
        """Make every object put so far durable: ``fdatasync`` each object put
        since the last sync and ``fsync`` each fan-out folder one was renamed
        into, one worker job per folder, then ``objects/`` itself (objects
        are renamed into place, or staged in place, unsynced: a crash can
        leave them torn, but only objects no committed root references yet). Not ``syncfs``,
        which would also write out everything else the disk holds unwritten:
        the journal's segments, which the commit then deletes (they are
        mostly never written), and other programs' files.

        One sync at a time. Objects a sync could not reach (a folder that
        became a symlink: StoreError) stay owed, so every later sync fails
        too until the folder is put right. A failed ``fsync`` itself means
        the kernel may have dropped writes it reported once: every later
        sync fails (StoreError) until the store is opened again.
        """
        async with self._sync_lock:
            if self._sync_lost is not None:
                raise self._sync_lost
            todo, self._unsynced = self._unsynced, {}
            if not todo:
                return  # (an fsync's check that no staged block is owed)
            failed: list[Exception] = []

            async def one(fan: str, names: set[str]) -> None:
                try:
                    await self._run(lambda: self._sync_folder(fan, names), "sync", reading=False)
                except SyncLost as e:
                    self._sync_lost = StoreError(f"local store lost writes in objects/{fan}: {e}")
                    failed.append(self._sync_lost)
                except BaseException as e:
                    self._unsynced.setdefault(fan, set()).update(names)  # still owed
                    if not isinstance(e, Exception):
                        raise  # cancelled: what did not finish stays owed
                    failed.append(e)

            async with trio.open_nursery() as nursery:
                for fan, names in todo.items():
                    nursery.start_soon(one, fan, names)
            if not failed:
                await one("", set())  # objects/ itself: the fan-out folders' names
            for e in failed[1:]:
                log.warning("local store sync: %s", e)
            if failed:
                raise failed[0]

    def _sync_folder(self, fan: str, names: set[str]) -> None:
        """fdatasync the objects ``names`` of fan-out folder ``fan`` that are
        still there, then the folder (``fan`` empty: ``objects/`` alone).
        Worker thread. A failed fsync raises SyncLost."""
        with contextlib.ExitStack() as stack:
            folder = self._folder(stack, "objects", *([fan] if fan else []))
            if folder is None:
                return  # everything in it was deleted since
            for name in sorted(names):
                try:
                    fd, _ = open_regular(folder, name, f"objects/{fan}/{name}")
                except FileNotFoundError:
                    continue  # deleted since: nothing to make durable
                try:
                    os.fdatasync(fd)
                except OSError as e:
                    raise SyncLost(e.strerror or str(e)) from None
                finally:
                    os.close(fd)
            try:
                os.fsync(folder)
            except OSError as e:
                raise SyncLost(e.strerror or str(e)) from None

    def _open_object(self, stack: contextlib.ExitStack, name: str) -> tuple[int, int]:
        """``(fd, size)`` of object ``name``, closed with ``stack``; ObjectNotFound if absent."""
        folder = self._folder(stack, "objects", name[:2])
        if folder is None:
            raise ObjectNotFound(name)
        try:
            fd, size = open_regular(folder, name, f"objects/{name[:2]}/{name}")
        except FileNotFoundError:
            raise ObjectNotFound(name) from None
        stack.callback(os.close, fd)
        return fd, size

    async def aclose(self) -> None:
        """Close the objects kept open for reads, and any being staged. Idempotent."""
        self._open.close()
        for name in list(self._staged):
            self.unstage(name)

    # --- the share area: shares/<id>.html --------------------------------------

    async def put_durable(self, name: str, data: bytes) -> None:
        """:meth:`put`, durable at once: the file and its folder fsynced, in
        one worker job (a device log object, once per fsync)."""
        await self._put(name, data, durable=True)

    async def make_durable(self, name: str) -> None:
        """fsync object ``name`` and its folder: one object, not the whole
        disk (a folder's own name was made durable when it was created)."""
        check_object_name(name)

        def work() -> None:
            with contextlib.ExitStack() as stack:
                folder = self._folder(stack, "objects", name[:2])
                if folder is None:
                    raise ObjectNotFound(name)
                fd, _ = self._open_object(stack, name)  # a regular file, never a FIFO
                os.fdatasync(fd)
                os.fsync(folder)

        await self._run(work, name, reading=False)

    async def put_page(self, share: str, data: bytes) -> None:
        check_share_name(share)

        def work() -> None:
            with contextlib.ExitStack() as stack:
                folder = self._folder(stack, "shares", create=True)
                assert folder is not None
                atomic_write(folder, f"{share}.html", data)

        await self._run(work, f"share {share}", reading=False)

    async def get_page(self, share: str) -> bytes | None:
        check_share_name(share)

        def work() -> bytes | None:
            with contextlib.ExitStack() as stack:
                folder = self._folder(stack, "shares")
                if folder is None:
                    return None
                entry = f"shares/{share}.html"
                try:
                    fd, size = open_regular(folder, f"{share}.html", entry)
                except FileNotFoundError:
                    return None
                stack.callback(os.close, fd)
                return read_capped(fd, size, MAX_PAGE_SIZE, entry)

        return await self._run(work, f"share {share}")

    async def delete_page(self, share: str) -> None:
        check_share_name(share)

        def work() -> None:
            with contextlib.ExitStack() as stack:
                folder = self._folder(stack, "shares")
                if folder is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f"{share}.html", dir_fd=folder)

        await self._run(work, f"share {share}", reading=False)

    async def check_share_urls(self, *, base_url: str | None, expires_in: int) -> None:
        if not base_url:
            raise UsageError(
                "a link to a local-folder vault needs --base-url: the URL where a web "
                "server publishes this folder (a link needs a store the recipient can reach)"
            )
        if not base_url.startswith(("http://", "https://")):
            raise UsageError(f"--base-url must be an http:// or https:// URL: {base_url}")

    async def share_urls(
        self, share: str, objects: Sequence[str], *, base_url: str | None, expires_in: int
    ) -> tuple[str, Sequence[str]]:
        """Under ``base_url`` only: the page is ``BASE/shares/<id>.html``, the
        objects ``../objects/<xx>/<name>`` relative to it."""
        await self.check_share_urls(base_url=base_url, expires_in=expires_in)
        check_share_name(share)
        assert base_url is not None
        for name in objects:
            check_object_name(name)
        page = f"{base_url.rstrip('/')}/shares/{share}.html"
        return page, [f"../objects/{name[:2]}/{name}" for name in objects]

    async def get(self, name: str, max_size: int = MAX_OBJECT_SIZE) -> bytes:
        check_object_name(name)
        limit = min(max_size, MAX_OBJECT_SIZE)

        def work() -> bytes:
            with contextlib.ExitStack() as stack:
                fd, size = self._open_object(stack, name)
                return read_capped(fd, size, limit, name)

        return await self._run(work, name)

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        """A range of an object. Served at once, in the caller's thread, when
        the object was opened before and the range is in the page cache (a
        read that cannot block, ``RWF_NOWAIT``): a random read of a block
        then costs no hand-off to a worker thread (which costs more than
        the read). Otherwise opened (unless kept open) and read in the trio
        thread too when the range is small and the disk has been fast
        (:attr:`inline_reads`: this blocks the loop for the open and the
        read), else in a worker thread; the object is kept open for the next
        reads (:data:`OPEN_OBJECTS` at most)."""
        check_object_name(name)
        if length <= 0:
            return b""
        cached = self._open.read(name, offset, length)
        if cached is not None:
            return cached

        def work() -> tuple[bytes, int]:
            with contextlib.ExitStack() as stack:
                fd, _ = self._open_object(stack, name)
                return os.pread(fd, length, offset), dup_or_none(fd)

        if self.inline_reads.allowed(length, trio.current_time()):
            # blocks the loop for one read (an open too, unless kept open);
            # timed even when it fails (a disk that woke up only to fail)
            def inline() -> tuple[bytes, int]:
                kept = self._open.pread(name, offset, length)
                return (kept, -1) if kept is not None else work()

            started = time.monotonic()
            try:
                data, fd = guarded(inline, name, True)
            finally:
                self._note_read(time.monotonic() - started, name)
        else:
            (data, fd), took = await self._run(timed(work), name)
            self._note_read(took, name)
        self._open.keep(name, fd)
        return data

    def forget_cached(self, name: str) -> bool:
        return self._open.forget(name)

    async def delete(self, name: str) -> None:
        check_object_name(name)
        self._open.forget(name)

        def work() -> None:
            with contextlib.ExitStack() as stack:
                folder = self._folder(stack, "objects", name[:2])
                if folder is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=folder)

        await self._run(work, name, reading=False)

    async def delete_many(self, names: Sequence[str]) -> list[str]:
        """Unlink them all in one worker-thread job (one thread hand-off, not one each)."""
        for name in names:
            check_object_name(name)
        for name in names:
            self._open.forget(name)
        todo = list(names)

        def work() -> list[str]:
            failed = []
            with contextlib.ExitStack() as stack:
                objects = self._folder(stack, "objects")
                if objects is None:
                    return []
                fans: dict[str, int | None] = {}
                for name in todo:
                    try:
                        if name[:2] not in fans:
                            fan = open_dir(objects, name[:2], f"objects/{name[:2]}")
                            if fan is not None:
                                stack.callback(os.close, fan)
                            fans[name[:2]] = fan
                        folder = fans[name[:2]]
                        if folder is not None:
                            os.unlink(name, dir_fd=folder)
                    except FileNotFoundError:
                        pass
                    except (OSError, Refusal):
                        failed.append(name)
            return failed

        return await self._run(work, f"{len(todo)} objects", reading=False)

    async def list(
        self,
        prefix: str = "",
        *,
        refused: list[Refused] | None = None,
        ages: dict[str, float] | None = None,
    ) -> AsyncIterator[tuple[str, int]]:
        """Scan ``objects/`` and its fan-out folders (never through a symlink).

        Refused: a symlink or non-folder where ``objects`` or a fan-out folder
        belongs, a fan-out folder not named by two hex characters, and in a
        fan-out folder anything but a regular file whose name is an object
        name starting with that folder's name. Temporary files are skipped.
        """

        def work() -> tuple[list[tuple[str, int]], list[Refused]]:
            out: list[tuple[str, int]] = []
            bad: list[Refused] = []
            with contextlib.ExitStack() as stack:
                try:
                    objects = self._folder(stack, "objects")
                except Refusal as r:
                    return out, [r.refused]
                if objects is None:
                    return out, bad
                with os.scandir(objects) as it:
                    fans = sorted(it, key=lambda e: e.name)
                for fan in fans:
                    if not fan.name.startswith(prefix[:2]):
                        continue
                    where = f"objects/{fan.name}"
                    if _FAN.fullmatch(fan.name) is None:
                        mode = fan.stat(follow_symlinks=False).st_mode
                        bad.append(Refused(where, f"{kind(mode)}, not a fan-out folder"))
                        continue
                    try:
                        folder = open_dir(objects, fan.name, where)
                    except Refusal as r:
                        bad.append(r.refused)
                        continue
                    if folder is None:
                        continue  # removed meanwhile
                    stack.callback(os.close, folder)
                    with os.scandir(folder) as entries:
                        for entry in entries:
                            name = entry.name
                            if ".tmp." in name or not name.startswith(prefix):
                                continue
                            spot = f"{where}/{name}"
                            if not is_object_name(name):
                                bad.append(Refused(spot, "not an object name"))
                                continue
                            if not name.startswith(fan.name):
                                bad.append(Refused(spot, "in the wrong fan-out folder"))
                                continue
                            try:
                                st = entry.stat(follow_symlinks=False)
                            except FileNotFoundError:
                                continue
                            if not stat.S_ISREG(st.st_mode):
                                bad.append(Refused(spot, kind(st.st_mode)))
                                continue
                            out.append((name, st.st_size))
                            times[name] = st.st_mtime
            return out, bad

        times: dict[str, float] = {}
        items, bad = await self._run(work, "listing")
        if ages is not None:
            ages.update(times)
        if refused is not None:
            refused.extend(bad)
        elif bad:
            log.warning("listing of %s refused %d entries (first: %s)", self.url, len(bad), bad[0])
        for item in items:
            yield item

    async def read_pointer(self, name: str, max_size: int = MAX_POINTER_SIZE) -> Pointer | None:
        check_pointer_name(name)
        limit = min(max_size, MAX_POINTER_SIZE)

        def work() -> Pointer | None:
            with contextlib.ExitStack() as stack:
                folder = self._folder(stack, "pointers")
                if folder is None:
                    return None
                try:
                    fd, size = open_regular(folder, name, f"pointers/{name}")
                except FileNotFoundError:
                    return None
                stack.callback(os.close, fd)
                data = read_capped(fd, size, limit, name)
            return Pointer(data, hashlib.sha256(data).hexdigest())

        return await self._run(work, name)

    async def cas_pointer(self, name: str, data: bytes, expected: str | None) -> str:
        check_pointer_name(name)
        if len(data) > MAX_POINTER_SIZE:
            raise ValueError(f"pointer {name} is larger than {MAX_POINTER_SIZE} bytes")

        def work() -> str:
            with contextlib.ExitStack() as stack:
                folder = self._folder(stack, "pointers", create=True)
                assert folder is not None
                lock_flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                try:
                    lfd = os.open(".lock", lock_flags, 0o600, dir_fd=folder)
                except OSError as e:
                    if e.errno == errno.ELOOP:
                        raise Refusal("pointers/.lock", kind(stat.S_IFLNK)) from None
                    raise
                stack.callback(os.close, lfd)
                mode = os.fstat(lfd).st_mode
                if not stat.S_ISREG(mode):
                    raise Refusal("pointers/.lock", kind(mode))
                fcntl.flock(lfd, fcntl.LOCK_EX)
                try:
                    fd, size = open_regular(folder, name, f"pointers/{name}")
                except FileNotFoundError:
                    current: str | None = None
                else:
                    stack.callback(os.close, fd)
                    old = read_capped(fd, size, MAX_POINTER_SIZE, name)
                    current = hashlib.sha256(old).hexdigest()
                if current != expected:
                    raise PreconditionFailed(f"pointer {name} changed concurrently")
                atomic_write(folder, name, data)
                return hashlib.sha256(data).hexdigest()

        return await self._run(work, name, reading=False)
