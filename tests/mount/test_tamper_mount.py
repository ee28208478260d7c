"""The store tampers with a vault while it is mounted: EIO and a log line, never wrong bytes.

On both stores, a vault is filled through the mount, unmounted, and mounted
again with a fresh cache, so nothing of what follows is in memory or on the
local disk. Then, under the running mount, the store flips a byte in one
file's chunk, cuts another's, swaps two chunks of a third, deletes one of a
fourth, serves an older version of a fifth's chunk under its new name,
flips a byte in the leaf page of inodes the mount has not loaded yet, and
flips a byte inside one small file's share of a pack object (format 2: the
small files' chunks share packs). Each read of a damaged file fails with EIO
after returning only genuine bytes (if any), and the daemon logs a line
naming the object; every other file reads back exactly, including the other
small files in the damaged pack. Once the store serves the right object
again, it reads again.

Rolling the root pointer back under a running mount makes that mount's next
commit fail (EIO) and is refused at the next mount with exit code 6.

docs/security.md shows the same attacks on the filesystem model directly
(tests/store/test_security.py); these show what a program using the mount sees.
"""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.stores import Store, open_store
from megafs.vault.content import ChunkRef
from megafs.vault.tables import MID_BITS, PAGE_BITS
from megafs.vault.vault import Vault, obj_name

from ..support.helpers import PASS
from ..support.mounting import Drive, one_error_line

pytestmark = pytest.mark.fuse

T = TypeVar("T")

MiB = 1 << 20
#: One victim file per way of tampering with one of its chunk objects.
VICTIMS = ("flip", "truncate", "swap", "delete", "replay")
#: Enough files in one folder that the last ones land in the second leaf page.
MANY = 300
#: Small files whose chunks share one pack object; the middle one is damaged.
PACKED = ("p0", "p1", "p2")


@pytest.fixture
def drive(
    tmp_path: Path, any_store_url: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Drive]:
    url, env = any_store_url
    # This process reads the vault too (to find its objects): its own client state.
    monkeypatch.setenv("MEGAFS_STATE_DIR", str(tmp_path / "test-state"))
    d = Drive(url, tmp_path, env)
    try:
        d.init()
        yield d
    finally:
        d.cleanup()


# --- looking at the store from outside the mount --------------------------------------


def run(fn: Callable[..., Awaitable[T]], *args: object) -> T:
    """Run an async function of the store in a trio run of its own."""
    return trio.run(fn, *args)


def _store(drive: Drive) -> Store:
    return open_store(drive.url)


async def _get(drive: Drive, name: str) -> bytes:
    async with _store(drive) as store:
        return await store.get(name)


async def _put(drive: Drive, name: str, data: bytes) -> None:
    async with _store(drive) as store:
        await store.put(name, data)


async def _delete(drive: Drive, name: str) -> None:
    async with _store(drive) as store:
        await store.delete(name)


@dataclass
class Objects:
    """Where things are in the store, found through the vault's own structure."""

    chunks: dict[str, list[str]] = field(default_factory=dict)  # file -> chunk objects
    refs: dict[str, list[ChunkRef]] = field(default_factory=dict)  # file -> where its chunks are
    late_leaf: str = ""  # the leaf page holding "many/late"


async def _locate(drive: Drive) -> Objects:
    async with _store(drive) as store:
        fs = await Filesystem.load(await Vault.unlock(store, PASS), writable=False)
        out = Objects()
        for name in (*VICTIMS, *PACKED):
            ino = (await fs.lookup(ROOT_INO, name.encode())).ino
            node = fs.table.inodes[ino]
            out.refs[name] = [node.chunks[i] for i in sorted(node.chunks)]
            out.chunks[name] = [obj_name(r.obj) for r in out.refs[name]]
        many = (await fs.lookup(ROOT_INO, b"many")).ino
        late = (await fs.lookup(many, b"late")).ino
        page = late >> PAGE_BITS
        assert page > 0, "many/late should be in another leaf page than the root"
        mid = fs.table.index.mids[page >> MID_BITS]
        out.late_leaf = obj_name(mid[page & ((1 << MID_BITS) - 1)])
        return out


def _flip(data: bytes, pos: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= 0x40
    return bytes(b)


# --- reading through the mount ---------------------------------------------------------


def _read_until_error(path: Path) -> tuple[bytes, int]:
    """Everything a program gets from ``path`` before the first error, and its errno."""
    got = bytearray()
    try:
        with open(path, "rb", buffering=0) as f:
            while piece := f.read(64 * 1024):
                got += piece
    except OSError as e:
        return bytes(got), e.errno or 0
    return bytes(got), 0


def _assert_eio_and_genuine(path: Path, want: bytes) -> None:
    got, code = _read_until_error(path)
    assert code == errno.EIO, f"{path.name}: read {len(got)} bytes, errno {code}"
    assert got == want[: len(got)], f"{path.name}: wrong bytes returned"


def _errno_of(fn: object) -> int:
    assert callable(fn)
    with pytest.raises(OSError) as exc:
        fn()
    return exc.value.errno or 0


# --- the tests -----------------------------------------------------------------------------


def _fill(drive: Drive) -> dict[str, bytes]:
    """Write the sample through the mount; return path -> content."""
    rnd = random.Random(11)
    mp = drive.mountpoint
    files: dict[str, bytes] = {}
    for name in VICTIMS:
        files[name] = rnd.randbytes(MiB + 600_000)  # two chunks, each an object of its own
    for name in PACKED:
        files[name] = rnd.randbytes(100_000)  # one chunk, in a pack
    files["good-big"] = rnd.randbytes(2 * MiB + 12345)
    files["small.txt"] = b"small and inline\n"
    for name, data in files.items():
        (mp / name).write_bytes(data)
    (mp / "many").mkdir()
    for i in range(MANY):
        files[f"many/f{i:03}"] = f"file {i}\n".encode()
        (mp / f"many/f{i:03}").write_bytes(files[f"many/f{i:03}"])
    files["many/late"] = rnd.randbytes(200_000)
    (mp / "many/late").write_bytes(files["many/late"])
    return files


def test_tampered_objects_give_eio_and_never_wrong_bytes(drive: Drive, tmp_path: Path) -> None:
    mp = drive.mountpoint
    drive.mount()
    files = _fill(drive)
    drive.umount()
    # An older version of one chunk, for the store to replay later.
    old = run(_locate, drive)
    replayed = run(_get, drive, old.chunks["replay"][0])
    drive.mount()
    with open(mp / "replay", "r+b") as f:
        f.write(b"second version")
    files["replay"] = b"second version" + files["replay"][14:]
    drive.umount()
    objs = run(_locate, drive)
    assert objs.chunks["replay"][0] != old.chunks["replay"][0]
    assert objs.chunks["replay"][1] == old.chunks["replay"][1]
    assert not any(r.packed for name in VICTIMS for r in objs.refs[name])
    packed = [objs.refs[name][0] for name in PACKED]
    assert all(r.packed for r in packed) and len({r.obj for r in packed}) == 1

    drive.mount(cache_dir=tmp_path / "fresh-cache")  # nothing read yet, nothing cached
    c = objs.chunks
    targets = [*{obj for chunks in c.values() for obj in chunks}, objs.late_leaf]
    originals = {name: run(_get, drive, name) for name in targets}
    flip_obj = c["flip"][1]
    run(_put, drive, flip_obj, _flip(originals[flip_obj], len(originals[flip_obj]) // 2))
    cut = c["truncate"][0]
    run(_put, drive, cut, originals[cut][: len(originals[cut]) // 2])
    a, b = c["swap"]
    run(_put, drive, a, originals[b])
    run(_put, drive, b, originals[a])
    run(_delete, drive, c["delete"][0])
    run(_put, drive, c["replay"][0], replayed)
    leaf = objs.late_leaf
    run(_put, drive, leaf, _flip(originals[leaf], 100))
    pack, hit = packed[0].obj, packed[1]
    pack_name = obj_name(pack)
    run(_put, drive, pack_name, _flip(originals[pack_name], hit.off + 5000))
    damaged = {
        "flip": flip_obj,
        "truncate": cut,
        "swap": a,
        "delete": c["delete"][0],
        "replay": c["replay"][0],
        "p1": pack_name,
    }

    for name in (*VICTIMS, "p1"):
        _assert_eio_and_genuine(mp / name, files[name])
    # Inodes whose leaf page fails cannot even be looked up or listed.
    assert _errno_of(lambda: os.stat(mp / "many" / "late")) == errno.EIO
    assert _errno_of(lambda: os.listdir(mp / "many")) == errno.EIO
    # Everything else reads back exactly.
    for name in ("good-big", "small.txt", "many/f000", "many/f100", "p0", "p2"):
        assert (mp / name).read_bytes() == files[name], name
    assert os.path.ismount(mp)

    log = drive.log_text()
    for name, obj in [*damaged.items(), ("many/late", leaf)]:
        lines = [ln for ln in log.splitlines() if obj in ln and " ERROR " in ln]
        assert lines, f"no log line names the tampered object of {name} ({obj})"
    assert "integrity error in object " + leaf in log
    unexpected = [p for p in drive.log_problems() if not any(o in p for o in originals)]
    assert not unexpected, "\n".join(unexpected)

    # The store serves the right objects again: so does the mount, no remount needed.
    for name, data in originals.items():
        run(_put, drive, name, data)
    for name in (*VICTIMS, "p1", "many/late"):
        assert (mp / name).read_bytes() == files[name], name
    assert len(os.listdir(mp / "many")) == MANY + 1
    drive.umount()


async def _root_pointer(drive: Drive) -> bytes:
    async with _store(drive) as store:
        ptr = await store.read_pointer("root")
        assert ptr is not None
        return ptr.data


async def _set_root_pointer(drive: Drive, data: bytes) -> None:
    """Overwrite the root pointer, as a malicious (or restored-from-backup) store would."""
    async with _store(drive) as store:
        ptr = await store.read_pointer("root")
        assert ptr is not None
        await store.cas_pointer("root", data, ptr.etag)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def test_root_rolled_back_under_a_running_mount(drive: Drive) -> None:
    mp = drive.mountpoint
    drive.mount("--commit-interval", "3600")
    _write_synced(mp / "a", b"version 1")
    assert drive.megafs("sync", str(mp)).returncode == 0
    old_root = run(_root_pointer, drive)
    _write_synced(mp / "a", b"version 2")
    _write_synced(mp / "b", b"only in the newer root")
    assert drive.megafs("sync", str(mp)).returncode == 0
    assert run(_root_pointer, drive) != old_root

    run(_set_root_pointer, drive, old_root)
    # The running mount never overwrites what it did not expect: its commit
    # fails. (An fsync reads no root, it puts a device log object, so the
    # rollback shows at the first commit.)
    (mp / "c").write_bytes(b"written after the rollback")
    proc = drive.megafs("sync", str(mp))
    assert proc.returncode == 6 and "rollback" in one_error_line(proc), proc.stderr
    # From then on, no fsync is acknowledged.
    with open(mp / "c", "rb") as f:
        assert _errno_of(lambda: os.fsync(f.fileno())) == errno.EIO
    assert (mp / "a").read_bytes() == b"version 2"
    proc = drive.megafs("umount", str(mp))
    assert proc.returncode == 14, proc.stderr
    assert "final commit failed" in one_error_line(proc)
    assert run(_root_pointer, drive) == old_root

    proc = drive.try_mount()
    assert proc.returncode == 6, proc.stderr
    line = one_error_line(proc)
    assert "rollback" in line and "root" in line, line
    assert not os.path.ismount(mp)
    assert "rollback" in drive.log_text()
