"""A null pass-through FUSE filesystem: the ceiling for Python FUSE on this machine.

It runs on the same stack as megafs (pyfuse3 under trio, one thread) and
does no crypto and no I/O: the directory tree lives only in memory, writes
are accepted and dropped (only the file size is kept), and every regular
file reads as zeros served from one preallocated buffer. With ``--file
NAME --size N`` the root starts with one such file of N bytes, so that a
read benchmark finds its data after a fresh mount.

Kernel caching is set up as megafs sets it (entry and attribute timeouts of
60 s, ``keep_cache`` on open, READDIRPLUS), and extended attributes are
answered as megafs answers them (POSIX ACLs and a missing SELinux label
are "not supported"), so the same workload measures the same kernel work
and only the filesystem's own cost differs. ``--writeback-cache`` turns on
the kernel's writeback cache (megafs does not), to measure what it would
save.

    python bench/nullfs.py MOUNTPOINT [--file big.bin --size 1073741824] [--writeback-cache]

Stays in the foreground; unmount with ``fusermount3 -u MOUNTPOINT`` (or
SIGTERM/SIGINT).
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import stat
import time
from typing import Any

import pyfuse3
import trio
from pyfuse3 import FileHandleT, FileInfo, FUSEError, InodeT

TIMEOUT = 60.0
ZEROS = bytes(4 << 20)  # the largest read the kernel sends is far smaller
ROOT = pyfuse3.ROOT_INODE
ACLS = frozenset({b"system.posix_acl_access", b"system.posix_acl_default"})


class Node:
    __slots__ = ("atime", "ctime", "entries", "gid", "mode", "mtime", "nlink", "size",
                 "target", "uid", "xattrs")

    def __init__(self, mode: int, uid: int, gid: int) -> None:
        now = time.time_ns()
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.nlink = 2 if stat.S_ISDIR(mode) else 1
        self.size = 0
        self.atime = self.mtime = self.ctime = now
        self.entries: dict[bytes, int] | None = {} if stat.S_ISDIR(mode) else None
        self.target = b""
        self.xattrs: dict[bytes, bytes] = {}


class NullFS(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, file_name: str | None, file_size: int) -> None:
        super().__init__()
        self.nodes: dict[int, Node] = {ROOT: Node(stat.S_IFDIR | 0o755, 0, 0)}
        self.parent: dict[int, int] = {ROOT: ROOT}
        self.next_ino = ROOT + 1
        self.listings: dict[int, list[tuple[bytes, int]]] = {}
        if file_name:
            ino = self._add(ROOT, file_name.encode(), Node(stat.S_IFREG | 0o644, 0, 0))
            self.nodes[ino].size = file_size

    # --- helpers ---------------------------------------------------------------

    def _node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise FUSEError(errno.ENOENT) from None

    def _dir(self, ino: int) -> dict[bytes, int]:
        entries = self._node(ino).entries
        if entries is None:
            raise FUSEError(errno.ENOTDIR)
        return entries

    def _add(self, parent: int, name: bytes, node: Node) -> int:
        entries = self._dir(parent)
        if name in entries:
            raise FUSEError(errno.EEXIST)
        ino = self.next_ino
        self.next_ino += 1
        self.nodes[ino] = node
        entries[name] = ino
        if node.entries is not None:
            self.parent[ino] = parent
            self.nodes[parent].nlink += 1
        self.nodes[parent].mtime = time.time_ns()
        return ino

    def _entry(self, ino: int) -> pyfuse3.EntryAttributes:
        n = self._node(ino)
        e = pyfuse3.EntryAttributes()
        e.st_ino = InodeT(ino)
        e.generation = 0
        e.entry_timeout = TIMEOUT
        e.attr_timeout = TIMEOUT
        e.st_mode = pyfuse3.ModeT(n.mode)
        e.st_nlink = n.nlink
        e.st_uid = n.uid
        e.st_gid = n.gid
        e.st_rdev = 0
        e.st_size = n.size if n.entries is None else 4096
        e.st_blksize = 65536
        e.st_blocks = (e.st_size + 511) // 512
        e.st_atime_ns = n.atime
        e.st_mtime_ns = n.mtime
        e.st_ctime_ns = n.ctime
        return e

    def _drop(self, ino: int) -> None:
        n = self.nodes[ino]
        n.nlink -= 1
        if n.nlink <= 0:
            del self.nodes[ino]  # no open-unlinked semantics: reads of it fail

    # --- operations ------------------------------------------------------------

    async def lookup(
        self, parent_inode: InodeT, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if name == b".":
            return self._entry(parent_inode)
        if name == b"..":
            return self._entry(self.parent.get(parent_inode, ROOT))
        ino = self._dir(parent_inode).get(name)
        if ino is None:
            raise FUSEError(errno.ENOENT)
        return self._entry(ino)

    async def forget(self, inode_list: Any) -> None:
        return None

    async def getattr(
        self, inode: InodeT, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        return self._entry(inode)

    async def setattr(
        self,
        inode: InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        n = self._node(inode)
        if fields.update_mode:
            n.mode = (n.mode & ~0o7777) | (attr.st_mode & 0o7777)
        if fields.update_uid:
            n.uid = attr.st_uid
        if fields.update_gid:
            n.gid = attr.st_gid
        if fields.update_size:
            n.size = attr.st_size
        if fields.update_atime:
            n.atime = attr.st_atime_ns
        if fields.update_mtime:
            n.mtime = attr.st_mtime_ns
        n.ctime = time.time_ns()
        return self._entry(inode)

    async def readlink(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> bytes:
        return self._node(inode).target

    async def opendir(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> FileHandleT:
        self._dir(inode)
        return FileHandleT(inode)

    async def readdir(self, fh: FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # one snapshot per listing, so that a large folder costs O(n), not O(n^2)
        entries = self.listings.get(fh) if start_id else None
        if entries is None:
            entries = self.listings[fh] = list(self._dir(fh).items())
        for i in range(start_id, len(entries)):
            name, ino = entries[i]
            if not pyfuse3.readdir_reply(token, name, self._entry(ino), i + 1):
                return

    async def releasedir(self, fh: FileHandleT) -> None:
        self.listings.pop(fh, None)

    async def fsyncdir(self, fh: FileHandleT, datasync: bool) -> None:
        return None

    async def mkdir(
        self, parent_inode: InodeT, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        ino = self._add(parent_inode, name, Node(stat.S_IFDIR | (mode & 0o7777), ctx.uid, ctx.gid))
        return self._entry(ino)

    async def mknod(
        self, parent_inode: InodeT, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._entry(self._add(parent_inode, name, Node(mode, ctx.uid, ctx.gid)))

    async def symlink(
        self, parent_inode: InodeT, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = Node(stat.S_IFLNK | 0o777, ctx.uid, ctx.gid)
        node.target = target
        node.size = len(target)
        return self._entry(self._add(parent_inode, name, node))

    async def link(
        self, inode: InodeT, new_parent_inode: InodeT, new_name: bytes,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        n = self._node(inode)
        entries = self._dir(new_parent_inode)
        if new_name in entries:
            raise FUSEError(errno.EEXIST)
        entries[new_name] = inode
        n.nlink += 1
        return self._entry(inode)

    async def unlink(self, parent_inode: InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        entries = self._dir(parent_inode)
        ino = entries.get(name)
        if ino is None:
            raise FUSEError(errno.ENOENT)
        if self.nodes[ino].entries is not None:
            raise FUSEError(errno.EISDIR)
        del entries[name]
        self._drop(ino)

    async def rmdir(self, parent_inode: InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        entries = self._dir(parent_inode)
        ino = entries.get(name)
        if ino is None:
            raise FUSEError(errno.ENOENT)
        if self._dir(ino):
            raise FUSEError(errno.ENOTEMPTY)
        del entries[name]
        del self.nodes[ino]
        self.parent.pop(ino, None)
        self.nodes[parent_inode].nlink -= 1

    async def rename(
        self,
        parent_inode_old: InodeT,
        name_old: bytes,
        parent_inode_new: InodeT,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if flags:
            raise FUSEError(errno.EINVAL)
        old = self._dir(parent_inode_old)
        new = self._dir(parent_inode_new)
        ino = old.get(name_old)
        if ino is None:
            raise FUSEError(errno.ENOENT)
        victim = new.get(name_new)
        if victim is not None and victim != ino:
            if self.nodes[victim].entries:
                raise FUSEError(errno.ENOTEMPTY)
            self._drop(victim)
        del old[name_old]
        new[name_new] = ino
        if self.nodes[ino].entries is not None:
            self.parent[ino] = parent_inode_new

    async def open(self, inode: InodeT, flags: int, ctx: pyfuse3.RequestContext) -> FileInfo:
        n = self._node(inode)
        if flags & os.O_TRUNC:
            n.size = 0
        return FileInfo(fh=FileHandleT(inode), keep_cache=True)

    async def create(
        self,
        parent_inode: InodeT,
        name: bytes,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[FileInfo, pyfuse3.EntryAttributes]:
        ino = self._add(parent_inode, name, Node(stat.S_IFREG | (mode & 0o7777), ctx.uid, ctx.gid))
        return FileInfo(fh=FileHandleT(ino), keep_cache=True), self._entry(ino)

    async def read(self, fh: FileHandleT, off: int, size: int) -> bytes:
        n = self._node(fh)
        size = max(0, min(size, n.size - off))
        return ZEROS[:size]  # one copy, as any pyfuse3 filesystem makes at least

    async def write(self, fh: FileHandleT, off: int, buf: bytes) -> int:
        n = self._node(fh)
        n.size = max(n.size, off + len(buf))
        return len(buf)

    async def flush(self, fh: FileHandleT) -> None:
        return None

    async def fsync(self, fh: FileHandleT, datasync: bool) -> None:
        return None

    async def release(self, fh: FileHandleT) -> None:
        return None

    async def setxattr(
        self, inode: InodeT, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        if name in ACLS:
            raise FUSEError(errno.EOPNOTSUPP)
        self._node(inode).xattrs[name] = value

    async def getxattr(self, inode: InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if name in ACLS:
            raise FUSEError(errno.EOPNOTSUPP)
        try:
            return self._node(inode).xattrs[name]
        except KeyError:
            if name == b"security.selinux":
                raise FUSEError(errno.EOPNOTSUPP) from None
            raise FUSEError(pyfuse3.ENOATTR) from None

    async def listxattr(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return list(self._node(inode).xattrs)

    async def removexattr(
        self, inode: InodeT, name: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        if self._node(inode).xattrs.pop(name, None) is None:
            raise FUSEError(pyfuse3.ENOATTR)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 65536
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 30
        s.f_files = s.f_ffree = s.f_favail = 1 << 30
        s.f_namemax = 255
        return s


async def _serve() -> None:
    async with trio.open_nursery() as nursery:

        async def on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                async for _ in sigs:
                    pyfuse3.terminate()

        nursery.start_soon(on_signal)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mountpoint")
    p.add_argument("--file", help="a file of zeros in the root (its name)")
    p.add_argument("--size", type=int, default=0, help="its size in bytes")
    p.add_argument("--writeback-cache", action="store_true",
                   help="let the kernel cache writes and send them later, coalesced")
    args = p.parse_args()
    ops = NullFS(args.file, args.size)
    ops.enable_writeback_cache = args.writeback_cache
    pyfuse3.init(ops, args.mountpoint, {"fsname=nullfs", "subtype=nullfs", "default_permissions"})
    try:
        trio.run(_serve)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
