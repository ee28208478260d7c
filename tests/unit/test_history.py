"""History: every commit's root is kept as the retention policy says, past
roots read back as they were, and dropping roots frees exactly what no kept
root references (docs/history.md)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from megafs.fs import fsck
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.stores import LocalStore, Store
from megafs.vault.history import Lists, fold
from megafs.vault.retention import Policy, parse_duration
from megafs.vault.vault import Vault

from ..support.helpers import PASS, new_vault, read_tree, reopen

H = 3600 * 10**9


class E:
    def __init__(self, gen: int, hours_ago: float, name: str | None = None) -> None:
        self.gen = gen
        self.time_ns = NOW - int(hours_ago * H)
        self.name = name


NOW = 1_800_000_000 * 10**9 + H // 2  # half past an hour


def test_policy_keeps_recent_roots_then_one_per_period() -> None:
    p = Policy(every=3600, tiers=((3600, 3), (86400, 2)))
    entries = [
        E(1, 50),  # two days ago: beyond every tier
        E(2, 30),  # yesterday, early
        E(3, 26.4),  # yesterday, later: the newest of its day
        E(4, 2.2),  # two hours ago, but not the newest of its hour
        E(5, 2.1),
        E(6, 1.4),
        E(7, 0.2),  # within the hour: kept
        E(8, 0.1, name="before upgrade"),
        E(9, 0.05),
    ]
    kept = p.keep(entries, NOW)
    assert kept == {3, 5, 6, 7, 8, 9}
    # pinned roots stay whatever their age; the newest always stays
    assert 1 in p.keep([E(1, 5000, name="x"), E(2, 4000)], NOW)
    assert p.keep([E(1, 5000)], NOW) == {1}
    assert Policy(every=0, tiers=()).keep(entries, NOW) == {8, 9}


def test_policy_text_round_trip() -> None:
    p = Policy(every=parse_duration("2h"), tiers=((parse_duration("1d"), 7),))
    assert Policy.decode(p.encode()) == p
    assert p.text() == "every root for 2h, 7 x 1d"
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_fold_frees_what_only_the_dropped_root_holds() -> None:
    a, b, c, d = (bytes([i]) * 16 for i in range(4))
    # S made b and c; N no longer has a (older) nor b (made by S)
    s = Lists({b: 10, c: 20}, {d})
    n = Lists({}, {a, b})
    folded, freed = fold(s, n, oldest=False)
    assert freed == {b: 10}  # a is still the older root's, c is N's too
    assert folded.dead == {a, d} and set(folded.born) == {c}
    folded, freed = fold(s, n, oldest=True)
    assert set(freed) == {a, b, d} and folded.dead == set()


async def commit_versions(fs: Filesystem, n: int) -> list[dict[bytes, bytes | None]]:
    """n commits, each changing the tree; the tree after each."""
    trees = []
    f = (await fs.create(ROOT_INO, b"doc", 0o644, 0, 0)).ino
    for i in range(n):
        await fs.truncate(f, 0)
        await fs.write(f, 0, b"version %d " % i + os.urandom(70_000 * (i % 3)))
        if i % 2:
            await fs.mkdir(ROOT_INO, b"dir%d" % i, 0o755, 0, 0)
        await fs.commit()
        trees.append(await read_tree(fs))
    return trees


async def test_every_commit_is_kept_and_reads_back(any_store: Store) -> None:
    fs = await Filesystem.load(await new_vault(any_store))
    trees = await commit_versions(fs, 5)
    await fs.close()
    fs = await reopen(any_store, writable=False)
    history = await fs.history()
    assert history[-1].gen == fs.root.generation
    assert [e.stats for e in history[-5:]][-1] == tuple(fs.root.stats)
    for entry, tree in zip(history[-5:], trees, strict=True):
        past = await fs.past(entry)
        assert await read_tree(past) == tree
    report = await fsck.check(fs.vault)
    assert report.clean, report


async def test_retention_drops_roots_and_frees_exactly_their_objects(
    store: LocalStore,
) -> None:
    """Roots pinned at random stay readable as they were while the others go
    at every commit; after each round fsck finds nothing missing and nothing
    unreferenced."""
    rng = random.Random(7)
    fs = await Filesystem.load(await new_vault(store))
    fs.committer.keeper.set_policy(Policy(every=0, tiers=()))
    files: dict[bytes, int] = {}
    pinned: dict[str, dict[bytes, bytes | None]] = {}
    for step in range(40):
        for _ in range(rng.randint(1, 3)):
            name = b"f%d" % rng.randrange(6)
            op = rng.random()
            if name in files and op < 0.25:
                await fs.unlink(ROOT_INO, name)
                del files[name]
                continue
            if name not in files:
                files[name] = (await fs.create(ROOT_INO, name, 0o644, 0, 0)).ino
            size = rng.choice([10, 3000, 70_000, 200_000])
            await fs.write(files[name], rng.randrange(0, 100_000), os.urandom(size))
        pin = None
        if rng.random() < 0.3:
            pin = f"p{step}"
            fs.committer.keeper.pin(pin)
        if pinned and rng.random() < 0.2:
            gone = rng.choice(sorted(pinned))
            fs.committer.keeper.unpin(gone)
            del pinned[gone]
        await fs.commit()
        if pin is not None:
            pinned[pin] = await read_tree(fs)
        if step % 8 == 7:
            history = await fs.history()
            names = {e.name: e for e in history if e.name is not None}
            assert set(names) == set(pinned)
            assert len(history) == len(pinned) + (history[-1].name is None)
            for pname, tree in pinned.items():
                assert await read_tree(await fs.past(names[pname])) == tree, pname
            await fs.collector.drain()
            report = await fsck.check(await Vault.unlock(store, PASS))
            assert report.clean, report
    await fs.close()


async def test_a_dead_pack_is_kept_while_a_past_root_needs_it(any_store: Store) -> None:
    from megafs.format.crypto import Layout

    fs = await Filesystem.load(await new_vault(any_store, Layout()))
    small = {b"s%d" % i: os.urandom(3000) for i in range(3)}
    for name, data in small.items():
        ino = (await fs.create(ROOT_INO, name, 0o644, 0, 0)).ino
        await fs.write(ino, 0, data)
    fs.committer.keeper.pin("packed")
    await fs.commit()
    for name in small:
        await fs.unlink(ROOT_INO, name)
    await fs.commit()  # the pack's last chunk is gone: the pack is dead now
    assert fs.committer.packs is not None
    assert not list(fs.committer.packs.loaded())
    entry = next(e for e in await fs.history() if e.name == "packed")
    past_tree = await read_tree(await fs.past(entry))
    assert {k: v for k, v in past_tree.items() if k in small} == small
    report = await fsck.check(fs.vault)
    assert report.clean, report
    # unpinned and past the policy: the pack goes
    fs.committer.keeper.set_policy(Policy(every=0, tiers=()))
    fs.committer.keeper.unpin("packed")
    await fs.commit()
    await fs.collector.drain()
    assert [e.name for e in await fs.history()] == [None]
    report = await fsck.check(fs.vault)
    assert report.clean and report.objects <= 12, report
    await fs.close()


async def test_two_devices_keep_one_history(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both devices' commits are entries of one history (merges included);
    each past root reads back as the device that made it saw it."""
    await new_vault(store)

    async def open_as(name: str) -> Filesystem:
        monkeypatch.setenv("MEGAFS_STATE_DIR", str(tmp_path / f"state-{name}"))
        return await Filesystem.load(await Vault.unlock(store, PASS), device_name=name)

    a = await open_as("a")
    b = await open_as("b")
    seen: dict[int, dict[bytes, bytes | None]] = {}
    for i in range(6):
        fs = (a, b)[i % 2]
        ino = (await fs.create(ROOT_INO, b"from-%d" % i, 0o644, 0, 0)).ino
        await fs.write(ino, 0, b"written by %d" % i)
        await fs.commit()  # the second device merges first
        seen[fs.root.generation] = await read_tree(fs)
    history = await b.history()
    devices = {e.device for e in history}
    assert devices == {a.committer.device_id, b.committer.device_id}
    for gen, tree in seen.items():
        entry = next(e for e in history if e.gen == gen)
        assert await read_tree(await b.past(entry)) == tree
    assert len(seen[max(seen)]) == 6
    await a.close()
    await b.close()
    report = await fsck.check(await Vault.unlock(store, PASS))
    assert not report.problems and not report.missing, report


async def test_recent_entries_move_into_the_table(store: LocalStore) -> None:
    """The newest entries live in the root until there are enough of them
    to fill the table's pages; across those moves every root stays listed
    and readable, pins and drops included, and fsck stays clean."""
    from megafs.vault.history import RECENT_MAX

    fs = await Filesystem.load(await new_vault(store))
    f = (await fs.create(ROOT_INO, b"f", 0o644, 0, 0)).ino
    trees: dict[int, dict[bytes, bytes | None]] = {}
    for i in range(2 * RECENT_MAX + 5):
        await fs.write(f, 0, b"%d " % i + os.urandom(i * 100))
        if i % 9 == 0:
            fs.committer.keeper.pin(f"p{i}")
        await fs.commit()
        trees[fs.root.generation] = await read_tree(fs)
        assert len(fs.root.hist_recent) <= RECENT_MAX
    assert fs.root.hist is not None  # some went into the table
    fs = await reopen(store)
    history = {e.gen: e for e in await fs.history()}
    assert set(trees) <= set(history)
    for gen, tree in trees.items():
        assert await read_tree(await fs.past(history[gen])) == tree
    report = await fsck.check(fs.vault)
    assert report.clean, report
    # drop all but the pins and the newest, from the table and the root alike
    await fs.set_retention(Policy(every=0, tiers=()))
    names = sorted(e.name for e in await fs.history() if e.name is not None)
    assert names == sorted(f"p{i}" for i in range(0, 2 * RECENT_MAX + 5, 9))
    for e in await fs.history():
        if e.name is not None:
            gen = e.gen
            assert await read_tree(await fs.past(e)) == trees[gen]
    await fs.close()
    report = await fsck.check(await Vault.unlock(store, PASS))
    assert report.clean, report


async def test_a_tampered_history_object_is_an_integrity_error(store: LocalStore) -> None:
    """History pages, index nodes and lists objects are authenticated like
    every metadata object: a flipped byte or a missing object is an error
    when the history is read, never a wrong listing."""
    from megafs.errors import IntegrityError
    from megafs.vault.history import RECENT_MAX
    from megafs.vault.vault import obj_name

    fs = await Filesystem.load(await new_vault(store))
    f = (await fs.create(ROOT_INO, b"f", 0o644, 0, 0)).ino
    for i in range(RECENT_MAX + 2):
        await fs.write(f, 0, os.urandom(200_000) if i == 3 else b"%d" % i)
        await fs.commit()
    await fs.close()
    assert fs.root.hist is not None
    table = fs.committer.keeper.table
    victims = [fs.root.hist, *table.index.top.values()]
    victims += [leaf for mid in table.index.mids.values() for leaf in mid.values()]
    victims += [e.lists for e in await fs.history() if e.lists is not None]
    assert len(victims) >= 3
    for obj in victims:
        name = obj_name(obj)
        good = await store.get(name)
        for bad in (good[:-1] + bytes([good[-1] ^ 1]), None):
            if bad is None:
                await store.delete(name)
            else:
                await store.put(name, bad)
            fresh = await reopen(store, writable=False)
            with pytest.raises(IntegrityError):
                for e in await fresh.history():
                    await fresh.committer.keeper.table.lists(e)
            await store.put(name, good)
