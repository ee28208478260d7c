"""Through a real mount of a local folder: large writes go once, into their
chunk objects, and a killed daemon or a lost journal loses nothing that was
acknowledged (docs/concurrency.md, "Writing each byte once")."""

from __future__ import annotations

import os
from pathlib import Path

from megafs.cli.exit_codes import Exit

from ..support.mounting import mounted_drive

PIECE = 128 * 1024


def write_file(path: Path, data: bytes, *, fsync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, len(data), PIECE):
            os.write(fd, data[off : off + PIECE])
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def tree_bytes(folder: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern) if p.is_file())


def test_large_writes_survive_a_kill_written_once(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with mounted_drive(str(store), tmp_path, {}) as drive:
        drive.remount("--commit-interval", "3600")
        mp, journal = drive.mountpoint, drive.cache_dir / "journal"
        a, b = os.urandom(8 << 20), os.urandom(3 << 20)
        write_file(mp / "a", a, fsync=False)
        write_file(mp / "b", b, fsync=True)
        # the journal names the blocks: the data went once, into the store
        assert tree_bytes(journal, "*.log") < 256 << 10

        # a killed daemon: the same cache folder replays the staged blocks
        drive.kill_daemon()
        drive.lazy_unmount()
        drive.mount("--commit-interval", "3600")
        assert (mp / "a").read_bytes() == a
        assert (mp / "b").read_bytes() == b

        # a lost machine: fsynced data comes back from the device log and the
        # staged blocks it names, with no journal at all
        c = os.urandom((2 << 20) + 5)
        write_file(mp / "c", c, fsync=True)
        drive.kill_daemon()
        drive.lazy_unmount()
        for seg in journal.glob("*.log"):
            seg.unlink()
        # fsck counts the staged objects the device log names as referenced,
        # and will not repair (commit) before a mount folded the log in
        checked = drive.megafs("fsck", drive.url)
        assert checked.returncode == 0 and "unreferenced" not in checked.stdout, checked.stdout
        refused = drive.megafs("fsck", "--repair", drive.url)
        assert refused.returncode == Exit.BUSY, refused.stdout + refused.stderr
        assert "mount the vault once" in refused.stderr
        drive.mount()
        assert (mp / "c").read_bytes() == c
        assert (mp / "a").read_bytes() == a
        drive.umount()
        fsck = drive.megafs("fsck", drive.url)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        assert "unreferenced" not in fsck.stdout, fsck.stdout  # no stage left behind
        drive.mount()
    assert "restored" in drive.log_text()
