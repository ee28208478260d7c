"""The live tree and the kept past roots under one inode space.

The mount shows the live filesystem, plus a hidden read-only folder
``.snapshots`` at its root (not listed by ``readdir`` of the root unless
``-o snapdir=visible``, so
``find``, ``du`` and backups of the mount do not walk it; ``cd .snapshots``
and ``ls .snapshots/`` work). It holds one folder per kept root
(docs/history.md), named by its UTC time (``2026-12-05T021040Z``, with
``.2``, ``.3``... for several roots in one second, and ``_NAME`` for a
pinned one), each a read-only :class:`~.filesystem.Filesystem` opened
lazily on that root: opening one costs one store request, and walking it
costs what walking the live tree does.

``mkdir .snapshots/NAME`` pins the current state as NAME (a commit);
``rmdir .snapshots/X`` unpins a pinned root (the policy then decides when it
goes). The attributes of ``.snapshots`` itself are the history's controls:
``user.megafs.retention`` reads and sets the policy, setting
``user.megafs.prune`` applies it now, and ``user.megafs.pruned`` tells what
that dropped and freed ("ROOTS OBJECTS BYTES"), and ``user.megafs.deleted``
lists what was deleted between kept roots (JSON; :mod:`.trash`). Every other change under
``.snapshots`` is EROFS.

Inode numbers: the live tree's are the vault's (below 2**62). ``.snapshots``
is :data:`SNAPDIR`; an inode of a past root gets a number from
:data:`SNAPDIR` + 1 up when the kernel first learns of it, kept while the
kernel holds a lookup reference to it.

Lookup counts: :meth:`incref` and :meth:`forget` count the kernel's
references to past inodes here (and pass them on to the past filesystem);
a number with no reference left is forgotten.

May not touch: pyfuse3 (this is the model side of the adapter), the store,
the vault's objects (past roots are read through their own read-only
Filesystem), the live filesystem's components (only its public methods).

Concurrency: trio, one thread, like the filesystem.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import stat
import time
from collections import OrderedDict
from typing import Any

from ..errors import FsError
from ..vault.history import Entry
from ..vault.retention import Policy
from .filesystem import Filesystem
from .inode import ROOT_INO, Attr
from .keeper import PruneResult
from .trash import deleted

log = logging.getLogger(__name__)

#: The inode number of ``.snapshots``; past inodes are numbered above it.
SNAPDIR = 1 << 63
SNAPDIR_NAME = b".snapshots"
#: Its readdir cookie in the root, with ``-o snapdir=visible``.
SNAPDIR_COOKIE = 2
#: Attributes of ``.snapshots`` that read and change the history's settings.
RETENTION_XATTR = b"user.megafs.retention"
PRUNE_XATTR = b"user.megafs.prune"
PRUNED_XATTR = b"user.megafs.pruned"
DELETED_XATTR = b"user.megafs.deleted"
#: The largest attribute value Linux hands over (XATTR_SIZE_MAX).
XATTR_MAX = 65536
#: Past filesystems kept open with no inode of theirs known to the kernel.
IDLE_PAST = 8
_PIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@-]{0,63}")


def folder_names(entries: list[Entry]) -> dict[bytes, Entry]:
    """The folder name of each kept root, in generation order."""
    out: dict[bytes, Entry] = {}
    seen: dict[str, int] = {}
    for e in sorted(entries, key=lambda e: e.gen):
        stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime(e.time_ns // 10**9))
        n = seen[stamp] = seen.get(stamp, 0) + 1
        name = stamp if n == 1 else f"{stamp}.{n}"
        if e.name is not None:
            name += f"_{e.name}"
        out[name.encode()] = e
    return out


def _erofs() -> FsError:
    return FsError(errno.EROFS, "the past is read-only")


class Views:
    """The filesystem the adapter serves: the live tree, and ``.snapshots``."""

    def __init__(self, live: Filesystem, *, snapdir_visible: bool = False) -> None:
        self.live = live
        #: list ``.snapshots`` in the root (``-o snapdir=visible``)
        self.snapdir_visible = snapdir_visible
        #: inode number -> (generation, past inode); and back
        self._map: dict[int, tuple[int, int]] = {}
        self._rev: dict[tuple[int, int], int] = {}
        self._refs: dict[int, int] = {}
        self._next = SNAPDIR + 1
        #: generation -> its open past filesystem (most recently used last)
        self._past: OrderedDict[int, Filesystem] = OrderedDict()
        self._entries: dict[int, Entry] = {}
        self._pruned = PruneResult()
        self._names: dict[bytes, Entry] | None = None
        self._listed = 0  # the live root's generation when listed

    # --- inode numbers -------------------------------------------------------

    @staticmethod
    def virtual(ino: int) -> bool:
        return ino >= SNAPDIR

    def _number(self, gen: int, ino: int) -> int:
        key = (gen, ino)
        got = self._rev.get(key)
        if got is None:
            got = self._rev[key] = self._next
            self._map[got] = key
            self._next += 1
        return got

    def _resolve(self, ino: int) -> tuple[int, int]:
        try:
            return self._map[ino]
        except KeyError:
            raise FsError(errno.ESTALE, "a past inode the kernel no longer holds") from None

    async def _open_past(self, gen: int) -> Filesystem:
        fs = self._past.get(gen)
        if fs is not None:
            self._past.move_to_end(gen)
            return fs
        entry = self._entries.get(gen)
        if entry is None:
            await self._listing()
            entry = self._entries.get(gen)
            if entry is None:
                raise FsError(errno.ESTALE, "that past root is no longer kept")
        fs = self._past[gen] = await self.live.past(entry)
        self._trim()
        return fs

    def _trim(self) -> None:
        busy = {g for g, _ in self._map.values()}
        idle = [g for g in self._past if g not in busy]
        for g in idle[: max(0, len(idle) - IDLE_PAST)]:
            del self._past[g]

    async def _listing(self) -> dict[bytes, Entry]:
        """The kept roots by folder name; read again only once the live root
        changed (``ls -l .snapshots`` looks every folder up)."""
        gen = self.live.root.generation
        if self._names is None or gen != self._listed:
            self._names = folder_names(await self.live.history())
            self._entries = {e.gen: e for e in self._names.values()}
            self._listed = gen
        return self._names

    def _snapdir_attr(self) -> Attr:
        t = max((e.time_ns for e in self._entries.values()), default=time.time_ns())
        return Attr(SNAPDIR, stat.S_IFDIR | 0o555, 2, 0, 0, 0, 0, t, t, t)

    def _past_root_attr(self, entry: Entry, live_root: Attr) -> Attr:
        t = entry.time_ns
        return Attr(
            self._number(entry.gen, ROOT_INO),
            stat.S_IFDIR | 0o555,
            2,
            live_root.uid,
            live_root.gid,
            0,
            0,
            t,
            t,
            t,
        )

    async def _past_attr(self, gen: int, a: Attr) -> Attr:
        if a.ino == ROOT_INO:
            entry = self._entries[gen]
            return self._past_root_attr(entry, await self.live.getattr(ROOT_INO))
        return a._replace(ino=self._number(gen, a.ino))

    # --- lookup counts --------------------------------------------------------

    def incref(self, ino: int, n: int = 1) -> None:
        if not self.virtual(ino):
            self.live.incref(ino, n)
            return
        self._refs[ino] = self._refs.get(ino, 0) + n

    async def forget(self, ino: int, n: int) -> None:
        if not self.virtual(ino):
            await self.live.forget(ino, n)
            return
        left = self._refs.get(ino, 0) - n
        if left > 0:
            self._refs[ino] = left
            return
        self._refs.pop(ino, None)
        key = self._map.pop(ino, None)
        if key is not None:
            del self._rev[key]
        self._trim()

    def known(self, ino: int) -> bool:
        return not self.virtual(ino) and self.live.known(ino)

    # --- reading ---------------------------------------------------------------

    async def lookup(self, parent: int, name: bytes) -> Attr:
        if not self.virtual(parent):
            if parent == ROOT_INO and name == SNAPDIR_NAME:
                await self._listing()
                return self._snapdir_attr()
            return await self.live.lookup(parent, name)
        if parent == SNAPDIR:
            if name == b".":
                return self._snapdir_attr()
            if name == b"..":
                return await self.live.getattr(ROOT_INO)
            entry = await self._find(name)
            await self._open_past(entry.gen)
            return self._past_root_attr(entry, await self.live.getattr(ROOT_INO))
        gen, ino = self._resolve(parent)
        if ino == ROOT_INO and name == b"..":
            return self._snapdir_attr()
        fs = await self._open_past(gen)
        return await self._past_attr(gen, await fs.lookup(ino, name))

    async def _find(self, name: bytes) -> Entry:
        names = await self._listing()
        entry = names.get(name)
        if entry is None:  # a pinned root by its name alone
            entry = next(
                (e for e in names.values() if e.name is not None and e.name.encode() == name), None
            )
        if entry is None:
            raise FsError(errno.ENOENT)
        return entry

    async def getattr(self, ino: int) -> Attr:
        if not self.virtual(ino):
            return await self.live.getattr(ino)
        if ino == SNAPDIR:
            return self._snapdir_attr()
        gen, inner = self._resolve(ino)
        fs = await self._open_past(gen)
        return await self._past_attr(gen, await fs.getattr(inner))

    async def readdir(self, ino: int, after: int) -> list[tuple[bytes, Attr, int]]:
        """Entries after cookie ``after``. In ``.snapshots`` a folder's cookie
        is its generation, so roots kept meanwhile come in order and dropped
        ones just go."""
        if not self.virtual(ino):
            batch = await self.live.readdir(ino, after)
            if ino == ROOT_INO and self.snapdir_visible and after < SNAPDIR_COOKIE:
                # cookie 2 is ".." in a directory body, which readdir never returns
                await self._listing()
                batch.insert(0, (SNAPDIR_NAME, self._snapdir_attr(), SNAPDIR_COOKIE))
            return batch
        if ino == SNAPDIR:
            names = await self._listing()
            live_root = await self.live.getattr(ROOT_INO)
            return [
                (name, self._past_root_attr(e, live_root), e.gen)
                for name, e in names.items()
                if e.gen > after
            ]
        gen, inner = self._resolve(ino)
        fs = await self._open_past(gen)
        batch = await fs.readdir(inner, after)
        return [(n, await self._past_attr(gen, a), c) for n, a, c in batch]

    async def readlink(self, ino: int) -> bytes:
        if not self.virtual(ino):
            return await self.live.readlink(ino)
        gen, inner = self._resolve(ino)
        return await (await self._open_past(gen)).readlink(inner)

    async def open(self, ino: int) -> Attr:
        if not self.virtual(ino):
            return await self.live.open(ino)
        gen, inner = self._resolve(ino)
        return await (await self._open_past(gen)).open(inner)

    async def release(self, ino: int) -> None:
        if not self.virtual(ino):
            await self.live.release(ino)
            return
        key = self._map.get(ino)
        if key is not None and key[0] in self._past:
            await self._past[key[0]].release(key[1])

    async def read(self, ino: int, offset: int, size: int) -> bytes:
        if not self.virtual(ino):
            return await self.live.read(ino, offset, size)
        gen, inner = self._resolve(ino)
        return await (await self._open_past(gen)).read(inner, offset, size)

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        if not self.virtual(ino):
            return await self.live.getxattr(ino, name)
        if ino == SNAPDIR:
            return await self._control_get(name)
        gen, inner = self._resolve(ino)
        return await (await self._open_past(gen)).getxattr(inner, name)

    async def listxattr(self, ino: int) -> list[bytes]:
        if not self.virtual(ino):
            return await self.live.listxattr(ino)
        if ino == SNAPDIR:
            return [RETENTION_XATTR, PRUNED_XATTR, DELETED_XATTR]
        gen, inner = self._resolve(ino)
        return await (await self._open_past(gen)).listxattr(inner)

    # --- the control attributes of .snapshots -------------------------------------

    async def _control_get(self, name: bytes) -> bytes:
        if name == DELETED_XATTR:
            return await self._deleted()
        if name == RETENTION_XATTR:
            return self.live.retention.spec().encode()
        if name == PRUNED_XATTR:
            r = self._pruned
            return f"{r.dropped} {r.freed} {r.freed_bytes}".encode()
        raise FsError(errno.ENODATA)

    async def _deleted(self) -> bytes:
        """The items deleted between kept roots (:func:`~.trash.deleted`), as
        JSON (newest deletions first, as many as fit in an attribute)."""
        names = {e.gen: n.decode() for n, e in (await self._listing()).items()}
        devices = {k: d.name for k, d in self.live.root.devices.items()}
        items = [
            {
                "path": os.fsdecode(i.path),
                "folder": names.get(i.held_by.gen, ""),
                "dir": i.is_dir,
                "size": i.size,
                "mtime_ns": i.mtime_ns,
                "deleted_ns": i.deleted_by.time_ns,
                "device": devices.get(i.deleted_by.device, i.deleted_by.device.hex()[:8]),
            }
            for i in await deleted(self.live)
        ]
        while True:
            out = json.dumps(items).encode()
            if len(out) <= XATTR_MAX:
                return out
            items = items[: len(items) * 3 // 4]

    async def _control_set(self, name: bytes, value: bytes) -> None:
        """``user.megafs.retention``: store a policy (:meth:`Policy.parse`'s
        form); ``user.megafs.prune``: apply the policy now. Both commit."""
        if name == RETENTION_XATTR:
            try:
                policy = Policy.parse(value.decode("ascii"))
            except (UnicodeDecodeError, ValueError) as e:
                raise FsError(errno.EINVAL, str(e)) from None
            await self.live.set_retention(policy)
            self._names = None  # the history changed
        elif name == PRUNE_XATTR:
            self._pruned = await self.live.prune()
            self._names = None  # the history changed
        else:
            raise _erofs()

    # --- pinning ---------------------------------------------------------------

    async def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Attr:
        """In ``.snapshots``: pin the current state as ``name`` (commits)."""
        if parent != SNAPDIR:
            self._check_live(parent, name)
            return await self.live.mkdir(parent, name, mode, uid, gid)
        text = name.decode("ascii", "replace")
        if not _PIN_NAME.fullmatch(text):
            raise FsError(errno.EINVAL, "a snapshot name is 1 to 64 letters, digits, . _ + @ -")
        names = await self._listing()
        if any(e.name == text for e in names.values()):
            raise FsError(errno.EEXIST)
        await self.live.pin(text)
        self._names = None  # the history changed
        entry = await self._find(name)
        return self._past_root_attr(entry, await self.live.getattr(ROOT_INO))

    async def rmdir(self, parent: int, name: bytes) -> None:
        """In ``.snapshots``: unpin a pinned root (commits)."""
        if parent != SNAPDIR:
            self._check_live(parent, name)
            await self.live.rmdir(parent, name)
            return
        entry = await self._find(name)
        if entry.name is None:
            raise FsError(errno.EPERM, "only pinned snapshots are removed by hand")
        await self.live.unpin(entry.name)
        self._names = None  # the history changed

    # --- changing the live tree ---------------------------------------------

    def _check_live(self, parent: int, name: bytes | None = None) -> None:
        if self.virtual(parent):
            raise _erofs()
        if parent == ROOT_INO and name == SNAPDIR_NAME:
            raise FsError(errno.EEXIST, "the name of the snapshots folder")

    async def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Attr:
        self._check_live(parent, name)
        return await self.live.create(parent, name, mode, uid, gid)

    async def mknod(
        self, parent: int, name: bytes, mode: int, rdev: int, uid: int, gid: int
    ) -> Attr:
        self._check_live(parent, name)
        return await self.live.mknod(parent, name, mode, rdev, uid, gid)

    async def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Attr:
        self._check_live(parent, name)
        return await self.live.symlink(parent, name, target, uid, gid)

    async def link(self, ino: int, parent: int, name: bytes) -> Attr:
        self._check_live(ino)
        self._check_live(parent, name)
        return await self.live.link(ino, parent, name)

    async def unlink(self, parent: int, name: bytes) -> None:
        self._check_live(parent)
        await self.live.unlink(parent, name)

    async def rename(
        self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int = 0
    ) -> None:
        self._check_live(old_parent, old_name)
        self._check_live(new_parent, new_name)
        await self.live.rename(old_parent, old_name, new_parent, new_name, flags)

    async def setattr(self, ino: int, **kw: Any) -> Attr:
        self._check_live(ino)
        return await self.live.setattr(ino, **kw)

    async def truncate(self, ino: int, size: int) -> None:
        self._check_live(ino)
        await self.live.truncate(ino, size)

    async def write(self, ino: int, offset: int, data: bytes) -> int:
        self._check_live(ino)
        return await self.live.write(ino, offset, data)

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        if ino == SNAPDIR:
            await self._control_set(name, value)
            return
        self._check_live(ino)
        await self.live.setxattr(ino, name, value, flags)

    async def removexattr(self, ino: int, name: bytes) -> None:
        self._check_live(ino)
        await self.live.removexattr(ino, name)

    async def fsync(self, ino: int | None = None) -> None:
        await self.live.fsync(ino)

    def evict(self) -> int:
        """Forget clean inode pages (see :meth:`Filesystem.evict`), of the
        live tree and of the open past roots. Same contract: no operation in
        flight."""
        return self.live.evict() + sum(fs.evict() for fs in self._past.values())

    def statfs(self) -> dict[str, int]:
        return self.live.statfs()

    def on_merge(self, callback: Any) -> None:
        self.live.on_merge(callback)


__all__ = [
    "PRUNED_XATTR",
    "PRUNE_XATTR",
    "RETENTION_XATTR",
    "SNAPDIR",
    "SNAPDIR_NAME",
    "Views",
    "folder_names",
]
