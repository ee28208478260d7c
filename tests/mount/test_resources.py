"""Running out of room or rights: clear errors, nothing lost, the mount keeps going.

* The cache disk (a 2 MiB tmpfs) full: operations fail with ENOSPC and change
  nothing (the journal is write-ahead), reads go on, and once space is freed
  writes work again; a daemon killed afterwards loses nothing it acknowledged.
* A local store on a full tmpfs: writes still land in the journal, ``fsync``
  fails with ENOSPC, and the data is committed once space is freed.
* A store that refuses writes: a local folder behind a read-only bind mount
  (EROFS), one made immutable with ``chattr +i`` (root ignores modes; EACCES),
  and a SeaweedFS identity whose write permission is taken away while mounted
  (EACCES). ``fsync`` fails, reads keep working, and everything is committed
  when writing is allowed again. Mounting a store that refuses writes serves it
  read-only.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..support.faultproxy import wait_until
from ..support.helpers import running_seaweedfs, unique_prefix
from ..support.mounting import Drive
from ..support.seaweed import SeaweedFS, signed_request

pytestmark = pytest.mark.fuse

MiB = 1 << 20


# --- helpers --------------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A fresh tmpfs of ``size`` at ``path``, lazily unmounted on the way out."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the filesystem of ``folder`` completely, then free ``leave`` bytes."""
    filler = folder / f"filler-{secrets.token_hex(4)}"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        size = 1 << 16
        while size:
            try:
                os.write(fd, bytes(size))
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                size //= 2
        if leave:
            os.ftruncate(fd, os.fstat(fd).st_size - leave)
    finally:
        os.close(fd)
    return filler


@contextlib.contextmanager
def read_only_bind(folder: Path) -> Iterator[None]:
    """Make ``folder`` read-only (as root, modes would not stop us) until the block ends."""
    subprocess.run(["mount", "--bind", folder, folder], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", folder], check=True)
        yield
    finally:
        # lazily: the mount keeps objects it read open (for random reads),
        # as any program that reads files does, so the bind is busy
        subprocess.run(["umount", "--lazy", folder], check=True)


@contextlib.contextmanager
def immutable(folder: Path) -> Iterator[None]:
    """``chattr +i`` every folder and file below ``folder`` (EPERM even for root)."""
    subprocess.run(["chattr", "-R", "+i", folder], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-R", "-i", folder], check=True)


def errno_of(fn: Callable[[], object]) -> int:
    with pytest.raises(OSError) as exc:
        fn()
    return exc.value.errno or 0


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def only_expected_problems(drive: Drive, *expected: str) -> None:
    unexpected = [p for p in drive.log_problems() if not any(e in p for e in expected)]
    assert not unexpected, "\n".join(unexpected)


@pytest.fixture
def local_drive(tmp_path: Path) -> Iterator[Drive]:
    d = Drive(str(tmp_path / "store"), tmp_path)
    try:
        yield d
    finally:
        d.cleanup()


# --- the cache disk --------------------------------------------------------------------------


def test_cache_disk_full(local_drive: Drive, tmp_path: Path) -> None:
    drive = local_drive
    drive.init()
    with tmpfs(tmp_path / "cachefs", "2m") as cachefs:
        try:
            _cache_disk_full(drive, cachefs / "cache")
        finally:
            drive.cleanup()  # before the tmpfs goes: the daemon has files open in it
    only_expected_problems(drive, "No space left on device")


def _cache_disk_full(drive: Drive, cache: Path) -> None:
    mp = drive.mountpoint
    drive.mount("--commit-interval", "3600", cache_dir=cache)  # all of it in the journal
    before = os.urandom(300_000)
    (mp / "before").write_bytes(before)

    filler = fill(cache.parent)
    # The journal is write-ahead: an operation whose record does not fit fails
    # and changes nothing, even when part of the record did fit.
    with open(mp / "before", "r+b", buffering=0) as f:
        assert errno_of(lambda: f.write(b"y" * 100_000)) == errno.ENOSPC
    assert (mp / "before").read_bytes() == before  # reads go on
    # Small records fill what is left of the journal's last page, then fail too.
    made = []
    for i in range(1000):
        try:
            (mp / f"new-{i}").write_bytes(b"")
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
            break
        made.append(f"new-{i}")
    else:
        raise AssertionError("creating files never failed on a full cache disk")
    assert errno_of(lambda: (mp / "dir").mkdir()) == errno.ENOSPC
    assert errno_of(lambda: os.rename(mp / "before", mp / "renamed")) == errno.ENOSPC
    assert sorted(os.listdir(mp)) == sorted(["before", *made])

    # Room for a small record, not for a big one: all or nothing.
    filler.unlink()
    filler = fill(cache.parent, leave=8192)
    (mp / "partial").write_bytes(b"")
    with open(mp / "partial", "r+b", buffering=0) as f:
        assert errno_of(lambda: f.write(os.urandom(200_000))) == errno.ENOSPC
    assert (mp / "partial").stat().st_size == 0

    filler.unlink()  # space again: writes work again, no remount needed
    after = os.urandom(500_000)
    (mp / "after").write_bytes(after)
    with open(mp / "partial", "ab") as f:
        f.write(b"appended once there was room")

    # Killed now, the daemon has committed none of it: the journal has all of it.
    drive.kill_daemon()
    drive.lazy_unmount()
    drive.mount(cache_dir=cache)
    assert sorted(os.listdir(mp)) == sorted(["after", "before", "partial", *made])
    assert (mp / "before").read_bytes() == before
    assert (mp / "after").read_bytes() == after
    assert (mp / "partial").read_bytes() == b"appended once there was room"
    drive.umount()


# --- a local store that is full, read-only or immutable ------------------------------------------


def test_local_store_full(local_drive: Drive, tmp_path: Path) -> None:
    drive = local_drive
    mp = drive.mountpoint
    with tmpfs(tmp_path / "store", "8m") as store:
        drive.init()
        drive.mount("--commit-interval", "1")
        a = os.urandom(MiB + 1)
        (mp / "a").write_bytes(a)
        fsync_path(mp / "a")

        filler = fill(store)
        b = os.urandom(2 * MiB + 3)
        (mp / "b").write_bytes(b)  # into memory and the journal: acknowledged
        assert errno_of(lambda: fsync_path(mp / "b")) == errno.ENOSPC
        assert errno_of(lambda: fsync_path(mp / "b")) == errno.ENOSPC  # still, no hang
        assert (mp / "a").read_bytes() == a  # reads from a full store go on
        assert (mp / "b").read_bytes() == b

        filler.unlink()
        fsync_path(mp / "b")
        drive.umount()
        drive.mount(cache_dir=tmp_path / "fresh-cache")  # all of it from the store
        assert (mp / "a").read_bytes() == a
        assert (mp / "b").read_bytes() == b
        drive.umount()
    assert "store full" in drive.log_text()
    only_expected_problems(drive, "store full", "failed, will retry", "could not stage")


def test_local_store_read_only_or_immutable(local_drive: Drive, tmp_path: Path) -> None:
    drive = local_drive
    mp = drive.mountpoint
    store = Path(drive.url)
    drive.init()
    drive.mount("--commit-interval", "1")
    a = os.urandom(MiB + 5)
    (mp / "a").write_bytes(a)
    drive.remount()  # "a" is in the store only now

    written: dict[str, bytes] = {}
    for name, refuse, code in (
        ("ro", read_only_bind, errno.EROFS),
        ("immutable", immutable, errno.EACCES),
    ):
        with refuse(store):
            data = os.urandom(300_000)
            (mp / name).write_bytes(data)  # lands in the journal
            written[name] = data
            assert errno_of(functools.partial(fsync_path, mp / name)) == code, name
            assert (mp / "a").read_bytes() == a  # reads keep working
        fsync_path(mp / name)  # writable again: committed

    drive.umount()
    drive.mount(cache_dir=tmp_path / "fresh-cache")
    assert (mp / "a").read_bytes() == a
    for name, data in written.items():
        assert (mp / name).read_bytes() == data
    drive.umount()

    # Mounting a store that refuses writes serves it read-only.
    with read_only_bind(store):
        drive.mount()
        assert (mp / "ro").read_bytes() == written["ro"]
        assert errno_of(lambda: (mp / "new").write_bytes(b"x")) == errno.EROFS
        assert errno_of(lambda: (mp / "a").unlink()) == errno.EROFS
        drive.umount()
    log = drive.log_text()
    assert "store is read-only" in log and "store denied access" in log
    assert "mounting read-only" in log
    only_expected_problems(
        drive, "store is read-only", "store denied access", "failed, will retry", "read-only"
    )


# --- an S3 identity that loses its write permission ---------------------------------------------


@dataclass
class AclServer:
    """A SeaweedFS of our own whose identity's permissions the test may change."""

    server: SeaweedFS

    def set_actions(self, actions: list[str]) -> None:
        """Rewrite the identity's actions, have weed reload them, wait until it has."""
        self.server.write_identities(actions)
        self.server.reload()
        probe = f"{self.server.endpoint}/{self.server.bucket}/acl-probe"
        want = 200 if "Write" in actions else 403

        def applied() -> bool:
            resp = signed_request(
                "PUT", probe, self.server.access_key, self.server.secret_key, body=b"probe"
            )
            return resp.status_code == want

        wait_until(applied, 30, f"weed to apply actions {actions}")


READ_WRITE = ["Read", "Write", "List", "Tagging"]
READ_ONLY = ["Read", "List"]


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclServer]:
    base = tmp_path_factory.mktemp("seaweedfs-acl")
    with running_seaweedfs(base, "megafs-acl", "acl") as server:
        yield AclServer(server)


@pytest.mark.s3
def test_s3_write_permission_taken_away(
    acl_server: AclServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = acl_server.server
    acl_server.set_actions(READ_WRITE)
    drive = Drive(f"s3://{server.bucket}/{unique_prefix()}", tmp_path, server.env)
    mp = drive.mountpoint
    try:
        drive.init()
        drive.mount("--commit-interval", "1")
        a = os.urandom(MiB + 7)
        (mp / "a").write_bytes(a)
        drive.remount()

        acl_server.set_actions(READ_ONLY)
        b = os.urandom(400_000)
        (mp / "b").write_bytes(b)  # lands in the journal
        assert errno_of(lambda: fsync_path(mp / "b")) == errno.EACCES
        assert (mp / "a").read_bytes() == a  # reading is still allowed
        assert "AccessDenied" in drive.log_text()

        acl_server.set_actions(READ_WRITE)
        fsync_path(mp / "b")
        drive.umount()
        drive.mount(cache_dir=tmp_path / "fresh-cache")
        assert (mp / "a").read_bytes() == a
        assert (mp / "b").read_bytes() == b
        drive.umount()

        # Mounted with read-only rights: served read-only.
        acl_server.set_actions(READ_ONLY)
        drive.mount()
        assert (mp / "b").read_bytes() == b
        assert errno_of(lambda: (mp / "c").write_bytes(b"c")) == errno.EROFS
        drive.umount()
        assert "mounting read-only" in drive.log_text()
    finally:
        drive.cleanup()
        acl_server.set_actions(["Admin", *READ_WRITE])
    only_expected_problems(drive, "store denied access", "failed, will retry", "read-only")
