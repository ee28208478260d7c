"""Writing each byte once on a local folder: full chunks are sealed into
their objects block by block as the file is written, and the journal names
the blocks instead of holding them (docs/concurrency.md, "Writing each byte
once")."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from megafs.client.journal import Journal
from megafs.errors import CacheFull, StagedDataLost
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.stores import LocalStore, Store
from megafs.stores.base import ForwardingStore
from megafs.vault.vault import Vault, obj_name

from ..support.helpers import PASS, SMALL, new_vault

CS, BS = SMALL.chunk_size, SMALL.block_size


class Calls(ForwardingStore):
    """Records the calls that write: ("put", name, size), ("stage", name, 0), ("sync", "", 0)."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.calls: list[tuple[str, str, int]] = []

    async def put(self, name: str, data: bytes) -> None:
        self.calls.append(("put", name, len(data)))
        await self.inner.put(name, data)

    def stage(self, name: str, offset: int, data: bytes) -> None:
        self.calls.append(("stage", name, 0))
        self.inner.stage(name, offset, data)

    async def sync(self) -> None:
        self.calls.append(("sync", "", 0))
        await self.inner.sync()


async def open_fs(store: Store, cache: Path) -> Filesystem:
    vault = await Vault.unlock(store, PASS)
    return await Filesystem.load(vault, journal=Journal(str(cache), vault.keys))


def journal_bytes(cache: Path) -> int:
    folder = cache / "journal"
    return sum(p.stat().st_size for p in folder.glob("*.log"))


def objects(root: Path) -> set[str]:
    return {p.name for p in (root / "objects").glob("*/*") if ".tmp." not in p.name}


async def reads_back(store: Store, cache: Path, ino: int, want: bytes | bytearray) -> None:
    """A fresh open with journal folder ``cache`` reads file ``ino`` as ``want``."""
    fs = await open_fs(store, cache)
    assert await fs.read(ino, 0, len(want) + 1) == want
    await fs.close()


async def write_seq(fs: Filesystem, ino: int, data: bytes, piece: int = 2 * BS) -> None:
    for off in range(0, len(data), piece):
        await fs.write(ino, off, data[off : off + piece])


async def one_file(
    store: Store, cache: Path, *, fsync_local: bool = False
) -> tuple[Filesystem, int]:
    """A new vault (SMALL layout) in ``store``, opened with a journal in
    ``cache``, holding one empty file ``f``, committed: (filesystem, its inode)."""
    await new_vault(store, SMALL)
    vault = await Vault.unlock(store, PASS)
    fs = await Filesystem.load(
        vault, journal=Journal(str(cache), vault.keys), fsync_local=fsync_local
    )
    ino = (await fs.create(ROOT_INO, b"f", 0o644, 0, 0)).ino
    await fs.commit()
    return fs, ino


async def test_full_chunks_are_written_once(tmp_path: Path) -> None:
    store = Calls(LocalStore(str(tmp_path / "store"), create=True))
    cache = tmp_path / "cache"
    fs, ino = await one_file(store, cache)
    data = os.urandom(3 * CS + 2 * BS + 100)  # three full chunks, then a short one
    before = journal_bytes(cache)
    await write_seq(fs, ino, data)
    # the journal names the staged blocks: far less than the data
    assert journal_bytes(cache) - before < len(data) // 8
    staged = {c[1] for c in store.calls if c[0] == "stage"}
    assert len(staged) == 4  # one per chunk (the short one's stage never fills)
    store.calls.clear()
    await fs.commit()
    node = await fs.data.file(ino)
    chunk_objs = {obj_name(node.chunks[i].obj) for i in range(3)}
    assert chunk_objs <= staged  # the staged objects are the chunks: no second seal
    puts = [c for c in store.calls if c[0] == "put"]
    assert not chunk_objs & {c[1] for c in puts}
    assert sum(c[2] for c in puts) < CS  # only the short chunk and metadata
    await fs.close()
    # the short chunk's stage was garbage of that commit: gone
    assert not (staged - chunk_objs) & objects(tmp_path / "store")
    await reads_back(store, tmp_path / "other-cache", ino, data)


async def test_a_killed_process_replays_staged_blocks(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = LocalStore(str(root), create=True)
    cache = tmp_path / "cache"
    fs, ino = await one_file(store, cache)
    had = objects(root)
    data = bytearray(os.urandom(2 * CS + 3 * BS))
    await write_seq(fs, ino, bytes(data))
    # an aligned rewrite of staged blocks goes to the journal with its data,
    # and spoils that chunk's stage; then the file is cut into chunk 1
    new = os.urandom(2 * BS)
    await fs.write(ino, 2 * BS, new)
    data[2 * BS : 4 * BS] = new
    await fs.truncate(ino, CS + 5 * BS)
    del data[CS + 5 * BS :]
    g = await fs.create(ROOT_INO, b"g", 0o644, 0, 0)
    await write_seq(fs, g.ino, bytes(data[:CS]))
    staged = objects(root) - had
    assert len(staged) == 4
    # the process dies here: nothing after the first commit is in a root

    fs2 = await open_fs(store, cache)
    assert fs2.replayed > 10
    assert await fs2.read(ino, 0, CS * 4) == data
    assert await fs2.read(g.ino, 0, CS * 4) == data[:CS]
    await fs2.close()
    # the replay sealed the data afresh: the staged objects are garbage, deleted
    assert not staged & objects(root)
    await reads_back(store, tmp_path / "other-cache", ino, data)


async def test_a_lost_staged_block_stops_the_replay(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = LocalStore(str(root), create=True)
    cache = tmp_path / "cache"
    fs, ino = await one_file(store, cache)
    first = os.urandom(CS)
    await write_seq(fs, ino, first)
    had = objects(root)
    g = await fs.create(ROOT_INO, b"g", 0o644, 0, 0)
    await fs.write(g.ino, 0, os.urandom(CS))  # one write of a whole chunk: staged
    await fs.mkdir(ROOT_INO, b"after", 0o755, 0, 0)
    (lost,) = objects(root) - had
    path = root / "objects" / lost[:2] / lost
    raw = bytearray(path.read_bytes())
    raw[100] ^= 1  # a crash left this block torn
    path.write_bytes(bytes(raw))
    # the process dies here

    fs2 = await open_fs(store, cache)
    # f's write is back; the replay stopped at g's, before the mkdir
    assert await fs2.read(ino, 0, 2 * CS) == first
    assert (await fs2.getattr(g.ino)).size == 0
    assert b"after" not in [e[0] for e in await fs2.readdir(ROOT_INO, 0)]
    assert list((cache / "journal").glob("*.stale"))
    await fs2.close()


async def test_fsync_logs_names_after_syncing_the_blocks(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = Calls(LocalStore(str(root), create=True))
    cache = tmp_path / "cache"
    fs, ino = await one_file(store, cache)
    data = os.urandom(4 * CS)
    await write_seq(fs, ino, data)
    store.calls.clear()
    await fs.fsync()
    assert fs.committer.log_puts == 1  # a log object, not a commit
    (log_put,) = [c for c in store.calls if c[0] == "put"]
    assert log_put[2] < CS  # the records name the blocks
    assert store.calls.index(("sync", "", 0)) < store.calls.index(log_put)
    # the machine is lost: a new cache folder restores from the device log,
    # reading the staged blocks back from the store
    shutil.rmtree(cache)
    await reads_back(store, cache, ino, data)


async def test_a_lost_block_an_fsync_acknowledged_refuses_the_open(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = LocalStore(str(root), create=True)
    cache = tmp_path / "cache"
    fs, ino = await one_file(store, cache)
    had = objects(root)
    await write_seq(fs, ino, os.urandom(CS))
    (staged,) = objects(root) - had
    await fs.fsync()  # a device log object names the staged blocks
    assert fs.committer.log_puts == 1
    (root / "objects" / staged[:2] / staged).unlink()  # the store lost it
    # the process dies; the store lost what an fsync acknowledged: no mount
    with pytest.raises(StagedDataLost):
        await open_fs(store, cache)


async def test_a_failed_append_spoils_the_stage(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "store"), create=True)
    cache = tmp_path / "cache"
    fs, ino = await one_file(store, cache)
    data = os.urandom(CS)
    await fs.write(ino, 0, data[: 2 * BS])
    journal = fs.oplog.journal
    assert journal is not None
    real = journal.append

    def full(record: list[object]) -> None:
        raise CacheFull("no room")

    journal.append = full  # type: ignore[method-assign]
    with pytest.raises(CacheFull):
        await fs.write(ino, 2 * BS, data[2 * BS : 4 * BS])
    journal.append = real  # type: ignore[method-assign]
    # those blocks hold bytes no record names: the rest goes to the journal
    before = journal_bytes(cache)
    for off in range(2 * BS, CS, 2 * BS):
        await fs.write(ino, off, data[off : off + 2 * BS])
    assert journal_bytes(cache) - before > CS - 2 * BS
    await fs.commit()
    assert await fs.read(ino, 0, CS) == data
    await fs.close()


async def test_fsync_local_journals_the_data(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "store"), create=True)
    cache = tmp_path / "cache"
    fs, ino = await one_file(store, cache, fsync_local=True)
    before = journal_bytes(cache)
    await write_seq(fs, ino, os.urandom(2 * CS))
    # an fsync then syncs only the journal: the data must be in it
    assert journal_bytes(cache) - before > 2 * CS
    await fs.close()


async def test_a_lost_acknowledged_block_refuses_the_open_after_another_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same when another device committed since: the journal is replayed
    onto this device's last root first, and that replay fails the open too,
    rather than set the journal (and what an fsync acknowledged) aside."""
    root = tmp_path / "store"
    store = LocalStore(str(root), create=True)
    monkeypatch.setenv("MEGAFS_STATE_DIR", str(tmp_path / "a-state"))
    a, ino = await one_file(store, tmp_path / "a")
    had = objects(root)
    await write_seq(a, ino, os.urandom(CS))
    (staged,) = objects(root) - had
    await a.fsync()
    assert a.committer.log_puts == 1
    monkeypatch.setenv("MEGAFS_STATE_DIR", str(tmp_path / "b-state"))
    b = await open_fs(store, tmp_path / "b")
    await b.create(ROOT_INO, b"theirs", 0o644, 0, 0)
    await b.close()
    (root / "objects" / staged[:2] / staged).unlink()  # the store lost it
    # device a's daemon died after its fsync; it mounts again
    monkeypatch.setenv("MEGAFS_STATE_DIR", str(tmp_path / "a-state"))
    with pytest.RaisesGroup(StagedDataLost, flatten_subgroups=True, allow_unwrapped=True):
        await open_fs(store, tmp_path / "a")
