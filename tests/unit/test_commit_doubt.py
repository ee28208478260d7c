"""A commit whose root write gets no answer: cancelled at unmount, or an
error after the request went out. The root may be in the store or not; the
next commit asks the store, and never takes this device's own root for a
rollback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from megafs.errors import StoreUnreachable
from megafs.fs import fsck
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.stores import LocalStore
from megafs.stores.base import ForwardingStore
from megafs.vault.vault import Vault

from ..support.helpers import PASS, new_vault, read_tree


class NoAnswer(ForwardingStore):
    """Loses the answer of the next root write: ``before`` fails it before
    it reaches the store; otherwise it is applied, then the caller is
    cancelled (``scope``) or gets an error."""

    def __init__(self, inner: LocalStore) -> None:
        super().__init__(inner)
        self.armed = False
        self.before = False
        self.scope: trio.CancelScope | None = None

    async def cas_pointer(self, name: str, data: bytes, expected: str | None) -> str:
        if name != "root" or not self.armed:
            return await self.inner.cas_pointer(name, data, expected)
        self.armed = False
        if self.before:
            raise StoreUnreachable("connection refused")
        await self.inner.cas_pointer(name, data, expected)
        if self.scope is not None:
            self.scope.cancel()
            await trio.lowlevel.checkpoint()  # the cancellation is delivered here
        raise StoreUnreachable("connection reset after the request was sent")


async def _open(tmp_path: Path) -> tuple[NoAnswer, Filesystem]:
    local = LocalStore(str(tmp_path / "store"), create=True)
    await local.check()
    store = NoAnswer(local)
    await new_vault(store)
    return store, await Filesystem.load(await Vault.unlock(store, PASS))


async def _write(fs: Filesystem, name: bytes, data: bytes) -> None:
    ino = (await fs.create(ROOT_INO, name, 0o644, 0, 0)).ino
    await fs.write(ino, 0, data)


async def _check_reopened(store: NoAnswer, want: dict[bytes, bytes | None]) -> None:
    fs = await Filesystem.load(await Vault.unlock(store, PASS), writable=False)
    assert await read_tree(fs) == want
    report = await fsck.check(await Vault.unlock(store, PASS))
    assert report.clean, (report.problems, report.missing)


@pytest.mark.parametrize("how", ["cancelled", "error"])
async def test_a_root_write_that_landed_without_an_answer_is_adopted(
    tmp_path: Path, how: str
) -> None:
    """The unmount case: the periodic commit is cancelled after its root
    landed; the final commit finds it in the store and goes on from it."""
    store, fs = await _open(tmp_path)
    one, two = os.urandom(70_000), os.urandom(3000)
    await _write(fs, b"one", one)
    store.armed = True
    with trio.CancelScope() as scope:
        if how == "cancelled":
            store.scope = scope
        with pytest.raises(StoreUnreachable):
            await fs.commit()
    assert store.scope is None or scope.cancelled_caught
    assert fs.has_changes()  # the periodic commit asks the store about it soon
    generation = fs.root.generation
    await _write(fs, b"two", two)
    assert await fs.commit()
    assert fs.root.generation > generation + 1  # the lost answer's root counted
    await fs.close()
    await _check_reopened(store, {b"one": one, b"two": two})


async def test_a_root_write_that_never_landed_is_undone_and_retried(tmp_path: Path) -> None:
    store, fs = await _open(tmp_path)
    one = os.urandom(70_000)
    await _write(fs, b"one", one)
    store.armed = store.before = True
    with pytest.raises(StoreUnreachable):
        await fs.commit()
    await fs.close()
    await _check_reopened(store, {b"one": one})


async def test_a_landed_root_another_device_built_on_is_adopted_then_merged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Device B commits on top of A's unanswered root before A asks: A
    finds its root as B's ``prev``, adopts it, then merges B's change."""
    monkeypatch.setenv("MEGAFS_STATE_DIR", str(tmp_path / "state-a"))
    store, fs = await _open(tmp_path)
    fs.root.lease = None  # two devices at once
    one, theirs, mine = os.urandom(70_000), os.urandom(2000), os.urandom(5000)
    await _write(fs, b"one", one)
    store.armed = True
    with pytest.raises(StoreUnreachable):
        await fs.commit()
    monkeypatch.setenv("MEGAFS_STATE_DIR", str(tmp_path / "state-b"))
    fs_b = await Filesystem.load(await Vault.unlock(store, PASS))
    assert await read_tree(fs_b) == {b"one": one}
    await _write(fs_b, b"theirs", theirs)
    await fs_b.commit()
    monkeypatch.setenv("MEGAFS_STATE_DIR", str(tmp_path / "state-a"))
    await _write(fs, b"mine", mine)
    assert await fs.commit()
    assert fs.committer.merges == 1
    await _check_reopened(store, {b"one": one, b"theirs": theirs, b"mine": mine})
