"""A mount's logs for real: under systemd (``JOURNAL_STREAM`` naming its
standard error) ``mount -f`` and a background daemon both log there, with
priority prefixes and no timestamps, and write no log file."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from ..support.helpers import MEGAFS
from ..support.mounting import MOUNT_DEADLINE, UMOUNT_DEADLINE, Drive

#: A timestamp as the log file writes it (and the journal must not get).
STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def journal_pipe() -> tuple[int, int, str]:
    """A pipe and the JOURNAL_STREAM value naming its writing end."""
    r, w = os.pipe()
    st = os.fstat(w)
    return r, w, f"{st.st_dev}:{st.st_ino}"


def read_to_end(fd: int) -> str:
    with os.fdopen(fd, "rb") as f:
        return f.read().decode(errors="replace")


def check_journal_lines(text: str) -> None:
    lines = text.splitlines()
    assert "<6>INFO megafs.mount: signal 15: unmounting" in lines, text
    for line in lines:
        assert re.match(r"<[0-7]>(DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ", line), line
        assert not STAMP.search(line), line
        assert not re.match(r"<[0-4]>", line), line  # no warning or worse


def test_mount_f_under_systemd_logs_to_the_journal(tmp_path: Path) -> None:
    d = Drive(str(tmp_path / "store"), tmp_path / "d")
    r, w, stream = journal_pipe()
    try:
        d.init()
        proc = subprocess.Popen(
            [*MEGAFS, "mount", "-f", d.url, str(d.mountpoint), "--cache-dir", str(d.cache_dir)],
            env=d.env({"JOURNAL_STREAM": stream}),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=w,
        )
        os.close(w)
        end = time.monotonic() + MOUNT_DEADLINE
        while not os.path.ismount(d.mountpoint):
            assert proc.poll() is None and time.monotonic() < end, "mount -f did not mount"
            time.sleep(0.05)
        (d.mountpoint / "a").write_text("a")
        d.umount()
        assert proc.wait(timeout=UMOUNT_DEADLINE) == 0
        text = read_to_end(r)
    finally:
        d.cleanup()
    check_journal_lines(text)
    assert f"<6>INFO megafs: mounted {d.mountpoint}" in text.splitlines(), text
    assert not d.log_file.exists()


def test_a_daemon_under_systemd_keeps_the_journal(tmp_path: Path) -> None:
    """As a mount unit runs an fstab line: ``megafs mount`` forks a daemon,
    which goes on logging to the journal after the command has returned."""
    d = Drive(str(tmp_path / "store"), tmp_path / "d")
    r, w, stream = journal_pipe()
    try:
        d.init()
        proc = subprocess.run(
            [*MEGAFS, "mount", d.url, str(d.mountpoint), "--cache-dir", str(d.cache_dir)],
            env=d.env({"JOURNAL_STREAM": stream}),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=w,
            timeout=MOUNT_DEADLINE,
            check=False,
        )
        os.close(w)
        assert proc.returncode == 0
        assert os.path.ismount(d.mountpoint)
        (d.mountpoint / "a").write_text("a")
        d.umount()
        text = read_to_end(r)  # the end: the daemon has exited
    finally:
        d.cleanup()
    check_journal_lines(text)
    assert not d.log_file.exists()


def test_debug_logs_every_fuse_request_with_its_duration(tmp_path: Path) -> None:
    """``mount -d``: each request in the log with its arguments and how long
    it took; without ``-d``, none."""
    d = Drive(str(tmp_path / "store"), tmp_path / "d")
    try:
        d.init()
        d.mount()
        (d.mountpoint / "before").write_bytes(b"b" * 1000)
        d.umount()
        assert "fuse: " not in d.log_text()
        proc = d.try_mount("-d")  # (its own debug lines go to its stderr)
        assert proc.returncode == 0, proc.stderr
        assert os.path.ismount(d.mountpoint)
        (d.mountpoint / "new").write_bytes(b"n" * 200_000)
        assert (d.mountpoint / "before").read_bytes() == b"b" * 1000  # cold: a read request
        d.umount()
        text = d.log_text()
    finally:
        d.cleanup()
    trace = r"DEBUG megafs\.fuse\.operations: fuse: "
    ms = r" \d+\.\d\d ms$"
    assert re.search(trace + r"lookup\(parent=1\) ino=\d+" + ms, text, re.M), text
    assert re.search(trace + r"write\(fh=\d+, off=0, size=\d+\) \d+" + ms, text, re.M), text
    assert re.search(trace + r"read\(fh=\d+, off=0, size=\d+\) 1000 bytes" + ms, text, re.M), text
    assert not d.log_problems()
