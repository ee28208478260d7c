"""``-o fsync=local``: fsync returns once the change is durable in the local
journal; the store gets it with the next periodic commit (or at unmount).

What each durability mode promises is in the README ("Durability"); this
file shows the local mode's side of it: an fsync makes no commit, the change
is not in the store until a commit, and a killed daemon loses nothing (the
next mount with the same cache folder replays the journal and uploads it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from megafs.client.journal import Journal
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.stores import Store
from megafs.stores.base import ForwardingStore
from megafs.vault.vault import Vault

from ..support.helpers import FAST_KDF, PASS, SMALL
from ..support.mounting import Drive


class SwapCounter(ForwardingStore):
    """Counts root compare-and-swaps."""

    root_swaps = 0

    async def cas_pointer(self, name: str, data: bytes, expected: str | None) -> str:
        tag = await self.inner.cas_pointer(name, data, expected)
        if name == "root":
            self.root_swaps += 1
        return tag


async def _names(store: Store) -> set[bytes]:
    fs = await Filesystem.load(await Vault.unlock(store, PASS), writable=False)
    return {n for n, _, _ in await fs.readdir(ROOT_INO, 0)} - {b".", b".."}


async def test_local_fsync_makes_no_commit_and_survives_a_killed_writer(
    any_store: Store, tmp_path: Path
) -> None:
    store = SwapCounter(any_store)
    vault, _ = await Vault.init(store, PASS, FAST_KDF, SMALL)
    cache = str(tmp_path / "cache")
    fs = await Filesystem.load(vault, journal=Journal(cache, vault.keys), fsync_local=True)
    before = store.root_swaps
    data = os.urandom(10_000)
    ino = (await fs.create(ROOT_INO, b"doc", 0o644, 0, 0)).ino
    await fs.write(ino, 0, data)
    await fs.fsync(ino)
    assert store.root_swaps == before, "fsync=local committed"
    segments = sorted(p for p in os.listdir(os.path.join(cache, "journal")) if p.endswith(".log"))
    assert segments, "the change is not in the journal"
    # Not in the store yet: only the journal holds it.
    assert b"doc" not in await _names(any_store)
    # The writer dies without a word; the next one with the same cache folder
    # replays the journal and uploads what the first acknowledged.
    assert fs.journal is not None
    fs.journal.close()
    del fs
    vault2 = await Vault.unlock(store, PASS)
    fs2 = await Filesystem.load(vault2, journal=Journal(cache, vault2.keys), fsync_local=True)
    attr = await fs2.lookup(ROOT_INO, b"doc")
    assert await fs2.read(attr.ino, 0, attr.size) == data
    assert b"doc" in await _names(any_store)  # the open after replay committed it
    # A store-durable fsync puts one object of this device's log instead.
    fs2.committer.fsync_local = False
    await fs2.write(attr.ino, 0, b"changed")
    swaps, puts = store.root_swaps, fs2.committer.log_puts
    await fs2.fsync(attr.ino)
    assert (store.root_swaps, fs2.committer.log_puts) == (swaps, puts + 1)
    await fs2.close()


def test_local_fsync_through_the_mount(
    tmp_path: Path, any_store_url: tuple[str, dict[str, str]]
) -> None:
    """Through a real mount with a commit interval of an hour: an fsynced file
    is not in the store, a killed daemon loses it not, and the next mount
    (same cache folder) uploads it."""
    url, env = any_store_url
    drive = Drive(url, tmp_path, env)
    try:
        drive.init()
        drive.mount("-o", "fsync=local,commit_interval=3600")
        data = os.urandom(50_000)
        fd = os.open(drive.mountpoint / "doc", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        drive.kill_daemon()
        drive.lazy_unmount()
        # The store alone does not have it (a read-only mount with an empty
        # cache folder: a writable one would commit, and the journal, which
        # would no longer continue the root, would then be set aside).
        drive.mount("-o", "ro", cache_dir=tmp_path / "other-cache")
        assert not (drive.mountpoint / "doc").exists()
        drive.umount()
        # The mount with the same cache folder replays the journal: it is back,
        # and uploaded (a mount from the store alone sees it now).
        drive.allowed_log.append("applied ")
        drive.mount()
        assert (drive.mountpoint / "doc").read_bytes() == data
        drive.umount()
        drive.mount(cache_dir=tmp_path / "third-cache")
        assert (drive.mountpoint / "doc").read_bytes() == data
        drive.umount()
    finally:
        drive.cleanup()


def test_fsync_option_values(tmp_path: Path) -> None:
    from megafs.errors import UsageError
    from megafs.mount import MountConfig

    cfg = MountConfig("/s", str(tmp_path))
    assert cfg.fsync == "store"
    cfg.apply_options("fsync=local")
    assert cfg.fsync == "local"
    with pytest.raises(UsageError):
        cfg.apply_options("fsync=sometimes")
