"""The device log (docs/concurrency.md, "The device log"): an fsync puts one
sealed object holding the journal's records not yet in the store, and no
root swap; the store alone then holds what the fsync acknowledged, for this
device after a crashed machine cut its journal and for another machine
adopting a lost device (``megafs adopt``). Tampering gives an error, fsck
counts the log as referenced, and the commit that folds it deletes it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from megafs.client.journal import Journal
from megafs.errors import IntegrityError, UsageError, VaultBusy
from megafs.fs import fsck
from megafs.fs.adopt import adopt_device
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.stores import Store
from megafs.vault.devlog import log_id
from megafs.vault.vault import Vault, obj_name

from ..mount.test_fsync_local import SwapCounter
from ..support.helpers import PASS, new_vault


async def _listed(store: Store) -> set[str]:
    return {name async for name, _ in store.list()}


async def _read(store: Store, name: bytes) -> bytes:
    fs = await Filesystem.load(await Vault.unlock(store, PASS), writable=False)
    attr = await fs.lookup(ROOT_INO, name)
    return await fs.read(attr.ino, 0, attr.size)


def _lose_journal(fs: Filesystem) -> None:
    """The machine crashed before the journal reached its disk: every
    segment is gone (its id file stays)."""
    assert fs.journal is not None
    fs.journal.close()
    for entry in os.scandir(fs.journal.dir):
        if entry.name.endswith(".log"):
            os.unlink(entry.path)


async def _writer(store: Store, cache: Path) -> tuple[Filesystem, int]:
    vault = await Vault.unlock(store, PASS)
    fs = await Filesystem.load(vault, journal=Journal(str(cache), vault.keys))
    return fs, fs.committer.log_puts


async def test_an_fsync_is_one_log_object_that_a_crashed_machine_gets_back(
    any_store: Store, tmp_path: Path
) -> None:
    store = SwapCounter(any_store)
    await new_vault(store)
    fs, puts = await _writer(store, tmp_path / "cache")
    swaps, before = store.root_swaps, await _listed(any_store)
    data = os.urandom(20_000)
    ino = (await fs.create(ROOT_INO, b"doc", 0o644, 0, 0)).ino
    await fs.write(ino, 0, data)
    await fs.fsync(ino)
    assert (store.root_swaps, fs.committer.log_puts) == (swaps, puts + 1)
    [log_name] = await _listed(any_store) - before  # one object, nothing else
    me = fs.committer.device_id
    assert me is not None
    mine = fs.committer.base.devices[me]
    assert mine.journal is not None
    jid, mark = mine.journal
    assert log_name == obj_name(log_id(fs.vault.keys, me, jid, mark, mine.generation, 0))
    assert (await fsck.check(await Vault.unlock(any_store, PASS))).clean  # referenced
    await fs.fsync(ino)  # nothing new: no second object
    assert fs.committer.log_puts == puts + 1
    _lose_journal(fs)
    del fs
    fs2, _ = await _writer(store, tmp_path / "cache")
    assert fs2.replayed > 0
    assert await _read(any_store, b"doc") == data  # the open committed it
    assert log_name not in await _listed(any_store)  # and deleted the log
    await fs2.close()
    assert (await fsck.check(await Vault.unlock(any_store, PASS))).clean


async def test_a_lost_device_is_adopted_by_another_machine(
    any_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await new_vault(any_store)
    monkeypatch.setenv("MEGAFS_STATE_DIR", str(tmp_path / "laptop-state"))
    vault = await Vault.unlock(any_store, PASS)
    laptop = await Filesystem.load(
        vault, journal=Journal(str(tmp_path / "laptop"), vault.keys), device_name="laptop"
    )
    ino = (await laptop.create(ROOT_INO, b"notes", 0o644, 0, 0)).ino
    await laptop.write(ino, 0, b"first")
    await laptop.fsync(ino)
    await laptop.write(ino, 5, b" second")
    await laptop.fsync(ino)
    assert laptop.committer.log_puts >= 2
    _lose_journal(laptop)  # the laptop is gone, state and all
    del laptop

    monkeypatch.setenv("MEGAFS_STATE_DIR", str(tmp_path / "desktop-state"))
    vault = await Vault.unlock(any_store, PASS)
    desk = await Filesystem.load(
        vault, journal=Journal(str(tmp_path / "desktop"), vault.keys), device_name="desktop"
    )
    await desk.create(ROOT_INO, b"other", 0o644, 0, 0)
    await desk.close()  # another device committed since

    vault = await Vault.unlock(any_store, PASS)
    with pytest.raises(UsageError, match="no device"):
        await adopt_device(vault, "phone")
    with pytest.raises(UsageError, match="this machine's device"):
        await adopt_device(vault, "desktop")
    with pytest.raises(VaultBusy, match="may still be running"):
        await adopt_device(vault, "laptop")
    done = await adopt_device(vault, "laptop", force=True)
    assert (done.device, done.log_objects) == ("laptop", 2)
    assert await _read(any_store, b"notes") == b"first second"
    assert await _read(any_store, b"other") == b""
    again = await adopt_device(await Vault.unlock(any_store, PASS), "laptop", force=True)
    assert again.log_objects == 0  # folded and deleted
    assert (await fsck.check(await Vault.unlock(any_store, PASS))).clean


async def test_a_tampered_log_object_is_an_error(any_store: Store, tmp_path: Path) -> None:
    """Any object but the last of a series must authenticate; the last one
    may be an upload a crash cut off (its fsync never returned), so one that
    does not authenticate is ignored, as if withheld."""
    await new_vault(any_store)
    fs, _ = await _writer(any_store, tmp_path / "cache")
    names = []
    ino = (await fs.create(ROOT_INO, b"doc", 0o644, 0, 0)).ino
    for text in (b"acknowledged", b"ACKNOWLEDGED AGAIN"):
        before = await _listed(any_store)
        await fs.write(ino, 0, text)
        await fs.fsync(ino)
        [name] = await _listed(any_store) - before
        names.append(name)
    _lose_journal(fs)
    del fs
    first, last = names
    for name in (last, first):
        sealed = bytearray(await any_store.get(name))
        sealed[len(sealed) // 2] ^= 1
        await any_store.put(name, bytes(sealed))
        if name == last:  # a cut-off upload: the series ends before it
            report = await fsck.check(await Vault.unlock(any_store, PASS))
            assert report.problems == [] and last in report.orphans
    report = await fsck.check(await Vault.unlock(any_store, PASS))
    assert any(first in p for p in report.problems), report.problems
    with pytest.raises(IntegrityError):
        await _writer(any_store, tmp_path / "cache")
