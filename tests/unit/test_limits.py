"""Bandwidth and concurrency limits (``--upload-limit``, ``--download-limit``,
``--transfers``; :mod:`megafs.stores.limits`) over a real local store, with
trio's clock jumping ahead so the rates are exact and the test is quick."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from megafs.errors import UsageError
from megafs.mount.config import MountConfig
from megafs.stores import LocalStore
from megafs.stores.base import ForwardingStore
from megafs.stores.limits import Bucket, LimitedStore

NAMES = [f"{i:032x}" for i in range(1, 13)]


async def local(tmp_path: Path) -> LocalStore:
    store = LocalStore(str(tmp_path / "s"), create=True)
    await store.check()  # creates the folder
    return store


async def test_uploads_and_downloads_keep_to_their_rates(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = LimitedStore(await local(tmp_path), upload=100_000, download=50_000)
    data = os.urandom(25_000)
    start = trio.current_time()
    for name in NAMES:  # 300 kB: one second of burst, then 100 kB/s
        await store.put(name, data)
    # the burst (100 kB) and the transfer that empties it go at once; the
    # other 175 kB wait for 100 kB/s
    assert trio.current_time() - start == pytest.approx(1.75)
    start = trio.current_time()
    for name in NAMES:
        assert await store.get(name) == data
    assert trio.current_time() - start == pytest.approx(4.5)  # (300 - 75) kB at 50 kB/s
    start = trio.current_time()
    assert await store.get_range(NAMES[0], 100, 50_000) == data[100:]  # counted as read
    assert trio.current_time() - start <= 0.6


async def test_one_transfer_larger_than_the_bucket_pays_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bucket = Bucket(1000)
    start = trio.current_time()
    await bucket.take(5000)  # goes at once
    assert trio.current_time() - start == 0
    await bucket.take(1)  # waits for the debt: 4 s
    assert 3.9 <= trio.current_time() - start <= 4.1
    with pytest.raises(ValueError):
        Bucket(0)


class Watching(ForwardingStore):
    """Counts the transfers under way at once."""

    def __init__(self, inner: LocalStore) -> None:
        super().__init__(inner)
        self.now = self.most = 0

    async def put(self, name: str, data: bytes) -> None:
        self.now += 1
        self.most = max(self.most, self.now)
        await trio.sleep(0.1)
        await super().put(name, data)
        self.now -= 1


async def test_at_most_n_transfers_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    watching = Watching(await local(tmp_path))
    store = LimitedStore(watching, transfers=3)
    async with trio.open_nursery() as n:
        for name in NAMES:
            n.start_soon(store.put, name, b"x")
    assert watching.most == 3
    assert sorted([name async for name, _ in store.list()]) == NAMES


def test_mount_options() -> None:
    cfg = MountConfig("s3://b", "/mnt")
    cfg.apply_options("upload_limit=2M,download_limit=512k,transfers=4")
    assert (cfg.upload_limit, cfg.download_limit, cfg.transfers) == (2 << 20, 512 << 10, 4)
    for bad in ("upload_limit=0", "transfers=0", "download_limit=fast"):
        with pytest.raises(UsageError):
            MountConfig("s3://b", "/mnt").apply_options(bad)
