"""Where a mount logs: a size-capped, rotated file, or the systemd journal.

A background daemon logs to its log file (``<key>.log`` in the runtime
folder, or ``--log-file``), which is capped at :data:`LOG_MAX_BYTES` and
rotated: when a record would take it past the cap, ``FILE`` becomes
``FILE.1`` (``FILE.1`` becomes ``FILE.2``, and so on) and a new ``FILE``
begins; :data:`LOG_BACKUPS` old files are kept, so a log never takes more
than about 40 MB. Every file is opened as :func:`megafs.mount.open_log` opens
the first (0600; no symlink followed in the runtime folder).

Under systemd (:func:`journal_stderr`: standard error is the journal), a
mount logs to standard error instead, at the daemon's level (INFO, DEBUG
with ``-d``), one line a record with the journal's priority prefix
(``<4>`` for a warning) and no timestamp of its own: the journal adds
one. That holds for ``megafs mount -f`` in a service unit and for a daemon
started by a mount unit (an fstab line), which keeps the journal as its
standard error.

Owns: the daemon's log handlers and formats. May not touch: what is logged.
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
import sys
from typing import TextIO

from ..mount import open_log

#: A log file is rotated before it grows past this many bytes.
LOG_MAX_BYTES = 10 << 20
#: How many rotated files (``FILE.1`` ... ``FILE.3``) are kept.
LOG_BACKUPS = 3
#: What each line of the log file holds (tests read the level as the third word).
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: What each journal line holds after its priority prefix: no time.
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"

#: syslog priorities of the logging levels (sd-daemon(3)), highest level first.
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class RotatingLog(logging.handlers.RotatingFileHandler):
    """A :class:`~logging.handlers.RotatingFileHandler` on the log file that
    :func:`megafs.mount.open_log` opened as ``fd`` (each later file opened
    the same way: ``follow`` as there)."""

    def __init__(
        self,
        path: str,
        fd: int,
        *,
        follow: bool,
        max_bytes: int = LOG_MAX_BYTES,
        backups: int = LOG_BACKUPS,
    ) -> None:
        self.follow = follow
        super().__init__(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True
        )
        self.stream = os.fdopen(fd, "a", buffering=1, encoding="utf-8")

    def _open(self) -> io.TextIOWrapper:
        fd = open_log(self.baseFilename, follow=self.follow)
        return os.fdopen(fd, "a", buffering=1, encoding="utf-8")


class JournalFormatter(logging.Formatter):
    """:data:`JOURNAL_FORMAT`, each line after the syslog priority of the
    record's level (``<4>`` for a warning), which the journal takes off."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        level = next((p for lv, p in _PRIORITY.items() if record.levelno >= lv), 7)
        # the journal makes an entry of each line: every one gets the prefix
        return "".join(f"<{level}>{line}" for line in super().format(record).splitlines(True))


def journal_stderr(fd: int = 2) -> bool:
    """Whether ``fd`` (standard error) is the systemd journal: whether
    ``JOURNAL_STREAM`` (``DEVICE:INODE``, set by systemd for a process whose
    output it connects to the journal) names ``fd``, as systemd.exec(5)
    advises. ``INVOCATION_ID`` alone is not enough: a service's output may
    go elsewhere, and a shell started from one (a desktop's terminal, a CI
    runner's job) inherits the variable while its output goes to a terminal
    or a pipe.
    """
    journal = os.environ.get("JOURNAL_STREAM")
    if not journal:
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return journal == f"{st.st_dev}:{st.st_ino}"


def _replace_handlers(handler: logging.Handler, *, debug: bool) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # httpx logs every request at INFO: only with --debug, or the log grows without end.
    logging.getLogger("httpx").setLevel(logging.DEBUG if debug else logging.WARNING)


def log_to_file(
    path: str,
    fd: int,
    *,
    follow: bool,
    debug: bool,
    max_bytes: int = LOG_MAX_BYTES,
    backups: int = LOG_BACKUPS,
) -> RotatingLog:
    """In the daemon: send every log record to the rotated log file ``path``
    (opened as ``fd``) alone; INFO and up, everything with ``debug``."""
    handler = RotatingLog(path, fd, follow=follow, max_bytes=max_bytes, backups=backups)
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    _replace_handlers(handler, debug=debug)
    return handler


def log_to_journal(stream: TextIO | None = None, *, debug: bool) -> logging.Handler:
    """Send every log record to ``stream`` (default: standard error), the
    journal, alone; INFO and up, everything with ``debug``."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JournalFormatter())
    _replace_handlers(handler, debug=debug)
    return handler


__all__ = [
    "FILE_FORMAT",
    "JOURNAL_FORMAT",
    "LOG_BACKUPS",
    "LOG_MAX_BYTES",
    "JournalFormatter",
    "RotatingLog",
    "journal_stderr",
    "log_to_file",
    "log_to_journal",
]
