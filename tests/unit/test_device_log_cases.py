"""Edge cases of the device log (docs/concurrency.md, "The device log"),
on a local store: series names never repeat across runs, a restored
segment cut by a crash sets later local segments aside, a large tail makes
fsync commit, and a device whose record another machine adopted stops
acknowledging fsyncs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from megafs.client.journal import TAIL_MAX, Journal
from megafs.errors import PreconditionFailed, RollbackError, StoreError
from megafs.fs.adopt import adopt_device
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.stores import LocalStore, Store
from megafs.stores.base import ForwardingStore
from megafs.vault.vault import Vault

from ..support.helpers import PASS, new_vault


class KeepsObjects(ForwardingStore):
    """Loses every deletion (a store that failed them, or a crash right
    after the folding commit)."""

    async def delete_many(self, names: Sequence[str]) -> list[str]:
        return []


async def _open(store: Store, cache: Path) -> Filesystem:
    vault = await Vault.unlock(store, PASS)
    return await Filesystem.load(vault, journal=Journal(str(cache), vault.keys))


def _crash(fs: Filesystem) -> None:
    """The machine went down: the journal's segments never reached the disk."""
    assert fs.journal is not None
    fs.journal.close()
    for entry in os.scandir(fs.journal.dir):
        if entry.name.endswith(".log"):
            os.unlink(entry.path)


async def _content(store: Store, name: bytes) -> bytes:
    fs = await Filesystem.load(await Vault.unlock(store, PASS), writable=False)
    attr = await fs.lookup(ROOT_INO, name)
    return await fs.read(attr.ino, 0, attr.size)


async def test_a_leftover_series_of_an_earlier_run_is_never_read_back(
    store: LocalStore, tmp_path: Path
) -> None:
    keeper = KeepsObjects(store)
    await new_vault(keeper)
    fs = await _open(keeper, tmp_path / "cache")
    ino = (await fs.create(ROOT_INO, b"f", 0o644, 0, 0)).ino
    await fs.write(ino, 0, b"old")
    await fs.fsync(ino)
    await fs.write(ino, 0, b"xyz")
    await fs.close()  # folds the series, whose deletion is lost
    # the next run's journal numbers its segments from the same mark
    fs = await _open(store, tmp_path / "cache")
    ino = (await fs.lookup(ROOT_INO, b"f")).ino
    await fs.write(ino, 1, b"BC")
    await fs.fsync(ino)
    _crash(fs)
    del fs
    fs = await _open(store, tmp_path / "cache")
    assert await _content(store, b"f") == b"xBC"
    await fs.close()


def test_a_restored_segment_that_was_cut_sets_later_ones_aside(tmp_path: Path) -> None:
    from megafs.format.crypto import Keys

    keys = Keys(bytes(32), bytes(16))
    journal = Journal(str(tmp_path / "cache"), keys)
    for i in range(5):
        journal.append(["wr", 1, i])
    logged = journal.take_tail()[:3]  # an fsync after the third record
    journal.rotate()
    journal.append(["wr", 2, 5])  # a later, whole segment
    journal.close()
    first = journal.segment_path(logged[0][0])
    with open(first, "r+b") as f:  # the crash cut the first segment in its second record
        f.truncate(os.path.getsize(first) // 3)
    journal = Journal(str(tmp_path / "cache"), keys)
    assert journal.fill(logged) == 2
    records = list(journal.pending(journal.id, 0))
    assert [r[2] for r in records] == [0, 1, 2]  # the log's prefix, nothing after the cut
    assert any(n.endswith(".stale") for n in os.listdir(journal.dir))


async def test_a_tail_over_the_limit_commits_instead_of_logging(
    store: LocalStore, tmp_path: Path
) -> None:
    await new_vault(store)
    fs = await _open(store, tmp_path / "cache")
    ino = (await fs.create(ROOT_INO, b"big", 0o644, 0, 0)).ino
    data = os.urandom(TAIL_MAX + (1 << 20))
    for off in range(0, len(data), 1 << 20):
        await fs.write(ino, off, data[off : off + (1 << 20)])
    commits, puts = fs.committer.commits, fs.committer.log_puts
    await fs.fsync(ino)
    assert (fs.committer.commits, fs.committer.log_puts) == (commits + 1, puts)
    await fs.write(ino, 0, b"small")  # the commit covered the overflow: logs again
    await fs.fsync(ino)
    assert fs.committer.log_puts == puts + 1
    await fs.close()


async def test_an_adopted_device_stops_acknowledging_fsyncs(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await new_vault(store)
    monkeypatch.setenv("MEGAFS_STATE_DIR", str(tmp_path / "laptop-state"))
    fs = await _open(store, tmp_path / "laptop")
    ino = (await fs.create(ROOT_INO, b"f", 0o644, 0, 0)).ino
    await fs.write(ino, 0, b"logged")
    await fs.fsync(ino)
    # another machine takes the laptop for lost while it sleeps
    monkeypatch.setenv("MEGAFS_STATE_DIR", str(tmp_path / "desktop-state"))
    me = fs.committer.device_id
    assert me is not None
    done = await adopt_device(await Vault.unlock(store, PASS), me.hex(), force=True)
    assert done.records > 0
    assert await _content(store, b"f") == b"logged"
    # the laptop wakes: its next poll finds its record moved on
    with pytest.raises(RollbackError):
        await fs.refresh()
    await fs.write(ino, 0, b"after!")
    with pytest.raises(RollbackError):
        await fs.fsync(ino)


async def test_another_cache_folder_of_the_device_takes_over_its_log(
    store: LocalStore, tmp_path: Path
) -> None:
    await new_vault(store)
    await (await _open(store, tmp_path / "b")).close()  # folder B was used before
    a = await _open(store, tmp_path / "a")
    ino = (await a.create(ROOT_INO, b"f", 0o644, 0, 0)).ino
    await a.write(ino, 0, b"fsynced with folder A")
    await a.fsync(ino)
    assert a.journal is not None
    a.journal.close()  # killed; then mounted with folder B
    del a
    b = await _open(store, tmp_path / "b")
    assert await _content(store, b"f") == b"fsynced with folder A"
    assert b.journal is not None and not b.journal.borrowed  # an id of its own again
    await b.write((await b.lookup(ROOT_INO, b"f")).ino, 0, b"FSYNCED")
    await b.close()
    a = await _open(store, tmp_path / "a")  # folder A's journal is set aside, not replayed
    assert await _content(store, b"f") == b"FSYNCED with folder A"
    assert any(n.endswith(".stale") for n in os.listdir(tmp_path / "a" / "journal"))
    await a.close()


class FailsAfterAMerge(ForwardingStore):
    """Once :attr:`armed`, refuses the first put after a lost root swap: the
    commit that follows the merge fails to upload."""

    armed = False
    _fail_next = False

    async def put(self, name: str, data: bytes) -> None:
        if self._fail_next:
            self._fail_next = False
            raise StoreError("injected upload failure")
        await self.inner.put(name, data)

    async def cas_pointer(self, name: str, data: bytes, expected: str | None) -> str:
        try:
            return await self.inner.cas_pointer(name, data, expected)
        except PreconditionFailed:
            if self.armed:
                self.armed, self._fail_next = False, True
            raise


async def test_after_a_merge_no_commit_followed_fsync_commits_instead_of_logging(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal's records since the last commit were written against the
    old base: once a merge has moved the base and its commit failed, a log
    object naming the new base would replay them onto the wrong root."""
    await new_vault(store)
    flaky = FailsAfterAMerge(store)
    monkeypatch.setenv("MEGAFS_STATE_DIR", str(tmp_path / "a-state"))
    a = await _open(flaky, tmp_path / "a")
    ino = (await a.create(ROOT_INO, b"mine", 0o644, 0, 0)).ino
    await a.write(ino, 0, b"x" * 5000)
    monkeypatch.setenv("MEGAFS_STATE_DIR", str(tmp_path / "b-state"))
    b = await _open(store, tmp_path / "b")
    await b.create(ROOT_INO, b"theirs", 0o644, 0, 0)
    await b.close()
    flaky.armed = True
    with pytest.RaisesGroup(StoreError, flatten_subgroups=True):  # the retry's upload
        await a.commit()
    assert a.committer.merges == 1
    await a.write(ino, 0, b"y")
    puts, commits = a.committer.log_puts, a.committer.commits
    await a.fsync(ino)
    assert (a.committer.log_puts, a.committer.commits) == (puts, commits + 1)
    assert await _content(store, b"mine") == b"y" + b"x" * 4999
    await a.write(ino, 0, b"z")  # committed since: the log is usable again
    await a.fsync(ino)
    assert a.committer.log_puts == puts + 1
    await a.close()
