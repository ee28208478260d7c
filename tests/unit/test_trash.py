"""The trash is the history: items deleted between kept roots are found by
comparing each kept root with the next, top level only; renames and hard
links that live on are not deleted (docs/history.md)."""

from __future__ import annotations

from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.fs.trash import deleted
from megafs.stores import Store

from ..support.helpers import new_vault, read_tree


async def mkfile(fs: Filesystem, parent: int, name: bytes, data: bytes) -> int:
    ino = (await fs.create(parent, name, 0o640, 0, 0)).ino
    await fs.write(ino, 0, data)
    return ino


async def test_deleted_items_are_found_and_read_back(any_store: Store) -> None:
    fs = await Filesystem.load(await new_vault(any_store))
    docs = (await fs.mkdir(ROOT_INO, b"docs", 0o755, 0, 0)).ino
    await mkfile(fs, docs, b"a.txt", b"first file")
    b = await mkfile(fs, docs, b"b.txt", b"renamed later")
    linked = await mkfile(fs, docs, b"linked", b"two names")
    await fs.link(linked, ROOT_INO, b"other-name")
    sub = (await fs.mkdir(docs, b"sub", 0o755, 0, 0)).ino
    await mkfile(fs, sub, b"deep.bin", b"x" * 100_000)
    await fs.commit()
    before = await read_tree(fs)
    await fs.unlink(docs, b"a.txt")
    await fs.commit()
    await fs.unlink(sub, b"deep.bin")
    await fs.rmdir(docs, b"sub")
    await fs.rename(docs, b"b.txt", ROOT_INO, b"b-moved.txt")
    await fs.unlink(docs, b"linked")  # its other name lives on
    await fs.commit()
    assert b == (await fs.lookup(ROOT_INO, b"b-moved.txt")).ino
    items = await deleted(fs)
    assert [(i.path, i.is_dir) for i in items] == [(b"docs/sub", True), (b"docs/a.txt", False)]
    a_item = items[1]
    assert a_item.size == len(b"first file")
    assert a_item.deleted_by.gen > a_item.held_by.gen
    # each item reads back from the root that holds it
    for item in items:
        past = await read_tree(await fs.past(item.held_by))
        assert {k: v for k, v in past.items() if k.startswith(item.path)} == {
            k: v for k, v in before.items() if k.startswith(item.path)
        }
    await fs.close()


async def test_a_root_holding_deleted_items_is_kept_for_the_horizon(any_store: Store) -> None:
    """The policy keeps one root an hour; the roots from before a deletion
    stay anyway (up to the policy's horizon, here an hour), so the deleted
    file stays in the trash, while roots that hold nothing deleted go."""
    from megafs.vault.retention import Policy

    fs = await Filesystem.load(await new_vault(any_store))
    await fs.set_retention(Policy(every=0, tiers=((3600, 1),)))
    await mkfile(fs, ROOT_INO, b"doomed.txt", b"delete me")
    await fs.commit()
    await mkfile(fs, ROOT_INO, b"other.txt", b"nothing deleted here")
    await fs.commit()
    await fs.unlink(ROOT_INO, b"doomed.txt")
    await fs.commit()
    await mkfile(fs, ROOT_INO, b"later.txt", b"after")
    await fs.prune()
    history = await fs.history()
    assert len(history) == 2, history
    holder = history[0]
    assert holder.holds_deleted is True
    assert [i.path for i in await deleted(fs)] == [b"doomed.txt"]
    past = await read_tree(await fs.past(holder))
    assert past[b"doomed.txt"] == b"delete me"
    # beyond the horizon (a policy that keeps nothing), it goes
    await fs.set_retention(Policy(every=0, tiers=()))
    assert len(await fs.history()) == 1 and await deleted(fs) == []
    await fs.close()
