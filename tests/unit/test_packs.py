"""Packs (format 2): small chunks share objects, and packs go when their last chunk does.

Model-level tests on both stores: how many objects a commit of small files
makes (the worked example of docs/format.md), that every packed file reads
back after a reopen, that a pack is deleted exactly when no chunk map names
it any more (and not before), that the pack table's counts always match
what ``fsck`` counts, and that a store tampering with the pack table is
caught by the writer that next needs it and by ``fsck``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from megafs.errors import IntegrityError
from megafs.format.crypto import Layout
from megafs.fs.data import PACK_TARGET
from megafs.fs.filesystem import Filesystem
from megafs.fs.fsck import check
from megafs.fs.inode import ROOT_INO
from megafs.stores import Store
from megafs.vault.root import DEVICE_BITS
from megafs.vault.tables import MID_BITS, PAGE_BITS
from megafs.vault.vault import Vault, obj_name

from ..support.helpers import PASS, forget_history, new_vault, reopen

DEFAULT = Layout()  # 1 MiB chunks: packs hold chunks up to 512 KiB


async def objects(store: Store) -> dict[str, int]:
    return {name: size async for name, size in store.list()}


async def write_files(fs: Filesystem, sizes: list[int], prefix: bytes = b"f") -> dict[int, bytes]:
    out = {}
    for i, n in enumerate(sizes):
        ino = (await fs.create(ROOT_INO, prefix + b"%05d" % i, 0o644, 0, 0)).ino
        data = os.urandom(n)
        await fs.write(ino, 0, data)
        out[ino] = data
    return out


async def assert_fsck_clean(store: Store) -> None:
    report = await check(await Vault.unlock(store, PASS))
    assert report.clean, (report.problems, report.missing, report.orphans)


async def test_a_thousand_small_files_make_two_packs(any_store: Store) -> None:
    """The worked example of docs/format.md, section 8."""
    fs = await Filesystem.load(await new_vault(any_store, DEFAULT))
    await forget_history(fs)
    before = await objects(any_store)
    files = await write_files(fs, [5000] * 1000)
    await fs.commit()
    new = {n: s for n, s in (await objects(any_store)).items() if n not in before}
    packs = sorted((s for s in new.values() if s > 100_000), reverse=True)
    assert packs == [4_198_380, 829_620]
    assert 835 * 5028 >= PACK_TARGET > 834 * 5028
    # Besides the packs: leaf pages, index nodes, a body, the pack table, the
    # history's page, index nodes and lists: a handful.
    assert len(new) < 19, sorted(new.values())
    await fs.close()
    fs2 = await reopen(any_store)
    for ino, data in files.items():
        assert await fs2.read(ino, 0, 6000) == data
        assert await fs2.read(ino, 4090, 20) == data[4090:4110]
    await fs2.close()
    await assert_fsck_clean(any_store)


async def test_packs_are_deleted_with_their_last_chunk(any_store: Store) -> None:
    fs = await Filesystem.load(await new_vault(any_store, DEFAULT))
    await forget_history(fs)  # no past root keeps a dead pack
    await write_files(fs, [3000, 100_000, 300_000, 524_288, 600_000, 2 << 20], b"a")
    await fs.commit()
    a = {i: fs.table.inodes[(await fs.lookup(ROOT_INO, b"a%05d" % i)).ino] for i in range(6)}
    packed = [r for node in a.values() for r in node.chunks.values() if r.packed]
    whole = [r for node in a.values() for r in node.chunks.values() if not r.packed]
    # 3000, 100 000, 300 000 and 524 288 bytes: packed; 600 000 and 2 MiB: objects.
    assert sorted(r.length for r in packed) == [3000, 100_000, 300_000, 524_288]
    assert sorted(r.length for r in whole) == [600_000, 1 << 20, 1 << 20]
    pack = packed[0].obj
    assert {r.obj for r in packed} == {pack}
    assert obj_name(pack) in await objects(any_store)

    # A second commit's small files go to a pack of their own.
    await write_files(fs, [4000, 5000], b"b")
    await fs.commit()
    b0 = fs.table.inodes[(await fs.lookup(ROOT_INO, b"b00000")).ino]
    pack_b = b0.chunks[0].obj
    assert pack_b != pack

    # Dropping chunks of the first pack one by one: it stays while any is named.
    await fs.unlink(ROOT_INO, b"a00000")  # deleted
    await fs.truncate(a[1].ino, 0)  # truncated away
    await fs.write(a[2].ino, 0, b"x")  # rewritten: the new version is in a new pack
    await fs.commit()
    assert obj_name(pack) in await objects(any_store)
    await assert_fsck_clean(any_store)
    assert fs.committer.packs is not None
    rec = fs.committer.packs.get(packed[0].pno)
    assert rec is not None and rec.live == 1 and rec.live_bytes < rec.size
    await fs.unlink(ROOT_INO, b"a00003")
    await fs.commit()
    names = await objects(any_store)
    assert obj_name(pack) not in names and obj_name(pack_b) in names
    assert fs.committer.packs.get(packed[0].pno) is None
    await assert_fsck_clean(any_store)

    # All gone after removing the rest, and the vault is clean.
    for name in (b"a00001", b"a00002", b"a00004", b"a00005", b"b00000", b"b00001"):
        await fs.unlink(ROOT_INO, name)
    await fs.close()
    assert not [s for s in (await objects(any_store)).values() if s > 2000]
    await assert_fsck_clean(any_store)


async def test_rewrites_and_failed_commits_keep_counts_right(any_store: Store) -> None:
    """Chunks dropped before their pack is committed, and packs made and dropped
    between two commits, leave no stale count and no leaked object."""
    fs = await Filesystem.load(await new_vault(any_store, DEFAULT))
    files = await write_files(fs, [10_000] * 20)
    await fs.commit()
    ino0 = next(iter(files))
    for round_ in range(5):
        # Rewrite half of the files twice per commit.
        for ino in list(files)[::2]:
            data = os.urandom(8000 + round_)
            await fs.write(ino, 0, data)
            files[ino] = data + files[ino][len(data) :]
        await fs.commit()
        await assert_fsck_clean(any_store)
    await fs.unlink(ROOT_INO, b"f00000")
    del files[ino0]
    await fs.close()
    await assert_fsck_clean(any_store)
    fs2 = await reopen(any_store, writable=False)
    for ino, data in files.items():
        assert await fs2.read(ino, 0, 20_000) == data


async def test_the_pack_table_is_authenticated(any_store: Store) -> None:
    """A flipped byte in a pack table page: the writer that must change it
    fails with an integrity error naming it, and fsck reports it; readers
    never need the table."""
    fs = await Filesystem.load(await new_vault(any_store, DEFAULT))
    files = await write_files(fs, [5000] * 3)
    await fs.close()
    fs = await reopen(any_store, writable=False)
    assert fs.committer.packs is not None and fs.root.ptab is not None
    (dev,) = fs.root.devices.values()
    page = (dev.prefix << DEVICE_BITS) >> PAGE_BITS  # of its first pack
    await fs.committer.packs.load(page)
    leaf = obj_name(fs.committer.packs.index.mids[page >> MID_BITS][page & ((1 << MID_BITS) - 1)])
    good = await any_store.get(leaf)
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 1
    await any_store.put(leaf, bytes(bad))
    reader = await reopen(any_store, writable=False)
    for ino, data in files.items():
        assert await reader.read(ino, 0, 6000) == data
    writer = await reopen(any_store)
    await writer.unlink(ROOT_INO, b"f00000")
    with pytest.raises(IntegrityError) as e:
        await writer.commit()
    assert e.value.obj == leaf
    report = await check(await Vault.unlock(any_store, PASS))
    assert any(leaf in p for p in report.problems), report.problems
    await any_store.put(leaf, good)
    await writer.commit()
    await writer.close()
    await assert_fsck_clean(any_store)


async def test_format_1_vaults_do_not_pack(any_store: Store, tmp_path: Path) -> None:
    vault = await new_vault(any_store, DEFAULT)
    # A format 1 header, as an older megafs wrote it (the rest is the same).
    vault.header = type(vault.header)(
        vault.header.vault_id, vault.header.layout, vault.header.slots, version=1
    )
    fs = await Filesystem.load(vault)
    assert fs.committer.packs is None
    await write_files(fs, [5000] * 10)
    await fs.close()
    sizes = sorted((await objects(any_store)).values())
    assert sizes.count(5028) == 10
