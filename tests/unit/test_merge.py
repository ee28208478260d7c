"""The three-way merge: two devices (each its own local state) write one vault
at once; the one that commits second merges (docs/multidevice.md, the merge
table). Each rule of the table is one test here, read back by a third,
read-only open, and every vault is checked by fsck."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from megafs.fs import fsck
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.stores import LocalStore
from megafs.vault.vault import Vault, obj_name

from ..support.helpers import PASS, forget_history, new_vault, read_tree

CONFLICT = re.compile(rb"^(.*) \(conflict from (\S+) \d{4}-\d\d-\d\d \d{6}\)(.*)$")


class Devices:
    def __init__(self, store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
        self.store = store
        self.tmp_path = tmp_path
        self.monkeypatch = monkeypatch

    async def open(self, name: str, *, writable: bool = True) -> Filesystem:
        self.monkeypatch.setenv("MEGAFS_STATE_DIR", str(self.tmp_path / f"state-{name}"))
        vault = await Vault.unlock(self.store, PASS)
        return await Filesystem.load(vault, writable=writable, device_name=name)

    async def tree(self) -> dict[bytes, bytes | None]:
        """Every path of the vault as a fresh reader sees it: file content,
        None for folders; checked by fsck."""
        fs = await self.open("reader", writable=False)
        out = await read_tree(fs)
        report = await fsck.check(fs.vault)
        # unreferenced objects wait out the grace period: only problems count
        assert not report.problems and not report.missing, (report.problems, report.missing)
        return out


@pytest.fixture
async def devs(store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Devices:
    await new_vault(store)
    return Devices(store, tmp_path, monkeypatch)


async def path_ino(fs: Filesystem, path: bytes) -> int:
    ino = ROOT_INO
    for part in path.split(b"/"):
        ino = (await fs.lookup(ino, part)).ino
    return ino


async def write_file(fs: Filesystem, path: bytes, data: bytes) -> int:
    parent, _, name = path.rpartition(b"/")
    pino = await path_ino(fs, parent) if parent else ROOT_INO
    try:
        ino = (await fs.lookup(pino, name)).ino
        await fs.truncate(ino, 0)
    except Exception:
        ino = (await fs.create(pino, name, 0o644, 0, 0)).ino
    await fs.write(ino, 0, data)
    return ino


async def base_and_two(
    devs: Devices, files: dict[bytes, bytes], dirs: list[bytes] = []  # noqa: B006
) -> tuple[Filesystem, Filesystem]:
    """Device a makes the base tree; a and b then both have it open."""
    a = await devs.open("a")
    for d in dirs:
        parent, _, name = d.rpartition(b"/")
        await a.mkdir(await path_ino(a, parent) if parent else ROOT_INO, name, 0o755, 0, 0)
    for path, data in files.items():
        await write_file(a, path, data)
    await a.commit()
    b = await devs.open("b")
    return a, b


def conflicts(tree: dict[bytes, bytes | None]) -> dict[bytes, bytes | None]:
    return {p: v for p, v in tree.items() if CONFLICT.match(p.rpartition(b"/")[2])}


async def test_changes_to_different_files_are_all_kept(devs: Devices) -> None:
    a, b = await base_and_two(devs, {b"x": b"base x", b"y": b"base y"})
    await write_file(a, b"x", b"a's x")
    await write_file(b, b"y", b"b's y")
    await write_file(b, b"new-on-b", b"new")
    await a.commit()
    await b.commit()  # loses the swap, merges
    assert b.committer.merges == 1
    assert await a.refresh()  # a catches up with b's commit
    assert not await a.refresh()
    assert await devs.tree() == {b"x": b"a's x", b"y": b"b's y", b"new-on-b": b"new"}
    # both devices now show the merged tree
    for fs in (a, b):
        assert await fs.read(await path_ino(fs, b"y"), 0, 100) == b"b's y"


async def test_one_file_changed_on_both_keeps_both_versions(devs: Devices) -> None:
    big = os.urandom(300_000)  # several chunks, not packed
    a, b = await base_and_two(devs, {b"doc.txt": b"base", b"big.bin": big})
    await write_file(a, b"doc.txt", b"a's version")
    await write_file(b, b"doc.txt", b"b's version, longer")
    ia = await path_ino(a, b"big.bin")
    ib = await path_ino(b, b"big.bin")
    await a.write(ia, 0, b"A" * 10)
    await b.write(ib, 200_000, b"B" * 10)
    await a.commit()
    await b.commit()
    tree = await devs.tree()
    # the later commit (b's) keeps the name; a's version is beside it
    assert tree[b"doc.txt"] == b"b's version, longer"
    assert tree[b"big.bin"] == big[:200_000] + b"B" * 10 + big[200_010:]
    copies = conflicts(tree)
    assert len(copies) == 2, copies
    for path, data in copies.items():
        m = CONFLICT.match(path)
        assert m and m.group(2) == b"a", path
        if m.group(1) + m.group(3) == b"doc.txt":
            assert m.group(3) == b".txt" and data == b"a's version"
        else:
            assert m.group(1) + m.group(3) == b"big.bin"
            assert data == b"A" * 10 + big[10:]


async def test_identical_results_are_not_a_conflict(devs: Devices) -> None:
    a, b = await base_and_two(devs, {b"f": b"old"})
    await write_file(a, b"f", b"same new content")
    await write_file(b, b"f", b"same new content")
    await a.commit()
    await b.commit()
    assert await devs.tree() == {b"f": b"same new content"}


async def test_edit_against_delete_keeps_the_edit(devs: Devices) -> None:
    data = os.urandom(200_000)
    a, b = await base_and_two(devs, {b"d/kept-by-b": data, b"d/kept-by-a": b"small"}, [b"d"])
    # a deletes one file b edits (a first), and edits the one b deletes (b merges)
    await a.unlink(await path_ino(a, b"d"), b"kept-by-b")
    await write_file(a, b"d/kept-by-a", b"edited on a")
    await b.write(await path_ino(b, b"d/kept-by-b"), 5, b"EDIT")
    await b.unlink(await path_ino(b, b"d"), b"kept-by-a")
    await a.commit()
    await b.commit()
    tree = await devs.tree()
    assert tree == {b"d": None, b"d/kept-by-b": data[:5] + b"EDIT" + data[9:],
                    b"d/kept-by-a": b"edited on a"}


async def test_both_create_one_name_keeps_both(devs: Devices) -> None:
    a, b = await base_and_two(devs, {})
    await write_file(a, b"notes.md", b"from a")
    await write_file(b, b"notes.md", b"from b")
    await write_file(a, b"same", b"identical")
    await write_file(b, b"same", b"identical")
    await a.commit()
    await b.commit()
    tree = await devs.tree()
    assert tree[b"notes.md"] == b"from b"
    copies = conflicts(tree)
    assert list(copies.values()) == [b"from a"]
    assert next(iter(copies)).endswith(b".md")
    assert tree[b"same"] == b"identical" and len(tree) == 3


async def test_one_entry_renamed_differently_has_one_winner(devs: Devices) -> None:
    a, b = await base_and_two(devs, {b"old": b"content", b"d1/x": b"1"}, [b"d1", b"d2", b"d3"])
    await a.rename(ROOT_INO, b"old", ROOT_INO, b"name-a")
    await b.rename(ROOT_INO, b"old", ROOT_INO, b"name-b")
    await a.rename(await path_ino(a, b"d1"), b"x", await path_ino(a, b"d2"), b"x")
    await b.rename(await path_ino(b, b"d1"), b"x", await path_ino(b, b"d3"), b"x")
    await a.commit()
    await b.commit()
    tree = await devs.tree()
    assert tree == {b"name-b": b"content", b"d1": None, b"d2": None, b"d3": None,
                    b"d3/x": b"1"}


async def test_crossed_moves_leave_no_cycle(devs: Devices) -> None:
    a, b = await base_and_two(devs, {b"A/a.txt": b"a", b"B/b.txt": b"b"}, [b"A", b"B"])
    await a.rename(ROOT_INO, b"B", await path_ino(a, b"A"), b"B")  # B into A
    await b.rename(ROOT_INO, b"A", await path_ino(b, b"B"), b"A")  # A into B
    await a.commit()
    await b.commit()
    tree = await devs.tree()
    # b's move (the later) is undone: A stays at the top, B inside it
    assert tree == {b"A": None, b"A/a.txt": b"a", b"A/B": None, b"A/B/b.txt": b"b"}


async def test_a_deleted_folder_that_got_new_content_survives(devs: Devices) -> None:
    a, b = await base_and_two(devs, {b"proj/old.txt": b"old"}, [b"proj"])
    pa = await path_ino(a, b"proj")
    await a.unlink(pa, b"old.txt")
    await a.rmdir(ROOT_INO, b"proj")
    await write_file(b, b"proj/new.txt", b"added on b")
    await a.commit()
    await b.commit()
    assert await devs.tree() == {b"proj": None, b"proj/new.txt": b"added on b"}
    # and the other way round: b deletes, a (merging) added
    a2 = await devs.open("a")
    b2 = await devs.open("b")
    await write_file(a2, b"proj/second.txt", b"added on a")
    pb = await path_ino(b2, b"proj")
    await b2.unlink(pb, b"new.txt")
    await b2.rmdir(ROOT_INO, b"proj")
    await b2.commit()
    await a2.commit()
    assert await devs.tree() == {b"proj": None, b"proj/second.txt": b"added on a"}


async def test_attributes_merge_per_field_and_links_are_counted(devs: Devices) -> None:
    a, b = await base_and_two(devs, {b"f": b"x", b"g": b"y"}, [b"d"])
    fa, fb = await path_ino(a, b"f"), await path_ino(b, b"f")
    await a.setattr(fa, mode=0o600)
    await b.setattr(fb, mtime_ns=123_000_000_000)
    await a.setxattr(fa, b"user.a", b"1")
    await b.setxattr(fb, b"user.b", b"2")
    # hard links on both sides to one file, and a new folder on each
    await a.link(fa, await path_ino(a, b"d"), b"link-a")
    await b.link(fb, ROOT_INO, b"link-b")
    await a.mkdir(await path_ino(a, b"d"), b"sub-a", 0o755, 0, 0)
    await b.mkdir(await path_ino(b, b"d"), b"sub-b", 0o755, 0, 0)
    await a.commit()
    await b.commit()
    fs = await devs.open("reader2", writable=False)
    ino = await path_ino(fs, b"f")
    attr = await fs.getattr(ino)
    assert stat.S_IMODE(attr.mode) == 0o600 and attr.mtime_ns == 123_000_000_000
    assert attr.nlink == 3
    assert sorted(await fs.listxattr(ino)) == [b"user.a", b"user.b"]
    assert (await fs.getattr(await path_ino(fs, b"d"))).nlink == 4
    assert (await path_ino(fs, b"d/link-a")) == ino == (await path_ino(fs, b"link-b"))
    await devs.tree()


async def test_three_devices_in_turn_converge(devs: Devices) -> None:
    a, b = await base_and_two(devs, {b"shared": b"0"})
    c = await devs.open("c")
    for i in range(3):
        for fs, name in ((a, b"a"), (b, b"b"), (c, b"c")):
            await write_file(fs, name + str(i).encode(), name * (i + 1))
        await a.commit()
        await b.commit()
        await c.commit()
    for fs in (a, b, c):
        await fs.refresh()
    tree = await devs.tree()
    assert len(tree) == 10 and tree[b"c2"] == b"ccc"
    # every device shows every file after its own merge
    for fs in (b, c):
        assert await fs.read(await path_ino(fs, b"a2"), 0, 10) == b"aaa"


@pytest.mark.parametrize("grace", [None, 0.0])
async def test_uploads_of_another_device_survive_collection_and_repair(
    devs: Devices, grace: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Device b has uploaded chunks (early, full ones) but not committed them
    while device a commits, collects garbage and runs ``fsck --repair``; then
    b commits, and every byte reads back. With no grace period (the positive
    control) fsck takes b's uploads and the bytes are gone."""
    import trio

    from megafs.errors import IntegrityError
    from megafs.fs import collector

    a, b = await base_and_two(devs, {b"old": os.urandom(100_000)})
    if grace is not None:  # fsck's own filesystem gets it; a's and b's keep theirs
        monkeypatch.setattr(collector, "GRACE", grace)
    data = os.urandom(5 * 65536 + 123)  # several full chunks: uploaded early
    async with trio.open_nursery() as nursery:
        b.start_background(nursery)
        ino = await write_file(b, b"big", data)
        for _ in range(200):  # until its full chunks are in the store
            if all(p.uploaded for p in b.data.pending.values()) and b.data.pending:
                break
            await trio.sleep(0.01)
        assert b.data.pending, "no chunk was uploaded early"
        await write_file(a, b"old", b"rewritten on a")  # garbage for a's collector
        await a.commit()
        await a.collector.drain()
        report = await fsck.check(a.vault, repair=True)
        assert not report.problems
        if grace is not None:
            # b's uploads and the roots it merges against are gone
            assert report.removed > 0
            with pytest.raises(IntegrityError):
                await b.commit()
                fresh = await devs.open("check", writable=False)
                await fresh.read(await path_ino(fresh, b"big"), 0, len(data) + 1)
            b.stop_background()
            return
        await b.commit()
        b.stop_background()
    assert report.young, "b's uploads were not seen as young"
    fresh = await devs.open("check", writable=False)
    got_ino = await path_ino(fresh, b"big")
    assert ino == got_ino
    assert await fresh.read(got_ino, 0, len(data) + 1) == data
    assert await fresh.read(await path_ino(fresh, b"old"), 0, 99) == b"rewritten on a"


async def test_deferred_garbage_outlives_the_mount(
    devs: Devices, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Garbage deferred because another device shares the vault is noted in
    the local state folder: a later open of the same device deletes it once
    its grace period is over, and not before."""
    import time

    import trio

    a, _b = await base_and_two(devs, {b"f": os.urandom(200_000)})
    await forget_history(a)  # the replaced chunks are garbage at once, not history
    old = {r.obj for r in (await a.table.get(await path_ino(a, b"f"))).chunks.values()}
    await write_file(a, b"f", b"replaced")
    await a.commit()  # merges b's registration; the old chunks are deferred garbage
    await a.close()
    assert a.collector.deferred >= len(old)
    assert a.collector.persist is not None and await trio.Path(a.collector.persist).exists()
    names = {obj_name(o) for o in old}

    async def stored() -> set[str]:
        return {n async for n, _ in devs.store.list()} & names

    assert await stored() == names  # kept: b may still read them
    reopened = await devs.open("a")  # grace not over: still kept
    await reopened.close()
    assert await stored() == names
    # a day later (the grace period shortened here instead)
    monkeypatch.setattr(time, "time", lambda: 10.0**12)
    later = await devs.open("a")
    await later.close()
    assert await stored() == set()
