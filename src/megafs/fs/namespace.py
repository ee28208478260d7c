"""The POSIX namespace: names, links, attributes and extended attributes.

Owns: directory entries and their checks (names, loops, emptiness), creating
inodes (numbers from the root's counter), link counts, rename and exchange,
attributes and xattrs, and the *orphans*: inodes with no link left that the
kernel still references or holds open. An orphan is listed in the root (so
a crash cannot leak it) until it is purged.

May not touch: file content (truncation and purged files' chunks go to the
:class:`~.data.DataPath`), the store, the root pointer, the journal (it
records mutations through the :class:`~.oplog.OpLog`).

Concurrency: trio, one thread. Each operation checks and loads everything
it needs, then records and mutates with no await between, so it is atomic
with respect to commits. It takes no inode lock (setattr's truncation does,
in the data path).
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from collections.abc import Callable
from typing import Any

from ..errors import FsError
from ..format import crypto
from ..vault.root import DEVICE_BITS, Device, Root
from ..vault.tables import PAGE_BITS
from .collector import Collector
from .data import DataPath
from .inode import ROOT_INO, Attr, Inode
from .oplog import OpLog, operation
from .table import InodeTable

NAME_MAX = 255
XATTR_CREATE = 1
XATTR_REPLACE = 2
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class Namespace:
    """Names and attributes of one filesystem's inodes.

    Lookup counts are the table's: an inode whose link count is 0 is kept
    until the kernel forgets it and its last handle closes
    (:meth:`purge_if_unused`), then purged.
    """

    def __init__(
        self,
        table: InodeTable,
        data: DataPath,
        collector: Collector,
        oplog: OpLog,
        root: Root,
        device: Device | None = None,
    ) -> None:
        self.table = table
        self.data = data
        self.collector = collector
        self.oplog = oplog
        self.root = root
        #: This device's record (root record version 2): new inode numbers
        #: come from its range. None when read-only.
        self.device = device
        #: Inodes with no link left, kept while in use (the root lists them):
        #: this device's; read-only, every device's (none of them is purged).
        self.orphans: set[int] = set(
            device.orphans if device is not None else root.all_orphans()
        )

    def make_root_dir(self) -> None:
        """A new vault: its root directory."""
        ino = Inode(ROOT_INO, stat.S_IFDIR | 0o755, os.getuid(), os.getgid(), self.oplog.now())
        ino.nlink = 2
        ino.parent = ROOT_INO
        self.table.insert(ino)

    async def _new_inode(self, mode: int, uid: int, gid: int) -> Inode:
        dev = self.device
        if dev is None:  # only a writable filesystem creates, and it is a device
            raise FsError(errno.EROFS, "read-only: no device record to number inodes from")
        if self.oplog.replay_ino is not None:
            ino = self.oplog.replay_ino
            if dev.owns(ino):
                dev.next_ino = max(dev.next_ino, ino + 1)
            elif ino >> DEVICE_BITS == 0:  # from a journal written before the upgrade
                self.root.next_ino = max(self.root.next_ino, ino + 1)
            else:  # another device's number: never this journal's to create
                raise FsError(errno.EEXIST, f"inode {ino} is in another device's range")
        else:
            ino = dev.next_ino
            if not dev.owns(ino):
                raise FsError(errno.ENOSPC, "this device has used up its inode numbers")
            dev.next_ino += 1
        await self.table.load_page(ino >> PAGE_BITS)
        node = Inode(ino, mode, uid, gid, self.oplog.now())
        if node.is_reg:
            node.file_key = crypto.random_bytes(crypto.KEY_SIZE)
        return node

    async def purge_if_unused(self, ino: int) -> None:
        """Purge ``ino`` if it has no link left and is not in use: its chunks
        and body are retired, its record removed. May load it (an orphan
        left by a previous run)."""
        table = self.table
        node = table.peek(ino)
        if node is None and ino in self.orphans:
            try:
                node = await table.get(ino)
            except FsError:
                self.orphans.discard(ino)
                return
        if node is None or node.nlink > 0 or table.in_use(ino):
            return
        if not self.oplog.writable:
            return
        if not node.body_loaded:
            await table.load_body(node)
        node.body_dirty = True
        self.data.discard(node)
        if node.body_ref is not None:
            self.collector.retire(node.body_ref)
        if node.is_reg:
            self.root.stats[1] -= node.size
        self.root.stats[0] -= 1
        table.remove(ino)
        self.orphans.discard(ino)

    def _unlinked(self, node: Inode) -> None:
        """``node`` lost a link; if it has none left, remember it as an orphan."""
        if node.nlink == 0:
            self.orphans.add(node.ino)

    # --- attributes -----------------------------------------------------

    async def getattr(self, ino: int) -> Attr:
        return (await self.table.get(ino)).attr()

    @operation
    async def setattr(
        self,
        ino: int,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
    ) -> Attr:
        """chmod/chown/truncate/utimens in one call; ``None`` leaves a field alone."""
        self.oplog.check_writable()
        node = await self.table.get(ino)
        if size is not None:
            if node.is_dir:
                raise FsError(errno.EISDIR)
            if not node.is_reg:
                raise FsError(errno.EINVAL)
        record = ("sa", ino, mode, uid, gid, size, atime_ns, mtime_ns)
        if size is not None:
            await self.data.resize(ino, size, record)  # logs, then mutates
        else:
            self.oplog.record(*record)
        if mode is not None:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(mode)
        if uid is not None:
            node.uid = uid
        if gid is not None:
            node.gid = gid
        if atime_ns is not None:
            node.atime = atime_ns
        if mtime_ns is not None:
            node.mtime = mtime_ns
        node.ctime = self.oplog.now()
        self.table.touch(node)
        return node.attr()

    async def replay_setattr(
        self,
        ino: int,
        mode: int | None,
        uid: int | None,
        gid: int | None,
        size: int | None,
        atime_ns: int | None,
        mtime_ns: int | None,
    ) -> None:
        await self.setattr(
            ino, mode=mode, uid=uid, gid=gid, size=size, atime_ns=atime_ns, mtime_ns=mtime_ns
        )

    # --- directories ----------------------------------------------------

    async def _dir(self, ino: int) -> Inode:
        node = await self.table.get(ino)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        return node

    @staticmethod
    def _check_name(name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
            raise FsError(errno.EINVAL)

    async def lookup(self, parent: int, name: bytes) -> Attr:
        """Return the attributes of ``name`` in ``parent``. Does not change lookup counts."""
        d = await self._dir(parent)
        if name == b".":
            return d.attr()
        if name == b"..":
            return (await self.table.get(d.parent)).attr()
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        ent = d.entries.get(name)
        if ent is None:
            raise FsError(errno.ENOENT)
        self.table.names[ent[0]] = (parent, name)
        return (await self.table.get(ent[0])).attr()

    async def readdir(self, ino: int, after: int) -> list[tuple[bytes, Attr, int]]:
        """Entries of directory ``ino`` with a cookie greater than ``after``.

        Returns (name, attr, cookie) in cookie order; "." and ".." are not
        listed (the kernel would not count their references). Cookies are
        stable while entries change: an entry keeps its cookie until it is
        removed or renamed. Loads the children's pages (READDIRPLUS needs
        their attributes); returns at most 256 entries.
        """
        d = await self._dir(ino)
        out: list[tuple[bytes, Attr, int]] = []
        if d.order is None:
            return []
        names = [d.order[c] for c in itertools.islice(d.order.irange(minimum=after + 1), 256)]
        for name in names:
            ent = d.entries.get(name)
            if ent is None:
                continue
            try:
                attr = (await self.table.get(ent[0])).attr()
            except FsError:
                continue
            out.append((name, attr, ent[1]))
        return out

    async def _make(
        self,
        parent: int,
        name: bytes,
        mode: int,
        uid: int,
        gid: int,
        record: Callable[[int], tuple[Any, ...]],
        rdev: int = 0,
        target: bytes = b"",
    ) -> Inode:
        """Create an inode and its entry; ``record(ino)`` is the journal record."""
        self.oplog.check_writable()
        self._check_name(name)
        d = await self._dir(parent)
        if name in d.entries:
            raise FsError(errno.EEXIST)
        node = await self._new_inode(mode, uid, gid)
        if name in d.entries:  # created while we awaited the page
            raise FsError(errno.EEXIST)
        self.oplog.record(*record(node.ino))
        node.rdev = rdev
        if target:
            node.target = target
            node.size = len(target)
        node.parent = parent
        if node.is_dir:
            node.nlink = 2
            d.nlink += 1
        d.add_entry(name, node.ino)
        self.table.names[node.ino] = (parent, name)
        d.mtime = d.ctime = node.ctime
        self.table.touch(d)
        self.table.insert(node)
        self.root.stats[0] += 1
        return node

    @operation
    async def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Attr:
        node = await self._make(
            parent,
            name,
            stat.S_IFDIR | stat.S_IMODE(mode),
            uid,
            gid,
            lambda ino: ("mk", ino, parent, name, mode, uid, gid),
        )
        return node.attr()

    @operation
    async def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Attr:
        """Create a regular file (``mode`` permission bits only or with S_IFREG)."""
        node = await self._make(
            parent,
            name,
            stat.S_IFREG | stat.S_IMODE(mode),
            uid,
            gid,
            lambda ino: ("cr", ino, parent, name, mode, uid, gid),
        )
        return node.attr()

    @operation
    async def mknod(
        self, parent: int, name: bytes, mode: int, rdev: int, uid: int, gid: int
    ) -> Attr:
        fmt = stat.S_IFMT(mode) or stat.S_IFREG
        if fmt not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise FsError(errno.EINVAL)
        node = await self._make(
            parent,
            name,
            fmt | stat.S_IMODE(mode),
            uid,
            gid,
            lambda ino: ("mn", ino, parent, name, mode, rdev, uid, gid),
            rdev=rdev,
        )
        return node.attr()

    @operation
    async def symlink(
        self, parent: int, name: bytes, target: bytes, uid: int, gid: int
    ) -> Attr:
        if len(target) > 4095:
            raise FsError(errno.ENAMETOOLONG)
        node = await self._make(
            parent,
            name,
            stat.S_IFLNK | 0o777,
            uid,
            gid,
            lambda ino: ("sl", ino, parent, name, target, uid, gid),
            target=target,
        )
        return node.attr()

    async def readlink(self, ino: int) -> bytes:
        node = await self.table.get(ino)
        if not stat.S_ISLNK(node.mode):
            raise FsError(errno.EINVAL)
        return node.target

    @operation
    async def link(self, ino: int, parent: int, name: bytes) -> Attr:
        self.oplog.check_writable()
        self._check_name(name)
        node = await self.table.get(ino)
        if node.is_dir:
            raise FsError(errno.EPERM)
        d = await self._dir(parent)
        if name in d.entries:
            raise FsError(errno.EEXIST)
        if node.nlink == 0:
            raise FsError(errno.ENOENT)
        self.oplog.record("ln", ino, parent, name)
        d.add_entry(name, ino)
        node.nlink += 1
        node.ctime = d.mtime = d.ctime = self.oplog.now()
        self.table.touch(node)
        self.table.touch(d)
        return node.attr()

    @operation
    async def unlink(self, parent: int, name: bytes) -> None:
        self.oplog.check_writable()
        d = await self._dir(parent)
        ent = d.entries.get(name)
        if ent is None:
            raise FsError(errno.ENOENT)
        node = await self.table.get(ent[0])
        if node.is_dir:
            raise FsError(errno.EISDIR)
        self.oplog.record("ul", parent, name)
        d.remove_entry(name)
        node.nlink -= 1
        node.ctime = d.mtime = d.ctime = self.oplog.now()
        self.table.touch(d)
        self.table.touch(node)
        self._unlinked(node)
        await self.purge_if_unused(node.ino)

    @operation
    async def rmdir(self, parent: int, name: bytes) -> None:
        self.oplog.check_writable()
        d = await self._dir(parent)
        ent = d.entries.get(name)
        if ent is None:
            raise FsError(errno.ENOENT)
        node = await self.table.get(ent[0])
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        if node.entries:
            raise FsError(errno.ENOTEMPTY)
        self.oplog.record("rd", parent, name)
        d.remove_entry(name)
        d.nlink -= 1
        node.nlink = 0
        node.ctime = d.mtime = d.ctime = self.oplog.now()
        self.table.touch(d)
        self.table.touch(node)
        self._unlinked(node)
        await self.purge_if_unused(node.ino)

    async def _is_ancestor(self, anc: int, ino: int) -> bool:
        """True if directory ``anc`` is ``ino`` or one of its ancestors."""
        cur = ino
        for _ in range(100000):
            if cur == anc:
                return True
            if cur == ROOT_INO:
                return False
            cur = (await self.table.get(cur)).parent
        raise FsError(errno.ELOOP)

    @operation
    async def rename(
        self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int = 0
    ) -> None:
        """rename(2) with RENAME_NOREPLACE and RENAME_EXCHANGE."""
        self.oplog.check_writable()
        self._check_name(new_name)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            raise FsError(errno.EINVAL)
        od = await self._dir(old_parent)
        nd = await self._dir(new_parent)
        ent = od.entries.get(old_name)
        if ent is None:
            raise FsError(errno.ENOENT)
        src = await self.table.get(ent[0])
        tent = nd.entries.get(new_name)
        dst = await self.table.get(tent[0]) if tent is not None else None
        if src.is_dir and await self._is_ancestor(src.ino, new_parent):
            raise FsError(errno.EINVAL)
        if flags & RENAME_EXCHANGE:
            if dst is None:
                raise FsError(errno.ENOENT)
            if dst.is_dir and await self._is_ancestor(dst.ino, old_parent):
                raise FsError(errno.EINVAL)
            self.oplog.record("rn", old_parent, old_name, new_parent, new_name, flags)
            self._exchange(od, old_name, src, nd, new_name, dst)
            return
        if dst is not None:
            if flags & RENAME_NOREPLACE:
                raise FsError(errno.EEXIST)
            if dst.ino == src.ino:
                return
            if src.is_dir and not dst.is_dir:
                raise FsError(errno.ENOTDIR)
            if dst.is_dir and not src.is_dir:
                raise FsError(errno.EISDIR)
            if dst.is_dir and dst.entries:
                raise FsError(errno.ENOTEMPTY)
        # All checks done and everything loaded: mutate with no await.
        self.oplog.record("rn", old_parent, old_name, new_parent, new_name, flags)
        now = self.oplog.now()
        if dst is not None:
            nd.remove_entry(new_name)
            if dst.is_dir:
                dst.nlink = 0
                nd.nlink -= 1
            else:
                dst.nlink -= 1
            dst.ctime = now
            self.table.touch(dst)
            self._unlinked(dst)
        od.remove_entry(old_name)
        nd.add_entry(new_name, src.ino)
        self.table.names[src.ino] = (new_parent, new_name)
        if src.is_dir and od.ino != nd.ino:
            src.parent = nd.ino
            od.nlink -= 1
            nd.nlink += 1
            src.body_dirty = True
        src.ctime = od.mtime = od.ctime = nd.mtime = nd.ctime = now
        for n in (src, od, nd):
            self.table.touch(n)
        if dst is not None:
            await self.purge_if_unused(dst.ino)

    def _exchange(
        self, od: Inode, old_name: bytes, src: Inode, nd: Inode, new_name: bytes, dst: Inode
    ) -> None:
        now = self.oplog.now()
        od.remove_entry(old_name)
        nd.remove_entry(new_name)
        od.add_entry(old_name, dst.ino)
        nd.add_entry(new_name, src.ino)
        if od.ino != nd.ino:
            if src.is_dir:
                src.parent = nd.ino
                src.body_dirty = True
                od.nlink -= 1
                nd.nlink += 1
            if dst.is_dir:
                dst.parent = od.ino
                dst.body_dirty = True
                nd.nlink -= 1
                od.nlink += 1
        for n in (src, dst, od, nd):
            n.ctime = now
            self.table.touch(n)

    # --- xattrs -----------------------------------------------------------

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        node = await self.table.get(ino)
        try:
            return node.xattrs[name]
        except KeyError:
            raise FsError(errno.ENODATA) from None

    async def listxattr(self, ino: int) -> list[bytes]:
        return list((await self.table.get(ino)).xattrs)

    @operation
    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        self.oplog.check_writable()
        node = await self.table.get(ino)
        if not name or len(name) > 255:
            raise FsError(errno.ERANGE)
        if len(value) > 65536:
            raise FsError(errno.E2BIG)
        if flags & XATTR_CREATE and name in node.xattrs:
            raise FsError(errno.EEXIST)
        if flags & XATTR_REPLACE and name not in node.xattrs:
            raise FsError(errno.ENODATA)
        self.oplog.record("sx", ino, name, value, flags)
        node.xattrs[name] = value
        node.ctime = self.oplog.now()
        self.table.touch(node)

    @operation
    async def removexattr(self, ino: int, name: bytes) -> None:
        self.oplog.check_writable()
        node = await self.table.get(ino)
        if name not in node.xattrs:
            raise FsError(errno.ENODATA)
        self.oplog.record("rx", ino, name)
        del node.xattrs[name]
        node.ctime = self.oplog.now()
        self.table.touch(node)
