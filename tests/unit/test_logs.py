"""The daemon's logs (:mod:`megafs.cli.logs`): the file is capped and
rotated; the journal gets priority prefixes and no timestamps; systemd's
journal is recognised as systemd.exec(5) says."""

from __future__ import annotations

import logging
import os
import pty
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from megafs.cli.logs import RotatingLog, journal_stderr, log_to_journal
from megafs.mount import open_log


@pytest.fixture
def private_logger() -> Iterator[logging.Logger]:
    """A logger of its own (the root's handlers, pytest's, stay as they are)."""
    logger = logging.getLogger("megafs.test-logs")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        yield logger
    finally:
        for h in list(logger.handlers):
            logger.removeHandler(h)
            h.close()


def test_the_log_file_is_capped_and_rotated(tmp_path: Path, private_logger: logging.Logger) -> None:
    path = tmp_path / "mount.log"
    path.write_text("from an earlier mount\n")
    handler = RotatingLog(
        str(path), open_log(str(path), follow=False), follow=False, max_bytes=2000, backups=2
    )
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    private_logger.addHandler(handler)
    for i in range(300):
        private_logger.info("line %04d of the log, long enough to fill it", i)
    handler.flush()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["mount.log", "mount.log.1", "mount.log.2"], files
    for name in files:
        st = os.lstat(tmp_path / name)
        assert st.st_size <= 2000, (name, st.st_size)
        assert stat.S_IMODE(st.st_mode) == 0o600
    newest = path.read_text().splitlines()
    assert newest[-1] == "INFO line 0299 of the log, long enough to fill it"
    older = (tmp_path / "mount.log.1").read_text().splitlines()
    assert int(older[-1].split()[2]) + 1 == int(newest[0].split()[2])  # nothing lost between
    assert "from an earlier mount" not in (tmp_path / "mount.log.2").read_text()


def test_journal_lines_have_priorities_and_no_time(
    tmp_path: Path, private_logger: logging.Logger
) -> None:
    out = tmp_path / "journal"
    with open(out, "w") as stream:
        handler = log_to_journal(stream, debug=True)  # sets the root's handler: take it back
        logging.getLogger().removeHandler(handler)
        private_logger.addHandler(handler)
        private_logger.debug("asked")
        private_logger.info("mounted /mnt")
        private_logger.warning("store slow\nsecond line")
        private_logger.error("commit failed")
    assert out.read_text().splitlines() == [
        "<7>DEBUG megafs.test-logs: asked",
        "<6>INFO megafs.test-logs: mounted /mnt",
        "<4>WARNING megafs.test-logs: store slow",
        "<4>second line",
        "<3>ERROR megafs.test-logs: commit failed",
    ]


def test_the_journal_is_recognised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    r, w = os.pipe()
    master, slave = pty.openpty()
    try:
        st = os.fstat(w)
        assert not journal_stderr(w)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert journal_stderr(w)
        assert not journal_stderr(slave)  # JOURNAL_STREAM names another file
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not journal_stderr(w)
        monkeypatch.delenv("JOURNAL_STREAM")
        monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef")
        assert not journal_stderr(w)  # started by systemd, but its output goes elsewhere
    finally:
        for fd in (r, w, master, slave):
            os.close(fd)
