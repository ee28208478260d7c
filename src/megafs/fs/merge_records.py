"""Records as the merge compares them: what counts as a change of content,
which objects a record holds, conflict names, copying a record into another
inode, and what a merge reports (:class:`Outcome`). Pure: no I/O.

May not touch: the store, the vault, the table, anything asynchronous.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Any

from sortedcontainers import SortedDict  # type: ignore[import-untyped]

from ..errors import FsError
from .inode import Inode

Entries = dict[bytes, tuple[int, int]]


def content_of(n: Inode | None) -> Any:
    """What counts as a file's (or symlink's) content, for change detection."""
    if n is None:
        return None
    if stat.S_ISLNK(n.mode):
        return ("l", n.target)
    if not n.is_reg:
        return ("o", n.rdev)
    return (n.size, n.small, tuple(sorted(n.chunks.items())), bool(n.dirty))


def _attrs(n: Inode) -> tuple[Any, ...]:
    return (n.mode, n.uid, n.gid, n.atime, n.mtime, n.ctime, n.rdev)


def same_record(a: Inode | None, b: Inode | None) -> bool:
    """Whether two decoded records say the same (inline data is sealed afresh
    each time a page is written: values are compared, never bytes)."""
    if a is None or b is None:
        return a is b
    if _attrs(a) != _attrs(b) or (a.nlink, a.size, a.file_id, a.xattrs) != (
        b.nlink,
        b.size,
        b.file_id,
        b.xattrs,
    ):
        return False
    if a.is_dir:
        return (a.parent, a.next_cookie, a.entries) == (b.parent, b.next_cookie, b.entries)
    return bool(content_of(a) == content_of(b))


def refs_of(n: Inode | None) -> set[Any]:
    """The objects (chunk references and the body object) a record holds."""
    if n is None:
        return set()
    out: set[Any] = set(n.chunks.values())
    if n.body_ref is not None:
        out.add(n.body_ref)
    return out


def conflict_name(name: bytes, device: str, when_ns: int, taken: Any) -> bytes:
    """``name (conflict from DEVICE YYYY-MM-DD HHMMSS).ext``, the extension
    kept last, made unique against ``taken`` (a container of names) with a
    counter; cut to 255 bytes without breaking the extension."""
    stem, ext = os.path.splitext(name.decode("utf-8", "surrogateescape"))
    if not stem:  # ".bashrc": the whole name is the stem
        stem, ext = ext, ""
    stamp = time.strftime("%Y-%m-%d %H%M%S", time.gmtime(when_ns / 1e9))
    base = f" (conflict from {device} {stamp}"
    for i in range(1, 10000):
        tail = base + (f" {i}" if i > 1 else "") + ")" + ext
        tb = tail.encode("utf-8", "surrogateescape")
        sb = stem.encode("utf-8", "surrogateescape")[: max(1, 255 - len(tb))]
        out = sb + tb
        if len(out) > 255:
            out = out[:255]
        if out not in taken:
            return out
    raise FsError(errno.EEXIST, "no free conflict name")


@dataclass
class Outcome:
    """What a merge did: for the log, the tests and the kernel's caches."""

    #: inodes whose state now differs from what this device showed before
    changed: set[int] = field(default_factory=set)
    #: conflict copies made: (directory, name, inode)
    conflicts: list[tuple[int, bytes, int]] = field(default_factory=list)
    #: entries that changed: (directory, name)
    entries: set[tuple[int, bytes]] = field(default_factory=set)
    #: inodes the merge left with no name (purged once no one uses them)
    orphans: set[int] = field(default_factory=set)


def clone(src: Inode, ino: int) -> Inode:
    n = Inode(ino, src.mode, src.uid, src.gid, file_id=src.file_id)
    assign(n, src)
    return n


def assign(dst: Inode, src: Inode) -> None:
    """Copy ``src``'s record into ``dst`` in place (other holders of ``dst``
    see the new state)."""
    dst.mode, dst.uid, dst.gid, dst.nlink, dst.size, dst.rdev = (
        src.mode,
        src.uid,
        src.gid,
        src.nlink,
        src.size,
        src.rdev,
    )
    dst.atime, dst.mtime, dst.ctime = src.atime, src.mtime, src.ctime
    dst.take_key(src)
    dst.xattrs = dict(src.xattrs)
    dst.body_ref, dst.body_loaded, dst.body_dirty = src.body_ref, src.body_loaded, src.body_dirty
    dst.chunks = dict(src.chunks)
    dst.small = src.small
    dst.entries = dict(src.entries)
    dst.order = SortedDict(src.order) if src.order is not None else None
    dst.next_cookie, dst.parent, dst.target = src.next_cookie, src.parent, src.target
