"""The mount commands: ``mount`` (also ``megafs STORE MOUNTPOINT -o OPTS``, as
mount.fuse3 calls it) and ``umount``.

``mount`` checks the mountpoint and the runtime folder and opens the log
before the passphrase is read, and every secret variable is out of the
environment before the daemon starts
(:func:`megafs.client.passphrase.scrub_environment`). The daemon logs to its log
file only, size-capped and rotated, or under systemd to the journal
(:mod:`.logs`).

``umount`` on a terminal shows what the daemon still uploads while it
waits (:class:`UploadWatch`); on a pipe it prints nothing but an error.

Owns: the mount options on the command line, the daemon's logging, turning
a daemon failure into the foreground's exit code and one line, what
``umount`` shows while it waits.
May not touch: the runtime files, forking and serving themselves
(:mod:`megafs.mount`), the vault, the filesystem, FUSE.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable

from ..client import passphrase
from ..errors import MountError
from ..mount import (
    MountConfig,
    check_mountpoint,
    daemonize,
    log_path,
    open_log,
    runtime_dir,
    umount,
)
from ..mount.runtime import ask_status, pid_path, socket_path
from .exit_codes import exit_code, reason
from .logs import journal_stderr, log_to_file, log_to_journal
from .options import (
    get_passphrase,
    passphrase_options,
    positive_float,
    positive_int,
    size_arg,
    store_arg,
)
from .progress import Progress, progress, size_text, wanted
from .registry import command

log = logging.getLogger("megafs")


def mount_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing empty folder")
    p.add_argument(
        "-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr"
    )
    p.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPTS",
        help="comma-separated mount options: ro, allow_other, default_permissions, uid=N, "
        "gid=N, umask=OCTAL, cache_dir=DIR, cache_size=SIZE, store_timeout=SECONDS, "
        "passfile=FILE, endpoint=URL, device_name=NAME, poll_interval=SECONDS, "
        "fsync=store|local, snapdir=hidden|visible, upload_limit=RATE, download_limit=RATE, "
        "transfers=N",
    )
    p.add_argument("--cache-dir", metavar="DIR", help="default: $XDG_CACHE_HOME/megafs/<vault id>")
    p.add_argument(
        "--cache-size",
        metavar="SIZE",
        type=size_arg,
        default=None,
        help="default: 1G for S3, 0 for a local folder",
    )
    p.add_argument(
        "--commit-interval",
        metavar="SECONDS",
        type=float,
        default=5.0,
        help="commit changes to the store this often (default 5)",
    )
    p.add_argument(
        "--poll-interval",
        metavar="SECONDS",
        type=float,
        default=3.0,
        help="look for other devices' changes this often (default 3; 0: never)",
    )
    p.add_argument(
        "--store-timeout",
        metavar="SECONDS",
        type=positive_float,
        default=None,
        help="how long a file operation waits for an unreachable store before it fails "
        "with EIO (default 60)",
    )
    p.add_argument(
        "--upload-limit",
        metavar="RATE",
        type=size_arg,
        help="send at most RATE bytes per second of objects (K, M, G suffixes; e.g. 2M)",
    )
    p.add_argument(
        "--download-limit",
        metavar="RATE",
        type=size_arg,
        help="receive at most RATE bytes per second of objects",
    )
    p.add_argument(
        "--transfers",
        metavar="N",
        type=positive_int,
        help="at most N object uploads and downloads at once",
    )
    p.add_argument("--log-file", metavar="FILE", help="where the background daemon logs")
    p.add_argument(
        "--device-name",
        metavar="NAME",
        help="this device's name in the vault, shown by info (default: the host name)",
    )


@command(
    "mount",
    "mount a vault as a folder (also: megafs STORE MOUNTPOINT -o OPTS, for mount.fuse3)",
    store_arg,
    mount_options,
    passphrase_options,
)
def cmd_mount(args: argparse.Namespace) -> None:
    """Mount; the runtime folder is checked (and the log opened) before the
    passphrase is read, and every secret variable is out of the environment
    before the daemon starts (:func:`megafs.client.passphrase.scrub_environment`)."""
    from ..mount.serve import run_foreground  # loads the model and FUSE: only here

    cfg = MountConfig(
        args.store,
        os.path.realpath(args.mountpoint),
        endpoint=args.endpoint,
        foreground=args.foreground,
        debug=args.debug,
        cache_dir=args.cache_dir,
        commit_interval=args.commit_interval,
        poll_interval=args.poll_interval,
        log_file=args.log_file,
        device_name=args.device_name,
    )
    for opts in args.options:
        cfg.apply_options(opts)
    if args.cache_size is not None:
        cfg.cache_size = args.cache_size
    if args.store_timeout is not None:
        cfg.store_timeout = args.store_timeout
    for key in ("upload_limit", "download_limit", "transfers"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    if cfg.extra.get("passfile") and not args.passfile:
        args.passfile = cfg.extra["passfile"]
    if cfg.extra.get("extpass") and not args.extpass:
        args.extpass = cfg.extra["extpass"]
    check_mountpoint(cfg.mountpoint)
    runtime_dir()  # an unsafe runtime folder is refused before the passphrase is read
    journal = journal_stderr() and not cfg.log_file
    logfile = cfg.log_file or log_path(cfg.mountpoint)
    follow = cfg.log_file is not None
    # the daemon's log: the journal (its standard error, kept), else its file
    log_fd = None
    if not cfg.foreground:
        log_fd = os.dup(2) if journal else open_log(logfile, follow=follow)
    try:
        secret = get_passphrase(args)
    finally:
        passphrase.scrub_environment()
    if log_fd is None:
        if journal:
            log_to_journal(debug=args.debug)
        run_foreground(cfg, secret, lambda: log.info("mounted %s", cfg.mountpoint))
        return

    def child(ready: Callable[[], None]) -> tuple[int, str]:
        if journal:
            log_to_journal(os.fdopen(log_fd, "w", buffering=1), debug=args.debug)
        else:
            log_to_file(logfile, log_fd, follow=follow, debug=args.debug)
        try:
            run_foreground(cfg, secret, ready)
        except (Exception, KeyboardInterrupt, BaseExceptionGroup) as e:
            log.error("%s", e, exc_info=True)
            return exit_code(e), reason(e)
        return 0, ""

    code, why = daemonize(child)
    os.close(log_fd)
    if code:
        print(f"megafs: {why}", file=sys.stderr)
        raise SystemExit(code)


class UploadWatch:
    """What a stopping daemon still has to upload, for ``megafs umount`` on a terminal.

    Called while umount waits, it asks the daemon's status socket (at most
    every :attr:`EVERY` seconds) and, once the daemon has anything not in
    the store, draws a bar (:mod:`.progress`): the bytes sent to the store
    since umount began, then what is left: data not handed to an upload
    yet and the uploads still running. It stops asking once the daemon no
    longer answers (its final commit is done). Blocking, as umount is.
    """

    EVERY = 0.5

    def __init__(self, socket: str) -> None:
        self.socket = socket
        self._next = 0.0
        self._done = False
        self._sent_before: int | None = None
        self._stack = contextlib.ExitStack()
        self._bar: Progress | None = None

    def __call__(self) -> None:
        now = time.monotonic()
        if self._done or now < self._next:
            return
        self._next = now + self.EVERY
        try:
            st = ask_status(self.socket, timeout=2.0)
            pending, sent = st["pending"], int(st["traffic"]["uploaded"])
            unsent, uploads = int(pending["dirty_bytes"]), int(pending["uploads"])
            changes = int(pending["operations"])
        except TimeoutError:
            return  # busy (its store check waits for a slow store): ask again later
        except (OSError, ValueError, KeyError, TypeError):
            self._done = True  # the daemon is past its final commit, or gone
            return
        if self._sent_before is None:
            self._sent_before = sent
        if self._bar is None:
            if not (unsent or uploads or changes):
                return
            self._bar = self._stack.enter_context(progress(unit="B", desc="uploading"))
        self._bar.set(max(0, sent - self._sent_before))
        self._bar.note(f"left: {size_text(unsent)} not sent, {uploads} uploads")

    def close(self) -> None:
        """Erase the bar, if there is one."""
        self._stack.close()


def umount_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT")


@command(
    "umount",
    "flush, commit and unmount; returns when everything is in the store",
    umount_options,
)
def cmd_umount(args: argparse.Namespace) -> None:
    """Unmount; on a terminal, show what the daemon still uploads (:class:`UploadWatch`)."""
    watch = None
    if not args.quiet and wanted():
        watch = UploadWatch(socket_path(pid_path(args.mountpoint)))
    try:
        status = umount(args.mountpoint, waiting=watch)
    finally:
        if watch is not None:
            watch.close()
    if status:
        raise MountError(
            f"unmounted, but the final commit failed (status {status}); the changes stay in "
            f"the local journal for the next mount; see {log_path(args.mountpoint)}"
        )
