"""What was deleted: names a kept root has that the next kept root lost.

The trash of a megafs vault is its history (docs/history.md): a file or
folder deleted through the mount stays in the kept roots from before the
deletion, and comes back from there (``megafs trash restore``, or a copy
out of ``.snapshots``). :func:`deleted` finds such items by comparing each
kept root with the next one, loading only the inode pages whose objects
differ between the two: the cost grows with what changed, not with the
size of the vault.

An item is a top-level deletion: a name whose inode is gone from the next
root while its folder is still there (the files of a deleted folder are
part of the folder's item). A name removed while its inode lives on
elsewhere (a rename, another hard link) is not deleted.

May not touch: the store (past roots are read through read-only
filesystems), anything writable.

Concurrency: trio; the filesystems are read-only, so nothing else changes
them meanwhile.
"""

from __future__ import annotations

import itertools
import stat
from dataclasses import dataclass
from typing import Protocol

from ..errors import FsError
from ..vault.history import Entry
from ..vault.tables import MID_BITS, RadixIndex
from .inode import ROOT_INO, Inode
from .table import InodeTable


class Tree(Protocol):
    """What this module reads of a filesystem (the filesystem calls this
    module, so it names no class of it)."""

    table: InodeTable

    async def load_page(self, page: int) -> None: ...

    async def load_body(self, node: Inode) -> None: ...


class Live(Tree, Protocol):
    """A filesystem with a history of kept roots."""

    async def history(self) -> list[Entry]: ...

    async def past(self, entry: Entry, *, block_cache_bytes: int = ...) -> Tree: ...


@dataclass(frozen=True)
class Deleted:
    """One deleted item: where it was, in which kept root it still is."""

    path: bytes  # relative to the vault's root, b"/"-separated
    is_dir: bool
    size: int  # a file's size; 0 for a folder
    mtime_ns: int
    held_by: Entry  # the newest kept root that holds it
    deleted_by: Entry  # the kept root after it, which does not


async def _leaves(index: RadixIndex) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for hi in sorted(index.top):
        for lo, leaf in (await index.mid(hi)).items():
            out[(hi << MID_BITS) | lo] = leaf
    return out


async def _node(fs: Tree, ino: int) -> Inode | None:
    try:
        node = await fs.table.get(ino)
    except (FsError, KeyError):
        return None
    if not node.body_loaded:
        await fs.load_body(node)
    return node


async def _path(fs: Tree, ino: int) -> bytes | None:
    """The path of folder ``ino`` in ``fs`` (None if it is not reachable)."""
    parts: list[bytes] = []
    for _ in range(4096):
        if ino == ROOT_INO:
            return b"/".join(reversed(parts))
        node = await _node(fs, ino)
        if node is None:
            return None
        parent = await _node(fs, node.parent)
        if parent is None:
            return None
        name = next((n for n, (c, _) in parent.entries.items() if c == ino), None)
        if name is None:
            return None
        parts.append(name)
        ino = node.parent
    return None


async def deleted_between(
    older: Tree, newer: Tree, a: Entry, b: Entry, pages: set[int] | None = None
) -> list[Deleted]:
    """Top-level items ``older``'s root has and ``newer``'s lost. ``pages``:
    the inode pages that may differ (default: those whose objects differ;
    for a live filesystem on ``older``'s root, its changed pages)."""
    if a.itab is None or (pages is None and a.itab == b.itab):
        return []
    old_leaves = await _leaves(older.table.index)
    if pages is None:
        new_leaves = await _leaves(newer.table.index) if b.itab is not None else {}
        changed = [p for p, leaf in old_leaves.items() if new_leaves.get(p) != leaf]
    else:
        new_leaves = old_leaves
        changed = sorted(p for p in pages if p in old_leaves)
    out: list[Deleted] = []
    for page in changed:
        await older.load_page(page)
        if page in new_leaves:
            await newer.load_page(page)
        for ino in sorted(i for i in older.table.inodes if i >> 8 == page):
            old_dir = await _node(older, ino)
            if old_dir is None or not stat.S_ISDIR(old_dir.mode):
                continue
            new_dir = await _node(newer, ino)
            if new_dir is None or not stat.S_ISDIR(new_dir.mode):
                continue  # the folder itself went: its own parent lists it
            for name, (child, _) in old_dir.entries.items():
                if name in new_dir.entries:
                    continue
                if await _node(newer, child) is not None:
                    continue  # renamed, or another link lives on
                node = await _node(older, child)
                where = await _path(older, ino)
                if node is None or where is None:
                    continue
                out.append(
                    Deleted(
                        where + b"/" + name if where else name,
                        stat.S_ISDIR(node.mode),
                        0 if stat.S_ISDIR(node.mode) else node.size,
                        node.mtime,
                        a,
                        b,
                    )
                )
    return out


async def deleted(fs: Live) -> list[Deleted]:
    """Every deleted item the kept roots still hold, newest deletion first;
    an item deleted more than once is listed once, from the newest root
    that holds it."""
    entries = await fs.history()
    seen: dict[bytes, Deleted] = {}
    pasts: dict[int, Tree] = {}

    async def past(e: Entry) -> Tree:
        if e.gen not in pasts:
            pasts[e.gen] = await fs.past(e, block_cache_bytes=1 << 20)
        return pasts[e.gen]

    for a, b in itertools.pairwise(entries):
        found = await deleted_between(await past(a), await past(b), a, b)
        for item in found:
            old = seen.get(item.path)
            if old is None or old.held_by.gen < item.held_by.gen:
                seen[item.path] = item
        pasts.pop(a.gen, None)
    return sorted(seen.values(), key=lambda i: (-i.deleted_by.gen, i.path))


__all__ = ["Deleted", "Live", "Tree", "deleted", "deleted_between"]
