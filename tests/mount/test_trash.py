"""The trash of a mounted vault (docs/history.md): files and folders deleted
through the mount are listed by ``megafs trash list`` and come back byte for
byte with their modes, times, xattrs and hard links; so do items a desktop
moved to the freedesktop trash (``gio trash``)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from ..support.helpers import MEGAFS
from ..support.mounting import Drive, assert_same_tree, make_tree
from .test_snapshots import commit


def trash_list(d: Drive) -> list[dict[str, object]]:
    proc = d.megafs("trash", "list", str(d.mountpoint), "--json")
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_deleted_file_and_tree_come_back_from_the_trash(
    slow_drive: Drive, tmp_path: Path
) -> None:
    mnt = slow_drive.mountpoint
    make_tree(mnt / "t")  # hard links, xattrs, symlinks, odd modes and times
    (mnt / "keep.txt").write_bytes(b"stays")
    (mnt / "gone.txt").write_bytes(b"deleted file\n" * 1000)
    os.setxattr(mnt / "gone.txt", "user.tag", b"important")
    os.chmod(mnt / "gone.txt", 0o604)
    commit(slow_drive)
    copy = tmp_path / "copy"
    copy.mkdir()
    slow_drive.sh("cp", "-a", mnt / "t", mnt / "gone.txt", copy)
    assert trash_list(slow_drive) == []
    (mnt / "gone.txt").unlink()
    slow_drive.sh("rm", "-rf", mnt / "t")
    commit(slow_drive)
    items = {str(i["path"]): i for i in trash_list(slow_drive)}
    assert set(items) == {"gone.txt", "t"}
    assert items["t"]["dir"] is True and items["gone.txt"]["size"] == 13000
    text = slow_drive.megafs("trash", "list", str(mnt)).stdout
    assert "gone.txt" in text and " t\n" in text + "\n"
    for path in ("t", "gone.txt"):
        proc = slow_drive.megafs("trash", "restore", str(mnt / path))
        assert proc.returncode == 0, proc.stderr
    assert_same_tree(copy / "t", mnt / "t")
    assert (mnt / "gone.txt").read_bytes() == (copy / "gone.txt").read_bytes()
    assert os.getxattr(mnt / "gone.txt", "user.tag") == b"important"
    assert os.stat(mnt / "gone.txt").st_mode & 0o777 == 0o604
    assert os.stat(mnt / "gone.txt").st_mtime_ns == os.stat(copy / "gone.txt").st_mtime_ns
    # restoring again: the path is taken now, so it goes beside it
    proc = slow_drive.megafs("trash", "restore", str(mnt / "gone.txt"))
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in mnt.iterdir() if p.name.startswith("gone (restored ")]


def test_gio_trash_on_the_mount(slow_drive: Drive) -> None:
    mnt = slow_drive.mountpoint
    (mnt / "docs").mkdir()
    (mnt / "docs" / "report.txt").write_bytes(b"quarterly figures\n")
    slow_drive.sh("gio", "trash", mnt / "docs" / "report.txt")
    assert not (mnt / "docs" / "report.txt").exists()
    assert (mnt / f".Trash-{os.getuid()}" / "files" / "report.txt").exists()
    items = trash_list(slow_drive)
    assert [(i["id"], i["path"], i["device"]) for i in items] == [
        ("t1", "docs/report.txt", "desktop trash")
    ]
    proc = subprocess.run(
        [*MEGAFS, "trash", "restore", "t1"],
        cwd=mnt,
        env=slow_drive.env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (mnt / "docs" / "report.txt").read_bytes() == b"quarterly figures\n"
    assert trash_list(slow_drive) == []
    # empty: what is in the desktop trash goes
    (mnt / "old.txt").write_bytes(b"x")
    slow_drive.sh("gio", "trash", mnt / "old.txt")
    proc = slow_drive.megafs("trash", "empty", str(mnt))
    assert proc.returncode == 0, proc.stderr
    assert not list((mnt / f".Trash-{os.getuid()}" / "files").iterdir())
