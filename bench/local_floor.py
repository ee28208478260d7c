#!/usr/bin/env python3
"""What a local-folder vault's reads and commits cost below the mount.

Measures, with no FUSE and no megafs daemon, the steps a cold 4 KiB random
read and a commit's sync are made of (docs/performance.md, "Local folders:
a disk read without a hand-off"):

- random 4 KiB reads from one large file (gocryptfs's layout) against reads
  from 1,024 objects of 1 MiB in fan-out folders (megafs's), of 4 KiB and of
  a whole sealed 64 KiB block, every cache dropped first;
- the same block through :meth:`megafs.stores.LocalStore.get_range`, once in
  a worker thread and once in the trio thread (its ``inline_reads`` set to
  never and to always);
- trio's hand-off of a function to a worker thread, empty and sleeping;
- one ``syncfs`` against :meth:`megafs.stores.LocalStore.sync` (one
  ``fdatasync`` per object, one ``fsync`` per folder), after putting 1,024
  objects beside a 1 GiB append-only file.

    python3 bench/local_floor.py [--dir /tmp] [--reads 2000]

Run as root (it drops the kernel's caches), one heavy job at a time.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import trio  # noqa: E402

from megafs.nowait import InlineReads  # noqa: E402
from megafs.stores import LocalStore  # noqa: E402

MiB = 1 << 20
OBJECTS = 1024
SEALED_BLOCK = 65536 + 28
_LIBC = ctypes.CDLL(None, use_errno=True)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def report(what: str, reads: int, seconds: float) -> None:
    print(f"{what:<62} {seconds / reads * 1e6:6.0f} µs per read ({reads / seconds:,.0f}/s)")


def make_files(base: Path, rng: random.Random) -> list[str]:
    """1,024 objects of a sealed chunk's size under store/objects/xx/, and one 1 GiB file."""
    names = []
    block = os.urandom(MiB + 16 * 28)
    for _ in range(OBJECTS):
        name = f"{rng.getrandbits(128):032x}"
        folder = base / "store" / "objects" / name[:2]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(block)
        names.append(name)
    with open(base / "big", "wb") as f:
        for _ in range(OBJECTS):
            f.write(block[:MiB])
    return names


def raw_reads(base: Path, names: list[str], picks: list[tuple[int, int]]) -> None:
    drop_caches()
    fd = os.open(base / "big", os.O_RDONLY)
    t = time.perf_counter()
    for obj, blk in picks:
        os.pread(fd, 4096, obj * MiB + blk * 65536)
    report("4 KiB from one 1 GiB file", len(picks), time.perf_counter() - t)
    os.close(fd)
    objects = os.open(base / "store" / "objects", os.O_RDONLY | os.O_DIRECTORY)
    for size, what in ((4096, "4 KiB"), (SEALED_BLOCK, "a sealed 64 KiB block")):
        drop_caches()
        t = time.perf_counter()
        for obj, blk in picks:
            name = names[obj]
            folder = os.open(name[:2], os.O_RDONLY | os.O_DIRECTORY, dir_fd=objects)
            fd = os.open(name, os.O_RDONLY, dir_fd=folder)
            os.fstat(fd)
            os.pread(fd, size, blk * SEALED_BLOCK)
            os.close(fd)
            os.close(folder)
        report(f"open one of {OBJECTS} objects, read {what}", len(picks), time.perf_counter() - t)
    os.close(objects)


async def store_reads(base: Path, names: list[str], picks: list[tuple[int, int]]) -> None:
    for inline, what in ((False, "in a worker thread"), (True, "in the trio thread")):
        store = LocalStore(str(base / "store"))
        limit = MiB if inline else 0  # always inline, or never
        store.inline_reads = InlineReads(limit, slow=3600, stall=3600, after=0)
        drop_caches()
        t = time.perf_counter()
        for obj, blk in picks:
            await store.get_range(names[obj], blk * SEALED_BLOCK, SEALED_BLOCK)
        report(f"LocalStore.get_range of the block, {what}", len(picks), time.perf_counter() - t)
        await store.aclose()
    for fn, what in (
        (lambda: None, "an empty function"),
        (lambda: time.sleep(1e-4), "sleep 100 µs"),
    ):
        t = time.perf_counter()
        for _ in range(len(picks)):
            await trio.to_thread.run_sync(fn)
        report(f"hand-off to a worker thread: {what}", len(picks), time.perf_counter() - t)


async def syncs(base: Path) -> None:
    data = os.urandom(MiB)
    for how in ("syncfs", "LocalStore.sync"):
        top = base / f"sync-{how}"
        store = LocalStore(str(top), create=True)
        await store.check()
        os.sync()
        journal = os.open(base / f"journal-{how}", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        for i in range(OBJECTS):
            os.write(journal, data)
            await store.put(f"{i:032x}", data)
        t = time.perf_counter()
        if how == "syncfs":
            fd = os.open(top, os.O_RDONLY)
            _LIBC.syncfs(fd)
            os.close(fd)
        else:
            await store.sync()
        took = time.perf_counter() - t
        os.close(journal)
        print(f"sync of {OBJECTS} objects of 1 MiB beside a 1 GiB journal, {how:<16} {took:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp", help="parent of the scratch folder")
    ap.add_argument("--reads", type=int, default=2000)
    args = ap.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="megafs-floor-", dir=args.dir) as tmp:
        base = Path(tmp)
        names = make_files(base, rng)
        picks = [(rng.randrange(OBJECTS), rng.randrange(16)) for _ in range(args.reads)]
        raw_reads(base, names, picks)
        trio.run(store_reads, base, names, picks)
        trio.run(syncs, base)


if __name__ == "__main__":
    main()
