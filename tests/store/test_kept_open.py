"""Random reads without a worker thread: a local store and the content
cache keep read objects open and serve a range at once when the page cache
holds it (``RWF_NOWAIT``); a kept file never outlives a change of the
store's bytes that a failed authentication reveals, a delete or eviction."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from megafs.client.cache import ContentCache
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


async def test_a_second_read_of_an_object_needs_no_worker_thread(tmp_path: Path) -> None:
    store = Counting(str(tmp_path / "store"))
    await store.check()
    data = os.urandom(300_000)
    await store.put(NAME, data)
    jobs = store.jobs
    assert await store.get_range(NAME, 1000, 5000) == data[1000:6000]
    assert store.jobs == jobs + 1  # the first read opens the object in a thread
    for off in (0, 70_000, 250_000):
        assert await store.get_range(NAME, off, 4096) == data[off : off + 4096]
    assert store.jobs == jobs + 1  # the rest came from the kept file, at once
    # past the end: short, as before (the worker thread answers)
    assert await store.get_range(NAME, 299_000, 5000) == data[299_000:]
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
    from megafs.errors import ObjectNotFound

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
