"""The runtime folder and its files: pid, daemon identity, status and log.

A pid file per mountpoint lets ``megafs umount`` find the daemon, signal it,
and wait for its exit status; the daemon's identity record next to it makes
sure a reused pid is never signalled (:func:`is_mount_daemon`).

The runtime folder is ``$XDG_RUNTIME_DIR/megafs``, else
``/tmp/megafs-<uid>/megafs``. Both levels must be real folders (no
symlinks) owned by this user; the base must not be writable by anyone else
and ``megafs`` itself must be private (no group or other bits; created
0700). Anything else is refused with :class:`LocalFolderError` before a
file is touched. Its files are created 0600 with ``O_NOFOLLOW``: small ones
are written to a fresh temporary file and renamed into place (which replaces
a symlink, never its target), the log is refused if it is a symlink.

Owns: the runtime folder's location and checks, the names and contents of
its files, and telling one process apart from a later one with its pid.
May not touch: stores, vaults, the filesystem model, FUSE; it signals and
forks nothing (that is :mod:`megafs.mount.daemon`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import stat
from typing import Any

from .. import errors
from ..errors import LocalFolderError, MegafsError, MountError

#: Flags for every file megafs opens in its runtime folder.
_RUNTIME_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


def runtime_base() -> str:
    """``$XDG_RUNTIME_DIR`` if set and not empty, else ``/tmp/megafs-<uid>``."""
    return os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/megafs-{os.getuid()}"


def check_own_folder(path: str, *, private: bool) -> None:
    """Raise LocalFolderError unless ``path`` is a folder only this user controls.

    That is: not a symlink (checked with ``lstat``), a folder, owned by
    ``os.getuid()``, and writable by no one else; with ``private`` also no
    group or other permission bits at all (mode 0700 or stricter).
    """
    try:
        st = os.lstat(path)
    except OSError as e:
        raise LocalFolderError(f"runtime folder {path}: {e.strerror or e}") from None
    uid = os.getuid()
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symlink"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "is not a folder"
    elif st.st_uid != uid:
        problem = f"is owned by uid {st.st_uid}, not by you (uid {uid})"
    elif private and mode & 0o077:
        problem = f"has mode {mode:04o}, not 0700"
    elif mode & 0o022:
        problem = f"has mode {mode:04o}: others can write in it"
    else:
        return
    raise LocalFolderError(
        f"unsafe runtime folder {path}: it {problem}; megafs keeps its pid and log files "
        "only in a folder that is yours alone (XDG_RUNTIME_DIR may name one)"
    )


def _make_folder(path: str, *, parents: bool) -> None:
    """Create ``path`` with mode 0700 unless something already has that name."""
    try:
        if parents:
            os.makedirs(path, mode=0o700, exist_ok=True)
        else:
            os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise LocalFolderError(f"cannot create runtime folder {path}: {e.strerror or e}") from None


def runtime_dir() -> str:
    """The checked runtime folder ``<runtime_base()>/megafs``, created (0700) if missing.

    Raises LocalFolderError if it or its base fails :func:`check_own_folder`
    (the base needs only to be writable by this user alone; ``megafs`` must be
    private). A pre-existing folder is never repaired, only refused.
    """
    base = runtime_base()
    _make_folder(base, parents=True)
    check_own_folder(base, private=False)
    path = os.path.join(base, "megafs")
    _make_folder(path, parents=False)
    check_own_folder(path, private=True)
    return path


def pid_path(mountpoint: str) -> str:
    """``<key>.pid`` in the runtime folder: the daemon's pid, while it serves ``mountpoint``."""
    key = hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:24]
    return os.path.join(runtime_dir(), f"{key}.pid")


def ident_path(pid_file: str) -> str:
    """``<key>.daemon``, next to ``pid_file``: the daemon's :func:`process_identity`."""
    return pid_file[:-4] + ".daemon"


def status_path(pid_file: str) -> str:
    """``<key>.pid.status``, next to ``pid_file``: the daemon's exit status, once it is out."""
    return pid_file + ".status"


def socket_path(pid_file: str) -> str:
    """``<key>.sock``, next to ``pid_file``: where the daemon answers ``megafs status``."""
    return pid_file[:-4] + ".sock"


#: Largest status answer a client reads.
STATUS_MAX = 1 << 20


def short_socket_path(path: str, folder_fd: int) -> str:
    """``path`` as a socket address short enough for ``sockaddr_un`` (108
    bytes): through ``/proc/self/fd`` and ``folder_fd``, an open descriptor
    of its folder (a deep runtime folder would not fit otherwise)."""
    return f"/proc/self/fd/{folder_fd}/{os.path.basename(path)}"


def ask_status(path: str, timeout: float = 15.0) -> dict[str, Any]:
    """The status of the daemon listening on ``path`` (:mod:`.status`).
    Blocking. OSError if nobody answers; ValueError if the answer is not one."""
    return ask(path, {"op": "status"}, timeout)


def ask(path: str, request: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
    """Send ``request`` (one JSON object: ``op`` and its arguments) to the
    daemon listening on ``path`` and return its answer (:mod:`.status`).
    Blocking. OSError if nobody answers; ValueError if the answer is not one."""
    folder = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(short_socket_path(path, folder))
            s.sendall(json.dumps(request).encode() + b"\n")
            return _read_status(s)
    finally:
        os.close(folder)


def ask_daemon(mountpoint: str, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """:func:`ask` the daemon serving ``mountpoint``; raise the error it
    answers with as the matching :mod:`megafs.errors` exception, and
    MountError if it does not answer. Blocking."""
    try:
        answer = ask(socket_path(pid_path(mountpoint)), request, timeout)
    except TimeoutError:
        raise MountError(
            f"the megafs daemon of {mountpoint} did not answer within {timeout:.0f} s "
            "(it may still be working: see megafs status)"
        ) from None
    except (OSError, ValueError) as e:
        raise MountError(f"the megafs daemon of {mountpoint} does not answer: {e}") from None
    if "error" in answer:
        kind = getattr(errors, str(answer.get("kind")), MegafsError)
        if not (isinstance(kind, type) and issubclass(kind, MegafsError)):
            kind = MegafsError
        # the daemon's message as it is (whatever the class's own arguments)
        err = kind.__new__(kind)
        Exception.__init__(err, str(answer["error"]))
        raise err
    return answer


def _read_status(s: socket.socket) -> dict[str, Any]:
    buf = b""
    while len(buf) < STATUS_MAX:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    answer = json.loads(buf)
    if not isinstance(answer, dict):
        raise ValueError("not a status")
    return answer


def log_path(mountpoint: str) -> str:
    """Where a background daemon logs (next to its pid file)."""
    return pid_path(mountpoint)[:-4] + ".log"


def write_runtime_file(path: str, text: str) -> None:
    """Replace ``path`` (in the runtime folder) by a new 0600 file holding ``text``.

    The text goes to a fresh temporary file (``O_EXCL | O_NOFOLLOW``) that is
    then renamed over ``path``: a symlink at ``path`` is replaced, its target
    never opened.
    """
    tmp = f"{path}.tmp.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _RUNTIME_FLAGS, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_runtime_file(path: str) -> str | None:
    """The text of ``path`` (in the runtime folder); None if missing or a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | _RUNTIME_FLAGS)
    except OSError:
        return None
    try:
        return os.read(fd, 4096).decode(errors="replace")
    finally:
        os.close(fd)


def open_log(path: str, *, follow: bool) -> int:
    """Open the daemon's log for appending (created 0600); return the descriptor.

    ``follow`` is for a ``--log-file`` the user named; the default log in the
    runtime folder is opened with ``O_NOFOLLOW``, and a symlink there is
    refused with LocalFolderError.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    if not follow:
        flags |= os.O_NOFOLLOW
    try:
        return os.open(path, flags, 0o600)
    except OSError as e:
        if not follow and os.path.islink(path):
            raise LocalFolderError(
                f"refusing the log file {path}: it is a symlink, and megafs never writes "
                "through a symlink in its runtime folder"
            ) from None
        raise LocalFolderError(f"cannot open the log file {path}: {e.strerror or e}") from None


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "-"


def process_identity(pid: int) -> str | None:
    """``"<pid> <start time> <boot id>"``: names one process for as long as the
    machine runs, even once its pid is reused (the start time is field 22 of
    ``/proc/<pid>/stat``, in clock ticks since boot). None if ``pid`` is gone.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return f"{pid} {fields[19].decode()} {_boot_id()}"


def _runs_megafs(pid: int) -> bool:
    """Whether ``pid``'s command line runs megafs (``python -m megafs``, ``megafs``)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return any(os.path.basename(a) == b"megafs" for a in argv)


def is_mount_daemon(pid: int, ident_file: str) -> bool:
    """Whether ``pid`` is the daemon that wrote ``ident_file`` (and still runs).

    The daemon records :func:`process_identity` of itself there when it
    starts. True only if that record names ``pid``, the process now holding
    ``pid`` has the same start time and boot id (so it is not a reused pid),
    and its command line runs megafs.
    """
    recorded = read_runtime_file(ident_file)
    if recorded is None or recorded.split(" ", 1)[0] != str(pid):
        return False
    return process_identity(pid) == recorded.strip() and _runs_megafs(pid)
