"""Checking a vault: every object authenticates, everything is reachable.

:func:`check` walks the committed tree from the root (top index, mid
indexes, leaf pages, external bodies, chunk objects), opens every object
(chunks block by block), checks the directory structure (every entry names
an existing inode, link counts match the entries), and lists the store to
find objects that are missing and objects nothing references (garbage left
by an interrupted commit). With ``repair`` it deletes the unreferenced
objects; it never deletes anything the root references.

This reads the whole vault: its cost grows with the vault, unlike a mount.
"""

from __future__ import annotations

import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from . import crypto
from .errors import IntegrityError, MegafsError, ObjectNotFound, VaultBusy
from .model import MID_BITS, ROOT_INO, Filesystem
from .vault import Vault, in_thread, obj_name


@dataclass
class Report:
    objects: int = 0
    inodes: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    removed: int = 0

    @property
    def clean(self) -> bool:
        return not (self.problems or self.missing or self.orphans)


Progress = Callable[[str, int, int], None]


async def check(vault: Vault, *, repair: bool = False, progress: Progress | None = None) -> Report:
    """Verify the vault. Raises VaultBusy if ``repair`` and another writer is active."""
    report = Report()
    # Repair takes the writer lease, so no mount can upload while orphans go.
    fs = await Filesystem.load(vault, writable=repair)
    try:
        await _check(fs, report, repair, progress)
    finally:
        if repair:
            await fs.close()
    return report


async def _check(fs: Filesystem, report: Report, repair: bool, progress: Progress | None) -> None:
    vault = fs.vault
    reachable: set[bytes] = set()
    if fs.root.itab is not None:
        reachable.add(fs.root.itab)

    async def guarded(what: str, work: Awaitable[None]) -> None:
        try:
            await work
        except ObjectNotFound as e:
            report.missing.append(f"{e.name} ({what})")
        except IntegrityError as e:
            report.problems.append(str(e))

    # index and leaf pages
    pages: list[int] = []
    for hi, mid_obj in sorted(fs.top.items()):
        reachable.add(mid_obj)
        try:
            mid = await fs._mid(hi)
        except (ObjectNotFound, IntegrityError) as e:
            report.problems.append(f"mid index {obj_name(mid_obj)}: {e}")
            continue
        for lo, leaf in mid.items():
            reachable.add(leaf)
            pages.append((hi << MID_BITS) | lo)
    for i, page in enumerate(pages):
        if progress:
            progress("pages", i, len(pages))
        await guarded(f"leaf page {page}", fs._ensure_page(page))

    # inodes, bodies, directory structure
    links: dict[int, int] = {}
    chunks: list[tuple[int, int, bytes, int]] = []
    inodes = sorted(fs.inodes)
    for ino in inodes:
        node = fs.inodes[ino]
        report.inodes += 1
        if node.body_ref is not None:
            reachable.add(node.body_ref)
        if not node.body_loaded:
            await guarded(f"body of inode {ino}", fs._load_body(node))
            if not node.body_loaded:
                continue
        if node.is_dir:
            for name, (child, _) in node.entries.items():
                links[child] = links.get(child, 0) + 1
                if child not in fs.inodes:
                    report.problems.append(
                        f"directory {ino} entry {name!r} names missing inode {child}"
                    )
        if node.is_reg:
            report.bytes += node.size
            for idx, ref in node.chunks.items():
                reachable.add(ref.obj)
                chunks.append((ino, idx, ref.obj, ref.length))
    for ino in inodes:
        node = fs.inodes[ino]
        if ino == ROOT_INO or not node.body_loaded:
            continue
        expected = links.get(ino, 0)
        if node.is_dir:
            got = 1 if expected else 0
            if expected != 1:
                report.problems.append(f"directory inode {ino} has {expected} names")
            subdirs = sum(
                1 for c, _ in node.entries.values() if c in fs.inodes and fs.inodes[c].is_dir
            )
            if got and node.nlink != 2 + subdirs:
                report.problems.append(
                    f"directory inode {ino} link count {node.nlink} != {2 + subdirs}"
                )
        elif node.nlink != expected and ino not in fs.orphans:
            report.problems.append(f"inode {ino} link count {node.nlink}, but {expected} names")
        if stat.S_ISREG(node.mode) and node.nlink == 0 and ino not in fs.orphans:
            report.problems.append(f"inode {ino} has no names and is not an orphan")

    # chunk objects: fetch and open every block
    limiter = trio.CapacityLimiter(8)
    done = 0

    async def verify_chunk(ino: int, idx: int, obj: bytes, length: int) -> None:
        nonlocal done
        node = fs.inodes[ino]
        name = obj_name(obj)
        async with limiter:
            try:
                sealed = await vault.store.get(name)
            except ObjectNotFound:
                report.missing.append(f"{name} (chunk {idx} of inode {ino})")
                return
            if len(sealed) != vault.layout.sealed_len(length):
                report.problems.append(f"integrity error in object {name}: wrong size")
                return
            key = node.file_key
            assert key is not None
            try:
                await in_thread(
                    lambda: crypto.open_blocks(
                        vault.keys, vault.layout, key, node.file_id, obj, idx, length, 0, sealed
                    )
                )
            except crypto.AuthFailed as e:
                report.problems.append(f"integrity error in object {name}: {e}")
        done += 1
        if progress:
            progress("chunks", done, len(chunks))

    async with trio.open_nursery() as nursery:
        for ino, idx, obj, length in chunks:
            nursery.start_soon(verify_chunk, ino, idx, obj, length)

    # the store's view
    onames = {obj_name(o) for o in reachable}
    listed: set[str] = set()
    async for oname, _size in vault.store.list():
        listed.add(oname)
    report.objects = len(listed)
    for oname in sorted(onames - listed):
        if not any(m.startswith(oname) for m in report.missing):
            report.missing.append(oname)
    report.orphans = sorted(listed - onames)
    if repair and report.orphans:
        for i, oname in enumerate(report.orphans):
            if progress:
                progress("removing", i, len(report.orphans))
            try:
                await vault.store.delete(oname)
                report.removed += 1
            except MegafsError as e:
                report.problems.append(f"could not remove {oname}: {e}")


__all__ = ["Report", "VaultBusy", "check"]
