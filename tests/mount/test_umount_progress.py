"""``megafs umount`` while the daemon still uploads: on a terminal it shows
the bytes sent and what is left (asked on the daemon's status socket, drawn
by :mod:`megafs.cli.progress`); on a pipe it prints nothing at all."""

from __future__ import annotations

import os
import pty
import re
import subprocess
from pathlib import Path

from ..support.helpers import MEGAFS
from ..support.mounting import UMOUNT_DEADLINE, Drive, mounts_of


def busy_drive(tmp_path: Path) -> tuple[Drive, bytes]:
    """A mounted local vault with 4 MiB written but not committed, uploading
    at 1 MiB/s: its unmount takes a few seconds."""
    d = Drive(str(tmp_path / "store"), tmp_path / "d")
    d.init()
    d.mount("--commit-interval", "3600", "--upload-limit", "1M")
    data = os.urandom(4 << 20)
    (d.mountpoint / "big.bin").write_bytes(data)
    return d, data


def check_stored(d: Drive, data: bytes) -> None:
    assert not mounts_of(d.mountpoint)
    d.mount()
    assert (d.mountpoint / "big.bin").read_bytes() == data
    d.umount()


def test_umount_on_a_pipe_prints_nothing(tmp_path: Path) -> None:
    d, data = busy_drive(tmp_path)
    try:
        proc = d.megafs("umount", str(d.mountpoint), timeout=UMOUNT_DEADLINE)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "" and proc.stderr == ""
        check_stored(d, data)
    finally:
        d.cleanup()
    assert not d.log_problems()


def test_umount_on_a_terminal_shows_what_is_left(tmp_path: Path) -> None:
    d, data = busy_drive(tmp_path)
    try:
        master, slave = pty.openpty()
        try:
            proc = subprocess.Popen(
                [*MEGAFS, "umount", str(d.mountpoint)],
                env=d.env({"TERM": "xterm"}),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=slave,
            )
            os.close(slave)
            shown = b""
            while True:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
            out, _ = proc.communicate(timeout=UMOUNT_DEADLINE)
        finally:
            os.close(master)
        text = shown.decode(errors="replace")
        assert proc.returncode == 0, text
        assert out == b""
        assert "uploading" in text, text
        assert re.search(
            r"uploading: [\d.]+[kMG]?B .*left: [\d.]+[kMG]?B not sent, \d+ uploads", text
        )
        assert re.search(r"\r {20,}\r$", text), repr(text[-200:])  # the bar is erased
        check_stored(d, data)
    finally:
        d.cleanup()
    assert not d.log_problems()
