"""Polling the root pointer on both stores: a device's own commit is not
taken for another device's (no needless merge), another device's is."""

from __future__ import annotations

from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.stores.base import Store
from megafs.vault.vault import Vault

from ..support.helpers import FAST_KDF, PASS, SMALL


async def test_own_commits_do_not_look_like_others(any_store: Store) -> None:
    vault, _ = await Vault.init(any_store, PASS, FAST_KDF, SMALL)
    fs = await Filesystem.load(vault)
    assert not await vault.root_changed()
    ino = (await fs.create(ROOT_INO, b"f", 0o644, 0, 0)).ino
    await fs.write(ino, 0, b"x")
    await fs.commit()
    assert not await vault.root_changed()
    assert not await fs.refresh() and fs.committer.merges == 0
    other = await Vault.unlock(any_store, PASS)
    other.state.client_id = bytes(range(16))  # another machine
    fs2 = await Filesystem.load(other)
    await fs2.close()
    assert await vault.root_changed()
    assert await fs.refresh() and fs.committer.merges == 1
    assert not await vault.root_changed()
