"""The history commands on a mounted vault and on its store: versions and
restore through the mount, pinning, retention measured in seconds, prune,
and fsck clean afterwards (docs/history.md)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ..support.mounting import Drive, assert_same_tree, make_tree
from .test_snapshots import commit


def ok(d: Drive, *args: str) -> str:
    proc = d.megafs(*args)
    assert proc.returncode == 0, (args, proc.stderr)
    return proc.stdout


def test_versions_and_restore_of_a_file(slow_drive: Drive) -> None:
    mnt = slow_drive.mountpoint
    doc = mnt / "notes" / "doc.txt"
    doc.parent.mkdir()
    versions = []
    for i in range(3):
        data = b"version %d\n" % i + os.urandom(20_000 * i)
        doc.write_bytes(data)
        commit(slow_drive)
        versions.append(data)
        time.sleep(0.01)  # distinct modification times
    listed = ok(slow_drive, "versions", str(doc)).splitlines()
    assert len(listed) == 3 and [int(x.split()[0]) for x in listed] == [1, 2, 3]
    # beside the current file, under a clear name
    ok(slow_drive, "restore", str(doc), "--version", "1")
    restored = [p for p in doc.parent.iterdir() if p.name.startswith("doc (restored ")]
    assert len(restored) == 1 and restored[0].read_bytes() == versions[0]
    assert doc.read_bytes() == versions[2]
    # never over a file without --force
    proc = slow_drive.megafs("restore", str(doc), "--version", "2", "--to", str(restored[0]))
    assert proc.returncode == 2 and "exists" in proc.stderr
    ok(slow_drive, "restore", str(doc), "--version", "2", "--force")
    assert doc.read_bytes() == versions[1]
    commit(slow_drive)  # the restored one is the newest version now
    assert len(ok(slow_drive, "versions", str(doc)).splitlines()) == 4
    # by time: the newest version kept at that moment
    ok(slow_drive, "restore", str(doc), "--at", "0s", "--to", str(mnt / "latest.txt"))
    assert (mnt / "latest.txt").read_bytes() == versions[1]
    proc = slow_drive.megafs("versions", str(mnt / "never-there"))
    assert proc.returncode == 2 and proc.stderr.startswith("megafs: ")


def test_a_deleted_tree_comes_back_whole(slow_drive: Drive, tmp_path: Path) -> None:
    mnt = slow_drive.mountpoint
    make_tree(mnt / "t")
    commit(slow_drive)
    copy = tmp_path / "copy"
    slow_drive.sh("cp", "-a", mnt / "t", copy)
    slow_drive.sh("rm", "-rf", mnt / "t")
    commit(slow_drive)
    assert not (mnt / "t").exists()
    ok(slow_drive, "restore", str(mnt / "t"))
    assert_same_tree(copy, mnt / "t")


def test_pins_retention_and_prune(slow_drive: Drive) -> None:
    mnt = slow_drive.mountpoint
    url = slow_drive.url
    (mnt / "a.txt").write_bytes(b"kept by a pin\n")
    ok(slow_drive, "snapshot", str(mnt), "keep-me")
    for i in range(4):
        (mnt / "a.txt").write_bytes(b"later %d\n" % i)
        commit(slow_drive)
    listed = ok(slow_drive, "snapshots", url)
    assert "keep-me" in listed and len(listed.splitlines()) >= 6
    # another process must not write the vault as this device while mounted
    proc = slow_drive.megafs("prune", url)
    assert proc.returncode == 10 and "mounted" in proc.stderr
    # seconds instead of hours: every state for 1 s, then nothing but pins
    out = ok(slow_drive, "retention", str(mnt), "--every", "1s", "--keep", "1s:0")
    assert "every root for 1s" in out
    time.sleep(1.5)
    out = ok(slow_drive, "prune", str(mnt))
    assert out.startswith("dropped ") and not out.startswith("dropped 0 ")
    names = os.listdir(mnt / ".snapshots")
    assert len(names) == 2 and any(n.endswith("_keep-me") for n in names)
    assert (mnt / ".snapshots" / "keep-me" / "a.txt").read_bytes() == b"kept by a pin\n"
    assert (mnt / "a.txt").read_bytes() == b"later 3\n"
    slow_drive.umount()
    # on the store: the policy is the vault's; fsck finds nothing missing or left over
    assert "every root for 1s" in ok(slow_drive, "retention", url)
    ok(slow_drive, "prune", url)
    out = ok(slow_drive, "fsck", url)
    assert out.rstrip().endswith("clean") and "unreferenced" not in out, out
    info = ok(slow_drive, "info", url)
    assert "past states kept" in info
    slow_drive.mount()
    assert (mnt / ".snapshots" / "keep-me" / "a.txt").read_bytes() == b"kept by a pin\n"
    with pytest.raises(OSError):
        (mnt / ".snapshots" / "keep-me" / "a.txt").unlink()
    # rmdir unpins (the folder need not be empty, as in ZFS's .zfs/snapshot)
    os.rmdir(mnt / ".snapshots" / next(n for n in os.listdir(mnt / ".snapshots") if "_" in n))
    assert not any("_" in n for n in os.listdir(mnt / ".snapshots"))
