"""The pyfuse3 adapter (:class:`megafs.fuse.operations.Operations`) called directly, with no kernel.

Each test builds the adapter over a real :class:`Filesystem` on a real local
vault and awaits its handlers the way ``pyfuse3.main`` would. What is checked
is what the adapter promises in its docstrings: the errno each failure
becomes, the kernel's lookup counts, stable readdir cookies, and that nothing
but ``FUSEError`` leaves a handler.

One kernel callback is replaced: ``pyfuse3.readdir_reply`` writes into the
kernel's reply buffer, and a ``ReaddirToken`` made in Python has a buffer of
size 0, so the real function refuses every entry. The ``listing`` fixture
swaps in a recorder for it; everything else is the real code.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pyfuse3
import pytest
from pyfuse3 import FileHandleT, FUSEError, InodeT

from megafs.errors import IntegrityError, StoreAuthError, StoreFull, StoreReadOnly
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.fs.namespace import RENAME_EXCHANGE, RENAME_NOREPLACE
from megafs.fuse.operations import Operations, Options
from megafs.stores import LocalStore

from ..support.helpers import reopen

ROOT = InodeT(ROOT_INO)
CTX = pyfuse3.RequestContext()  # uid 0, gid 0: the handlers only pass them on


@pytest.fixture
def ops(fs: Filesystem) -> Operations:
    return Operations(fs)


async def fuse_errno(call: Awaitable[object]) -> int:
    """The errno a handler call fails with (it must fail with FUSEError)."""
    with pytest.raises(FUSEError) as info:
        await call
    return info.value.errno


async def new_file(ops: Operations, name: bytes, data: bytes = b"") -> tuple[InodeT, FileHandleT]:
    """Create (one lookup reference, one open handle) and write ``data``."""
    fi, entry = await ops.create(ROOT, name, 0o644, os.O_RDWR, CTX)
    if data:
        assert await ops.write(fi.fh, 0, data) == len(data)
    return entry.st_ino, fi.fh


async def new_dir(ops: Operations, name: bytes, parent: InodeT = ROOT) -> InodeT:
    return (await ops.mkdir(parent, name, 0o755, CTX)).st_ino


# --- readdir: the one kernel callback stood in for --------------------------------


@dataclass
class Listing:
    """Stands in for the kernel's reply buffer: accepts ``room`` entries, then refuses."""

    room: int = sys.maxsize
    replies: list[tuple[bytes, int, int]] = field(default_factory=list)

    def reply(
        self, token: pyfuse3.ReaddirToken, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int
    ) -> bool:
        if len(self.replies) >= self.room:
            return False
        if len(self.replies) > 10_000:  # fail (as EIO), rather than hang, on a cookie loop
            raise AssertionError("readdir does not end")
        self.replies.append((name, attr.st_ino, next_id))
        return True

    async def read(self, ops: Operations, dir_ino: InodeT, start: int = 0) -> list[bytes]:
        """One readdir call from ``start``; the names it replied (also kept in ``replies``)."""
        before = len(self.replies)
        fh = await ops.opendir(dir_ino, CTX)
        await ops.readdir(fh, start, pyfuse3.ReaddirToken())
        return [name for name, _, _ in self.replies[before:]]

    @property
    def next_id(self) -> int:
        return self.replies[-1][2]


@pytest.fixture
def listing(monkeypatch: pytest.MonkeyPatch) -> Listing:
    """The test's one substitution of a kernel callback: ``pyfuse3.readdir_reply``."""
    rec = Listing()
    monkeypatch.setattr(pyfuse3, "readdir_reply", rec.reply)
    return rec


# --- errno mapping: the namespace ---------------------------------------------------


async def test_lookup_of_a_missing_name_is_a_negative_entry(ops: Operations) -> None:
    entry = await ops.lookup(ROOT, b"nothing", CTX)
    assert entry.st_ino == 0
    assert entry.entry_timeout > 0  # cacheable


async def test_lookup_errnos(ops: Operations) -> None:
    ino, _ = await new_file(ops, b"f")
    assert await fuse_errno(ops.lookup(ino, b"x", CTX)) == errno.ENOTDIR
    assert await fuse_errno(ops.lookup(ROOT, b"n" * 256, CTX)) == errno.ENAMETOOLONG
    assert await fuse_errno(ops.getattr(InodeT(99_999), CTX)) == errno.ENOENT
    assert await fuse_errno(ops.opendir(ino, CTX)) == errno.ENOTDIR


async def test_making_a_name_that_exists_is_eexist(ops: Operations) -> None:
    await new_file(ops, b"f")
    await new_dir(ops, b"d")
    assert await fuse_errno(ops.create(ROOT, b"f", 0o644, os.O_RDWR, CTX)) == errno.EEXIST
    assert await fuse_errno(ops.mkdir(ROOT, b"f", 0o755, CTX)) == errno.EEXIST
    assert await fuse_errno(ops.symlink(ROOT, b"d", b"target", CTX)) == errno.EEXIST
    assert await fuse_errno(ops.mknod(ROOT, b"d", stat.S_IFIFO | 0o644, 0, CTX)) == errno.EEXIST


@pytest.mark.parametrize(
    ("name", "expected"),
    [(b"n" * 256, errno.ENAMETOOLONG), (b"a/b", errno.EINVAL), (b"", errno.EINVAL)],
)
async def test_bad_names_are_refused(ops: Operations, name: bytes, expected: int) -> None:
    assert await fuse_errno(ops.create(ROOT, name, 0o644, os.O_RDWR, CTX)) == expected
    assert await fuse_errno(ops.mkdir(ROOT, name, 0o755, CTX)) == expected
    await new_file(ops, b"f")
    assert await fuse_errno(ops.rename(ROOT, b"f", ROOT, name, 0, CTX)) == expected


async def test_a_255_byte_name_is_allowed(ops: Operations) -> None:
    ino = await new_dir(ops, b"n" * 255)
    assert (await ops.lookup(ROOT, b"n" * 255, CTX)).st_ino == ino


async def test_unlink_and_rmdir_errnos(ops: Operations) -> None:
    await new_file(ops, b"f")
    d = await new_dir(ops, b"d")
    await new_dir(ops, b"child", d)
    assert await fuse_errno(ops.unlink(ROOT, b"missing", CTX)) == errno.ENOENT
    assert await fuse_errno(ops.unlink(ROOT, b"d", CTX)) == errno.EISDIR
    assert await fuse_errno(ops.rmdir(ROOT, b"f", CTX)) == errno.ENOTDIR
    assert await fuse_errno(ops.rmdir(ROOT, b"d", CTX)) == errno.ENOTEMPTY
    assert await fuse_errno(ops.rmdir(ROOT, b"missing", CTX)) == errno.ENOENT


async def test_rename_errnos(ops: Operations) -> None:
    await new_file(ops, b"f")
    await new_file(ops, b"g")
    d = await new_dir(ops, b"d")
    sub = await new_dir(ops, b"sub", d)
    await new_dir(ops, b"full")
    await new_dir(ops, b"x", (await ops.lookup(ROOT, b"full", CTX)).st_ino)
    await new_dir(ops, b"empty")

    async def rename(old: bytes, new: bytes, flags: int = 0, new_parent: InodeT = ROOT) -> int:
        return await fuse_errno(ops.rename(ROOT, old, new_parent, new, flags, CTX))

    assert await rename(b"missing", b"m") == errno.ENOENT
    assert await rename(b"f", b"d") == errno.EISDIR
    assert await rename(b"d", b"f") == errno.ENOTDIR
    assert await rename(b"empty", b"full") == errno.ENOTEMPTY
    assert await rename(b"d", b"inside", new_parent=sub) == errno.EINVAL  # into itself
    assert await rename(b"f", b"g", RENAME_NOREPLACE) == errno.EEXIST
    assert await rename(b"f", b"nobody", RENAME_EXCHANGE) == errno.ENOENT
    assert await rename(b"f", b"g", RENAME_NOREPLACE | RENAME_EXCHANGE) == errno.EINVAL
    assert await rename(b"f", b"g", 0x80) == errno.EINVAL  # an unknown flag


async def test_rename_moves_and_replaces(ops: Operations) -> None:
    f, _ = await new_file(ops, b"f", b"new")
    await new_file(ops, b"g", b"old")
    await ops.rename(ROOT, b"f", ROOT, b"g", 0, CTX)
    assert (await ops.lookup(ROOT, b"f", CTX)).st_ino == 0
    assert (await ops.lookup(ROOT, b"g", CTX)).st_ino == f


async def test_links_symlinks_and_nodes(ops: Operations) -> None:
    f, _ = await new_file(ops, b"f")
    d = await new_dir(ops, b"d")
    assert (await ops.link(f, ROOT, b"hard", CTX)).st_nlink == 2
    assert await fuse_errno(ops.link(d, ROOT, b"dirlink", CTX)) == errno.EPERM
    s = (await ops.symlink(ROOT, b"s", b"f", CTX)).st_ino
    assert await ops.readlink(s, CTX) == b"f"
    assert await fuse_errno(ops.readlink(f, CTX)) == errno.EINVAL
    assert await fuse_errno(ops.symlink(ROOT, b"long", b"t" * 4096, CTX)) == errno.ENAMETOOLONG
    assert await fuse_errno(ops.mknod(ROOT, b"dir", stat.S_IFDIR | 0o755, 0, CTX)) == errno.EINVAL


# --- errno mapping: file data and attributes ----------------------------------------


async def test_create_write_read(ops: Operations) -> None:
    data = os.urandom(100_000)  # crosses chunks of the SMALL layout
    ino, fh = await new_file(ops, b"f", data)
    assert await ops.read(fh, 0, 200_000) == data
    assert await ops.read(fh, 99_990, 100) == data[99_990:]
    assert await ops.read(fh, 200_000, 10) == b""
    assert (await ops.getattr(ino, CTX)).st_size == len(data)
    await ops.release(fh)
    fi = await ops.open(ino, os.O_RDWR | os.O_TRUNC, CTX)
    assert (await ops.getattr(ino, CTX)).st_size == 0
    assert await ops.read(fi.fh, 0, 10) == b""


async def test_an_unknown_or_released_handle_is_ebadf(ops: Operations) -> None:
    _, fh = await new_file(ops, b"f", b"x")
    await ops.release(fh)
    assert await fuse_errno(ops.read(fh, 0, 1)) == errno.EBADF
    assert await fuse_errno(ops.write(fh, 0, b"y")) == errno.EBADF
    assert await fuse_errno(ops.fsync(FileHandleT(12345), False)) == errno.EBADF


async def test_file_data_on_a_directory_is_eisdir(ops: Operations) -> None:
    d = await new_dir(ops, b"d")
    fi = await ops.open(d, os.O_RDWR, CTX)
    assert await fuse_errno(ops.read(fi.fh, 0, 1)) == errno.EISDIR
    assert await fuse_errno(ops.write(fi.fh, 0, b"x")) == errno.EISDIR
    # SetattrFields cannot be made in Python; setattr only reads its update_* flags.
    flags = dict.fromkeys(["mode", "uid", "gid", "atime", "mtime"], False)
    fields = SimpleNamespace(update_size=True, **{f"update_{k}": v for k, v in flags.items()})
    attr = pyfuse3.EntryAttributes()
    attr.st_size = 0
    call = ops.setattr(d, attr, cast(pyfuse3.SetattrFields, fields), None, CTX)
    assert await fuse_errno(call) == errno.EISDIR


async def test_xattrs(ops: Operations) -> None:
    ino, _ = await new_file(ops, b"f")
    await ops.setxattr(ino, b"user.a", b"1", CTX)
    assert await ops.getxattr(ino, b"user.a", CTX) == b"1"
    assert await ops.listxattr(ino, CTX) == [b"user.a"]
    assert await fuse_errno(ops.getxattr(ino, b"user.missing", CTX)) == errno.ENODATA
    assert await fuse_errno(ops.removexattr(ino, b"user.missing", CTX)) == errno.ENODATA
    await ops.removexattr(ino, b"user.a", CTX)
    assert await fuse_errno(ops.getxattr(ino, b"user.a", CTX)) == errno.ENODATA
    assert await fuse_errno(ops.setxattr(ino, b"user.big", b"v" * 65537, CTX)) == errno.E2BIG
    assert await fuse_errno(ops.setxattr(ino, b"", b"v", CTX)) == errno.ERANGE


@pytest.mark.parametrize("name", [b"system.posix_acl_access", b"system.posix_acl_default"])
async def test_acls_are_not_stored_as_xattrs(ops: Operations, name: bytes) -> None:
    ino, _ = await new_file(ops, b"f")
    assert await fuse_errno(ops.setxattr(ino, name, b"\x02\x00\x00\x00", CTX)) == errno.EOPNOTSUPP
    assert await ops.listxattr(ino, CTX) == []
    assert await fuse_errno(ops.getxattr(ino, name, CTX)) == errno.EOPNOTSUPP
    assert await fuse_errno(ops.removexattr(ino, name, CTX)) == errno.EOPNOTSUPP


async def test_a_missing_selinux_label_is_not_supported_a_stored_one_is_read(
    ops: Operations,
) -> None:
    ino, _ = await new_file(ops, b"f")
    other, _ = await new_file(ops, b"g")
    label = b"system_u:object_r:user_home_t:s0\x00"
    await ops.setxattr(ino, b"security.selinux", label, CTX)
    assert await ops.getxattr(ino, b"security.selinux", CTX) == label
    assert await fuse_errno(ops.getxattr(other, b"security.selinux", CTX)) == errno.EOPNOTSUPP
    # other names keep "absent"
    assert await fuse_errno(ops.getxattr(other, b"security.other", CTX)) == errno.ENODATA


# --- read-only --------------------------------------------------------------------

#: Every mutating handler, given a root holding file "f" (inode ``f``, open as ``fh``).
MUTATIONS: dict[str, Callable[[Operations, InodeT, FileHandleT], Awaitable[object]]] = {
    "mkdir": lambda o, f, fh: o.mkdir(ROOT, b"d", 0o755, CTX),
    "create": lambda o, f, fh: o.create(ROOT, b"g", 0o644, os.O_RDWR, CTX),
    "mknod": lambda o, f, fh: o.mknod(ROOT, b"p", stat.S_IFIFO | 0o644, 0, CTX),
    "symlink": lambda o, f, fh: o.symlink(ROOT, b"s", b"f", CTX),
    "link": lambda o, f, fh: o.link(f, ROOT, b"h", CTX),
    "unlink": lambda o, f, fh: o.unlink(ROOT, b"f", CTX),
    "rename": lambda o, f, fh: o.rename(ROOT, b"f", ROOT, b"g", 0, CTX),
    "write": lambda o, f, fh: o.write(fh, 0, b"x"),
    "open for writing": lambda o, f, fh: o.open(f, os.O_WRONLY, CTX),
    "open with O_TRUNC": lambda o, f, fh: o.open(f, os.O_RDONLY | os.O_TRUNC, CTX),
    "setxattr": lambda o, f, fh: o.setxattr(f, b"user.a", b"1", CTX),
    "removexattr": lambda o, f, fh: o.removexattr(f, b"user.a", CTX),
}


@pytest.mark.parametrize("op", list(MUTATIONS))
async def test_read_only_mount_option_is_erofs(fs: Filesystem, op: str) -> None:
    rw = Operations(fs)
    f, _ = await new_file(rw, b"f", b"data")
    await rw.setxattr(f, b"user.a", b"1", CTX)
    ro = Operations(fs, Options(read_only=True))
    fh = (await ro.open(f, os.O_RDONLY, CTX)).fh
    assert await fuse_errno(MUTATIONS[op](ro, f, fh)) == errno.EROFS
    assert await ro.read(fh, 0, 10) == b"data"  # reading still works
    assert (await ro.lookup(ROOT, b"f", CTX)).st_ino == f


async def test_read_only_filesystem_is_erofs(fs: Filesystem, store: LocalStore) -> None:
    rw = Operations(fs)
    f, fh = await new_file(rw, b"f", b"data")
    await rw.release(fh)
    await fs.close()
    ro = Operations(await reopen(store, writable=False))  # the model refuses, not the option
    assert await fuse_errno(ro.mkdir(ROOT, b"d", 0o755, CTX)) == errno.EROFS
    assert await fuse_errno(ro.unlink(ROOT, b"f", CTX)) == errno.EROFS
    fh = (await ro.open(f, os.O_RDWR, CTX)).fh
    assert await fuse_errno(ro.write(fh, 0, b"x")) == errno.EROFS
    assert await ro.read(fh, 0, 10) == b"data"


async def test_uid_gid_umask_options_change_reported_attributes(fs: Filesystem) -> None:
    ops = Operations(fs, Options(uid=1234, gid=5678, umask=0o027))
    entry = (await ops.create(ROOT, b"f", 0o666, os.O_RDWR, CTX))[1]
    assert (entry.st_uid, entry.st_gid) == (1234, 5678)
    assert stat.S_IMODE(entry.st_mode) == 0o640
    assert stat.S_ISREG(entry.st_mode)
    a = await fs.getattr(entry.st_ino)
    assert (a.uid, a.gid, stat.S_IMODE(a.mode)) == (0, 0, 0o666)  # stored unchanged


# --- the error boundary ---------------------------------------------------------------


def _raiser(exc: BaseException) -> Callable[..., Awaitable[Any]]:
    async def fail(*args: object, **kwargs: object) -> Any:
        raise exc

    return fail


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (RuntimeError("bug"), errno.EIO),
        (KeyError(3), errno.EIO),
        (AssertionError(), errno.EIO),
        (IntegrityError("o/abc"), errno.EIO),
        (StoreFull("quota"), errno.ENOSPC),
        (StoreReadOnly("bucket"), errno.EROFS),
        (StoreAuthError("denied"), errno.EACCES),
        (OSError(errno.ENOSPC, "cache disk full"), errno.ENOSPC),
        (OSError("no errno"), errno.EIO),
        (ExceptionGroup("uploads", [StoreFull("a"), StoreFull("b")]), errno.ENOSPC),
        (ExceptionGroup("u", [StoreFull("a"), ExceptionGroup("v", [ValueError()])]), errno.EIO),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
async def test_exceptions_become_one_errno(
    ops: Operations, fs: Filesystem, monkeypatch: pytest.MonkeyPatch,
    exc: BaseException, expected: int,
) -> None:
    monkeypatch.setattr(fs, "getattr", _raiser(exc))
    assert await fuse_errno(ops.getattr(ROOT, CTX)) == expected
    assert ops.active == 0


async def test_an_unexpected_exception_is_logged_as_an_internal_error(
    ops: Operations, fs: Filesystem, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(fs, "write", _raiser(ZeroDivisionError("oops")))
    _, fh = await new_file(ops, b"f")
    with caplog.at_level(logging.ERROR, logger="megafs.fuse.operations"):
        assert await fuse_errno(ops.write(fh, 0, b"x")) == errno.EIO
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)
    # The adapter still serves requests afterwards.
    assert (await ops.getattr(ROOT, CTX)).st_ino == ROOT


async def test_eviction_runs_after_the_last_handler_and_never_raises(
    ops: Operations, fs: Filesystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def evict() -> int:
        calls.append(ops.active)
        raise RuntimeError("evict failed")

    monkeypatch.setattr(fs, "evict", evict)
    assert (await ops.getattr(ROOT, CTX)).st_ino == ROOT
    assert await fuse_errno(ops.getattr(InodeT(99_999), CTX)) == errno.ENOENT
    assert calls == [0, 0]  # once per request, when none is in flight


# --- lookup counts --------------------------------------------------------------------


async def test_lookup_adds_one_reference_each_time(ops: Operations, fs: Filesystem) -> None:
    f, _ = await new_file(ops, b"f")
    assert fs.table.refs[f] == 1  # create
    await ops.lookup(ROOT, b"f", CTX)
    await ops.lookup(ROOT, b"f", CTX)
    assert fs.table.refs[f] == 3
    await ops.forget([(f, 2)])
    assert fs.table.refs[f] == 1
    await ops.forget([(f, 1)])
    assert f not in fs.table.refs


async def test_every_entry_maker_adds_one_reference(ops: Operations, fs: Filesystem) -> None:
    f, _ = await new_file(ops, b"f")
    made = [
        f,
        await new_dir(ops, b"d"),
        (await ops.symlink(ROOT, b"s", b"f", CTX)).st_ino,
        (await ops.mknod(ROOT, b"p", stat.S_IFIFO | 0o644, 0, CTX)).st_ino,
    ]
    assert [fs.table.refs[i] for i in made] == [1, 1, 1, 1]
    await ops.link(f, ROOT, b"hard", CTX)
    assert fs.table.refs[f] == 2


async def test_dot_and_dotdot_lookups_are_counted(ops: Operations, fs: Filesystem) -> None:
    d = await new_dir(ops, b"d")
    assert (await ops.lookup(d, b".", CTX)).st_ino == d
    assert (await ops.lookup(d, b"..", CTX)).st_ino == ROOT
    assert fs.table.refs[d] == 2
    assert fs.table.refs[ROOT] == 1


async def test_failures_add_no_reference(ops: Operations, fs: Filesystem) -> None:
    f, _ = await new_file(ops, b"f")
    before = dict(fs.table.refs)
    await ops.lookup(ROOT, b"missing", CTX)
    await fuse_errno(ops.create(ROOT, b"f", 0o644, os.O_RDWR, CTX))
    await fuse_errno(ops.mkdir(ROOT, b"f", 0o755, CTX))
    await fuse_errno(ops.lookup(f, b"x", CTX))
    assert fs.table.refs == before


async def test_an_unlinked_open_file_lives_until_forgotten_and_released(
    ops: Operations, fs: Filesystem
) -> None:
    f, fh = await new_file(ops, b"f", b"still here")
    await ops.unlink(ROOT, b"f", CTX)
    assert (await ops.lookup(ROOT, b"f", CTX)).st_ino == 0
    assert await ops.read(fh, 0, 100) == b"still here"
    await ops.forget([(f, 1)])  # count 0, but still open
    assert (await ops.getattr(f, CTX)).st_nlink == 0
    assert await ops.read(fh, 0, 100) == b"still here"
    assert f in fs.namespace.orphans
    await ops.release(fh)
    assert await fuse_errno(ops.getattr(f, CTX)) == errno.ENOENT
    assert f not in fs.namespace.orphans


async def test_a_released_unlinked_file_lives_until_its_count_is_zero(
    ops: Operations, fs: Filesystem
) -> None:
    f, fh = await new_file(ops, b"f", b"data")
    await ops.lookup(ROOT, b"f", CTX)  # count 2
    await ops.unlink(ROOT, b"f", CTX)
    await ops.release(fh)
    await ops.forget([(f, 1)])
    assert (await ops.getattr(f, CTX)).st_nlink == 0
    await ops.forget([(f, 1)])
    assert await fuse_errno(ops.getattr(f, CTX)) == errno.ENOENT


async def test_a_file_replaced_by_rename_lives_while_open(ops: Operations) -> None:
    old, fh = await new_file(ops, b"old", b"old bytes")
    await new_file(ops, b"new", b"new bytes")
    await ops.rename(ROOT, b"new", ROOT, b"old", 0, CTX)
    assert await ops.read(fh, 0, 100) == b"old bytes"
    await ops.forget([(old, 1)])
    await ops.release(fh)
    assert await fuse_errno(ops.getattr(old, CTX)) == errno.ENOENT


async def test_a_double_release_closes_one_handle_only(ops: Operations, fs: Filesystem) -> None:
    f, fh = await new_file(ops, b"f", b"data")
    second = (await ops.open(f, os.O_RDONLY, CTX)).fh
    assert fs.table.opens[f] == 2
    await ops.release(fh)
    await ops.release(fh)
    assert fs.table.opens[f] == 1
    await ops.unlink(ROOT, b"f", CTX)
    await ops.forget([(f, 1)])
    assert await ops.read(second, 0, 10) == b"data"


# --- readdir ----------------------------------------------------------------------


async def test_readdir_lists_entries_without_dot_and_dotdot(
    ops: Operations, listing: Listing
) -> None:
    names = {b"a", b"b", b"c"}
    for n in names:
        await new_file(ops, n)
    assert set(await listing.read(ops, ROOT)) == names
    cookies = [c for _, _, c in listing.replies]
    assert cookies == sorted(set(cookies))  # strictly increasing
    assert all(c > 2 for c in cookies)  # 1 and 2 would be "." and ".."


async def test_each_accepted_readdir_entry_adds_one_reference(
    ops: Operations, fs: Filesystem, listing: Listing
) -> None:
    inos = [(await new_file(ops, n))[0] for n in (b"a", b"b", b"c")]
    listing.room = 2  # the kernel's buffer fills after two entries
    assert await listing.read(ops, ROOT) == [b"a", b"b"]
    assert [fs.table.refs[i] for i in inos] == [2, 2, 1]  # the refused entry is not counted


async def test_readdir_resumes_at_its_cookie_while_entries_change(
    ops: Operations, listing: Listing
) -> None:
    for n in (b"a", b"b", b"c", b"d", b"e"):
        await new_file(ops, n)
    listing.room = 2
    assert await listing.read(ops, ROOT) == [b"a", b"b"]
    resume = listing.next_id
    await ops.unlink(ROOT, b"a", CTX)  # listed already
    await ops.unlink(ROOT, b"c", CTX)  # not listed yet
    await new_file(ops, b"f")
    listing.room = sys.maxsize
    # An offset that counted entries (2) would now skip "d": "a" is gone.
    assert await listing.read(ops, ROOT, resume) == [b"d", b"e", b"f"]


async def test_readdir_cookies_survive_removals(ops: Operations, listing: Listing) -> None:
    for n in (b"a", b"b", b"c", b"d"):
        await new_file(ops, n)
    await listing.read(ops, ROOT)
    before = {n: c for n, _, c in listing.replies}
    await ops.unlink(ROOT, b"a", CTX)
    await ops.unlink(ROOT, b"c", CTX)
    listing.replies.clear()
    assert await listing.read(ops, ROOT) == [b"b", b"d"]
    assert {n: c for n, _, c in listing.replies} == {b"b": before[b"b"], b"d": before[b"d"]}


async def test_readdir_continues_past_one_batch(
    ops: Operations, fs: Filesystem, listing: Listing
) -> None:
    d = await new_dir(ops, b"big")
    names = [b"f%04d" % i for i in range(300)]  # the model returns 256 at a time
    for n in names:
        await fs.create(d, n, 0o644, 0, 0)
    assert await listing.read(ops, d) == names
    assert len({c for _, _, c in listing.replies}) == 300
    assert await listing.read(ops, d, listing.next_id) == []


async def test_requests_are_traced_only_with_debug_logging(
    fs: Filesystem, caplog: pytest.LogCaptureFixture
) -> None:
    """``-d``: each request logged with its main arguments, its answer and
    its duration; without DEBUG the handlers are the class's own, unwrapped."""
    caplog.set_level(logging.INFO, logger="megafs.fuse.operations")
    assert "read" not in vars(Operations(fs))
    caplog.set_level(logging.DEBUG, logger="megafs.fuse.operations")
    ops = Operations(fs)
    ino, fh = await new_file(ops, b"secret-name", b"hello")
    assert await ops.read(fh, 1, 3) == b"ell"
    assert await fuse_errno(ops.getxattr(ino, b"user.none", CTX)) == errno.ENODATA
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fuse: ")]
    ms = r" \d+\.\d\d ms"
    expected = [
        rf"fuse: create\(parent=1, mode=644, flags=0x2\) fh=\d+, ino={ino}" + ms,
        rf"fuse: write\(fh={fh}, off=0, size=5\) 5" + ms,
        rf"fuse: read\(fh={fh}, off=1, size=3\) 3 bytes" + ms,
        rf"fuse: getxattr\(ino={ino}\) ENODATA" + ms,
    ]
    assert len(lines) == len(expected), lines
    for line, pattern in zip(lines, expected, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)
    assert not any("secret-name" in line or "user.none" in line for line in lines)
