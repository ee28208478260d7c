"""A store is not trusted: what it lists, how much it sends, what it logs.

* Listings yield only genuine objects. A folder anyone can write to (a synced
  folder, a USB disk) may hold a planted symlinked fan-out folder aimed at the
  user's own files: ``fsck --repair`` must leave them alone and report the
  refusal. S3 listings are validated the same way (stray keys put beside the
  vault's own, straight through the S3 API).
* Every read stops at its maximum size: a hostile HTTP server on 127.0.0.1
  (written here, raw sockets in threads) answers a 4 KiB read with an endless
  stream and counts how much it managed to send; a FIFO, a folder or
  ``/dev/zero`` behind an object or pointer name is refused at once.
* No credential reaches a log line or an error message, and a plain
  ``http://`` endpoint on another machine is warned about.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import botocore.session
import pytest
import trio

from megafs.errors import (
    IntegrityError,
    ObjectNotFound,
    StoreAuthError,
    StoreError,
    StoreUnreachable,
)
from megafs.fs.filesystem import Filesystem
from megafs.fs.fsck import check
from megafs.fs.inode import ROOT_INO
from megafs.stores import LocalStore, Store
from megafs.stores.base import MAX_POINTER_SIZE, Refused
from megafs.stores.s3 import S3Store
from megafs.vault.vault import Vault

from ..support.helpers import PASS, new_vault, run_megafs, unique_prefix
from ..support.seaweed import SeaweedFS, free_ports, signed_request

MiB = 1 << 20

#: What a hostile server may manage to push before the client hangs up:
#: loopback socket buffers on both sides, nothing like the stream it offers.
SENT_BOUND = 16 * MiB

#: How much an "endless" hostile answer sends at most (so that a client that
#: reads it all, as the old code did, still finishes).
ENDLESS = 200 * MiB


def n(tag: str) -> str:
    """An object name (32 lowercase hex characters) starting with hex ``tag``."""
    return tag.ljust(32, "0")


async def listing(store: Store, refused: list[Refused] | None = None) -> dict[str, int]:
    return {name: size async for name, size in store.list(refused=refused)}


# --- (A) the planted symlink: fsck --repair must not delete the user's files -----------


def run_fsck(root: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEGAFS_PASSPHRASE": PASS, "MEGAFS_STATE_DIR": str(tmp_path / "state")}
    return run_megafs("fsck", *args, root, env=env)


async def test_fsck_repair_leaves_files_behind_a_planted_fanout_symlink_alone(
    tmp_path: Path,
) -> None:
    root = tmp_path / "store"
    store = LocalStore(str(root), create=True)
    await store.check()
    fs = await Filesystem.load(await new_vault(store))
    f = await fs.create(ROOT_INO, b"file", 0o644, 0, 0)
    await fs.write(f.ino, 0, os.urandom(100_000))
    await fs.close()
    garbage = n("0123")  # a genuine orphan: repair still removes those
    await store.put(garbage, b"left by an interrupted commit")

    # The user's documents, outside the store.
    docs = tmp_path / "Documents"
    docs.mkdir()
    objects = root / "objects"
    fans = {p.name for p in objects.iterdir()}
    free_fan = next(f"{i:02x}" for i in range(256) if f"{i:02x}" not in fans)
    precious = {
        "Thesis.odt": b"four years of work",
        "Thanks.txt": b"to everyone",
        free_fan + "9" * 30: b"named like an object, still the user's",
    }
    for name, data in precious.items():
        (docs / name).write_bytes(data)
    # Planted by whoever can write to the synced folder or the USB disk.
    (objects / "Th").symlink_to(docs)
    (objects / free_fan).symlink_to(docs)
    real_fan = sorted(fans)[0]
    planted_link = objects / real_fan / (real_fan + "8" * 30)
    planted_link.symlink_to(docs / "Thesis.odt")

    res = await trio.to_thread.run_sync(run_fsck, root, tmp_path, "--repair")
    for name, data in precious.items():
        assert (docs / name).read_bytes() == data, f"fsck --repair deleted {name}"
    assert planted_link.is_symlink() and (objects / "Th").is_symlink()
    # Refusals are reported, not problems of the vault: the repair itself succeeded.
    assert res.returncode == 0, res.stderr
    assert "refused: objects/Th: a symbolic link" in res.stdout, res.stdout
    assert f"refused: objects/{free_fan}: a symbolic link" in res.stdout
    assert f"objects/{real_fan}/{real_fan}{'8' * 30}: a symbolic link" in res.stdout
    assert not (objects / garbage[:2] / garbage).exists()

    report = await check(await Vault.unlock(store, PASS))
    assert {r.entry for r in report.refused} == {
        "objects/Th",
        f"objects/{free_fan}",
        f"objects/{real_fan}/{real_fan}{'8' * 30}",
    }
    assert not report.orphans and not report.missing
    assert all("symbolic link" in r.reason for r in report.refused)


# --- (A) the local store: what it lists, what it follows -------------------------------


async def test_local_listing_refuses_what_is_not_an_object(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "store"
    store = LocalStore(str(root), create=True)
    await store.check()
    good = n("ab11")
    await store.put(good, b"genuine")
    ab = root / "objects" / "ab"
    outside = tmp_path / "outside"
    (outside / "cd").mkdir(parents=True)
    (outside / "cd" / n("cd88")).write_bytes(b"not the store's")

    (ab / (n("ab22") + ".bak")).write_bytes(b"x")
    (ab / n("ab33").upper()).write_bytes(b"x")
    (ab / n("cd33")).write_bytes(b"x")  # a fine name, in the wrong fan-out folder
    os.mkfifo(ab / n("ab44"))
    (ab / n("ab55")).symlink_to("/etc/hostname")
    (ab / n("ab66")).mkdir()
    (ab / (n("ab77") + ".tmp.123.abcd1234")).write_bytes(b"a writer's temporary file")
    (root / "objects" / "zz").mkdir()
    (root / "objects" / "README").write_bytes(b"x")
    (root / "objects" / "cd").symlink_to(outside / "cd")

    refused: list[Refused] = []
    assert await listing(store, refused) == {good: 7}
    assert {str(r) for r in refused} == {
        f"objects/ab/{n('ab22')}.bak: not an object name",
        f"objects/ab/{n('ab33').upper()}: not an object name",
        f"objects/ab/{n('cd33')}: in the wrong fan-out folder",
        f"objects/ab/{n('ab44')}: a FIFO",
        f"objects/ab/{n('ab55')}: a symbolic link (never followed)",
        f"objects/ab/{n('ab66')}: a folder",
        "objects/zz: a folder, not a fan-out folder",
        "objects/README: a regular file, not a fan-out folder",
        "objects/cd: a symbolic link (never followed) where a folder belongs",
    }
    # Without a list to report to, the store says so in the log.
    with caplog.at_level(logging.WARNING, logger="megafs.stores.local"):
        assert await listing(store) == {good: 7}
    assert "refused 9 entries" in caplog.text


async def test_local_store_never_follows_symlinked_folders(tmp_path: Path) -> None:
    name, other = n("ab11"), n("ab22")
    outside = tmp_path / "outside"
    (outside / "objects" / "ab").mkdir(parents=True)
    (outside / "pointers").mkdir()
    (outside / "objects" / "ab" / name).write_bytes(b"outside the store")
    (outside / "pointers" / "header").write_bytes(b"outside the store")
    before = sorted(str(p.relative_to(outside)) for p in outside.rglob("*"))

    # The store's own objects/ and pointers/ folders are symlinks out of it.
    root = tmp_path / "store"
    root.mkdir()
    (root / "objects").symlink_to(outside / "objects")
    (root / "pointers").symlink_to(outside / "pointers")
    store = LocalStore(str(root))
    with pytest.raises(IntegrityError, match="objects: a symbolic link"):
        await store.get(name)
    with pytest.raises(IntegrityError, match="symbolic link"):
        await store.get_range(name, 0, 4)
    with pytest.raises(StoreError, match="refuses objects: a symbolic link"):
        await store.put(other, b"must not land outside")
    with pytest.raises(StoreError, match="symbolic link"):
        await store.delete(name)
    with pytest.raises(StoreError, match="symbolic link"):  # the whole store, not one object
        await store.delete_many([name])
    refused: list[Refused] = []
    assert await listing(store, refused) == {}
    assert [r.entry for r in refused] == ["objects"]
    with pytest.raises(IntegrityError, match="pointers: a symbolic link"):
        await store.read_pointer("header")
    with pytest.raises(StoreError, match="symbolic link"):
        await store.cas_pointer("root", b"must not land outside", None)

    # A real objects/ folder whose fan-out folder is a symlink out of it.
    root2 = tmp_path / "store2"
    (root2 / "objects").mkdir(parents=True)
    (root2 / "objects" / "ab").symlink_to(outside / "objects" / "ab")
    store2 = LocalStore(str(root2))
    with pytest.raises(IntegrityError, match="objects/ab: a symbolic link"):
        await store2.get(name)
    with pytest.raises(StoreError, match="objects/ab: a symbolic link"):
        await store2.put(other, b"must not land outside")
    with pytest.raises(StoreError, match="objects/ab: a symbolic link"):
        await store2.delete(name)
    assert await store2.delete_many([name]) == [name]

    assert sorted(str(p.relative_to(outside)) for p in outside.rglob("*")) == before
    assert (outside / "objects" / "ab" / name).read_bytes() == b"outside the store"


@pytest.fixture
def unblock_fifos() -> Iterator[list[Path]]:
    """FIFOs to open for writing after 5 s, so that a reader blocked on one
    (the old code) returns and fails its test instead of hanging it."""
    fifos: list[Path] = []
    done = threading.Event()

    def watchdog() -> None:
        if done.wait(5):
            return
        for fifo in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))

    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()
    try:
        yield fifos
    finally:
        done.set()
        thread.join()


async def test_local_fifo_and_dev_zero_are_refused_at_once(
    tmp_path: Path, unblock_fifos: list[Path]
) -> None:
    root = tmp_path / "store"
    store = LocalStore(str(root), create=True)
    await store.check()
    await store.put(n("ab00"), b"x")
    await store.cas_pointer("header", b"h", None)
    fifo, zero = n("ab11"), n("ab22")
    objects = root / "objects" / "ab"
    pointers = root / "pointers"
    os.mkfifo(objects / fifo)
    (pointers / "header").unlink()
    os.mkfifo(pointers / "root")
    (objects / zero).symlink_to("/dev/zero")
    (pointers / "header").symlink_to("/dev/zero")
    unblock_fifos += [objects / fifo, pointers / "root"]

    async def refused(
        call: Callable[[], object], match: str, error: type[Exception] = IntegrityError
    ) -> None:
        start = time.monotonic()
        with pytest.raises(error, match=match):
            await call()  # type: ignore[misc]
        assert time.monotonic() - start < 2

    await refused(lambda: store.get(fifo), "a FIFO")
    await refused(lambda: store.get_range(fifo, 0, 4096), "a FIFO")
    await refused(lambda: store.read_pointer("root"), "a FIFO")
    await refused(lambda: store.cas_pointer("root", b"r", None), "a FIFO", StoreError)
    await refused(lambda: store.get(zero, max_size=4096), "symbolic link")
    await refused(lambda: store.get_range(zero, 0, 4096), "symbolic link")
    await refused(lambda: store.read_pointer("header"), "symbolic link")


async def test_local_sync_makes_what_was_put_durable_and_never_syncs_through_a_symlink(
    tmp_path: Path,
) -> None:
    """sync fsyncs the objects put since the last one (not the whole disk):
    it passes over objects deleted since, refuses a fan-out folder planted as
    a symlink (StoreError, nothing synced through it) and tries those objects
    again at the next sync."""
    root = tmp_path / "store"
    store = LocalStore(str(root), create=True)
    await store.check()
    kept, gone, planted = n("ab11"), n("ab22"), n("cd11")
    for name in (kept, gone, planted):
        await store.put(name, os.urandom(5000))
    await store.delete(gone)
    # the cd folder is swapped for a symlink to a folder outside the store
    outside = tmp_path / "outside"
    (root / "objects" / "cd").rename(outside)
    (root / "objects" / "cd").symlink_to(outside)
    with pytest.raises(StoreError, match="refuses objects/cd: a symbolic link"):
        await store.sync()
    with pytest.raises(StoreError, match="refuses objects/cd"):
        await store.sync()  # still owed: tried again
    (root / "objects" / "cd").unlink()
    outside.rename(root / "objects" / "cd")
    await store.sync()
    await store.sync()
    assert not store._unsynced  # nothing owed any more
    assert await store.get(kept) and await store.get(planted)


async def test_local_sync_fsyncs_each_object_put_since_the_last_and_its_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What sync makes durable, seen through the real system calls: every
    object put since the last sync (not one deleted since), its fan-out
    folder and objects/; a second sync with nothing put syncs nothing. A
    failed fsync (the kernel may have dropped the writes it reported) fails
    every later sync too."""
    root = tmp_path / "store"
    store = LocalStore(str(root), create=True)
    await store.check()
    synced: list[tuple[str, int]] = []
    real_fdatasync, real_fsync = os.fdatasync, os.fsync

    def spy(kind: str, real: Callable[[int], None]) -> Callable[[int], None]:
        def call(fd: int) -> None:
            synced.append((kind, os.fstat(fd).st_ino))
            real(fd)

        return call

    names = [n("ab11"), n("ab22"), n("cd11"), n("ef11")]
    for name in names:
        await store.put(name, os.urandom(3000))
    await store.delete(names[3])
    monkeypatch.setattr(os, "fdatasync", spy("data", real_fdatasync))
    monkeypatch.setattr(os, "fsync", spy("full", real_fsync))
    await store.sync()
    ino = {p.name: p.stat().st_ino for p in (root / "objects").rglob("*")}
    assert sorted(i for k, i in synced if k == "data") == sorted(ino[x] for x in names[:3])
    folders = {ino["ab"], ino["cd"], ino["ef"], (root / "objects").stat().st_ino}
    assert {i for k, i in synced if k == "full"} == folders
    synced.clear()
    await store.sync()
    assert synced == []

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    await store.put(n("ab33"), b"x" * 100)
    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(StoreError, match="lost writes in objects/ab: Input/output error"):
        await store.sync()
    monkeypatch.setattr(os, "fdatasync", real_fdatasync)
    with pytest.raises(StoreError, match="lost writes"):
        await store.sync()  # no retry can tell whether the kernel kept them


async def test_local_reads_stop_at_their_maximum_size(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = LocalStore(str(root), create=True)
    await store.check()
    name = n("ab11")
    await store.put(name, os.urandom(8192))
    with pytest.raises(IntegrityError, match="larger than 4096 bytes"):
        await store.get(name, max_size=4096)
    assert len(await store.get(name, max_size=8192)) == 8192
    await store.cas_pointer("root", b"r" * 200, None)
    with pytest.raises(IntegrityError, match="larger than 100 bytes"):
        await store.read_pointer("root", max_size=100)
    # Planted: a pointer beyond the absolute ceiling (the default limit).
    (root / "pointers" / "header").write_bytes(b"h" * (MAX_POINTER_SIZE + 1))
    with pytest.raises(IntegrityError, match=f"larger than {MAX_POINTER_SIZE} bytes"):
        await store.read_pointer("header")
    with pytest.raises(IntegrityError, match=f"larger than {MAX_POINTER_SIZE} bytes"):
        await store.cas_pointer("header", b"h", "any")


async def test_names_of_the_wrong_shape_are_refused(any_store: Store) -> None:
    for bad in ("root", "../../etc/passwd", "ab", n("ab").upper(), n("ab") + "0", "o/" + n("ab")):
        with pytest.raises(ValueError, match="not an object name"):
            await any_store.put(bad, b"x")
        with pytest.raises(ValueError, match="not an object name"):
            await any_store.get(bad)
        with pytest.raises(ValueError, match="not an object name"):
            await any_store.get_range(bad, 0, 1)
        with pytest.raises(ValueError, match="not an object name"):
            await any_store.delete(bad)
        with pytest.raises(ValueError, match="not an object name"):
            await any_store.delete_many([n("ab"), bad])
    for bad in ("counter", "../header", "p/root", n("ab")):
        with pytest.raises(ValueError, match="not a pointer name"):
            await any_store.read_pointer(bad)
        with pytest.raises(ValueError, match="not a pointer name"):
            await any_store.cas_pointer(bad, b"x", None)
    assert await listing(any_store) == {}
    assert await any_store.read_pointer("root") is None


# --- (A) S3 listings ----------------------------------------------------------------------


@pytest.mark.s3
async def test_s3_listing_refuses_stray_keys(seaweedfs: SeaweedFS, s3_env: dict[str, str]) -> None:
    good = n("ab11")
    strays = ["o/junk", f"o/{n('ab22').upper()}", f"o/{n('ab33')}.bak", "o/Th/Thesis.odt"]
    store = S3Store(seaweedfs.bucket, unique_prefix())
    async with store:
        await store.put(good, b"genuine")
        base = f"{seaweedfs.endpoint}/{seaweedfs.bucket}/{store.prefix}"
        for key in strays:  # straight through the S3 API, past the store's checks
            put = functools.partial(
                signed_request, "PUT", base + key, seaweedfs.access_key, seaweedfs.secret_key
            )
            resp = await trio.to_thread.run_sync(functools.partial(put, body=b"stray"))
            assert resp.status_code == 200, resp.text
        refused: list[Refused] = []
        assert await listing(store, refused) == {good: 7}
        assert {r.entry: r.reason for r in refused} == dict.fromkeys(strays, "not an object name")


# --- (B) bounded reads against a hostile server ---------------------------------------------

#: A position-dependent body: byte ``i`` of every answer is ``i % 256``.
PATTERN = bytes(range(256)) * 256

#: Status, headers, and the body: that many bytes of PATTERN, or these bytes.
Answer = tuple[str, dict[str, str], int | bytes]


class HostileServer:
    """An HTTP/1.1 server on 127.0.0.1 answering every request with ``answer``.

    ``answer(method, path, headers)`` gives the status (``"206 Partial
    Content"``), the headers (which may lie: a Content-Length is sent as
    given) and the body: how many bytes of :data:`PATTERN` to send, or the
    bytes themselves. Each answer closes its connection. ``sent`` counts the
    body bytes the kernel took; :meth:`settle` waits until every connection
    has ended.
    """

    def __init__(self, answer: Callable[[str, str, dict[str, str]], Answer]) -> None:
        self.answer = answer
        self.sent = 0
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._handlers: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> HostileServer:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        self._acceptor.join(5)
        self.settle()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                self._handlers.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        with conn:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                part = conn.recv(65536)
                if not part:
                    return
                head += part
            lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            with self._lock:
                self.requests.append((method, path, headers))
            status, extra, body = self.answer(method, path, headers)
            out = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in extra.items())
            try:
                conn.sendall((out + "Connection: close\r\n\r\n").encode())
                left = body if isinstance(body, int) else 0
                if isinstance(body, bytes):
                    conn.sendall(body)
                while left > 0:
                    chunk = PATTERN[: min(left, len(PATTERN))]
                    conn.sendall(chunk)
                    with self._lock:
                        self.sent += len(chunk)
                    left -= len(chunk)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                return  # the client hung up: what it wanted to do

    def settle(self) -> None:
        with self._lock:
            handlers = list(self._handlers)
        for t in handlers:
            t.join(30)
            assert not t.is_alive(), "the hostile server is still sending"

    async def reset(self, answer: Callable[[str, str, dict[str, str]], Answer]) -> int:
        """Wait for the connections so far to end; return what they sent; answer anew."""
        await trio.to_thread.run_sync(self.settle)
        sent, self.sent, self.answer = self.sent, 0, answer
        return sent


ACCESS_KEY = "AKIDHOSTILETEST" + secrets.token_hex(4).upper()
SECRET_KEY = secrets.token_urlsafe(30)


def hostile_store(endpoint: str, **options: object) -> S3Store:
    session = botocore.session.Session()
    session.set_credentials(ACCESS_KEY, SECRET_KEY)
    return S3Store("bucket", "vault", endpoint=endpoint, session=session, max_attempts=1, **options)  # type: ignore[arg-type]


def endless(status: str, **headers: str) -> Callable[[str, str, dict[str, str]], Answer]:
    return lambda method, path, h: (status, dict(headers), ENDLESS)


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with HostileServer(endless("500 Internal Server Error")) as server:
        yield server


async def test_s3_ranged_read_reads_only_its_range(hostile: HostileServer) -> None:
    name = n("ab11")
    async with hostile_store(hostile.endpoint) as store:
        # 206 and then an endless body with no length: cut at the range's length.
        await hostile.reset(endless("206 Partial Content"))
        assert await store.get_range(name, 0, 4096) == PATTERN[:4096]
        assert hostile.requests[-1][2]["range"] == "bytes=0-4095"
        assert await hostile.reset(endless("200 OK")) < SENT_BOUND

        # Range ignored: 200 and the "whole object", 200 MiB by its Content-Length.
        big = {"Content-Length": str(ENDLESS)}
        await hostile.reset(lambda m, p, h: ("200 OK", big, ENDLESS))
        assert await store.get_range(name, 8192, 4096) == PATTERN[8192 : 8192 + 4096]
        assert await hostile.reset(endless("200 OK")) < SENT_BOUND


async def test_s3_whole_reads_stop_at_their_maximum_size(hostile: HostileServer) -> None:
    name = n("ab11")
    async with hostile_store(hostile.endpoint) as store:
        # Announced too large: refused on the headers.
        big = {"Content-Length": str(ENDLESS), "ETag": '"e"'}
        await hostile.reset(lambda m, p, h: ("200 OK", big, ENDLESS))
        with pytest.raises(IntegrityError, match="larger than 4096 bytes"):
            await store.get(name, max_size=4096)
        assert await hostile.reset(endless("200 OK")) < SENT_BOUND

        # No length, an endless body: refused after max_size + 1 bytes.
        with pytest.raises(IntegrityError, match="larger than 4096 bytes"):
            await store.get(name, max_size=4096)
        assert await hostile.reset(endless("200 OK", ETag='"e"')) < SENT_BOUND

        # A pointer: the absolute ceiling applies by default.
        with pytest.raises(IntegrityError, match=f"larger than {MAX_POINTER_SIZE} bytes"):
            await store.read_pointer("root")
        with pytest.raises(IntegrityError, match="larger than 512 bytes"):
            await store.read_pointer("header", max_size=512)
        assert await hostile.reset(endless("403 Forbidden")) < SENT_BOUND

        # An error answer's body is read only as far as its parsing needs.
        with pytest.raises(StoreAuthError):
            await store.get(name, max_size=4096)
        gzip = {"Content-Length": "100", "Content-Encoding": "gzip"}
        assert await hostile.reset(lambda m, p, h: ("200 OK", gzip, 100)) < SENT_BOUND

        # A Content-Encoding we did not ask for is refused, never decompressed.
        with pytest.raises(StoreError, match="Content-Encoding 'gzip'"):
            await store.get(name)


# --- (C) secrets: logs, error messages, plain http -------------------------------------------


@pytest.mark.s3
async def test_s3_debug_log_never_shows_credentials(
    seaweedfs: SeaweedFS,
    s3_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = "IQoJb3JpZ2luX2VjE" + secrets.token_urlsafe(60)
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    caplog.set_level(logging.DEBUG)  # as ``megafs -d`` does
    errors = []
    async with S3Store(seaweedfs.bucket, unique_prefix()) as store:
        for call in (lambda: store.put(n("ab"), b"x"), lambda: store.get(n("ab"))):
            try:
                await call()
            except (StoreError, ObjectNotFound) as e:  # SeaweedFS knows no such token
                errors.append(str(e))
    text = caplog.text + "\n".join(errors)
    # The signer did log the canonical request, where the token is a signed header.
    assert "CanonicalRequest" in caplog.text and "x-amz-security-token" in caplog.text
    for secret in (token, seaweedfs.secret_key, seaweedfs.access_key):
        assert secret not in text
        assert secret[:16] not in text


@pytest.mark.s3
async def test_s3_auth_errors_never_name_the_access_key(
    seaweedfs: SeaweedFS,
    s3_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    hostile: HostileServer,
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    caplog.set_level(logging.DEBUG)
    async with S3Store(seaweedfs.bucket, unique_prefix()) as store:
        with pytest.raises(StoreAuthError, match="SignatureDoesNotMatch") as info:
            await store.put(n("ab"), b"x")
    assert seaweedfs.access_key not in str(info.value)
    assert seaweedfs.access_key not in caplog.text

    # A server whose error answers echo the key (as AWS's can): never repeated.
    def echoing(status: str, code: str) -> Callable[[str, str, dict[str, str]], Answer]:
        body = (
            f"<Error><Code>{code}</Code><Message>bad request from {ACCESS_KEY}</Message>"
            f"<AWSAccessKeyId>{ACCESS_KEY}</AWSAccessKeyId></Error>"
        ).encode()
        return lambda m, p, h: (status, {"Content-Length": str(len(body))}, body)

    async with hostile_store(hostile.endpoint) as store:
        await hostile.reset(echoing("403 Forbidden", "SignatureDoesNotMatch"))
        with pytest.raises(StoreAuthError, match="SignatureDoesNotMatch") as auth:
            await store.get(n("ab"))
        await hostile.reset(echoing("400 Bad Request", "InvalidArgument"))
        with pytest.raises(StoreError, match="InvalidArgument: bad request from \\*\\*\\*") as bad:
            await store.get(n("ab"))
    for text in (str(auth.value), str(bad.value), caplog.text):
        assert ACCESS_KEY not in text


async def test_s3_plain_http_to_another_host_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="megafs.stores.s3")
    fast = {"connect_timeout": 0.5, "retry_deadline": 1.0}
    endpoint = "http://192.0.2.1:9"  # TEST-NET-1: another machine, never answers
    async with hostile_store(endpoint, **fast) as store:
        for _ in range(2):
            with pytest.raises(StoreUnreachable):
                await store.check()
    warned = [r.getMessage() for r in caplog.records if r.name == "megafs.stores.s3"]
    assert len(warned) == 1, warned
    assert endpoint in warned[0] and "http://" in warned[0] and "https://" in warned[0]

    caplog.clear()
    (port,) = free_ports(1)  # nothing listens there: unreachable at once
    for local in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}"):
        async with hostile_store(local, **fast) as store:
            with pytest.raises(StoreUnreachable):
                await store.check()
    assert [r for r in caplog.records if r.name == "megafs.stores.s3"] == []


def _listing_page(keys: list[str], token: str | None) -> bytes:
    items = "".join(f"<Contents><Key>{k}</Key><Size>7</Size></Contents>" for k in keys)
    more = (f"<IsTruncated>true</IsTruncated><NextContinuationToken>{token}"
            "</NextContinuationToken>") if token else "<IsTruncated>false</IsTruncated>"
    return (f'<?xml version="1.0"?><ListBucketResult>{items}{more}</ListBucketResult>').encode()


async def test_s3_listing_must_advance(hostile: HostileServer) -> None:
    """A server that repeats a continuation token, sends keys out of order, or
    invents refusals without end cannot keep a listing (or fsck) going."""
    good = n("cd22")

    def same_token(m: str, p: str, h: dict[str, str]) -> Answer:
        return "200 OK", {}, _listing_page([], "again")

    calls = 0

    def backwards(m: str, p: str, h: dict[str, str]) -> Answer:
        nonlocal calls
        calls += 1
        return "200 OK", {}, _listing_page([f"vault/o/{good}"], f"t{calls}")

    def junk(m: str, p: str, h: dict[str, str]) -> Answer:
        nonlocal calls
        calls += 1
        keys = [f"vault/o/junk-{calls:08d}-{i:04d}" for i in range(1000)]
        return "200 OK", {}, _listing_page(keys, f"t{calls}")

    async with hostile_store(hostile.endpoint) as store:
        await hostile.reset(same_token)
        with pytest.raises(StoreError, match="repeats a continuation token"):
            await listing(store)
        await hostile.reset(backwards)
        with pytest.raises(StoreError, match="does not advance"):
            await listing(store)
        calls = 0
        await hostile.reset(junk)
        refused: list[Refused] = []
        with pytest.raises(StoreError, match="more than 100000 keys"):
            await listing(store, refused)
        assert calls <= 101 and len(refused) <= 101_000


def test_refused_names_are_printed_escaped() -> None:
    """A store picks the names: one holding an escape sequence or a newline
    must not reach a terminal or a log line as it is."""
    r = Refused("objects/\x1b[2J\x1b]0;owned\x07\nfake line", "not an object name")
    text = str(r)
    assert "\x1b" not in text and "\n" not in text and "\x07" not in text
    assert "\\x1b[2J" in text and text.endswith(": not an object name")
