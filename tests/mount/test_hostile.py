"""Hostile and extreme input through a real mount.

Names at and past the 255-byte limit, names that are not UTF-8, a tree 100
levels deep, a sparse file of 1 TiB, 100,000 entries in one folder, storms of
concurrent renames across folders, a folder moved into its own subtree, and a
file read while it grows. Every test but the 100,000-entry one runs on a
local folder and on SeaweedFS S3; each checks content, not only that calls
succeed, and most remount before checking again, so what is checked came
back from the store. The mounts fail a test whose daemon logged a warning or
an error.
"""

from __future__ import annotations

import ctypes
import errno
import multiprocessing
import os
import random
import shutil
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from megafs.stores import open_store

from ..support.mounting import Drive, mounted_drive

pytestmark = pytest.mark.fuse

T = TypeVar("T")
TiB = 1 << 40
MiB = 1 << 20
SPAWN = multiprocessing.get_context("spawn")


def fsck_clean(drive: Drive) -> str:
    """Unmount, then ``megafs fsck``: exit 0, no problem, nothing missing."""
    drive.umount()
    proc = drive.megafs("fsck", drive.url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "problem:" not in proc.stdout and "missing:" not in proc.stdout, proc.stdout
    return proc.stdout


def errno_of(fn: Callable[..., object], *args: object) -> int:
    """The errno ``fn(*args)`` fails with (0 if it does not fail)."""
    try:
        fn(*args)
    except OSError as e:
        return e.errno or -1
    return 0


_libc = ctypes.CDLL(None, use_errno=True)
RENAME_EXCHANGE = 2


def renameat2(old: Path | bytes, new: Path | bytes, flags: int) -> None:
    if _libc.renameat2(-100, os.fsencode(old), -100, os.fsencode(new), ctypes.c_uint(flags)):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(old))


# --- names --------------------------------------------------------------------------------


def test_names_of_255_bytes_work_and_256_are_refused(drive: Drive) -> None:
    mp = drive.mountpoint
    ascii255 = "n" * 255
    utf255 = "é" * 127 + "x"  # 2 * 127 + 1 bytes
    assert len(utf255.encode()) == 255
    (mp / ascii255).write_bytes(b"ascii")
    (mp / "d" / utf255).mkdir(parents=True)
    (mp / "d" / utf255 / ascii255).write_bytes(b"deep")
    os.symlink("t" * 4095, mp / ("l" * 255))  # the longest symlink target too
    os.link(mp / ascii255, mp / "d" / ("h" * 255))
    (mp / "short").write_bytes(b"renamed")
    os.rename(mp / "short", mp / ("r" * 255))

    too_long = "m" * 256
    utf256 = "é" * 128  # 256 bytes, 128 characters
    for name in (too_long, utf256):
        p = mp / name
        assert errno_of(os.open, p, os.O_CREAT | os.O_WRONLY, 0o644) == errno.ENAMETOOLONG
        assert errno_of(os.mkdir, p) == errno.ENAMETOOLONG
        assert errno_of(os.symlink, "x", p) == errno.ENAMETOOLONG
        assert errno_of(os.link, mp / ascii255, p) == errno.ENAMETOOLONG
        assert errno_of(os.rename, mp / ascii255, p) == errno.ENAMETOOLONG
        assert errno_of(os.stat, p) == errno.ENAMETOOLONG
        assert errno_of(os.mknod, p) == errno.ENAMETOOLONG
    assert errno_of(os.symlink, "t" * 4096, mp / "toolong-target") == errno.ENAMETOOLONG

    def check() -> None:
        assert sorted(os.listdir(mp)) == sorted(["d", ascii255, "l" * 255, "r" * 255])
        assert sorted(os.listdir(mp / "d")) == sorted([utf255, "h" * 255])
        assert (mp / ascii255).read_bytes() == b"ascii"
        assert (mp / "d" / utf255 / ascii255).read_bytes() == b"deep"
        assert os.readlink(mp / ("l" * 255)) == "t" * 4095
        assert os.stat(mp / "d" / ("h" * 255)).st_ino == os.stat(mp / ascii255).st_ino
        assert os.stat(mp / ascii255).st_nlink == 2
        assert (mp / ("r" * 255)).read_bytes() == b"renamed"

    check()
    drive.remount()
    check()
    fsck_clean(drive)


#: Names no UTF-8 decoder accepts, and bytes that are legal but awkward.
ODD_NAMES = [
    b"\xff\xfe",
    b"caf\xe9",  # Latin-1
    b"\xc3\x28",  # a broken two-byte sequence
    b"\x80starts with a continuation byte",
    b"\xed\xa0\x80 surrogate",  # UTF-8 of a lone surrogate: invalid
    b"\xf4\x90\x80\x80 above U+10FFFF",
    b"new\nline",
    b"tab\tand\\backslash",
    b"\x01\x02\x7f control",
    b" leading and trailing space ",
    b"-starts-with-dash",
    b"..dots..",
]


def test_names_that_are_not_utf8(drive: Drive) -> None:
    mp = os.fsencode(drive.mountpoint)
    sub = os.path.join(mp, b"\xfe\xfd dir")
    os.mkdir(sub)
    for i, name in enumerate(ODD_NAMES):
        for folder in (mp, sub):
            with open(os.path.join(folder, name), "wb") as f:
                f.write(name * (i + 1))
    # renames between odd names, across folders
    os.rename(os.path.join(mp, ODD_NAMES[0]), os.path.join(sub, b"\x9f moved \xa0"))
    os.rename(os.path.join(sub, ODD_NAMES[1]), os.path.join(mp, b"\xe9\xe9"))
    os.symlink(b"\xff target \xfe", os.path.join(mp, b"link \xaa"))
    os.setxattr(os.path.join(mp, ODD_NAMES[2]), b"user.\xff\xfe", b"\xfe value")
    top = set(ODD_NAMES[1:]) | {b"\xfe\xfd dir", b"\xe9\xe9", b"link \xaa"}
    inner = (set(ODD_NAMES) - {ODD_NAMES[1]}) | {b"\x9f moved \xa0"}

    def check() -> None:
        assert set(os.listdir(mp)) == top
        assert set(os.listdir(sub)) == inner
        for i, name in enumerate(ODD_NAMES):
            want = name * (i + 1)
            if name != ODD_NAMES[0]:
                with open(os.path.join(mp, name), "rb") as f:
                    assert f.read() == want
            if name != ODD_NAMES[1]:
                with open(os.path.join(sub, name), "rb") as f:
                    assert f.read() == want
        with open(os.path.join(sub, b"\x9f moved \xa0"), "rb") as f:
            assert f.read() == ODD_NAMES[0]
        assert os.readlink(os.path.join(mp, b"link \xaa")) == b"\xff target \xfe"
        assert os.getxattr(os.path.join(mp, ODD_NAMES[2]), b"user.\xff\xfe") == b"\xfe value"
        # ordinary tools see them too
        found = subprocess.run(
            ["find", mp, "-print0"], capture_output=True, check=True
        ).stdout.split(b"\0")
        assert os.path.join(sub, b"new\nline") in found

    check()
    drive.remount()
    check()
    for name in top - {b"\xfe\xfd dir"}:
        os.unlink(os.path.join(mp, name))
    shutil.rmtree(sub)
    assert os.listdir(mp) == []
    fsck_clean(drive)


# --- depth, size, width ---------------------------------------------------------------------


def test_tree_100_levels_deep(drive: Drive) -> None:
    mp = drive.mountpoint
    levels = [f"level{i:03d}" for i in range(100)]
    deepest = mp.joinpath(*levels)
    deepest.mkdir(parents=True)
    (deepest / "bottom").write_bytes(b"at the bottom\n" * 1000)
    os.symlink("../" * 100 + "top.txt", deepest / "up")
    (mp / "top.txt").write_bytes(b"top")
    middle = mp.joinpath(*levels[:50])

    def check(root: Path) -> None:
        bottom = root.joinpath(*levels) / "bottom"
        assert bottom.read_bytes() == b"at the bottom\n" * 1000
        assert (bottom.parent / "up").read_bytes() == b"top"
        dirs = [d for d, _, _ in os.walk(root / levels[0])]
        assert len(dirs) == 100
        # ".." resolves all the way up (the kernel asks us for each parent)
        assert os.path.samefile(bottom.parent.joinpath(*[".."] * 100), root)

    check(mp)
    # moving a folder into its own subtree is refused, at any depth
    for depth in (51, 75, 99, 100):
        inside = mp.joinpath(*levels[:depth]) / "x"
        assert errno_of(os.rename, middle, inside) == errno.EINVAL
    drive.remount()
    check(mp)
    # the whole tree moves as one, and goes away with rm -r
    (mp / "moved").mkdir()
    os.rename(mp / levels[0], mp / "moved" / levels[0])
    os.rename(mp / "top.txt", mp / "moved" / "top.txt")
    check(mp / "moved")
    drive.remount()
    check(mp / "moved")
    shutil.rmtree(mp / "moved" / levels[0])
    assert os.listdir(mp / "moved") == ["top.txt"]
    fsck_clean(drive)


def store_bytes(url: str, env: dict[str, str]) -> int:
    """Total size of the objects in the store (S3 credentials come from the environment)."""

    async def total() -> int:
        async with open_store(url, endpoint=env.get("MEGAFS_S3_ENDPOINT")) as store:
            return sum([size async for _, size in store.list()])

    return trio.run(total)


def test_sparse_file_of_one_tib(drive: Drive) -> None:
    mp = drive.mountpoint
    path = mp / "sparse"
    tail = b"the end"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"start")
        os.pwrite(fd, tail, TiB - len(tail))
    finally:
        os.close(fd)
    rng = random.Random(1)

    def check() -> None:
        st = os.stat(path)
        assert st.st_size == TiB
        with open(path, "rb") as f:
            assert f.read(5) == b"start"
            for _ in range(40):
                off = rng.randrange(5, TiB - len(tail) - 65536)
                f.seek(off)
                assert f.read(65536) == bytes(65536), off
            f.seek(TiB - len(tail) - 100)
            assert f.read(1000) == bytes(100) + tail  # short: end of file
            f.seek(TiB + 5)
            assert f.read(10) == b""

    check()
    drive.remount()
    check()
    # The holes cost nothing in the store: only the two chunks written to, of
    # which the last holds the zeros from its start (1 MiB) up to the tail.
    drive.umount()
    assert store_bytes(drive.url, dict(drive.store_env)) < 1 * MiB + 64 * 1024
    drive.mount()
    # shrink it back, then write in the middle of the hole
    os.truncate(path, TiB // 2)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"middle", TiB // 4)
    finally:
        os.close(fd)
    drive.remount()
    assert os.stat(path).st_size == TiB // 2
    with open(path, "rb") as f:
        f.seek(TiB // 4 - 3)
        assert f.read(12) == bytes(3) + b"middle" + bytes(3)
        f.seek(TiB // 2 - 10)
        assert f.read(100) == bytes(10)
    fsck_clean(drive)


ENTRIES = 100_000


def _create_entries(folder: str, first: int, count: int) -> None:
    """Child process: create empty files ``e<i>`` with open/close, like touch."""
    for i in range(first, first + count):
        os.close(os.open(os.path.join(folder, f"e{i:06d}"), os.O_CREAT | os.O_WRONLY, 0o644))


def _timed(what: str, times: dict[str, float], fn: Callable[..., T], *args: object) -> T:
    start = time.monotonic()
    result = fn(*args)
    times[what] = time.monotonic() - start
    return result


@pytest.fixture
def local_drive(tmp_path: Path) -> Iterator[Drive]:
    with mounted_drive(str(tmp_path / "store"), tmp_path, {}) as d:
        yield d


@pytest.mark.slow
def test_100000_entries_in_one_folder(local_drive: Drive) -> None:
    """Creating, listing and reloading one huge folder: the directory model and the
    kernel round trips, not the store (on SeaweedFS the same run takes about twice
    as long, most of it in the creation: see the figures it prints)."""
    drive = local_drive
    mp = drive.mountpoint
    big = mp / "big"
    big.mkdir()
    times: dict[str, float] = {}
    want = sorted(f"e{i:06d}" for i in range(ENTRIES))

    def create() -> None:
        procs = [
            SPAWN.Process(target=_create_entries, args=(str(big), k * ENTRIES // 2, ENTRIES // 2))
            for k in range(2)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
            assert p.exitcode == 0

    _timed("create 100k files (2 processes)", times, create)
    names = _timed("list", times, os.listdir, big)
    assert sorted(names) == want
    sample = random.Random(5).sample(want, 20)

    def stat_sample() -> None:
        for n in sample[1:]:
            st = os.stat(big / n)
            assert st.st_nlink == 1

    _timed("stat 20", times, stat_sample)
    os.rename(big / sample[0], mp / "moved-out")
    (big / sample[1]).write_bytes(b"one file with content")
    _timed("unmount (commit)", times, drive.umount)
    _timed("mount", times, drive.mount)
    names = _timed("list after remount", times, os.listdir, big)
    assert sorted(names) == sorted(set(want) - {sample[0]})
    sample.pop(0)
    _timed("stat 20 after remount", times, stat_sample)
    assert (big / sample[0]).read_bytes() == b"one file with content"

    def ls() -> int:
        out = subprocess.run(["ls", "-f", big], capture_output=True, check=True).stdout
        return len(out.splitlines())

    assert _timed("ls -f", times, ls) == ENTRIES - 1  # megafs lists no "." and ".."
    _timed("fsck", times, fsck_clean, drive)
    print("\n".join(f"{what}: {t:.1f} s" for what, t in times.items()))


# --- concurrency --------------------------------------------------------------------------------

STORM_DIRS = 8
STORM_FILES = 300
STORM_SUBDIRS = 4


def storm_content(name: str) -> bytes:
    """The content of the file first called ``name``: it starts with that name, so
    it is recognisable wherever it ends up and under whatever name."""
    n = int(name.rsplit("-", 1)[1])
    size = (0, 100, 3000, 70_000, MiB + 5)[n % 5]
    return (name.encode() + b"|") * max(1, size // (len(name) + 1)) + b"!"


def _storm(root: str, seed: int, moves: int, out: multiprocessing.queues.Queue[str]) -> None:
    """Child process: move random files and subfolders between the top folders."""
    rng = random.Random(seed)
    tops = [os.path.join(root, f"d{i}") for i in range(STORM_DIRS)]
    done = raced = 0
    for _ in range(moves):
        src_dir, dst_dir = rng.sample(tops, 2)
        try:
            names = os.listdir(src_dir)
        except FileNotFoundError:
            continue
        if not names:
            continue
        name = rng.choice(names)
        src, dst = os.path.join(src_dir, name), os.path.join(dst_dir, name)
        try:
            if rng.random() < 0.15 and not name.startswith("s"):
                # swap two files of different folders: the names stay, the files move
                others = [n for n in os.listdir(dst_dir) if not n.startswith("s")]
                if not others:
                    continue
                other = os.path.join(dst_dir, rng.choice(others))
                renameat2(src.encode(), other.encode(), RENAME_EXCHANGE)
            elif name.startswith("s") and rng.random() < 0.5:
                # a subfolder into another subfolder (never into itself)
                inner = [n for n in os.listdir(dst_dir) if n.startswith("s") and n != name]
                if inner:
                    dst = os.path.join(dst_dir, rng.choice(inner), name)
                os.rename(src, dst)
            else:
                os.rename(src, dst)
            done += 1
        except OSError as e:
            # Another process moved it first, or a folder move would nest a
            # subfolder into itself: both are fine, anything else is not.
            if e.errno not in (errno.ENOENT, errno.EINVAL, errno.ENOTEMPTY, errno.EEXIST):
                out.put(f"error {e!r}")
                return
            raced += 1
    out.put(f"ok {done} {raced}")


@pytest.mark.slow
def test_rename_storm_across_folders(drive: Drive) -> None:
    mp = drive.mountpoint
    root = mp / "storm"
    names: list[str] = []
    for i in range(STORM_DIRS):
        (root / f"d{i}").mkdir(parents=True)
    for j in range(STORM_SUBDIRS):
        sub = root / f"d{j}" / f"s-{j}"
        sub.mkdir()
        for k in range(5):
            name = f"in-{j * 5 + k}"
            (sub / name).write_bytes(storm_content(name))
            names.append(name)
    for k in range(STORM_FILES):
        name = f"f-{k}"
        (root / f"d{k % STORM_DIRS}" / name).write_bytes(storm_content(name))
        names.append(name)
    drive.remount()  # the storm meets committed, partly uncached state

    out: multiprocessing.queues.Queue[str] = SPAWN.Queue()
    procs = [SPAWN.Process(target=_storm, args=(str(root), s, 400, out)) for s in range(6)]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(r.startswith("ok") for r in results), results
    moved = sum(int(r.split()[1]) for r in results)
    print(f"moves done and raced, per process: {results}")
    assert moved > 1000, results

    def check() -> None:
        where: dict[str, list[str]] = {}
        origins: list[str] = []
        subdirs = 0
        for dirpath, dirnames, filenames in os.walk(root):
            subdirs += sum(1 for d in dirnames if d.startswith("s-"))
            for f in filenames:
                where.setdefault(f, []).append(dirpath)
                data = Path(dirpath, f).read_bytes()
                origin = data.split(b"|", 1)[0].decode()
                assert data == storm_content(origin), f"{dirpath}/{f}: torn or mixed content"
                origins.append(origin)
        assert subdirs == STORM_SUBDIRS
        twice = {f: d for f, d in where.items() if len(d) != 1}
        assert not twice, f"names seen more than once: {twice}"
        assert sorted(where) == sorted(names)
        assert sorted(origins) == sorted(names), "a file was lost or duplicated"
        # link counts of folders: 2 + subfolders
        for dirpath, dirnames, _ in os.walk(root):
            assert os.stat(dirpath).st_nlink == 2 + len(dirnames), dirpath

    check()
    drive.remount()
    check()
    fsck_clean(drive)


def test_folder_into_its_own_subtree_is_refused(drive: Drive) -> None:
    mp = drive.mountpoint
    (mp / "a" / "b" / "c").mkdir(parents=True)
    (mp / "a" / "b" / "c" / "f").write_bytes(b"f")
    (mp / "x").mkdir()
    for src, dst in [
        ("a", "a/inside"),
        ("a", "a/b/c/inside"),
        ("a/b", "a/b/c/inside"),
        ("a", "a/b"),  # onto its own child: also EINVAL (the source is an ancestor)
    ]:
        assert errno_of(os.rename, mp / src, mp / dst) == errno.EINVAL, (src, dst)
    # a folder onto one of its ancestors: that target is not empty
    assert errno_of(os.rename, mp / "a" / "b" / "c", mp / "a") == errno.ENOTEMPTY
    assert errno_of(renameat2, mp / "a", mp / "a" / "b", RENAME_EXCHANGE) == errno.EINVAL
    assert errno_of(renameat2, mp / "a" / "b", mp / "a", RENAME_EXCHANGE) == errno.EINVAL
    os.rename(mp / "a" / "b", mp / "x" / "b")  # a legal move still works

    def check() -> None:
        assert sorted(p.name for p in mp.iterdir()) == ["a", "x"]
        assert os.listdir(mp / "a") == []
        assert (mp / "x" / "b" / "c" / "f").read_bytes() == b"f"
        assert [os.stat(mp / d).st_nlink for d in ("a", "x", "x/b")] == [2, 3, 3]

    check()
    drive.remount()
    check()
    fsck_clean(drive)


def pattern(offset: int, length: int) -> bytes:
    """The bytes at [offset, offset + length) of a file made of 8-byte big-endian
    offsets: any byte read from the wrong place, or zeros, show."""
    first, last = offset // 8, (offset + length + 7) // 8
    words = struct.pack(f">{last - first}Q", *range(first * 8, last * 8, 8))
    return words[offset - first * 8 : offset - first * 8 + length]


GROW_TO = 12 * MiB + 12345


def _grow(path: str, seed: int, done: str) -> None:
    """Child process: append the pattern in uneven pieces up to GROW_TO bytes."""
    rng = random.Random(seed)
    with open(path, "ab", buffering=0) as f:
        pos = 0
        while pos < GROW_TO:
            n = min(GROW_TO - pos, rng.choice([1, 7, 100, 4096, 65536, 200_000, 1 << 20]))
            assert f.write(pattern(pos, n)) == n
            pos += n
            if rng.random() < 0.05:
                os.fsync(f.fileno())  # (one PUT: give the readers time to race it)
                time.sleep(0.01)
            if rng.random() < 0.3:
                time.sleep(0.002)
    Path(done).write_text("done")


def _read_growing(
    path: str, done: str, reopen: bool, out: multiprocessing.queues.Queue[str]
) -> None:
    """Child process: read to EOF over and over until the writer is done; check every byte."""
    sizes = set()
    total = 0
    f = open(path, "rb", buffering=0)  # noqa: SIM115 - reopened in the loop
    try:
        pos = 0
        finished = False
        while True:
            finished = os.path.exists(done)  # checked before reading: the last pass sees all
            if reopen:
                f.close()
                f = open(path, "rb", buffering=0)  # noqa: SIM115
                f.seek(pos)
            while chunk := f.read(300_000):
                want = pattern(pos, len(chunk))
                if chunk != want:
                    bad = next(i for i in range(len(chunk)) if chunk[i] != want[i])
                    out.put(f"wrong bytes at offset {pos + bad} (read of {len(chunk)} at {pos})")
                    return
                pos += len(chunk)
                total += len(chunk)
            sizes.add(pos)
            if finished:
                break
            if reopen and len(sizes) % 3 == 0:
                pos = random.randrange(0, pos + 1)  # sometimes read an old part again
    finally:
        f.close()
    out.put(f"ok {pos} {len(sizes)} {total}")


def test_file_growing_while_read(drive: Drive, tmp_path: Path) -> None:
    # commits every 0.2 s: reads race chunk uploads and commit snapshots
    drive.remount("--commit-interval", "0.2")
    path = str(drive.mountpoint / "growing")
    Path(path).write_bytes(b"")
    done = str(tmp_path / "writer-done")
    out: multiprocessing.queues.Queue[str] = SPAWN.Queue()
    readers = [
        SPAWN.Process(target=_read_growing, args=(path, done, reopen, out))
        for reopen in (False, True)
    ]
    writer = SPAWN.Process(target=_grow, args=(path, 3, done))
    for p in readers:
        p.start()
    writer.start()
    writer.join(timeout=300)
    assert writer.exitcode == 0
    results = [out.get(timeout=300) for _ in readers]
    for p in readers:
        p.join(timeout=60)
    assert all(r.startswith("ok") for r in results), results
    print(f"readers (end, passes, bytes read): {results}")
    for r in results:
        _, end, passes, _ = r.split()
        assert int(end) == GROW_TO
        assert int(passes) > 2, f"the reader did not race the writer: {r}"
    drive.remount()
    with open(path, "rb") as f:
        assert f.read() == pattern(0, GROW_TO)
    fsck_clean(drive)

