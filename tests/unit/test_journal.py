"""The write-ahead journal: uncommitted operations survive a lost process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from megafs.client.journal import Journal
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.fs.namespace import RENAME_EXCHANGE
from megafs.stores import LocalStore, Store
from megafs.vault.vault import Vault

from ..support.helpers import PASS, new_vault


async def open_fs(store: Store, cache: Path) -> Filesystem:
    vault = await Vault.unlock(store, PASS)
    return await Filesystem.load(vault, journal=Journal(str(cache), vault.keys))


async def snapshot(fs: Filesystem, ino: int = ROOT_INO, prefix: bytes = b"") -> dict[bytes, object]:
    """Everything visible below ``ino``: path -> (mode, size, content or target, xattrs)."""
    out: dict[bytes, object] = {}
    after = 0
    while batch := await fs.readdir(ino, after):
        for name, a, cookie in batch:
            path = prefix + b"/" + name
            xattrs = {k: await fs.getxattr(a.ino, k) for k in await fs.listxattr(a.ino)}
            if a.mode & 0o170000 == 0o040000:
                out[path] = (a.mode, a.nlink, xattrs)
                out.update(await snapshot(fs, a.ino, path))
            elif a.mode & 0o170000 == 0o120000:
                out[path] = (a.mode, await fs.readlink(a.ino))
            else:
                data = await fs.read(a.ino, 0, a.size + 1)
                out[path] = (a.mode, a.size, a.mtime_ns, a.nlink, data, xattrs)
            after = cookie
    return out


async def test_replay_restores_uncommitted_operations(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "store"), create=True)
    await new_vault(store)
    cache = tmp_path / "cache"
    fs = await open_fs(store, cache)
    d = await fs.mkdir(ROOT_INO, b"dir", 0o750, 1, 2)
    f = await fs.create(d.ino, b"f", 0o600, 0, 0)
    await fs.write(f.ino, 0, b"committed part")
    await fs.commit()
    # everything below is never committed
    big = os.urandom(300_000)
    await fs.write(f.ino, 100_000, big)
    await fs.truncate(f.ino, 200_000)
    g = await fs.create(ROOT_INO, b"g", 0o644, 0, 0)
    await fs.write(g.ino, 0, b"small")
    await fs.link(g.ino, d.ino, b"g-link")
    await fs.symlink(d.ino, b"s", b"../g", 0, 0)
    await fs.setxattr(g.ino, b"user.a", b"1")
    await fs.setattr(g.ino, mode=0o640, mtime_ns=123_456_789)
    await fs.rename(ROOT_INO, b"g", d.ino, b"f", RENAME_EXCHANGE)
    h = await fs.create(ROOT_INO, b"h", 0o644, 0, 0)
    await fs.unlink(ROOT_INO, b"h")
    await fs.mkdir(ROOT_INO, b"gone", 0o755, 0, 0)
    await fs.rmdir(ROOT_INO, b"gone")
    expected = await snapshot(fs)
    assert h.ino > 0
    # the process "dies" here: nothing after the commit reached the store

    fs2 = await open_fs(store, cache)
    assert fs2.replayed > 10
    assert await snapshot(fs2) == expected
    await fs2.close()
    # the replay was committed: a fresh cache (another machine's view) sees it too
    fs3 = await open_fs(store, tmp_path / "other-cache")
    assert await snapshot(fs3) == expected
    assert fs3.replayed == 0


async def test_journal_after_failed_commit_and_repeated_crash(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "store"), create=True)
    await new_vault(store)
    cache = tmp_path / "cache"
    fs = await open_fs(store, cache)
    f = await fs.create(ROOT_INO, b"f", 0o644, 0, 0)
    await fs.write(f.ino, 0, b"a" * 5000)
    expected = await snapshot(fs)
    # crash; the replaying process crashes too before its commit lands
    fs2 = await open_fs(store, cache)
    assert await snapshot(fs2) == expected
    await fs2.write(f.ino, 5000, b"b" * 10)
    expected = await snapshot(fs2)
    fs3 = await open_fs(store, cache)
    assert await snapshot(fs3) == expected


async def test_journal_holds_no_plaintext(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "store"), create=True)
    await new_vault(store)
    cache = tmp_path / "cache"
    fs = await open_fs(store, cache)
    marker = b"JOURNAL-MARKER-31337"
    f = await fs.create(ROOT_INO, marker, 0o644, 0, 0)
    await fs.write(f.ino, 0, marker * 100)
    for path in cache.rglob("*"):
        if path.is_file():
            assert marker not in path.read_bytes(), path


class FullDisk(Journal):
    """A journal whose disk is full."""

    full = False

    def append(self, record: list[object]) -> None:
        if self.full:
            raise OSError(28, "No space left on device")
        super().append(record)


async def test_full_journal_disk_fails_operations_cleanly(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "store"), create=True)
    await new_vault(store)
    vault = await Vault.unlock(store, PASS)
    journal = FullDisk(str(tmp_path / "cache"), vault.keys)
    fs = await Filesystem.load(vault, journal=journal)
    f = await fs.create(ROOT_INO, b"f", 0o644, 0, 0)
    await fs.write(f.ino, 0, b"before")
    before = await snapshot(fs)
    journal.full = True
    attempts = [
        fs.write(f.ino, 3, b"XXXXXXXX"),
        fs.truncate(f.ino, 1),
        fs.create(ROOT_INO, b"g", 0o644, 0, 0),
        fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0),
        fs.symlink(ROOT_INO, b"s", b"t", 0, 0),
        fs.link(f.ino, ROOT_INO, b"h"),
        fs.rename(ROOT_INO, b"f", ROOT_INO, b"f2"),
        fs.setxattr(f.ino, b"user.x", b"1"),
        fs.setattr(f.ino, mode=0o600, size=2),
        fs.unlink(ROOT_INO, b"f"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as e:
            await attempt
        assert e.value.errno == 28
    assert await snapshot(fs) == before
    journal.full = False
    await fs.write(f.ino, 0, b"after!")
    assert await fs.read(f.ino, 0, 10) == b"after!"


def test_segments_this_device_committed_are_deleted_not_set_aside(tmp_path: Path) -> None:
    """When another device made the root and this journal cannot be replayed,
    the segments this device's own last commit covers (its record's mark)
    are deleted; only later ones are kept aside."""
    from megafs.format.crypto import Keys

    journal = Journal(str(tmp_path / "cache"), Keys(bytes(32), bytes(16)))
    for seg in range(3):
        journal.append(["wr", 1, seg])
        journal.rotate()
    journal.close()
    assert list(journal.pending(b"\0" * 16, 0, covered=2)) == []
    names = sorted(os.listdir(journal.dir))
    assert [n for n in names if n.endswith(".log") or n.endswith(".stale")] == [
        "000000000003.log.stale"
    ]
