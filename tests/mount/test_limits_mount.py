"""``--upload-limit``, ``--download-limit`` and ``--transfers`` on a real
mount: an fsync of 4 MiB under a 1 MiB/s upload limit cannot return in
less than about two seconds, and reading it back cold under a download
limit likewise (lower bounds only: a slow machine cannot fail them)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..support.mounting import Drive


def test_limits_hold_on_a_mount(tmp_path: Path, any_store_url: tuple[str, dict[str, str]]) -> None:
    url, env = any_store_url
    d = Drive(url, tmp_path / "d", env)
    try:
        d.init()
        d.mount("--upload-limit", "1M", "--transfers", "2", "-o", "download_limit=1M")
        data = os.urandom(4 << 20)
        start = time.monotonic()
        with open(d.mountpoint / "big.bin", "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        took = time.monotonic() - start
        # 4 MiB at 1 MiB/s: one second of burst and one chunk of debt go at once
        assert took >= 1.8, took
        d.umount()
        d.mount("-o", "download_limit=1M,upload_limit=10M,transfers=3")
        start = time.monotonic()
        assert (d.mountpoint / "big.bin").read_bytes() == data
        assert time.monotonic() - start >= 1.8
    finally:
        d.cleanup()
    assert not d.log_problems()
