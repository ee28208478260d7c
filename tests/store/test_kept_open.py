"""Random reads without a worker thread: a local store and the content
cache keep read objects open and serve a range at once when the page cache
holds it (``RWF_NOWAIT``); a kept file never outlives a change of the
store's bytes that a failed authentication reveals, a delete or eviction."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing

from megafs.client.cache import ContentCache
from megafs.errors import IntegrityError, ObjectNotFound
from megafs.stores import LocalStore, local

NAME = "ab" * 16


class Counting(LocalStore):
    """Counts the jobs handed to worker threads."""

    def __init__(self, root: str) -> None:
        super().__init__(root, create=True)
        self.jobs = 0

    async def _run(self, fn, what, *, reading=True):  # type: ignore[no-untyped-def]
        self.jobs += 1
        return await super()._run(fn, what, reading=reading)


async def test_small_reads_need_no_worker_thread_while_the_disk_is_fast(tmp_path: Path) -> None:
    store = Counting(str(tmp_path / "store"))
    await store.check()
    data = os.urandom(600_000)
    await store.put(NAME, data)
    jobs = store.jobs
    assert await store.get_range(NAME, 1000, 5000) == data[1000:6000]
    assert store.jobs == jobs  # opened and read in the trio thread: a fast disk
    for off in (0, 70_000, 250_000):
        assert await store.get_range(NAME, off, 4096) == data[off : off + 4096]
    # past the end: short, as before
    assert await store.get_range(NAME, 599_000, 5000) == data[599_000:]
    assert store.jobs == jobs
    # a large range is read in a worker thread (unless the page cache has it)
    assert local.INLINE_READ_MAX < 500_000
    assert store.forget_cached(NAME)
    assert await store.get_range(NAME, 50_000, 500_000) == data[50_000:550_000]
    assert store.jobs == jobs + 1
    await store.aclose()


async def test_a_slow_read_sends_reads_to_worker_threads_for_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    store = Counting(str(tmp_path / "store"))
    await store.check()
    data = os.urandom(100_000)
    names = [f"{i:02x}" * 16 for i in range(4)]
    for name in names:
        await store.put(name, data)
    jobs = store.jobs
    monkeypatch.setattr(local, "INLINE_STALL", 0.0)  # every read is "slow"
    assert await store.get_range(names[0], 0, 4096) == data[:4096]
    assert store.jobs == jobs  # that one ran inline, and was found slow
    assert await store.get_range(names[1], 4096, 4096) == data[4096:8192]
    assert store.jobs == jobs + 1  # now a worker thread
    monkeypatch.setattr(local, "INLINE_STALL", 3600.0)
    await trio.sleep(local.INLINE_PAUSE + 1)
    assert await store.get_range(names[2], 0, 4096) == data[:4096]
    assert store.jobs == jobs + 1  # inline again once the pause is over
    # a disk that is only somewhat slow: the moving average decides
    monkeypatch.setattr(local, "INLINE_SLOW", 0.0)
    assert await store.get_range(names[3], 0, 4096) == data[:4096]
    assert await store.get_range(names[3], 50_000, 4096) == data[50_000:54_096]
    assert store.jobs == jobs + 1  # (kept open and in the page cache: at once)
    store.forget_cached(names[3])
    assert await store.get_range(names[3], 8192, 4096) == data[8192:12_288]
    assert store.jobs == jobs + 2
    await store.aclose()


async def test_reads_in_the_trio_thread_refuse_what_is_not_an_object(tmp_path: Path) -> None:
    store = Counting(str(tmp_path / "store"))
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
