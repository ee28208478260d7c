"""Random operation sequences on megafs and on a plain folder must agree, step by step.

Hypothesis drives a :class:`~hypothesis.stateful.RuleBasedStateMachine`
through create, write at offsets (with and without ``O_TRUNC``), truncate,
mkdir, rename (onto existing files and folders too, into a folder's own
subtree, onto an ancestor), unlink, rmdir, link, symlink, setxattr and
removexattr (with ``XATTR_CREATE``/``XATTR_REPLACE``), commits, reopening
and crashes. Each operation runs on megafs and on a plain folder of the
local disk (the reference); both must succeed, or both fail with the same
errno; after every step the two trees must hold the same names, types, sizes,
contents, link counts, symlink targets and xattrs.

Two variants:

* :class:`ModelMachine` calls the filesystem model directly (no kernel:
  fast, 100 examples), on a vault with 64 KiB chunks and 4 KiB blocks so that
  small writes cross chunk and block boundaries. It also commits, closes and
  reopens the vault, and "crashes": drops the model without committing and
  opens the vault again, replaying the journal. The harness does the path
  walk the kernel would do (every symlink here dangles, so following one is
  ENOENT), and the kernel's own rename checks, which come before the
  filesystem is asked (``KERNEL_RENAME``).
* :class:`MountMachine` does everything through a real mount with ordinary
  system calls (fewer, shorter sequences), and remounts, or kills the daemon
  and mounts again (journal replay).
"""

from __future__ import annotations

import errno
import os
import random
import stat
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from megafs.client.journal import Journal
from megafs.errors import FsError
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO, Attr
from megafs.fs.namespace import XATTR_CREATE, XATTR_REPLACE
from megafs.stores import LocalStore
from megafs.vault.vault import Vault

from ..support.helpers import PASS, new_vault
from ..support.mounting import Drive, mounted_drive

T = TypeVar("T")

NAMES = ["a", "b", "c"]
#: Every path the machines use: three names, two levels.
PATHS = NAMES + [f"{p}/{q}" for p in NAMES for q in NAMES]
OFFSETS = [0, 1, 100, 4095, 4096, 65535, 65536, 2 * 65536 + 7, 300_000]
LENGTHS = [0, 1, 10, 2048, 2049, 5000, 70_000]
TARGETS = ["/nonexistent/target", "dangling", "../x/y"]
XATTR_NAMES = [b"user.one", b"user.two"]
UID, GID = os.getuid(), os.getgid()

paths = st.sampled_from(PATHS)


def data_of(seed: int, length: int) -> bytes:
    return random.Random(seed).randbytes(length)


# --- the reference: a plain folder on the local disk -------------------------------------


def os_errno(fn: Callable[[], object]) -> int:
    try:
        fn()
    except OSError as e:
        assert e.errno, e
        return e.errno
    return 0


class Plain:
    """Operations as system calls under ``root`` (a plain folder, or a folder in the mount)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def p(self, path: str) -> str:
        return os.path.join(self.root, path)

    def create(self, path: str) -> int:
        return os_errno(
            lambda: os.close(os.open(self.p(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        )

    def write(self, path: str, offset: int, data: bytes, trunc: bool) -> int:
        def go() -> None:
            fd = os.open(self.p(path), os.O_WRONLY | (os.O_TRUNC if trunc else 0))
            try:
                if data:
                    assert os.pwrite(fd, data, offset) == len(data)
            finally:
                os.close(fd)

        return os_errno(go)

    def truncate(self, path: str, size: int) -> int:
        return os_errno(lambda: os.truncate(self.p(path), size))

    def mkdir(self, path: str) -> int:
        return os_errno(lambda: os.mkdir(self.p(path), 0o755))

    def rename(self, src: str, dst: str) -> int:
        return os_errno(lambda: os.rename(self.p(src), self.p(dst)))

    def unlink(self, path: str) -> int:
        return os_errno(lambda: os.unlink(self.p(path)))

    def rmdir(self, path: str) -> int:
        return os_errno(lambda: os.rmdir(self.p(path)))

    def link(self, src: str, dst: str) -> int:
        return os_errno(lambda: os.link(self.p(src), self.p(dst), follow_symlinks=False))

    def symlink(self, target: str, path: str) -> int:
        return os_errno(lambda: os.symlink(target, self.p(path)))

    def setxattr(self, path: str, name: bytes, value: bytes, flags: int) -> int:
        return os_errno(lambda: os.setxattr(self.p(path), name, value, flags))

    def removexattr(self, path: str, name: bytes) -> int:
        return os_errno(lambda: os.removexattr(self.p(path), name))

    def tree(self) -> dict[str, tuple[Any, ...]]:
        """path -> (kind, size, link count, content or target, xattrs)."""
        out: dict[str, tuple[Any, ...]] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, self.root)
                st_ = os.lstat(full)
                if stat.S_ISLNK(st_.st_mode):
                    out[rel] = ("link", st_.st_size, st_.st_nlink, os.readlink(full), ())
                    continue
                xattrs = tuple(
                    sorted(
                        (n.encode(), os.getxattr(full, n))
                        for n in os.listxattr(full)
                        if n.startswith("user.")
                    )
                )
                if stat.S_ISDIR(st_.st_mode):
                    out[rel] = ("dir", None, st_.st_nlink, None, xattrs)
                else:
                    content = Path(full).read_bytes()
                    out[rel] = ("file", st_.st_size, st_.st_nlink, content, xattrs)
        return out


# --- the model, called directly -------------------------------------------------------


class Model:
    """The same operations on a :class:`Filesystem`, with the kernel's path walk."""

    def __init__(self, fs: Filesystem) -> None:
        self.fs = fs

    def run(self, afn: Callable[[], Awaitable[T]]) -> T:
        async def main() -> T:
            return await afn()

        return trio.run(main)

    def errno_of(self, afn: Callable[[], Awaitable[object]]) -> int:
        try:
            self.run(afn)
        except FsError as e:
            return e.errno
        return 0

    async def walk(self, path: str) -> tuple[int, str, Attr | None]:
        """(parent inode, last name, attributes of the last component or None)."""
        parts = path.split("/")
        cur = ROOT_INO
        for comp in parts[:-1]:
            a = await self.fs.lookup(cur, comp.encode())
            if stat.S_ISLNK(a.mode):  # every symlink here dangles
                raise FsError(errno.ENOENT)
            if not stat.S_ISDIR(a.mode):
                raise FsError(errno.ENOTDIR)
            cur = a.ino
        try:
            attr: Attr | None = await self.fs.lookup(cur, parts[-1].encode())
        except FsError as e:
            if e.errno != errno.ENOENT:
                raise
            attr = None
        return cur, parts[-1], attr

    async def follow(self, path: str) -> Attr:
        """The inode ``path`` names, following a last symlink (which dangles)."""
        _, _, a = await self.walk(path)
        if a is None or stat.S_ISLNK(a.mode):
            raise FsError(errno.ENOENT)
        return a

    def create(self, path: str) -> int:
        async def go() -> None:
            parent, name, _ = await self.walk(path)
            await self.fs.create(parent, name.encode(), 0o644, UID, GID)

        return self.errno_of(go)

    def write(self, path: str, offset: int, data: bytes, trunc: bool) -> int:
        async def go() -> None:
            a = await self.follow(path)
            if stat.S_ISDIR(a.mode):
                raise FsError(errno.EISDIR)
            if trunc:
                await self.fs.truncate(a.ino, 0)  # what the adapter does for O_TRUNC
            if data:
                await self.fs.write(a.ino, offset, data)

        return self.errno_of(go)

    def truncate(self, path: str, size: int) -> int:
        async def go() -> None:
            a = await self.follow(path)
            await self.fs.setattr(a.ino, size=size)

        return self.errno_of(go)

    def mkdir(self, path: str) -> int:
        async def go() -> None:
            parent, name, _ = await self.walk(path)
            await self.fs.mkdir(parent, name.encode(), 0o755, UID, GID)

        return self.errno_of(go)

    def rename(self, src: str, dst: str) -> int:
        async def go() -> None:
            sp, sn, sa = await self.walk(src)
            dp, dn, da = await self.walk(dst)
            if sa is None:
                raise FsError(errno.ENOENT)
            kernel = KERNEL_RENAME(src, dst, sa, da)
            if kernel:
                raise FsError(kernel)
            await self.fs.rename(sp, sn.encode(), dp, dn.encode())

        return self.errno_of(go)

    def unlink(self, path: str) -> int:
        async def go() -> None:
            parent, name, _ = await self.walk(path)
            await self.fs.unlink(parent, name.encode())

        return self.errno_of(go)

    def rmdir(self, path: str) -> int:
        async def go() -> None:
            parent, name, _ = await self.walk(path)
            await self.fs.rmdir(parent, name.encode())

        return self.errno_of(go)

    def link(self, src: str, dst: str) -> int:
        async def go() -> None:
            _, _, a = await self.walk(src)
            if a is None:  # the kernel resolves the old path before the new one
                raise FsError(errno.ENOENT)
            parent, name, existing = await self.walk(dst)
            if existing is not None:  # the kernel's lookup of the new name comes next
                raise FsError(errno.EEXIST)
            await self.fs.link(a.ino, parent, name.encode())

        return self.errno_of(go)

    def symlink(self, target: str, path: str) -> int:
        async def go() -> None:
            parent, name, _ = await self.walk(path)
            await self.fs.symlink(parent, name.encode(), target.encode(), UID, GID)

        return self.errno_of(go)

    def setxattr(self, path: str, name: bytes, value: bytes, flags: int) -> int:
        async def go() -> None:
            a = await self.follow(path)
            await self.fs.setxattr(a.ino, name, value, flags)

        return self.errno_of(go)

    def removexattr(self, path: str, name: bytes) -> int:
        async def go() -> None:
            a = await self.follow(path)
            await self.fs.removexattr(a.ino, name)

        return self.errno_of(go)

    def tree(self) -> dict[str, tuple[Any, ...]]:
        async def walk(ino: int, prefix: str, out: dict[str, tuple[Any, ...]]) -> None:
            after = 0
            while batch := await self.fs.readdir(ino, after):
                for name, a, cookie in batch:
                    rel = os.path.join(prefix, name.decode())
                    after = cookie
                    if stat.S_ISLNK(a.mode):
                        target = (await self.fs.readlink(a.ino)).decode()
                        out[rel] = ("link", a.size, a.nlink, target, ())
                        continue
                    xattrs = tuple(
                        sorted(
                            [
                                (n, await self.fs.getxattr(a.ino, n))
                                for n in await self.fs.listxattr(a.ino)
                            ]
                        )
                    )
                    if stat.S_ISDIR(a.mode):
                        out[rel] = ("dir", None, a.nlink, None, xattrs)
                        await walk(a.ino, rel, out)
                    else:
                        content = await self.fs.read(a.ino, 0, a.size + 1)
                        out[rel] = ("file", a.size, a.nlink, content, xattrs)

        out: dict[str, tuple[Any, ...]] = {}
        self.run(lambda: walk(ROOT_INO, "", out))
        return out


def _is_under(path: str, folder: str) -> bool:
    return path.startswith(folder + "/")


def KERNEL_RENAME(src: str, dst: str, sa: Attr, da: Attr | None) -> int:
    """What the kernel's rename answers before it asks the filesystem (fs/namei.c).

    The source may not be an ancestor of the target (EINVAL), nor the target
    an ancestor of the source (ENOTEMPTY); paths are compared here because
    every path of these machines is canonical.
    """
    if _is_under(dst, src):
        return errno.EINVAL
    if _is_under(src, dst):
        return errno.ENOTEMPTY
    return 0


# --- the machines -----------------------------------------------------------------------


class Compared(RuleBasedStateMachine):
    """Rules shared by both machines: each runs on ``self.subject`` and ``self.ref``."""

    subject: Plain | Model
    ref: Plain
    log: list[str]

    def same(self, what: str, got: int, want: int) -> None:
        self.log.append(f"{what}: {errno.errorcode.get(want, want)}")
        assert got == want, (
            f"{what}: megafs says {errno.errorcode.get(got, got)}, "
            f"the plain folder {errno.errorcode.get(want, want)}\n" + "\n".join(self.log[-20:])
        )

    @rule(path=paths)
    def create(self, path: str) -> None:
        self.same(f"create {path}", self.subject.create(path), self.ref.create(path))

    @rule(
        path=paths,
        offset=st.sampled_from(OFFSETS),
        length=st.sampled_from(LENGTHS),
        seed=st.integers(0, 1000),
        trunc=st.booleans(),
    )
    def write(self, path: str, offset: int, length: int, seed: int, trunc: bool) -> None:
        data = data_of(seed, length)
        what = f"write {path} {length}@{offset}{' O_TRUNC' if trunc else ''}"
        self.same(
            what,
            self.subject.write(path, offset, data, trunc),
            self.ref.write(path, offset, data, trunc),
        )

    @rule(path=paths, size=st.sampled_from([0, 1, 4096, 5000, 65536, 70_000, 200_000]))
    def truncate(self, path: str, size: int) -> None:
        self.same(
            f"truncate {path} {size}",
            self.subject.truncate(path, size),
            self.ref.truncate(path, size),
        )

    @rule(path=paths)
    def mkdir(self, path: str) -> None:
        self.same(f"mkdir {path}", self.subject.mkdir(path), self.ref.mkdir(path))

    @rule(src=paths, dst=paths)
    def rename(self, src: str, dst: str) -> None:
        self.same(f"rename {src} {dst}", self.subject.rename(src, dst), self.ref.rename(src, dst))

    @rule(path=paths)
    def unlink(self, path: str) -> None:
        self.same(f"unlink {path}", self.subject.unlink(path), self.ref.unlink(path))

    @rule(path=paths)
    def rmdir(self, path: str) -> None:
        self.same(f"rmdir {path}", self.subject.rmdir(path), self.ref.rmdir(path))

    @rule(src=paths, dst=paths)
    def link(self, src: str, dst: str) -> None:
        self.same(f"link {src} {dst}", self.subject.link(src, dst), self.ref.link(src, dst))

    @rule(to=st.sampled_from(TARGETS), path=paths)
    def symlink(self, to: str, path: str) -> None:
        self.same(
            f"symlink {to} {path}",
            self.subject.symlink(to, path),
            self.ref.symlink(to, path),
        )

    @rule(
        path=paths,
        name=st.sampled_from(XATTR_NAMES),
        value=st.sampled_from([b"", b"v", b"\x00\xff" * 100]),
        flags=st.sampled_from([0, XATTR_CREATE, XATTR_REPLACE]),
    )
    def setxattr(self, path: str, name: bytes, value: bytes, flags: int) -> None:
        self.same(
            f"setxattr {path} {name!r} flags={flags}",
            self.subject.setxattr(path, name, value, flags),
            self.ref.setxattr(path, name, value, flags),
        )

    @rule(path=paths, name=st.sampled_from(XATTR_NAMES))
    def removexattr(self, path: str, name: bytes) -> None:
        self.same(
            f"removexattr {path} {name!r}",
            self.subject.removexattr(path, name),
            self.ref.removexattr(path, name),
        )

    @invariant()
    def same_trees(self) -> None:
        got, want = self.subject.tree(), self.ref.tree()
        if got != want:
            diff = sorted(p for p in set(got) | set(want) if got.get(p) != want.get(p))
            detail = [
                f"  {p}: megafs {_short(got.get(p))}, plain {_short(want.get(p))}" for p in diff
            ]
            raise AssertionError(
                "trees differ after:\n" + "\n".join(self.log[-20:]) + "\n" + "\n".join(detail)
            )


def _short(entry: tuple[Any, ...] | None) -> str:
    if entry is None:
        return "absent"
    kind, size, nlink, content, xattrs = entry
    if isinstance(content, bytes):
        content = f"{len(content)} bytes {hash(content) & 0xFFFF:04x}"
    return f"{kind} size={size} nlink={nlink} {content} xattrs={[n for n, _ in xattrs]}"


class ModelMachine(Compared):
    """The model without a kernel, over a local-folder vault with small chunks."""

    tmp: Path  # set by the test
    examples = 0

    @initialize()
    def setup(self) -> None:
        ModelMachine.examples += 1
        base = self.tmp / f"example-{ModelMachine.examples}"
        base.mkdir()
        self.ref = Plain(base / "plain")
        self.ref.root.mkdir()
        self.store = LocalStore(str(base / "store"), create=True)
        self.cache = base / "cache"
        self.log = []
        trio.run(new_vault, self.store)
        self.subject = Model(self.open())

    def open(self) -> Filesystem:
        async def go() -> Filesystem:
            vault = await Vault.unlock(self.store, PASS)
            return await Filesystem.load(vault, journal=Journal(str(self.cache), vault.keys))

        return trio.run(go)

    @property
    def fs(self) -> Filesystem:
        assert isinstance(self.subject, Model)
        return self.subject.fs

    @rule()
    def commit(self) -> None:
        self.log.append("commit")
        trio.run(self.fs.commit)

    @rule()
    def reopen(self) -> None:
        self.log.append("close and open again")
        trio.run(self.fs.close)
        assert self.fs.journal is not None
        self.fs.journal.close()
        self.subject = Model(self.open())

    @rule()
    def crash(self) -> None:
        """Drop the model without a commit; the journal brings everything back."""
        self.log.append("crash and replay")
        assert self.fs.journal is not None
        self.fs.journal.close()
        self.subject = Model(self.open())

    def teardown(self) -> None:
        if hasattr(self, "subject"):
            trio.run(self.fs.close)
            assert self.fs.journal is not None
            self.fs.journal.close()


class MountMachine(Compared):
    """The same through a real mount: the kernel, the adapter, the model, the store."""

    drive: Drive  # set by the test
    tmp: Path
    examples = 0
    max_remounts = 2

    @initialize()
    def setup(self) -> None:
        MountMachine.examples += 1
        n = MountMachine.examples
        self.log = []
        self.remounts = 0
        self.ref = Plain(self.tmp / f"plain-{n}")
        self.ref.root.mkdir()
        folder = self.drive.mountpoint / f"example-{n}"
        folder.mkdir()
        self.subject = Plain(folder)

    @precondition(lambda self: self.remounts < self.max_remounts)
    @rule()
    def remount(self) -> None:
        self.log.append("remount")
        self.remounts += 1
        self.drive.remount()

    @precondition(lambda self: self.remounts < self.max_remounts)
    @rule()
    def kill_and_mount(self) -> None:
        """SIGKILL the daemon; the next mount replays its journal."""
        self.log.append("kill the daemon, mount again")
        self.remounts += 1
        self.drive.kill_daemon()
        self.drive.lazy_unmount()
        self.drive.mount()


@pytest.mark.slow
def test_model_against_a_plain_folder(tmp_path: Path) -> None:
    ModelMachine.tmp = tmp_path
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEGAFS_STATE_DIR", str(tmp_path / "state"))
        run_state_machine_as_test(  # type: ignore[no-untyped-call]
            ModelMachine,
            settings=settings(
                max_examples=100,
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )


@pytest.fixture
def small_chunk_drive(tmp_path: Path, any_store_url: tuple[str, dict[str, str]]) -> Iterator[Drive]:
    """A mounted vault with 64 KiB chunks of four 16 KiB blocks (the writes
    above cross chunk and block boundaries)."""
    url, env = any_store_url
    init_args = ("--chunk-size", "64K", "--block-size", "16K")
    with mounted_drive(url, tmp_path, env, init_args=init_args) as drive:
        yield drive


@pytest.mark.slow
@pytest.mark.fuse
def test_mount_against_a_plain_folder(small_chunk_drive: Drive, tmp_path: Path) -> None:
    MountMachine.drive = small_chunk_drive
    MountMachine.tmp = tmp_path
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        MountMachine,
        settings=settings(
            max_examples=15,
            stateful_step_count=15,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
