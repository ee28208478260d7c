"""megafs mounted for real: a daemon in a subprocess, driven by ordinary tools.

Every test runs on a local-folder store and on SeaweedFS S3
(``any_store_url``). Each mounts through ``megafs mount`` (which returns only
once the folder is usable), works through the kernel with cp, tar, rsync,
git, sqlite, mmap and plain system calls, and usually unmounts and mounts
again before checking, so what is checked is what reached the store (or the
journal), not the kernel's caches. The ``drive`` fixture always unmounts,
whatever happened, and fails the test if the daemon logged a warning or
error; a failed test shows the daemon's log.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import hashlib
import mmap
import os
import re
import shlex
import socket
import stat
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
import trio

from megafs.stores import open_store

from ..support.mounting import (
    Drive,
    assert_same_tree,
    make_tree,
    marker_forms,
    mounts_of,
    one_error_line,
    process_gone,
    sha256_file,
    walk,
)
from ..support.seaweed import signed_request

pytestmark = pytest.mark.fuse

MiB = 1 << 20
GiB = 1 << 30


# --- renameat2 -------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint,
]
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(old), None, str(new))


#: A POSIX ACL xattr value equivalent to mode 0644: version 2, then (tag, perm, id)
#: for the owner (rw-), the group (r--) and others (r--).
ACL_644 = bytes.fromhex("02000000" + "01000600ffffffff" + "04000400ffffffff" + "20000400ffffffff")


# --- copying trees -------------------------------------------------------------------


def test_cp_a_tree_survives_remount(drive: Drive, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    dst = drive.mountpoint / "tree"
    drive.sh("cp", "-a", src, dst)
    assert_same_tree(src, dst)

    drive.remount()
    drive.sh("diff", "-r", "--no-dereference", src, dst)
    assert_same_tree(src, dst)
    # The hard links are one inode in the mount too.
    a, b = os.stat(dst / "hard1"), os.stat(dst / "sub" / "deeper" / "hard3")
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 3)
    # cp -a sets modes through the access ACL when the filesystem takes one;
    # megafs has no ACLs and refuses them, so cp falls back to chmod. (Stored and
    # ignored, they once left every mode at 0600/0700.)
    with pytest.raises(OSError) as exc:
        os.setxattr(dst / "small.txt", "system.posix_acl_access", ACL_644)
    assert exc.value.errno == errno.EOPNOTSUPP
    # ... and answers "not supported" when asked, so that ls -l stops asking
    with pytest.raises(OSError) as exc:
        os.getxattr(dst / "small.txt", "system.posix_acl_access")
    assert exc.value.errno == errno.EOPNOTSUPP


def test_tar_into_and_out_of_the_mount(drive: Drive, tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    make_tree(src)
    into = drive.mountpoint / "t"
    into.mkdir()
    out.mkdir()
    tar = "tar --format=posix --xattrs --xattrs-include='user.*'"

    def pipe(a: Path, b: Path) -> None:
        drive.sh(
            "bash",
            "-c",
            f"set -o pipefail; {tar} -C {shlex.quote(str(a))} -cf - . "
            f"| {tar} -C {shlex.quote(str(b))} -xpf -",
        )

    pipe(src, into)
    drive.remount()
    assert_same_tree(src, into)
    pipe(into, out)
    assert_same_tree(src, out)


_ITEMIZED = re.compile(r"^[<>ch.*][fdLDS]\S{9} ", re.MULTILINE)


def test_rsync_twice_transfers_nothing_the_second_time(drive: Drive, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    dst = drive.mountpoint / "r"

    def rsync() -> str:
        args = ["rsync", "-aHX", "--stats", "--itemize-changes", f"{src}/", f"{dst}/"]
        return drive.sh(*args).stdout.decode()

    first = rsync()
    assert "Number of regular files transferred: 0" not in first
    assert _ITEMIZED.search(first)
    second = rsync()
    assert "Number of regular files transferred: 0" in second, second
    assert not _ITEMIZED.findall(second), second
    drive.remount()
    third = rsync()
    assert "Number of regular files transferred: 0" in third, third
    assert not _ITEMIZED.findall(third), third
    assert_same_tree(src, dst)


# --- renames and removal ----------------------------------------------------------------


def test_renames(drive: Drive) -> None:
    mp = drive.mountpoint
    a, b = mp / "a", mp / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_bytes(b"x")
    (a / "y").write_bytes(b"y")
    (b / "z").write_bytes(b"z")

    os.rename(a / "x", a / "y")  # over an existing file, same folder
    assert not (a / "x").exists()
    assert (a / "y").read_bytes() == b"x"
    os.replace(a / "y", b / "z")  # over an existing file, across folders
    assert os.listdir(a) == []
    assert (b / "z").read_bytes() == b"x"

    # A folder with contents moves across folders; link counts follow.
    (a / "d" / "e").mkdir(parents=True)
    (a / "d" / "e" / "f").write_bytes(b"deep")
    assert os.stat(a).st_nlink == 3
    os.rename(a / "d", b / "d")
    assert (os.stat(a).st_nlink, os.stat(b).st_nlink) == (2, 3)
    assert (b / "d" / "e" / "f").read_bytes() == b"deep"
    # Over an empty folder: fine. Over a non-empty one, or into itself: refused.
    (a / "empty").mkdir()
    os.rename(b / "d", a / "empty")
    assert (a / "empty" / "e" / "f").read_bytes() == b"deep"
    (b / "full").mkdir()
    (b / "full" / "file").write_bytes(b"")
    with pytest.raises(OSError) as exc:
        os.rename(a / "empty", b / "full")
    assert exc.value.errno in (errno.ENOTEMPTY, errno.EEXIST)
    with pytest.raises(OSError) as exc:
        os.rename(a / "empty", a / "empty" / "e" / "inside")
    assert exc.value.errno == errno.EINVAL

    # RENAME_NOREPLACE: EEXIST onto an existing name, a plain rename otherwise.
    (a / "p").write_bytes(b"p")
    with pytest.raises(OSError) as exc:
        renameat2(a / "p", b / "z", RENAME_NOREPLACE)
    assert exc.value.errno == errno.EEXIST
    assert (a / "p").read_bytes() == b"p"
    assert (b / "z").read_bytes() == b"x"
    renameat2(a / "p", b / "q", RENAME_NOREPLACE)
    assert not (a / "p").exists()
    assert (b / "q").read_bytes() == b"p"

    # RENAME_EXCHANGE: two files swap; a file and a folder swap across folders.
    renameat2(b / "q", b / "z", RENAME_EXCHANGE)
    assert ((b / "q").read_bytes(), (b / "z").read_bytes()) == (b"x", b"p")
    renameat2(b / "q", a / "empty", RENAME_EXCHANGE)
    assert (a / "empty").read_bytes() == b"x"
    assert (b / "q" / "e" / "f").read_bytes() == b"deep"
    assert (os.stat(a).st_nlink, os.stat(b).st_nlink) == (2, 4)
    with pytest.raises(OSError) as exc:
        renameat2(b / "z", b / "missing", RENAME_EXCHANGE)
    assert exc.value.errno == errno.ENOENT

    expected = {
        "a": {"empty": b"x"},
        "b": {"z": b"p", "q/e/f": b"deep", "full/file": b""},
    }

    def check() -> None:
        for top, files in expected.items():
            found = {
                str(p.relative_to(mp / top)): p.read_bytes() for p in walk(mp / top) if p.is_file()
            }
            assert found == files
        assert (os.stat(a).st_nlink, os.stat(b).st_nlink) == (2, 4)

    check()
    drive.remount()
    check()


def test_rm_rf(drive: Drive) -> None:
    mp = drive.mountpoint
    top = mp / "doomed"
    for i in range(10):
        d = top / f"d{i}" / "inner"
        d.mkdir(parents=True)
        for j in range(15):
            (d / f"f{j}").write_bytes(os.urandom(j * 1000))
        os.symlink("inner/f0", top / f"d{i}" / "link")
    (mp / "kept").write_bytes(b"kept")
    os.chmod(top / "d3", 0o500)  # root removes it anyway
    drive.sh("rm", "-rf", top)
    assert sorted(os.listdir(mp)) == ["kept"]
    assert os.stat(mp).st_nlink == 2
    drive.remount()
    assert sorted(os.listdir(mp)) == ["kept"]
    assert os.stat(mp).st_nlink == 2
    drive.umount()
    info = drive.megafs("info", drive.url)
    assert info.returncode == 0, info.stderr
    assert re.search(r"^files:\s+1$", info.stdout, re.MULTILINE), info.stdout
    drive.mount()


# --- applications ---------------------------------------------------------------------


def test_git(drive: Drive) -> None:
    repo = drive.mountpoint / "repo"
    repo.mkdir()

    def git(*args: str) -> str:
        cfg = ["-c", "user.name=Test", "-c", "user.email=test@example.com"]
        return drive.sh("git", *cfg, *args, cwd=repo).stdout.decode()

    git("init", "-q", "-b", "main")
    (repo / "README").write_text("hello\n")
    (repo / "src").mkdir()
    for i in range(30):
        (repo / "src" / f"m{i}.py").write_text(f"x = {i}\n" * (i + 1))
    (repo / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(repo / "run.sh", 0o755)
    os.symlink("README", repo / "link")
    git("add", "-A")
    git("commit", "-q", "-m", "first")
    git("mv", "src/m0.py", "src/moved.py")
    git("rm", "-q", "src/m1.py")
    (repo / "README").write_text("hello again\n")
    git("commit", "-q", "-a", "-m", "second")
    assert git("status", "--porcelain") == ""
    assert git("log", "--format=%s").split() == ["second", "first"]

    drive.remount()
    # No stat change either (inode numbers, ctime, mtime all persisted).
    git("diff-files", "--quiet")
    assert git("status", "--porcelain") == ""
    git("fsck", "--full", "--strict", "--no-progress")
    git("gc", "-q")
    git("fsck", "--full", "--strict", "--no-progress")
    assert git("log", "--format=%s").split() == ["second", "first"]
    assert (repo / "README").read_text() == "hello again\n"


def test_sqlite(drive: Drive) -> None:
    import sqlite3

    path = drive.mountpoint / "db" / "test.sqlite"
    path.parent.mkdir()
    db = sqlite3.connect(path, isolation_level=None)  # autocommit: one transaction each
    try:
        assert db.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, n INTEGER)")
        for i in range(2000):
            db.execute("INSERT INTO t (v, n) VALUES (?, ?)", (f"row {i} " * 8, i))
        for i in range(1, 1001):
            db.execute("UPDATE t SET n = n + 1000000 WHERE id = ?", (i,))
        db.execute("DELETE FROM t WHERE id % 10 = 0")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # The rollback journal with full fsyncs: every commit reaches the store.
        assert db.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
        db.execute("PRAGMA synchronous=FULL")
        for i in range(50):
            db.execute("INSERT INTO t (v, n) VALUES (?, ?)", ("durable", -i))
    finally:
        db.close()

    drive.remount()
    db = sqlite3.connect(path, isolation_level=None)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("SELECT count(*) FROM t").fetchone() == (2050 - 200,)
        assert db.execute("SELECT count(*) FROM t WHERE n >= 1000000").fetchone() == (900,)
        assert db.execute("SELECT count(*) FROM t WHERE v = 'durable'").fetchone() == (50,)
        assert db.execute("SELECT sum(n) FROM t WHERE n < 1000000").fetchone() == (
            sum(i for i in range(1000, 2000) if (i + 1) % 10) - sum(range(50)),
        )
    finally:
        db.close()


# --- mmap, truncate, sparse files ------------------------------------------------------


def test_mmap_truncate_and_sparse(drive: Drive) -> None:
    mp = drive.mountpoint
    size = 3 * 65536 + 100
    data = bytearray(os.urandom(size))
    mm_path = mp / "mapped"
    mm_path.write_bytes(data)
    with open(mm_path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        assert m[:] == data
        for off, patch in ((10, b"a" * 10), (65530, b"across a block"), (size - 5, b"tail!")):
            m[off : off + len(patch)] = patch
            data[off : off + len(patch)] = patch
        m.flush()
    assert mm_path.read_bytes() == data

    tr = mp / "truncated"
    tr.write_bytes(b"x" * 100_000)
    os.truncate(tr, 300_000)  # grow: zeros
    os.truncate(tr, 70_000)  # shrink
    with open(tr, "r+b") as f:
        os.ftruncate(f.fileno(), 90_000)  # grow again: the cut bytes must not come back
        f.seek(0, os.SEEK_END)
        f.write(b"end")
    tr_expected = b"x" * 70_000 + bytes(20_000) + b"end"
    assert tr.read_bytes() == tr_expected
    empty = mp / "emptied"
    empty.write_bytes(b"y" * 5000)
    os.truncate(empty, 0)

    sparse = mp / "sparse"
    far = 3 * GiB + 12345
    with open(sparse, "wb") as w:
        w.write(b"head")
        w.seek(far)
        w.write(b"far away")

    def check() -> None:
        assert mm_path.read_bytes() == data
        with open(mm_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            assert m[:] == data
        assert tr.read_bytes() == tr_expected
        assert empty.stat().st_size == 0
        assert sparse.stat().st_size == far + 8
        with open(sparse, "rb") as f:
            assert f.read(4) == b"head"
            for off in (4, MiB - 3, GiB, far - MiB):
                f.seek(off)
                assert f.read(MiB) == bytes(MiB)
            f.seek(far - 2)
            assert f.read() == b"\0\0far away"

    check()
    drive.remount()
    check()
    # Writing through a shared mapping after a remount reaches the file too.
    with open(mm_path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        m[0:5] = b"again"
        data[0:5] = b"again"
        m.flush()
    drive.remount()
    check()


# --- volume and concurrency -----------------------------------------------------------


def _big_chunk(buf: memoryview, i: int) -> bytes:
    """MiB number ``i`` of the big file: a counter, then 16 MiB of random bytes cycled."""
    start = (i % 16) * MiB
    return i.to_bytes(8, "big") + bytes(buf[start + 8 : start + MiB])


def test_one_gib_file(drive: Drive) -> None:
    buf = memoryview(os.urandom(16 * MiB))
    path = drive.mountpoint / "big"
    want = hashlib.sha256()
    t0 = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(GiB // MiB):
            chunk = _big_chunk(buf, i)
            want.update(chunk)
            assert os.write(fd, chunk) == MiB
    finally:
        os.close(fd)
    t1 = time.monotonic()
    drive.remount()
    t2 = time.monotonic()
    assert path.stat().st_size == GiB
    assert sha256_file(path) == want.hexdigest()
    t3 = time.monotonic()
    print(f"1 GiB: write {t1 - t0:.1f} s, umount+mount {t2 - t1:.1f} s, read {t3 - t2:.1f} s")


_WRITER = """
import hashlib, sys
path, seed, size = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
block = hashlib.sha256(seed).digest() * 2048
with open(path, "wb") as f:
    for i in range(size // len(block)):
        f.write(i.to_bytes(8, "big") + block[8:])
"""


def _writer_content(seed: str, size: int) -> bytes:
    block = hashlib.sha256(seed.encode()).digest() * 2048
    return b"".join(i.to_bytes(8, "big") + block[8:] for i in range(size // len(block)))


def test_eight_parallel_writers(drive: Drive) -> None:
    mp = drive.mountpoint
    (mp / "shared").mkdir()
    size = 16 * MiB
    jobs = {}
    for n in range(8):
        folder = mp / "shared" if n % 2 else mp / f"own{n}"
        folder.mkdir(exist_ok=True)
        jobs[folder / f"file{n}"] = f"writer {n}"
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), seed, str(size)])
        for path, seed in jobs.items()
    ]
    try:
        for p in procs:
            assert p.wait(timeout=300) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def check() -> None:
        for path, seed in jobs.items():
            assert path.stat().st_size == size
            assert sha256_file(path) == hashlib.sha256(_writer_content(seed, size)).hexdigest()

    check()
    drive.remount()
    check()


_PEER = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR | (os.O_APPEND if sys.argv[2] == "append" else 0))
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "w":
        os.pwrite(fd, bytes.fromhex(args[1]), int(args[0]))
        out = "ok"
    elif cmd == "a":
        os.write(fd, bytes.fromhex(args[0]))
        out = "ok"
    elif cmd == "r":
        out = os.pread(fd, int(args[1]), int(args[0])).hex() or "-"
    else:
        break
    print(out, flush=True)
"""


class Peer:
    """Another process holding the same file open, driven line by line."""

    def __init__(self, path: Path, mode: str = "rw") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PEER, str(path), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def write(self, off: int, data: bytes) -> None:
        assert self.ask(f"w {off} {data.hex()}") == "ok"

    def append(self, data: bytes) -> None:
        assert self.ask(f"a {data.hex()}") == "ok"

    def read(self, off: int, size: int) -> bytes:
        answer = self.ask(f"r {off} {size}")
        return b"" if answer == "-" else bytes.fromhex(answer)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0


def test_processes_sharing_a_file_see_each_others_writes(drive: Drive) -> None:
    path = drive.mountpoint / "shared"
    path.write_bytes(b"")
    peer = Peer(path)
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, b"from the test", 0)
        assert peer.read(0, 100) == b"from the test"
        peer.write(200_000, b"from the peer")
        assert os.fstat(fd).st_size == 200_013
        assert os.pread(fd, 13, 200_000) == b"from the peer"
        os.pwrite(fd, b"THE", 5)
        assert peer.read(0, 13) == b"from THE test"
        assert peer.read(100, 100) == bytes(100)
    finally:
        os.close(fd)
        peer.close()

    log = drive.mountpoint / "log"
    log.write_bytes(b"")
    peers = [Peer(log, "append") for _ in range(2)]
    try:
        for i in range(50):
            peers[i % 2].append(f"line {i} from peer {i % 2}\n".encode())
        assert peers[0].read(0, 10_000) == peers[1].read(0, 10_000)
    finally:
        for p in peers:
            p.close()
    want = "".join(f"line {i} from peer {i % 2}\n" for i in range(50))
    assert log.read_text() == want
    drive.remount()
    assert log.read_text() == want
    assert (drive.mountpoint / "shared").read_bytes()[:13] == b"from THE test"


def test_unlinked_file_lives_while_open(drive: Drive) -> None:
    mp = drive.mountpoint
    path = mp / "victim"
    data = bytearray(os.urandom(300_000))
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.unlink(path)
        assert not path.exists()
        assert os.listdir(mp) == []
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, len(data), 0) == data
        os.pwrite(fd, b"still writable", 1000)
        data[1000:1014] = b"still writable"
        # A commit (any fsync) while it is open and unlinked does not lose it.
        other = mp / "other"
        with open(other, "wb") as f:
            f.write(b"other")
            f.flush()
            os.fsync(f.fileno())
        # A new file of the same name is a different file.
        path.write_bytes(b"new")
        assert os.pread(fd, len(data) + 10, 0) == data
        assert os.fstat(fd).st_size == len(data)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"new"
    drive.umount()
    info = drive.megafs("info", drive.url)
    assert info.returncode == 0, info.stderr
    assert re.search(r"^files:\s+2$", info.stdout, re.MULTILINE), info.stdout
    drive.mount()
    assert sorted(os.listdir(mp)) == ["other", "victim"]
    assert path.read_bytes() == b"new"


# --- what the store holds -----------------------------------------------------------


def _s3_blobs(url: str, env: dict[str, str]) -> dict[str, bytes]:
    """Every object and pointer under the vault's prefix, by raw key.

    The raw listing (signed by hand) shows every key; objects are then read
    with ``Store.get`` and pointers with ``Store.read_pointer``, and nothing
    else may be there.
    """
    parts = urlsplit(url)
    bucket, prefix = parts.netloc, parts.path.strip("/") + "/"
    endpoint = env["MEGAFS_S3_ENDPOINT"]
    keys: list[str] = []
    token = ""
    while True:
        query = f"list-type=2&prefix={quote(prefix, safe='')}&max-keys=1000"
        if token:
            query += f"&continuation-token={quote(token, safe='')}"
        resp = signed_request(
            "GET",
            f"{endpoint}/{bucket}?{query}",
            env["AWS_ACCESS_KEY_ID"],
            env["AWS_SECRET_ACCESS_KEY"],
        )
        assert resp.status_code == 200, resp.text
        root = ET.fromstring(resp.content)
        keys += [item.findtext("{*}Key") or "" for item in root.iterfind("{*}Contents")]
        token = root.findtext("{*}NextContinuationToken") or ""
        if (root.findtext("{*}IsTruncated") or "").lower() != "true":
            break

    async def fetch() -> dict[str, bytes]:
        blobs: dict[str, bytes] = {}
        store = open_store(url, endpoint=endpoint)
        try:
            async for name, _size in store.list():
                blobs[f"{prefix}o/{name}"] = await store.get(name)
            for key in keys:
                if key.startswith(f"{prefix}p/"):
                    ptr = await store.read_pointer(key[len(prefix) + 2 :])
                    assert ptr is not None, key
                    blobs[key] = ptr.data
        finally:
            await store.aclose()
        return blobs

    blobs = trio.run(fetch)
    assert sorted(blobs) == sorted(keys), "the store holds keys that are neither object nor pointer"
    return blobs


def _local_blobs(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in walk(root) if p.is_file()}


def test_store_holds_no_plaintext(drive: Drive, any_store_url: tuple[str, dict[str, str]]) -> None:
    marker = ("SeCrEt" + os.urandom(12).hex()).encode()
    m = marker.decode()
    mp = drive.mountpoint
    d = mp / f"dir-{m}"
    d.mkdir()
    (d / f"small-{m}.txt").write_bytes(b"small " + marker)  # inline in its inode
    (d / f"medium-{m}").write_bytes((marker + b"\n") * 200)  # its own body object
    (d / f"large-{m}").write_bytes((b"x" * 1000 + marker) * 3000)  # chunks
    (d / ("long-" + m * 6)[:255]).write_bytes(b"")
    os.symlink(f"target-{m}", d / f"link-{m}")
    os.setxattr(d / f"small-{m}.txt", f"user.{m}", marker)
    os.mkdir(d / f"sub-{m}")
    os.rename(d / f"sub-{m}", mp / f"moved-{m}")
    drive.umount()

    url, env = any_store_url
    blobs = _s3_blobs(url, env) if url.startswith("s3://") else _local_blobs(Path(url))
    assert len(blobs) > 3
    # The client's local cache (content cache and journal) is encrypted as well.
    local = {
        f"{where.name}/{k}": v
        for where in (drive.cache_dir, drive.state_dir)
        for k, v in _local_blobs(where).items()
    }
    forms = marker_forms(marker)
    assert all(any(f in enc(b"12" + marker) for f in forms) for enc in (bytes, base64.b64encode))
    leaks = [
        name
        for name, data in {**blobs, **local}.items()
        for form in forms
        if form in data or form in name.encode()
    ]
    assert not leaks, f"plaintext found in {sorted(set(leaks))}"
    drive.mount()
    assert (mp / f"dir-{m}" / f"small-{m}.txt").read_bytes() == b"small " + marker


# --- mount failures -------------------------------------------------------------------------


def _assert_nothing_left(drive: Drive, proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    line = one_error_line(proc)
    assert proc.stdout == ""
    assert not mounts_of(drive.mountpoint)
    pid = drive.pid()
    assert pid is None or process_gone(pid), f"daemon {pid} left running"
    return line


def test_mount_errors(tmp_path: Path, any_store_url: tuple[str, dict[str, str]]) -> None:
    url, env = any_store_url
    drive = Drive(url, tmp_path, env)
    try:
        drive.init()
        proc = drive.try_mount(env={"MEGAFS_PASSPHRASE": "not the passphrase"})
        assert "passphrase" in _assert_nothing_left(drive, proc, 3).lower()

        missing = tmp_path / "missing"
        proc = drive.megafs("mount", url, str(missing), "--cache-dir", str(drive.cache_dir))
        assert proc.returncode == 14, proc.stderr
        one_error_line(proc)
        assert not missing.exists()
        assert not mounts_of(missing)

        drive.mount()
        (drive.mountpoint / "f").write_bytes(b"still here")
        proc = drive.try_mount()
        assert proc.returncode == 14, proc.stderr
        assert "already mounted" in one_error_line(proc)
        assert len(mounts_of(drive.mountpoint)) == 1
        assert (drive.mountpoint / "f").read_bytes() == b"still here"
        drive.umount()
        assert not mounts_of(drive.mountpoint)
    finally:
        drive.cleanup()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_mount_unreachable_store(tmp_path: Path) -> None:
    drive = Drive("s3://no-such-host-bucket/prefix", tmp_path)
    env = {
        "MEGAFS_S3_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
        "AWS_ACCESS_KEY_ID": "unused",
        "AWS_SECRET_ACCESS_KEY": "unused",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_CONFIG_FILE": os.devnull,
    }
    try:
        t0 = time.monotonic()
        proc = drive.try_mount(env=env)
        assert time.monotonic() - t0 < 45
        assert "unreachable" in _assert_nothing_left(drive, proc, 7)
        # A local store folder that does not exist (any more) is "no such folder".
        drive.url = str(tmp_path / "gone")
        proc = drive.try_mount()
        _assert_nothing_left(drive, proc, 9)
    finally:
        drive.cleanup()


# --- a killed daemon -------------------------------------------------------------------------


def _files_under(root: Path) -> dict[str, tuple[int, int, int, bytes | str]]:
    """rel path -> (mode, nlink, mtime, content or symlink target) for all below ``root``."""
    out: dict[str, tuple[int, int, int, bytes | str]] = {}
    for p in walk(root):
        st = os.lstat(p)
        what: bytes | str
        if p.is_symlink():
            what = os.readlink(p)
        elif p.is_dir():
            what = ""
        else:
            what = p.read_bytes()
        out[str(p.relative_to(root))] = (st.st_mode, st.st_nlink, st.st_mtime_ns, what)
    return out


def test_killed_daemon_loses_nothing_it_acknowledged(drive: Drive) -> None:
    # No background commit: everything below lives only in memory and the journal.
    drive.remount("--commit-interval", "3600")
    mp = drive.mountpoint
    (mp / "d" / "e").mkdir(parents=True)
    for i in range(20):
        (mp / "d" / f"f{i}").write_bytes(os.urandom(i * 997))
    (mp / "d" / "big").write_bytes(os.urandom(5 * MiB + 3))
    with open(mp / "d" / "big", "r+b") as f:
        f.seek(MiB)
        f.write(b"overwritten in the middle")
    os.rename(mp / "d" / "f1", mp / "d" / "e" / "renamed")
    os.unlink(mp / "d" / "f2")
    os.chmod(mp / "d" / "f3", 0o600)
    os.symlink("f4", mp / "d" / "link")
    os.link(mp / "d" / "f5", mp / "d" / "e" / "f5-again")
    os.setxattr(mp / "d" / "f6", "user.x", b"xattr")
    os.truncate(mp / "d" / "f7", 100)
    os.truncate(mp / "d" / "f8", 50_000)
    before = _files_under(mp)

    drive.kill_daemon()
    drive.lazy_unmount()
    assert not mounts_of(mp)
    drive.mount()  # same cache folder: its journal is replayed
    assert "applied" in drive.log_text()
    assert _files_under(mp) == before
    assert os.getxattr(mp / "d" / "f6", "user.x") == b"xattr"
    assert os.stat(mp / "d" / "f5").st_nlink == 2
    drive.remount()  # the replay was committed
    assert _files_under(mp) == before


def test_fsynced_data_survives_a_killed_daemon_without_its_cache(
    drive: Drive, tmp_path: Path
) -> None:
    drive.remount("--commit-interval", "3600")
    mp = drive.mountpoint
    data = os.urandom(3 * MiB + 5)
    (mp / "dir").mkdir()
    with open(mp / "dir" / "synced", "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    (mp / "unsynced").write_bytes(b"may be lost")

    drive.kill_daemon()
    drive.lazy_unmount()
    drive.mount(cache_dir=tmp_path / "fresh-cache")
    assert (mp / "dir" / "synced").read_bytes() == data
    drive.remount(cache_dir=tmp_path / "fresh-cache")
    assert (mp / "dir" / "synced").read_bytes() == data


def test_journal_of_another_cache_folder_is_not_replayed(drive: Drive, tmp_path: Path) -> None:
    """Cache A's journal outlives a mount with cache B; A must not replay it on top."""
    drive.remount("--commit-interval", "3600")
    mp = drive.mountpoint
    with open(mp / "a", "wb") as f:
        f.write(b"synced")
        f.flush()
        os.fsync(f.fileno())
    (mp / "b").write_bytes(b"unsynced: only in cache A's journal")
    drive.kill_daemon()
    drive.lazy_unmount()

    drive.mount(cache_dir=tmp_path / "cache-b")
    assert sorted(os.listdir(mp)) == ["a"]
    (mp / "c").write_bytes(b"written with cache B")
    (mp / "d").write_bytes(b"d")
    drive.umount()

    drive.allowed_log.append("kept in")
    drive.mount()  # cache A again: its journal continues a root that is gone
    assert sorted(os.listdir(mp)) == ["a", "c", "d"]
    assert [(mp / n).read_bytes() for n in ("a", "c", "d")] == [
        b"synced",
        b"written with cache B",
        b"d",
    ]
    assert len({os.stat(mp / n).st_ino for n in ("a", "c", "d")}) == 3
    # Not replayed, but not thrown away either.
    assert any(p.name.endswith(".stale") for p in (drive.cache_dir / "journal").iterdir())


def test_each_client_is_a_device_of_the_vault(drive: Drive, tmp_path: Path) -> None:
    """Every writable mount registers its client (its local state) as a device
    of the vault, named by ``--device-name`` or ``-o device_name=``; each
    device's inode numbers are in its own range, and ``info`` lists them."""
    (drive.mountpoint / "one").write_text("first")
    drive.remount("--device-name", "laptop")  # the same client: renamed, not a new device
    (drive.mountpoint / "two").write_text("second")
    drive.umount()
    other = Drive(drive.url, tmp_path / "other", drive.store_env)
    try:
        other.mount("-o", "device_name=desktop")
        assert (other.mountpoint / "two").read_text() == "second"
        (other.mountpoint / "three").write_text("third")
        ranges = {p.name: p.stat().st_ino >> 40 for p in other.mountpoint.iterdir()}
        assert ranges == {"one": 1, "two": 1, "three": 2}
        other.umount()
    finally:
        other.cleanup()
    info = drive.megafs("info", drive.url)
    assert info.returncode == 0, info.stderr
    rows = [line.split(":", 1) for line in info.stdout.splitlines()]
    assert [v.strip().split("'")[1] for k, v in rows if k == "device"] == ["desktop", "laptop"]
    assert dict(rows)["root record"].strip().startswith("version 3")  # devices and history


def test_mount_helper_fstab_and_options(
    tmp_path: Path, any_store_url: tuple[str, dict[str, str]]
) -> None:
    """``mount -t fuse.megafs`` (the helper scripts/setup installs) and an fstab
    line, with ro, uid, gid, umask, allow_other and a passfile: each honoured."""
    url, env = any_store_url
    drive = Drive(url, tmp_path, env)
    helper = Path("/usr/sbin/mount.fuse.megafs")
    assert helper.is_file(), "scripts/setup installs the mount(8) helper"
    passfile = tmp_path / "vault.pass"
    passfile.write_text(drive.passphrase + "\n")
    mp = drive.mountpoint
    run_env = {k: v for k, v in drive.env().items() if k != "MEGAFS_PASSPHRASE"}
    try:
        drive.init()
        drive.mount()
        (mp / "dir").mkdir(mode=0o755)
        (mp / "dir" / "file").write_bytes(b"written before the read-only mount\n")
        os.chmod(mp / "dir" / "file", 0o644)
        drive.umount()

        opts = f"passfile={passfile},ro,uid=1234,gid=2345,umask=027,allow_other"
        proc = subprocess.run(
            ["mount", "-t", "fuse.megafs", url, str(mp), "-o", opts],
            env=run_env, capture_output=True, text=True, timeout=120, check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert os.path.ismount(mp)
        line = mounts_of(mp)[0]
        assert " fuse.megafs " in line and "allow_other" in line and "ro," in line, line
        assert "default_permissions" in line, line
        st = os.stat(mp / "dir" / "file")
        assert (st.st_uid, st.st_gid) == (1234, 2345)
        assert stat.S_IMODE(st.st_mode) == 0o640  # 0644 under umask 027
        assert stat.S_IMODE(os.stat(mp / "dir").st_mode) == 0o750
        assert (mp / "dir" / "file").read_bytes() == b"written before the read-only mount\n"
        with pytest.raises(OSError) as e:
            (mp / "new").write_bytes(b"x")
        assert e.value.errno == errno.EROFS
        proc = drive.megafs("umount", str(mp))
        assert proc.returncode == 0, proc.stderr
        assert not os.path.ismount(mp)

        # The same from an fstab line (mount -T names an fstab file of our own).
        fstab = tmp_path / "fstab"
        fstab.write_text(f"{url}  {mp}  fuse.megafs  passfile={passfile},uid=1234,nofail  0 0\n")
        proc = subprocess.run(
            ["mount", "-T", str(fstab), str(mp)],
            env=run_env, capture_output=True, text=True, timeout=120, check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert os.stat(mp / "dir" / "file").st_uid == 1234
        (mp / "dir" / "from-fstab").write_bytes(b"writable this time\n")
        drive.umount()
        drive.mount()
        assert (mp / "dir" / "from-fstab").read_bytes() == b"writable this time\n"
        drive.umount()
    finally:
        drive.cleanup()
    problems = drive.log_problems()
    assert not problems, "\n".join(problems)
