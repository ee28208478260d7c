"""sqlite on the mount, the daemon SIGKILLed in the middle of its transactions:
after the next mount (same cache folder: its journal is replayed) the database
passes ``PRAGMA integrity_check`` and holds every transaction whose COMMIT
returned, in both durability modes (README, "Durability") and with both
sqlite journal modes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support.mounting import Drive, mounted_drive

pytestmark = pytest.mark.fuse

#: The writer: one INSERT a transaction, synchronous=FULL; prints each id once
#: its COMMIT has returned, until it is stopped (or the mount goes away).
WRITER = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("PRAGMA journal_mode=" + sys.argv[2])
con.execute("PRAGMA synchronous=FULL")
con.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB)")
i = 0
while True:
    i += 1
    con.execute("BEGIN")
    con.execute("INSERT INTO t (id, v) VALUES (?, ?)", (i, bytes([i % 256]) * (100 + i % 3000)))
    con.execute("COMMIT")
    print(i, flush=True)
"""

#: Transactions acknowledged before the kill.
BEFORE_KILL = 40


@pytest.fixture(params=["store", "local"])
def sqlite_drive(
    request: pytest.FixtureRequest, tmp_path: Path, any_store_url: tuple[str, dict[str, str]]
) -> Iterator[Drive]:
    """A mounted vault in fsync mode ``store`` or ``local``."""
    url, env = any_store_url
    with mounted_drive(url, tmp_path, env) as d:
        d.remount("-o", f"fsync={request.param}")
        yield d


@pytest.mark.parametrize("journal_mode", ["DELETE", "WAL"])
def test_sqlite_survives_a_killed_daemon(sqlite_drive: Drive, journal_mode: str) -> None:
    drive = sqlite_drive
    db = drive.mountpoint / "app.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), journal_mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    acked = 0
    try:
        assert writer.stdout is not None
        deadline = time.monotonic() + 120
        while acked < BEFORE_KILL:
            line = writer.stdout.readline()
            assert line, "the writer stopped before the kill"
            acked = int(line)
            assert time.monotonic() < deadline, f"only {acked} transactions in 120 s"
        drive.kill_daemon()  # in the middle of the writer's next transactions
        for line in writer.stdout:  # COMMITs that returned after the last read
            acked = int(line)
    finally:
        writer.kill()
        writer.wait()
    drive.lazy_unmount()
    drive.mount()  # the same cache folder: the journal is replayed
    check(db, acked)
    drive.remount()  # and what the replay committed opens again
    check(db, acked)


def check(db: Path, acked: int) -> None:
    """``db`` is sound and holds transactions 1 to ``acked`` (at least)."""
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ids = [row[0] for row in con.execute("SELECT id FROM t ORDER BY id")]
        assert ids[:acked] == list(range(1, acked + 1)), (len(ids), acked)
        assert len(ids) <= acked + 1  # at most the one in flight at the kill
        for i, v in con.execute("SELECT id, v FROM t"):
            assert v == bytes([i % 256]) * (100 + i % 3000), i
    finally:
        con.close()
