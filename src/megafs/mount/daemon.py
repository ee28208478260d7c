"""The mount daemon as a process: fork it and wait until it is ready
(:func:`daemonize`), and stop it and wait for its exit status (:func:`umount`).

``megafs mount`` checks the mountpoint and reads the passphrase in the
foreground process, then (unless ``-f``) forks a daemon and waits on a pipe
until the daemon says the mount is ready or why it failed, so the command
returns only once the folder is usable or with the one-line reason.
``megafs umount`` finds the daemon through its pid file, signals it, and waits
until it has committed and exited.

Owns: fork, the readiness pipe, signalling a daemon and waiting for it.
May not touch: stores, vaults, the filesystem model, FUSE sessions (the kernel
unmount without a daemon is ``fusermount3 -u``); what runs inside the daemon
is the caller's (:func:`megafs.mount.serve.run_foreground`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from ..client.passphrase import child_environment
from ..errors import MountError
from ..vault.vault import pid_alive
from .runtime import ident_path, is_mount_daemon, pid_path, read_runtime_file, status_path

log = logging.getLogger("megafs.mount")


def daemonize(run: Callable[[Callable[[], None]], tuple[int, str]]) -> tuple[int, str]:
    """Fork; the child calls ``run(ready)``; the parent returns once ready or failed.

    ``run`` returns (exit status, one-line reason). The parent gets (0, "")
    as soon as the child calls ``ready()``, else the child's status and
    reason, read from a pipe. The child detaches (new session, standard
    streams on /dev/null) and never returns from this function.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(rfd)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        told = False

        def ready() -> None:
            nonlocal told
            if not told:
                told = True
                os.write(wfd, b"0 ok\n")
                os.close(wfd)

        code, reason = 1, "the mount daemon failed"
        try:
            code, reason = run(ready)
        finally:
            if not told:
                os.write(wfd, f"{code or 1} {reason}\n".encode())
                os.close(wfd)
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        line = r.readline().decode(errors="replace").strip()
    code_text, _, reason = line.partition(" ")
    if code_text == "0":
        return 0, ""
    os.waitpid(pid, 0)
    try:
        return int(code_text), reason
    except ValueError:
        return 1, "the mount daemon exited unexpectedly"


def umount(
    mountpoint: str, timeout: float = 3600.0, *, waiting: Callable[[], None] | None = None
) -> int:
    """Unmount and wait until the daemon has committed and exited. Returns its status.

    While waiting for the daemon, ``waiting`` (if given) is called about
    every 50 ms; it may ask the daemon's status socket, which answers until
    the final commit is done.

    The daemon is signalled (SIGTERM) only if :func:`is_mount_daemon` confirms
    that the pid in the pid file is the very process that started this mount:
    a stale pid file whose pid now belongs to another process, or one that is
    not backed by the daemon's identity record, gets nobody signalled. Then
    (as with no pid file at all) the mount, if any, is unmounted with
    ``fusermount3 -u`` and 0 returned without waiting for the daemon's commit.
    Raises LocalFolderError if the runtime folder is unsafe, MountError if
    nothing is mounted or unmounting fails.
    """
    mp = os.path.realpath(mountpoint)
    pid_file = pid_path(mp)
    status_file = status_path(pid_file)
    try:
        pid = int((read_runtime_file(pid_file) or "").strip())
    except ValueError:
        pid = 0
    if pid and not is_mount_daemon(pid, ident_path(pid_file)):
        if os.path.ismount(mp):
            log.warning(
                "pid %d in %s is not the daemon of %s, so it is not signalled; unmounting "
                "without waiting for the daemon's final commit",
                pid,
                pid_file,
                mountpoint,
            )
        pid = 0
    if pid:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(status_file)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pid = 0
    if not pid:
        if not os.path.ismount(mp):
            raise MountError(f"not mounted: {mountpoint}")
        res = subprocess.run(
            ["fusermount3", "-u", mp], capture_output=True, text=True, env=child_environment()
        )
        if res.returncode:
            raise MountError(f"could not unmount {mountpoint}: {res.stderr.strip()}")
        return 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            break
        if waiting is not None:
            waiting()
        time.sleep(0.05)
    else:
        raise MountError(f"the daemon of {mountpoint} did not exit within {timeout:.0f} s")
    try:
        return int((read_runtime_file(status_file) or "").strip() or "1")
    except ValueError:
        return 1
