"""``megafs status``: the daemon answers on a 0600 Unix socket in the
runtime folder, to its own user only, with what is not in the store yet,
the last commit, the store's reachability and traffic (README, "megafs
status"), on both kinds of store."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

from ..support.mounting import Drive


def status(d: Drive, *args: str) -> list[dict[str, Any]]:
    proc = d.megafs("status", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_status_of_a_mount(tmp_path: Path, any_store_url: tuple[str, dict[str, str]]) -> None:
    url, env = any_store_url
    d = Drive(url, tmp_path / "d", env)
    try:
        d.init()
        d.mount("--commit-interval", "3600")
        mnt = d.mountpoint
        [st] = status(d, str(mnt))
        assert st["mountpoint"] == str(mnt) and st["read_only"] is False
        gen = st["last_commit"]["generation"]
        assert st["store_state"] == {
            "reachable": True,
            "latency_ms": st["store_state"]["latency_ms"],
        }
        (mnt / "big.bin").write_bytes(os.urandom(3 << 20))
        [st] = status(d, str(mnt))
        pending = st["pending"]
        assert pending["operations"] > 0 and pending["since"] is not None
        if "://" in url:  # S3: the journal holds the data until a commit uploads it
            assert pending["journal_bytes"] > 3 << 20
        else:  # a local folder: the data went once, into its chunk objects
            assert pending["journal_bytes"] < 64 << 10 and pending["uploads"] == 3
        fd = os.open(mnt / "big.bin", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        [st] = status(d)  # every mount of the user: this one
        assert st["pending"]["operations"] == 0  # durable: in this device's log in the store
        assert st["last_commit"]["log_puts"] >= 1
        deadline = time.monotonic() + 30
        while st["last_commit"]["generation"] == gen and time.monotonic() < deadline:
            time.sleep(0.2)  # the commit that folds the log comes a second later
            [st] = status(d)
        assert st["pending"]["operations"] == 0 and st["pending"]["dirty_bytes"] == 0
        assert st["last_commit"]["generation"] > gen and st["last_commit"]["error"] is None
        assert st["traffic"]["uploaded"] >= 3 << 20
        assert [dev["this"] for dev in st["devices"]] == [True]
        (mnt / "small.txt").write_bytes(b"x")
        assert d.megafs("sync", str(mnt)).stdout.startswith("committed: root generation")
        assert d.megafs("sync", str(mnt / "small.txt")).stdout.startswith("nothing to commit")
        assert d.megafs("sync", str(d.tmp)).returncode == 2  # not in a mount
        assert st["history"]["kept"] >= 2
        text = d.megafs("status", str(mnt)).stdout
        assert "everything is in the store" in text and "reachable" in text
        # the socket: 0600, in the private runtime folder, silent to other users
        [sock] = list((d.runtime_dir / "megafs").glob("*.sock"))
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        # another user cannot even reach it (the system Python: this one may
        # live in root's home)
        other = subprocess.run(
            [
                "/usr/bin/python3",
                "-c",
                "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
                str(sock),
            ],
            capture_output=True,
            text=True,
            user=65534,
            check=False,
        )
        assert other.returncode != 0 and "PermissionError" in other.stderr, other.stderr
        d.umount()
        assert not sock.exists()
        proc = d.megafs("status", str(mnt))
        assert proc.returncode == 14 and proc.stderr.startswith("megafs: ")
    finally:
        d.cleanup()
    assert not d.log_problems()
