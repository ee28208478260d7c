"""Devices of a vault (root record version 2, docs/multidevice.md): each
writable client registers, allocates inode and pack numbers from its own
range, and keeps its journal mark and orphans in its own record; a megafs
that knows only record version 1 still reads such a vault but refuses to
write it."""

from __future__ import annotations

import math
import os
from pathlib import Path

import msgpack
import pytest

from megafs.client.journal import Journal
from megafs.errors import IntegrityError, UnsupportedVersion, VaultBusy
from megafs.format import crypto
from megafs.fs import fsck
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.stores import LocalStore
from megafs.vault.root import DEVICE_BITS, MULTI_DEVICE_LEASE, Device, Lease, Root
from megafs.vault.vault import Vault

from ..support.helpers import PASS, new_vault

DEV_A, DEV_B = b"A" * 16, b"B" * 16


def two_device_root() -> Root:
    root = Root(generation=7, itab=b"i" * 16, next_ino=300, orphans=[5], next_pack=3)
    root.journal = (b"j" * 16, 4)
    root.lease = Lease(DEV_A, "laptop", 42, 1e9)
    root.register(DEV_A, "laptop")
    root.register(DEV_B, "desktop")
    return root


def test_registration_gives_each_device_its_own_range() -> None:
    root = two_device_root()
    a, b = root.devices[DEV_A], root.devices[DEV_B]
    assert (a.prefix, b.prefix) == (1, 2)
    assert (a.next_ino, b.next_pack) == (1 << DEVICE_BITS, 2 << DEVICE_BITS)
    # the version 1 writer's orphans and journal mark went to the first device
    assert (a.orphans, a.journal, root.orphans, root.journal) == ([5], (b"j" * 16, 4), [], None)
    assert (b.orphans, b.journal) == ([], None)
    assert root.register(DEV_A, "renamed") is a and a.name == "renamed" and a.prefix == 1
    assert root.version == 2 and Root(generation=1, itab=None, next_ino=2).version == 1


def test_record_version_2_round_trips_and_keeps_every_version_1_key() -> None:
    root = two_device_root()
    root.devices[DEV_B].orphans = [(2 << DEVICE_BITS) + 9]
    root.devices[DEV_B].next_pack += 5
    plain = root.encode()
    assert Root.decode(plain) == root
    raw = msgpack.unpackb(plain, raw=False, strict_map_key=False)
    assert raw["v"] == 2
    assert {"gen", "itab", "next", "orph", "lease", "stats", "jrnl"} <= set(raw)
    assert root.lease is not None
    assert raw["lease"] == MULTI_DEVICE_LEASE.encode() and raw["dlease"] == root.lease.encode()
    assert sorted(root.all_orphans()) == [5, (2 << DEVICE_BITS) + 9]
    assert root.packs_made() == 3 + 5
    assert root.pack_allocated(2) and not root.pack_allocated(3)
    assert root.pack_allocated((2 << DEVICE_BITS) + 4)
    assert not root.pack_allocated((2 << DEVICE_BITS) + 5)
    assert not root.pack_allocated(3 << DEVICE_BITS)


def test_a_version_1_reader_refuses_to_write_a_version_2_vault() -> None:
    """What a megafs that knows only version 1 makes of a version 2 root: it
    reads the version 1 keys (ignoring the rest, as docs/format.md says) and
    finds a lease held forever by nobody it knows, so it refuses to write."""
    raw = msgpack.unpackb(two_device_root().encode(), raw=False, strict_map_key=False)
    as_v1 = {k: v for k, v in raw.items() if k not in ("devs", "dlease")}
    root = Root.decode(msgpack.packb(as_v1, use_bin_type=True))
    assert root.devices == {} and root.lease is not None
    assert root.lease.until == math.inf and root.lease.client_id == bytes(16)

    class V1Client:  # the version 1 lease check, with a client id of its own
        state = type("S", (), {"client_id": os.urandom(16)})()

    with pytest.raises(VaultBusy, match="newer megafs"):
        Vault.check_lease(V1Client(), root)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d[DEV_B].update(pfx=1),  # two devices, one prefix
        lambda d: d[DEV_B].update(ino=5),  # a counter outside the device's range
        lambda d: d[DEV_B].update(pack=(3 << DEVICE_BITS) + 1),
        lambda d: d[DEV_B].update(t=-1),
        lambda d: d[DEV_B].update(gen=True),
        lambda d: d[DEV_B].update(orph=[1.5]),
        lambda d: d[DEV_B].update(pfx=0, ino=0, pack=0),  # prefix 0 is version 1's
        lambda d: d[DEV_B].update(name=b"not text"),
        lambda d: d[DEV_B].pop("gen"),
    ],
)
def test_malformed_device_records_are_refused(change: object) -> None:
    raw = msgpack.unpackb(two_device_root().encode(), raw=False, strict_map_key=False)
    change(raw["devs"])  # type: ignore[operator]
    with pytest.raises(IntegrityError, match="malformed root record"):
        Root.decode(msgpack.packb(raw, use_bin_type=True))


async def test_two_clients_allocate_from_their_own_ranges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two clients (their own local state each) write one vault in turn: each
    registers once, its inodes and packs are numbered in its own range, every
    file reads back on either, and fsck finds nothing wrong."""
    store = LocalStore(str(tmp_path / "store"), create=True)
    await store.check()
    await new_vault(store)
    made: dict[str, tuple[int, bytes]] = {}
    for turn, client in enumerate(["a", "b", "a"]):
        monkeypatch.setenv("MEGAFS_STATE_DIR", str(tmp_path / f"state-{client}"))
        vault = await Vault.unlock(store, PASS)
        fs = await Filesystem.load(vault, device_name=f"device {client}")
        me = fs.root.devices[vault.state.client_id]
        assert me.prefix == (1 if client == "a" else 2) and me.name == f"device {client}"
        data = os.urandom(5000 + turn)  # small: packed
        ino = (await fs.create(ROOT_INO, f"f{turn}".encode(), 0o644, 0, 0)).ino
        await fs.write(ino, 0, data)
        assert ino >> DEVICE_BITS == me.prefix
        made[f"f{turn}"] = (ino, data)
        await fs.close()
        assert me.next_pack > me.prefix << DEVICE_BITS  # a pack of its own range
        assert me.generation == fs.root.generation and me.time_ns > 0
    vault = await Vault.unlock(store, PASS)
    fs = await Filesystem.load(vault, writable=False)
    assert {d.name for d in fs.root.devices.values()} == {"device a", "device b"}
    for name, (ino, data) in made.items():
        attr = await fs.lookup(ROOT_INO, name.encode())
        assert attr.ino == ino and await fs.read(ino, 0, 10**6) == data
    report = await fsck.check(vault)
    assert report.clean, (report.problems, report.missing, report.orphans)


async def test_an_orphan_of_one_device_is_kept_by_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file unlinked while open on device A stays in A's record; device B's
    writable open does not purge it, fsck counts it as an orphan, and A's next
    open does purge it."""
    store = LocalStore(str(tmp_path / "store"), create=True)
    await store.check()
    monkeypatch.setenv("MEGAFS_STATE_DIR", str(tmp_path / "state-a"))
    fs = await Filesystem.load(await new_vault(store))
    ino = (await fs.create(ROOT_INO, b"open", 0o644, 0, 0)).ino
    await fs.write(ino, 0, b"still open")
    await fs.open(ino)
    await fs.unlink(ROOT_INO, b"open")
    await fs.commit()  # A "crashes" here, its file open
    a_id = fs.vault.state.client_id
    fs.root.lease = None  # as if its lease had expired
    fs.committer.renew_lease()
    await fs.commit()
    monkeypatch.setenv("MEGAFS_STATE_DIR", str(tmp_path / "state-b"))
    fs_b = await Filesystem.load(await Vault.unlock(store, PASS))
    assert fs_b.root.devices[a_id].orphans == [ino]
    assert await fs_b.read(ino, 0, 100) == b"still open"
    await fs_b.close()
    report = await fsck.check(await Vault.unlock(store, PASS))
    assert report.clean, report.problems
    monkeypatch.setenv("MEGAFS_STATE_DIR", str(tmp_path / "state-a"))
    fs_a = await Filesystem.load(await Vault.unlock(store, PASS))
    assert ino not in fs_a.namespace.orphans and fs_a.root.devices[a_id].orphans == []
    await fs_a.close()
    assert fs_a.root.devices[a_id].orphans == []


def test_device_records_copy_apart() -> None:
    root = two_device_root()
    copy = root.copy()
    copy.devices[DEV_A].orphans.append(99)
    copy.devices[DEV_A].next_ino += 1
    assert root.devices[DEV_A].orphans == [5]
    assert root.devices[DEV_A] != copy.devices[DEV_A]
    assert Device.new("x", 3).owns((3 << DEVICE_BITS) + 1)
    with pytest.raises(ValueError):
        Device.new("x", 0)


async def test_a_journal_left_by_a_crash_merges_after_another_devices_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Device A dies with changes only in its journal; device B then commits.
    A's next open replays its journal onto the root it was written against
    (its local state keeps it) and merges that with B's root: nothing either
    device wrote is lost, and an edit of one file on both is a conflict copy."""
    store = LocalStore(str(tmp_path / "store"), create=True)
    await store.check()
    await new_vault(store)
    cache_a = str(tmp_path / "cache-a")

    async def open_a() -> Filesystem:
        monkeypatch.setenv("MEGAFS_STATE_DIR", str(tmp_path / "state-a"))
        vault = await Vault.unlock(store, PASS)
        return await Filesystem.load(vault, journal=Journal(cache_a, vault.keys))

    fs_a = await open_a()
    ino = (await fs_a.create(ROOT_INO, b"doc", 0o644, 0, 0)).ino
    await fs_a.write(ino, 0, b"A's first words")
    await fs_a.commit()
    await fs_a.write(ino, 0, b"A, journalled only")  # then A dies: no commit, no close
    new_a = (await fs_a.create(ROOT_INO, b"only-in-a", 0o644, 0, 0)).ino
    await fs_a.write(new_a, 0, b"journalled file")
    monkeypatch.setenv("MEGAFS_STATE_DIR", str(tmp_path / "state-b"))
    fs_b = await Filesystem.load(await Vault.unlock(store, PASS))
    await fs_b.write(ino, 0, b"B's words")
    made_b = (await fs_b.create(ROOT_INO, b"only-in-b", 0o644, 0, 0)).ino
    await fs_b.write(made_b, 0, b"b's file")
    await fs_b.close()
    fs_a = await open_a()
    assert fs_a.replayed == 3 and fs_a.committer.merges == 1
    names = {}
    after = 0
    while batch := await fs_a.readdir(ROOT_INO, after):
        for name, attr, cookie in batch:
            after = cookie
            names[name] = await fs_a.read(attr.ino, 0, 100)
    copies = [n for n in names if n.startswith(b"doc (conflict from ")]
    assert names[b"doc"] == b"A, journalled only"
    assert len(copies) == 1 and names[copies[0]] == b"B's words words"
    assert names[b"only-in-a"] == b"journalled file"
    assert names[b"only-in-b"] == b"b's file"
    stale = [n for n in os.listdir(os.path.join(cache_a, "journal")) if n.endswith(".stale")]
    assert not stale
    await fs_a.close()
    report = await fsck.check(await Vault.unlock(store, PASS))
    assert not report.problems and not report.missing, report.problems


async def test_a_newer_record_version_is_read_but_never_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(str(tmp_path / "store"), create=True)
    await store.check()
    vault = await new_vault(store)
    root = await vault.read_root()
    root.generation = vault.next_generation()
    raw = msgpack.unpackb(root.encode(), raw=False, strict_map_key=False)
    raw["v"] = 4  # a later megafs's root: keys this one does not know may follow
    sealed = crypto.seal_for(
        vault.keys, vault.keys.root, msgpack.packb(raw, use_bin_type=True),
        crypto.root_aad(vault.vault_id),
    )
    ptr = await store.read_pointer("root")
    assert ptr is not None
    await store.cas_pointer("root", sealed, ptr.etag)
    fs = await Filesystem.load(await Vault.unlock(store, PASS), writable=False)
    assert fs.root.record == 4 and await fs.readdir(ROOT_INO, 0) is not None
    with pytest.raises(UnsupportedVersion, match="record version 4"):
        await Filesystem.load(await Vault.unlock(store, PASS))
