"""A misbehaving S3 server under a real mount: retries hide faults, outages end in EIO.

Every test puts :class:`tests.support.faultproxy.FaultProxy` between megafs and the
session's SeaweedFS. Under 15% of requests failing in every way the proxy
knows (errors before and after the server applied the request, resets,
stalls longer than megafs's per-attempt timeout, bodies cut short), ordinary
tools finish with exactly the right data, read back through a fresh cache.
When the store goes away for longer than ``store_timeout``, operations that
need it fail with EIO after that long, the mount stays up, and once the
store is back everything acknowledged (and even what an fsync could not
commit) reaches the store by itself.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from megafs.errors import StoreError
from megafs.stores.s3 import S3Store

from ..support.faultproxy import ALL_FAULTS, FaultProxy, wait_until
from ..support.helpers import unique_prefix
from ..support.mounting import Drive, assert_same_tree, make_tree, walk
from ..support.seaweed import SeaweedFS, signed_request

pytestmark = [pytest.mark.fuse, pytest.mark.s3]

MiB = 1 << 20

#: Per-attempt timeout is a quarter of the store timeout: 2 s here, so the
#: proxy's 3 s stalls are timeouts, and an operation gives up after about 8 s.
STORE_TIMEOUT = 8
STALL = 3.0

#: An object name (stores accept only the exact shape: 32 lowercase hex).
OBJ = "0b" * 16


@pytest.fixture
def proxy(seaweedfs: SeaweedFS) -> Iterator[FaultProxy]:
    with FaultProxy(seaweedfs.endpoint, stall=STALL, seed=5) as p:
        yield p


@pytest.fixture
def drive(
    tmp_path: Path, seaweedfs: SeaweedFS, s3_env: dict[str, str], proxy: FaultProxy
) -> Iterator[Drive]:
    """An initialized vault reached through ``proxy`` (not mounted yet)."""
    env = {**seaweedfs.env, "MEGAFS_S3_ENDPOINT": proxy.endpoint}
    d = Drive(f"s3://{seaweedfs.bucket}/{unique_prefix()}", tmp_path, env)
    try:
        with proxy.faults_off():
            d.init()
        yield d
    finally:
        proxy.up()
        d.cleanup()


def retries_logged(drive: Drive) -> int:
    return drive.log_text().count("temporary failure")


# --- short bodies ------------------------------------------------------------------------


async def test_truncated_bodies_are_retried_never_accepted(
    seaweedfs: SeaweedFS, s3_env: dict[str, str], proxy: FaultProxy
) -> None:
    data = os.urandom(300_000)
    store = S3Store(seaweedfs.bucket, unique_prefix(), endpoint=proxy.endpoint, backoff_base=0.01)
    async with store:
        await store.put(OBJ, data)
        # httpx itself refuses a body shorter than its Content-Length.
        proxy.rate, proxy.kinds = 1.0, ("truncate",)
        url = f"{proxy.endpoint}/{seaweedfs.bucket}/{store.prefix}o/{OBJ}"
        with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
            await trio.to_thread.run_sync(
                lambda: signed_request("GET", url, seaweedfs.access_key, seaweedfs.secret_key)
            )
        # The store retries them, and returns only whole answers.
        proxy.rate = 0.5
        for i in range(20):
            assert await store.get(OBJ) == data
            lo = i * 9973
            assert await store.get_range(OBJ, lo, 70_000) == data[lo : lo + 70_000]
    assert proxy.stats["fault:truncate"] >= 15


async def test_a_pointer_update_cut_short_leaves_the_pointer_whole(
    seaweedfs: SeaweedFS, s3_env: dict[str, str], proxy: FaultProxy
) -> None:
    """An upload of a pointer that breaks off (a killed daemon, a broken network)
    must leave the old pointer, never an empty or cut one.

    SeaweedFS stores an empty object when a PUT's connection closes right
    after its headers; megafs sends Content-MD5 with every pointer write, so
    such a PUT fails on the server and the old pointer stays.
    """
    prefix = unique_prefix()
    direct = S3Store(seaweedfs.bucket, prefix, endpoint=seaweedfs.endpoint)
    cut = S3Store(seaweedfs.bucket, prefix, endpoint=proxy.endpoint, max_attempts=1)
    async with direct, cut:
        value = os.urandom(200)
        etag = await direct.cas_pointer("root", value, None)
        proxy.kinds = ("cut-request",)
        proxy.rate = 1.0
        for i in range(12):
            with pytest.raises(StoreError):  # the upload broke off: the attempt failed
                await cut.cas_pointer("root", os.urandom(300), etag)
            ptr = await direct.read_pointer("root")
            assert ptr is not None and ptr.data == value, f"cut {i} damaged the pointer"
            # The pointer still moves on normally afterwards.
            value = os.urandom(200 + i)
            etag = await direct.cas_pointer("root", value, etag)
    assert proxy.stats["cut-requests"] == 12


# --- a workload through 15% faults ---------------------------------------------------------


def _mutate(root: Path) -> None:
    """The same overwrites, appends, truncations, renames and deletions, wherever run."""
    rnd = random.Random(7)
    with open(root / "big.bin", "r+b") as f:
        for off in (0, 65_536 - 10, MiB - 3, 2 * MiB):
            f.seek(off)
            f.write(rnd.randbytes(5000))
    with open(root / "extra-3m", "r+b") as f:
        f.seek(MiB + 12345)
        f.write(rnd.randbytes(MiB))  # across a chunk boundary
        f.flush()
        os.fsync(f.fileno())
    with open(root / "extra-700k", "ab") as f:
        f.write(rnd.randbytes(400_000))
    os.truncate(root / "extra-1500k", 1_000_003)
    os.truncate(root / "zeros", 1_500_000)  # grows: a hole
    os.rename(root / "body-8193", root / "sub" / "moved")
    os.unlink(root / "inline-2049")
    (root / "new.txt").write_bytes(b"written after the copy\n" * 1000)


def _contents(root: Path) -> dict[str, tuple[int, str]]:
    """rel path -> (mode, sha256 of the content or the symlink target)."""
    out = {}
    for p in walk(root):
        st = os.lstat(p)
        if p.is_symlink():
            what = "-> " + os.readlink(p)
        elif p.is_dir():
            what = "dir"
        else:
            what = hashlib.sha256(p.read_bytes()).hexdigest()
        out[str(p.relative_to(root))] = (st.st_mode, what)
    return out


def test_workload_through_faults_finishes_with_correct_data(
    drive: Drive, proxy: FaultProxy, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_tree(src)
    rnd = random.Random(3)
    sizes = {"extra-3m": 3 * MiB + 7, "extra-1500k": 1_500_000, "extra-700k": 700_000}
    for name, size in sizes.items():
        (src / name).write_bytes(rnd.randbytes(size))
    timeout = ("-o", f"store_timeout={STORE_TIMEOUT}")
    proxy.rate, proxy.kinds = 0.15, ALL_FAULTS

    drive.mount(*timeout, "--commit-interval", "1")
    dst = drive.mountpoint / "tree"
    drive.sh("cp", "-a", src, dst)
    drive.umount()  # the final commit goes through the faults too
    drive.mount(*timeout, cache_dir=tmp_path / "cache-2")  # nothing cached: all from the store
    assert_same_tree(src, dst)

    _mutate(src)
    _mutate(dst)
    drive.umount()
    drive.mount(*timeout, cache_dir=tmp_path / "cache-3")
    assert _contents(dst) == _contents(src)
    drive.sh("cmp", src / "extra-3m", dst / "extra-3m")
    drive.umount()

    print("proxy:", dict(proxy.stats), "retries logged:", retries_logged(drive))
    kinds = {k.removeprefix("fault:") for k in proxy.stats if k.startswith("fault:")}
    assert kinds == set(ALL_FAULTS), proxy.stats
    assert proxy.faults >= 0.1 * proxy.stats["requests"], proxy.stats
    assert retries_logged(drive) >= proxy.faults // 2, proxy.stats
    # Every fault was ridden out: no operation failed. (Rarely, faults pile up on one
    # request until its deadline; a background commit then just runs again.)
    problems = [p for p in drive.log_problems() if "will retry" not in p]
    assert not problems, "\n".join(problems)


# --- the store away for longer ---------------------------------------------------------------


def _timed_errno(fn: object) -> tuple[int, float]:
    assert callable(fn)
    t0 = time.monotonic()
    with pytest.raises(OSError) as exc:
        fn()
    return exc.value.errno or 0, time.monotonic() - t0


def test_store_down_fails_with_eio_after_the_timeout_then_recovers(
    drive: Drive, proxy: FaultProxy, tmp_path: Path
) -> None:
    t = 5.0
    opts = ("--store-timeout", f"{t:g}", "--commit-interval", "1")
    mp = drive.mountpoint
    committed = os.urandom(3 * MiB + 5)
    drive.mount(*opts)
    (mp / "committed").write_bytes(committed)
    (mp / "dir").mkdir()
    drive.umount()
    drive.mount(*opts)  # "committed" is in the store only now
    before = os.urandom(200_000)
    with open(mp / "before", "wb") as f:
        f.write(before)
        f.flush()
        os.fsync(f.fileno())

    proxy.down()
    during = os.urandom(2 * MiB + 3)
    fd = os.open(mp / "dir" / "during", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        assert os.write(fd, during) == len(during)  # lands in memory and the journal
        code, took = _timed_errno(lambda: os.fsync(fd))
        assert code == errno.EIO
        assert 1.0 <= took <= 2 * t + 5, took  # may wait behind a background commit
    finally:
        os.close(fd)
    code, took = _timed_errno(lambda: (mp / "committed").read_bytes())
    assert code == errno.EIO
    # The kernel tries a failed readahead once more, page by page: up to two waits.
    assert 1.0 <= took <= 2 * t + 5, took
    # The mount stays up, and what needs no store keeps working.
    assert os.path.ismount(mp)
    assert sorted(os.listdir(mp)) == ["before", "committed", "dir"]
    assert (mp / "dir" / "during").stat().st_size == len(during)
    assert (mp / "dir" / "during").read_bytes() == during  # not uploaded: still in memory
    (mp / "also-during").write_bytes(b"acknowledged while the store was away")

    proxy.up()  # it recovers by itself: no remount, no user action
    wait_until(lambda: _readable(mp / "committed", committed), 30, "reads to work again")
    wait_until(lambda: "background commit failed" in drive.log_text(), 30, "a failed commit")
    n = drive.log_text().count("background commit failed")
    time.sleep(3)  # a few commit intervals: the background committer has caught up
    assert drive.log_text().count("background commit failed") <= n + 1
    with open(mp / "dir" / "during", "rb") as f:
        os.fsync(f.fileno())  # and fsync works again

    drive.umount()
    shutil.rmtree(drive.cache_dir)  # no journal to help: all of it is in the store
    drive.mount(*opts, cache_dir=tmp_path / "fresh-cache")
    assert (mp / "committed").read_bytes() == committed
    assert (mp / "before").read_bytes() == before
    assert (mp / "dir" / "during").read_bytes() == during
    assert (mp / "also-during").read_bytes() == b"acknowledged while the store was away"
    drive.umount()
    problems = drive.log_problems()
    assert problems, "the outage left no trace in the log"
    expected = ("unreachable", "background commit failed")
    unexpected = [p for p in problems if not any(e in p for e in expected)]
    assert not unexpected, "\n".join(unexpected)


def _readable(path: Path, want: bytes) -> bool:
    try:
        return path.read_bytes() == want
    except OSError:
        return False
