"""The daemon SIGKILLed while it prunes and while ``megafs restore`` copies
into the mount loses nothing (docs/history.md, crash states): the live tree,
every kept root and the pins read back as they were, fsck finds nothing
missing or damaged (an interrupted commit leaves at most unreferenced
objects, which ``fsck --repair`` removes), on both kinds of store."""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support.helpers import MEGAFS
from ..support.mounting import Drive, mounts_of
from .test_snapshots import commit


@pytest.fixture
def slow_drive(tmp_path: Path, any_store_url: tuple[str, dict[str, str]]) -> Iterator[Drive]:
    url, env = any_store_url
    d = Drive(url, tmp_path / "d", env)
    # a killed daemon's journal replay is reported at WARNING
    d.allowed_log.append("journalled changes")
    try:
        d.init()
        d.mount("--commit-interval", "3600")
        yield d
    finally:
        d.cleanup()


def killed(d: Drive, after: float) -> None:
    """SIGKILL the daemon ``after`` seconds from now and clear the dead mount."""
    time.sleep(after)
    d.kill_daemon()
    d.lazy_unmount()
    end = time.monotonic() + 30
    while mounts_of(d.mountpoint) and time.monotonic() < end:
        time.sleep(0.05)


def fsck_ok(d: Drive) -> None:
    proc = d.megafs("fsck", d.url)
    assert "problem:" not in proc.stdout and "missing:" not in proc.stdout, proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = d.megafs("fsck", d.url, "--repair")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = d.megafs("fsck", d.url)
    assert proc.stdout.rstrip().endswith("clean"), proc.stdout


def test_killed_while_pruning(slow_drive: Drive) -> None:
    mnt = slow_drive.mountpoint
    rng = random.Random(3)
    versions: list[bytes] = []
    for i in range(30):
        data = b"state %d " % i + os.urandom(rng.choice([100, 5000, 90_000]))
        (mnt / "f.txt").write_bytes(data)
        commit(slow_drive)
        versions.append(data)
        if i == 9:
            os.mkdir(mnt / ".snapshots" / "ten")
    for trial in range(3):
        # keep nothing but pins and the newest: the prune drops many roots
        setter = threading.Thread(
            target=lambda: subprocess.run(
                [
                    "setfattr",
                    "-n",
                    "user.megafs.retention",
                    "-v",
                    "every=0s",
                    str(mnt / ".snapshots"),
                ],
                capture_output=True,
                check=False,
            )
        )
        setter.start()
        killed(slow_drive, rng.uniform(0.0, 0.15))
        setter.join()
        fsck_ok(slow_drive)
        slow_drive.mount("--commit-interval", "3600")
        assert (mnt / "f.txt").read_bytes() == versions[-1]
        assert (mnt / ".snapshots" / "ten" / "f.txt").read_bytes() == versions[9]
        # every kept root reads back whole
        for name in os.listdir(mnt / ".snapshots"):
            data = (mnt / ".snapshots" / name / "f.txt").read_bytes()
            assert data in versions, (trial, name)
        if trial < 2:
            for _ in range(5):  # more roots for the next prune to drop
                (mnt / "f.txt").write_bytes(versions[-1])
                os.utime(mnt / "f.txt")
                commit(slow_drive)
    slow_drive.umount()
    fsck_ok(slow_drive)


def test_killed_while_restoring(slow_drive: Drive) -> None:
    mnt = slow_drive.mountpoint
    big = os.urandom(24 << 20)
    (mnt / "big.bin").write_bytes(big)
    commit(slow_drive)
    (mnt / "big.bin").write_bytes(b"replaced")
    commit(slow_drive)
    restore = subprocess.Popen(
        [*MEGAFS, "restore", str(mnt / "big.bin"), "--version", "1"],
        env=slow_drive.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed(slow_drive, 0.3)
    restore.wait(timeout=60)
    fsck_ok(slow_drive)
    slow_drive.mount("--commit-interval", "3600")
    assert (mnt / "big.bin").read_bytes() == b"replaced"
    snaps = sorted(os.listdir(mnt / ".snapshots"))
    held = [mnt / ".snapshots" / s / "big.bin" for s in snaps]
    assert any(p.exists() and p.read_bytes() == big for p in held)
    # whatever the copy left is a partial file beside it; restoring again works
    for p in mnt.iterdir():
        if p.name.startswith("big (restored "):
            p.unlink()
    proc = slow_drive.megafs("restore", str(mnt / "big.bin"), "--version", "1")
    assert proc.returncode == 0, proc.stderr
    restored = [p for p in mnt.iterdir() if p.name.startswith("big (restored ")]
    assert len(restored) == 1 and restored[0].read_bytes() == big
    slow_drive.umount()
    fsck_ok(slow_drive)
