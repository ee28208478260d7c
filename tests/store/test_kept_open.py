"""Random reads without a worker thread: a local store and the content
cache keep read objects open and serve a range at once when the page cache
holds it (``RWF_NOWAIT``); a local store reads a small range from the disk
in the trio thread too while the disk has been fast (:class:`InlineReads`);
a kept file never outlives a change of the store's bytes that a failed
authentication reveals, a delete or eviction."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing

from megafs.client.cache import ContentCache
from megafs.errors import IntegrityError, ObjectNotFound
from megafs.nowait import InlineReads
from megafs.stores import LocalStore

NAME = "ab" * 16


class Counting(LocalStore):
    """Counts the jobs handed to worker threads."""

    def __init__(self, root: str) -> None:
        super().__init__(root, create=True)
        self.jobs = 0

    async def _run(self, fn, what, *, reading=True):  # type: ignore[no-untyped-def]
        self.jobs += 1
        return await super()._run(fn, what, reading=reading)


def test_reads_run_inline_only_after_fast_ones_and_go_back_to_threads_when_slow() -> None:
    pace = InlineReads(1000, slow=0.002, stall=0.05, after=4, pause=10.0, pause_max=25.0)
    now = 0.0
    for _ in range(3):
        assert not pace.allowed(100, now)  # timed in worker threads first
        assert not pace.note(0.0002, now)
    assert not pace.allowed(100, now)
    pace.note(0.0002, now)
    assert pace.allowed(100, now) and pace.allowed(1000, now)
    assert not pace.allowed(1001, now)  # too large: always a worker thread
    # one read that had to wait for a disk to wake up
    assert pace.note(0.2, now)
    assert not pace.allowed(100, now + 9.9)
    for _ in range(4):  # after the pause: timed in threads again, found fast
        pace.note(0.0002, now + 10)
    assert pace.allowed(100, now + 10)
    # a disk that stays somewhat slow (10 ms a read): the average trips it at
    # the third read, and the probation after each pause trips it again
    assert [pace.note(0.01, 10) for _ in range(3)] == [False, False, True]
    assert pace.until == 10 + 20  # the pause doubled
    assert [pace.note(0.01, 30) for _ in range(3)] == [False, False, True]
    assert pace.until == 30 + 25  # at most pause_max
    assert not pace.allowed(100, 54)


async def test_small_reads_need_no_worker_thread_while_the_disk_is_fast(tmp_path: Path) -> None:
    store = Counting(str(tmp_path / "store"))
    store.inline_reads = InlineReads(300_000, slow=3600, stall=3600, after=0)  # always fast
    await store.check()
    data = os.urandom(600_000)
    await store.put(NAME, data)
    jobs = store.jobs
    assert await store.get_range(NAME, 1000, 5000) == data[1000:6000]
    assert store.jobs == jobs  # opened and read in the trio thread
    for off in (0, 70_000, 250_000):
        assert await store.get_range(NAME, off, 4096) == data[off : off + 4096]
    # past the end: short, as before
    assert await store.get_range(NAME, 599_000, 5000) == data[599_000:]
    # kept open, but the page cache lost it: read through the kept file
    path = tmp_path / "store" / "objects" / NAME[:2] / NAME
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    assert await store.get_range(NAME, 300_000, 4096) == data[300_000:304_096]
    assert store.jobs == jobs
    # the largest range read inline, and one byte more: a worker thread
    assert store.forget_cached(NAME)
    assert await store.get_range(NAME, 0, 300_000) == data[:300_000]
    assert store.jobs == jobs
    assert store.forget_cached(NAME)
    assert await store.get_range(NAME, 0, 300_001) == data[:300_001]
    assert store.jobs == jobs + 1
    await store.aclose()


async def test_a_slow_read_sends_reads_to_worker_threads_for_a_while(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = Counting(str(tmp_path / "store"))
    await store.check()
    data = os.urandom(100_000)
    names = [f"{i:02x}" * 16 for i in range(12)]
    for name in names:
        await store.put(name, data)
    pace = store.inline_reads
    pace.slow = pace.stall = 3600.0  # every read is fast...
    jobs = store.jobs
    for name in names[: pace.after]:
        assert await store.get_range(name, 0, 4096) == data[:4096]
    assert store.jobs == jobs + pace.after  # ...once timed in worker threads
    assert await store.get_range(names[4], 0, 4096) == data[:4096]
    assert store.jobs == jobs + pace.after  # then inline
    pace.stall = 0.0  # every read is "slow"
    assert await store.get_range(names[5], 0, 4096) == data[:4096]
    assert store.jobs == jobs + pace.after  # that one ran inline, and tripped
    pace.stall = 3600.0
    assert await store.get_range(names[6], 0, 4096) == data[:4096]
    assert store.jobs == jobs + pace.after + 1  # now a worker thread
    await trio.sleep(10.5)  # the pause is over: timed in threads again first
    for name in names[7 : 7 + pace.after - 1]:  # (the read above was timed too)
        assert await store.get_range(name, 0, 4096) == data[:4096]
    assert store.jobs == jobs + 2 * pace.after
    assert await store.get_range(names[-1], 0, 4096) == data[:4096]
    assert store.jobs == jobs + 2 * pace.after  # inline again
    await store.aclose()


async def test_reads_in_the_trio_thread_refuse_what_is_not_an_object(tmp_path: Path) -> None:
    store = Counting(str(tmp_path / "store"))
    store.inline_reads = InlineReads(slow=3600, stall=3600, after=0)
    await store.check()
    await store.put(NAME, b"x" * 100)
    path = tmp_path / "store" / "objects" / NAME[:2] / NAME
    other = "cd" * 16
    (path.parent.parent / other[:2]).mkdir()
    (path.parent.parent / other[:2] / other).symlink_to(path)
    with pytest.raises(IntegrityError, match="refused"):
        await store.get_range(other, 0, 10)
    with pytest.raises(ObjectNotFound):
        await store.get_range("ef" * 16, 0, 10)
    assert store.jobs == 2  # (the check and the put)
    await store.aclose()


async def test_a_kept_file_goes_with_a_failed_check_a_put_or_a_delete(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "store"), create=True)
    await store.check()
    old, new = os.urandom(10_000), os.urandom(10_000)
    await store.put(NAME, old)
    assert await store.get_range(NAME, 0, 100) == old[:100]
    # the folder's bytes change behind the store's back (a sync tool, an attacker)
    path = tmp_path / "store" / "objects" / NAME[:2] / NAME
    tmp = path.with_name("x")
    tmp.write_bytes(new)
    os.replace(tmp, path)
    assert await store.get_range(NAME, 0, 100) == old[:100]  # the kept file
    assert store.forget_cached(NAME) is True  # what a failed authentication does
    assert store.forget_cached(NAME) is False
    assert await store.get_range(NAME, 0, 100) == new[:100]
    await store.put(NAME, old)  # a rewrite through the store drops it too
    assert await store.get_range(NAME, 0, 100) == old[:100]
    await store.delete(NAME)
    with pytest.raises(ObjectNotFound):
        await store.get_range(NAME, 0, 100)
    await store.aclose()


async def test_the_cache_serves_kept_files_and_drops_them_on_eviction(tmp_path: Path) -> None:
    cache = ContentCache(str(tmp_path / "cache"), 3 * 4124, 4124)
    blocks = [os.urandom(4124) for _ in range(4)]
    await cache.store("a", 0, blocks[0] + blocks[1])
    assert await cache.read("a", 4124, 4124) == blocks[1]
    assert "a" in cache._open
    assert await cache.read("a", 0, 4124) == blocks[0]
    await cache.store("b", 0, blocks[2] + blocks[3])  # over the limit: "a" goes
    assert "a" not in cache._open and await cache.read("a", 0, 4124) is None
    assert await cache.read("b", 0, 4124) == blocks[2] and "b" in cache._open
    cache.forget("b")  # deleted from the store
    assert "b" not in cache._open and await cache.read("b", 0, 4124) is None
