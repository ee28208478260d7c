"""History requests made while a commit runs wait for the next commit: a
pin, an unpin or a policy is never swallowed by a commit that did not carry
it out, and several pins made at once each get a root."""

from __future__ import annotations

from pathlib import Path

import trio

from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.stores import LocalStore
from megafs.stores.base import ForwardingStore
from megafs.vault.retention import Policy
from megafs.vault.vault import Vault

from ..support.helpers import PASS, new_vault


class HeldRoot(ForwardingStore):
    """Holds the next root write until ``go`` is set (``held`` says it waits)."""

    def __init__(self, inner: LocalStore) -> None:
        super().__init__(inner)
        self.hold = False
        self.held = trio.Event()
        self.go = trio.Event()

    async def cas_pointer(self, name: str, data: bytes, expected: str | None) -> str:
        if name == "root" and self.hold:
            self.hold = False
            self.held.set()
            await self.go.wait()
        return await self.inner.cas_pointer(name, data, expected)


async def test_requests_made_during_a_commit_are_carried_out_by_the_next(
    tmp_path: Path,
) -> None:
    local = LocalStore(str(tmp_path / "store"), create=True)
    await local.check()
    store = HeldRoot(local)
    await new_vault(store)
    fs = await Filesystem.load(await Vault.unlock(store, PASS))
    await fs.pin("old")
    ino = (await fs.create(ROOT_INO, b"f", 0o644, 0, 0)).ino
    await fs.write(ino, 0, b"a change for the background commit")
    store.hold = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs.commit)  # the background commit, held at its root write
        await store.held.wait()
        # meanwhile: two pins, an unpin and a policy
        nursery.start_soon(fs.pin, "one")
        nursery.start_soon(fs.pin, "two")
        nursery.start_soon(fs.unpin, "old")
        policy = Policy(every=7200, tiers=((86400, 3),))
        nursery.start_soon(fs.set_retention, policy)
        await trio.sleep(0.05)
        store.go.set()
    names = {e.name for e in await fs.committer.keeper.entries() if e.name}
    assert names == {"one", "two"}
    assert fs.retention == policy
    await fs.close()
    again = await Filesystem.load(await Vault.unlock(local, PASS), writable=False)
    assert {e.name for e in await again.committer.keeper.entries() if e.name} == {"one", "two"}
    assert again.retention == policy
