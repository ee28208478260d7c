"""Browsing the past through the mount (docs/history.md): the hidden
read-only folder ``.snapshots`` holds one folder per kept root, each the
tree as it was, read with ``ls``, ``cat``, ``find`` and ``diff -r``, on both
kinds of store."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ..support.mounting import Drive, assert_same_tree, make_tree


def commit(drive: Drive) -> None:
    """Commit everything written so far (``megafs sync``: an fsync alone puts
    a device log object, which a commit folds in a second later)."""
    proc = drive.megafs("sync", str(drive.mountpoint))
    assert proc.returncode == 0, proc.stderr


def snapshots(mnt: Path) -> list[str]:
    return sorted(os.listdir(mnt / ".snapshots"))


def test_snapshots_show_the_tree_as_it_was(slow_drive: Drive, tmp_path: Path) -> None:
    mnt = slow_drive.mountpoint
    make_tree(mnt / "t")
    commit(slow_drive)
    copy = tmp_path / "copy"
    slow_drive.sh("cp", "-a", mnt / "t", copy)
    before = snapshots(mnt)
    # change the tree: an edit, a removal, a new file, a renamed folder
    (mnt / "t" / "small.txt").write_bytes(b"changed\n")
    for p in sorted((mnt / "t").rglob("*")):
        if p.is_file() and not p.is_symlink() and p.name != "small.txt":
            p.unlink()
            break
    (mnt / "t" / "new.bin").write_bytes(os.urandom(300_000))
    commit(slow_drive)
    after = snapshots(mnt)
    assert len(after) == len(before) + 1 and after[:-1] == before
    then = mnt / ".snapshots" / before[-1]

    # hidden from the root's listing, reachable by name
    assert ".snapshots" not in os.listdir(mnt)
    assert ".snapshots" not in slow_drive.sh("ls", "-a", mnt).stdout.decode().split()
    assert os.path.isdir(mnt / ".snapshots")
    # the tree as it was: names, modes, times, xattrs, hard links, contents
    assert_same_tree(copy, then / "t")
    slow_drive.sh("diff", "-r", "--no-dereference", copy, then / "t")
    found = slow_drive.sh("find", then / "t").stdout.decode().splitlines()
    assert len(found) == len(list(copy.rglob("*"))) + 1
    assert slow_drive.sh("cat", then / "t" / "small.txt").stdout != b"changed\n"
    assert (mnt / ".snapshots" / after[-1] / "t" / "new.bin").read_bytes() == (
        mnt / "t" / "new.bin"
    ).read_bytes()
    # and nothing there can be changed
    for attempt in (
        lambda: (then / "t" / "small.txt").write_bytes(b"x"),
        lambda: (then / "t" / "brand-new").write_bytes(b"x"),
        lambda: (then / "t" / "small.txt").unlink(),
        lambda: os.mkdir(then / "t" / "d"),
        lambda: os.rename(then / "t" / "small.txt", then / "t" / "other"),
        lambda: os.chmod(then / "t" / "small.txt", 0o600),
        lambda: os.setxattr(then / "t" / "small.txt", "user.x", b"1"),
        lambda: shutil.copy(mnt / "t" / "new.bin", then / "t" / "copied"),
    ):
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS, attempt
    # the snapshot's files copy out like any others
    slow_drive.sh("cp", "-a", then / "t" / "small.txt", mnt / "restored.txt")
    assert (mnt / "restored.txt").read_bytes() == (copy / "small.txt").read_bytes()


def test_every_committed_version_of_a_file_is_there(slow_drive: Drive) -> None:
    mnt = slow_drive.mountpoint
    versions = []
    for i in range(4):
        data = b"version %d\n" % i + os.urandom(50_000 * i)
        (mnt / "doc.txt").write_bytes(data)
        commit(slow_drive)
        versions.append(data)
    names = snapshots(mnt)
    got = [
        (mnt / ".snapshots" / n / "doc.txt").read_bytes()
        for n in names
        if (mnt / ".snapshots" / n / "doc.txt").exists()
    ]
    assert got == versions


def test_pinning_and_unpinning_through_the_mount(slow_drive: Drive) -> None:
    mnt = slow_drive.mountpoint
    (mnt / "a.txt").write_bytes(b"pinned state\n")
    os.mkdir(mnt / ".snapshots" / "before-upgrade")
    pinned = [n for n in snapshots(mnt) if n.endswith("_before-upgrade")]
    assert len(pinned) == 1
    # reachable under its name alone, too
    assert (mnt / ".snapshots" / "before-upgrade" / "a.txt").read_bytes() == b"pinned state\n"
    with pytest.raises(FileExistsError):
        os.mkdir(mnt / ".snapshots" / "before-upgrade")
    with pytest.raises(OSError) as e:
        os.mkdir(mnt / ".snapshots" / "no/slash")
    assert e.value.errno in (errno.ENOENT, errno.EINVAL)
    with pytest.raises(OSError) as e:
        os.rmdir(mnt / ".snapshots" / next(n for n in snapshots(mnt) if "_" not in n))
    assert e.value.errno == errno.EPERM
    os.rmdir(mnt / ".snapshots" / pinned[0])
    assert not [n for n in snapshots(mnt) if n.endswith("_before-upgrade")]
    # the name of the folder itself is taken in the root
    with pytest.raises(OSError):
        (mnt / ".snapshots").write_bytes(b"x")
    proc = subprocess.run(["mkdir", str(mnt / ".snapshots")], capture_output=True, check=False)
    assert proc.returncode != 0


def test_snapdir_visible_lists_the_folder(
    tmp_path: Path, any_store_url: tuple[str, dict[str, str]]
) -> None:
    url, env = any_store_url
    d = Drive(url, tmp_path / "d", env)
    try:
        d.init()
        d.mount("-o", "snapdir=visible")
        mnt = d.mountpoint
        (mnt / "a.txt").write_bytes(b"a")
        commit(d)
        assert sorted(os.listdir(mnt)) == [".snapshots", "a.txt"]
        found = d.sh("find", mnt, "-name", "a.txt").stdout.decode().split()
        assert len(found) >= 2  # the live file and at least one past copy
        proc = d.megafs("mount", url, str(tmp_path), "-o", "snapdir=sometimes")
        assert proc.returncode == 2 and "snapdir=sometimes" in proc.stderr
    finally:
        d.cleanup()
