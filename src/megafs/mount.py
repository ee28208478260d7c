"""Mount lifecycle: unlock, mount, serve, flush, commit, unmount.

``megafs mount`` checks the mountpoint and reads the passphrase in the
foreground process, then (unless ``-f``) forks a daemon and waits on a pipe
until the daemon says the mount is ready or why it failed, so the command
returns only once the folder is usable or with the one-line reason.

The daemon's single trio run owns one nursery holding every background task
(periodic commits, signal handling) and ``pyfuse3.main``. When the kernel
unmounts (``fusermount3 -u``, ``megafs umount``, SIGTERM, SIGINT) the
nursery ends, then everything is committed and the writer lease released
before the process exits 0. If the final commit fails, the changes are still
in the local journal and the next mount uploads them; the exit status is
then non-zero.

A pid file per mountpoint (in the runtime folder) lets ``megafs umount``
find the daemon, signal it, and wait for its exit status.

The runtime folder is ``$XDG_RUNTIME_DIR/megafs``, else
``/tmp/megafs-<uid>/megafs``. Both levels must be real folders (no
symlinks) owned by this user; the base must not be writable by anyone else
and ``megafs`` itself must be private (no group or other bits; created
0700). Anything else is refused with :class:`LocalFolderError` before a
file is touched. Its files (pid, daemon identity, status, log) are created
0600 with ``O_NOFOLLOW``: small ones are written to a fresh temporary file
and renamed into place (which replaces a symlink, never its target), the
log is refused if it is a symlink.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from .cache import ContentCache
from .errors import (
    LocalFolderError,
    MegafsError,
    MountError,
    StoreAuthError,
    StoreReadOnly,
    UsageError,
)
from .journal import Journal, claim_cache_dir
from .model import Filesystem
from .stores import LocalStore, open_store
from .vault import Vault, pid_alive

log = logging.getLogger(__name__)

#: Options of mount(8)/fstab that mean nothing to megafs and are ignored.
IGNORED_OPTIONS = {
    "rw", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "auto", "noauto", "user",
    "nouser", "users", "_netdev", "nofail", "defaults", "async", "atime", "noatime",
    "relatime", "diratime", "nodiratime",
}


DEFAULT_CACHE_SIZE = 1 << 30


@dataclass
class MountConfig:
    store_url: str
    mountpoint: str  # absolute, symlinks resolved (see set_readahead)
    endpoint: str | None = None
    foreground: bool = False
    debug: bool = False
    read_only: bool = False
    allow_other: bool = False
    default_permissions: bool = True
    uid: int | None = None
    gid: int | None = None
    umask: int | None = None
    cache_dir: str | None = None
    #: Bytes of store objects kept on the local disk. None: 1 GiB for a remote
    #: store, none for a local folder (reading it again is as fast as reading
    #: a copy of it, and the copy would double the disk traffic).
    cache_size: int | None = None
    commit_interval: float = 5.0
    #: How long a file operation waits for an unreachable store before EIO.
    store_timeout: float = 60.0
    readahead_kb: int = 1024
    log_file: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def apply_options(self, opts: str) -> None:
        """Apply a ``-o a,b=c`` option string (mount(8) and fstab style)."""
        for raw in opts.split(","):
            opt = raw.strip()
            if not opt or opt in IGNORED_OPTIONS:
                continue
            key, _, val = opt.partition("=")
            try:
                if key == "ro":
                    self.read_only = True
                elif key == "allow_other":
                    self.allow_other = True
                elif key == "default_permissions":
                    self.default_permissions = True
                elif key == "uid":
                    self.uid = int(val)
                elif key == "gid":
                    self.gid = int(val)
                elif key == "umask":
                    self.umask = int(val, 8)
                elif key in ("cache_dir", "cache-dir"):
                    self.cache_dir = val
                elif key in ("cache_size", "cache-size"):
                    self.cache_size = parse_size(val)
                elif key == "endpoint":
                    self.endpoint = val
                elif key in ("passfile", "extpass", "log"):
                    self.extra[key] = val
                elif key == "commit_interval":
                    self.commit_interval = float(val)
                elif key == "store_timeout":
                    self.store_timeout = float(val)
                    if not self.store_timeout > 0:
                        raise ValueError(val)
                elif key == "readahead_kb":
                    self.readahead_kb = int(val)
                else:
                    raise UsageError(f"unknown mount option: {opt}")
            except ValueError:
                raise UsageError(f"bad value for mount option: {opt}") from None


def parse_size(text: str) -> int:
    """'512M', '2G', '1048576' -> bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    for suffix, m in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        if t.endswith(suffix):
            mult, t = m, t[:-1]
            break
    value = int(float(t) * mult)
    if value <= 0:
        raise ValueError(text)
    return value


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


def _pid_path(mountpoint: str) -> str:
    key = hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:24]
    return os.path.join(runtime_dir(), f"{key}.pid")


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


def is_mount_daemon(pid: int, ident_path: str) -> bool:
    """Whether ``pid`` is the daemon that wrote ``ident_path`` (and still runs).

    The daemon records :func:`process_identity` of itself there when it
    starts. True only if that record names ``pid``, the process now holding
    ``pid`` has the same start time and boot id (so it is not a reused pid),
    and its command line runs megafs.
    """
    recorded = read_runtime_file(ident_path)
    if recorded is None or recorded.split(" ", 1)[0] != str(pid):
        return False
    return process_identity(pid) == recorded.strip() and _runs_megafs(pid)


def check_mountpoint(mountpoint: str) -> None:
    if not os.path.isdir(mountpoint):
        raise MountError(f"mountpoint does not exist or is not a folder: {mountpoint}")
    if os.path.ismount(mountpoint):
        raise MountError(f"mountpoint is already mounted: {mountpoint}")


def default_cache_dir(vault_id: bytes) -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "megafs", vault_id.hex())


async def _commit_loop(fs: Filesystem, interval: float) -> None:
    """Commit every ``interval`` seconds when there are changes; renew the lease.

    A failed commit (the store away, full, refusing) is logged and tried
    again next time; its changes stay in memory and in the journal. A commit
    uploads in parallel, so its errors come as an exception group.
    """
    last = trio.current_time()
    while True:
        await trio.sleep(interval)
        now = trio.current_time()
        try:
            if fs.has_changes():
                await fs.commit()
                last = now
            elif now - last > 60:
                fs.renew_lease()
                await fs.commit()
                last = now
        except* MegafsError as failed:
            log.warning("background commit failed, will retry: %s", _first_leaf(failed))


def _first_leaf(e: BaseException) -> BaseException:
    """The first exception of a (nested) exception group, to name in a log line."""
    while isinstance(e, BaseExceptionGroup):
        e = e.exceptions[0]
    return e


def set_readahead(real_mountpoint: str, kb: int) -> bool:
    """Raise the kernel's readahead for this FUSE mount (needs root).

    ``real_mountpoint`` must be resolved *before* mounting: resolving it now
    would send a lookup to this very daemon before it serves, and hang.

    The kernel reads ahead 128 KiB by default; 1 MiB lets a sequential reader
    keep several requests in flight and matches the chunk size. The mount's
    device number comes from /proc/self/mountinfo, so this sends no request
    to our own filesystem. Returns False where it could not be set.
    """
    real = real_mountpoint
    dev = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[4] == real:
                    dev = fields[2]  # the last match is the topmost mount
        if dev is None:
            return False
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as f:
            f.write(str(kb))
    except OSError:
        return False
    return True


async def _raise_readahead(mountpoint: str, kb: int) -> None:
    """Set the readahead once the kernel has finished the FUSE handshake (which
    resets it to the 128 KiB libfuse asks for); retried briefly until it stays."""
    for _ in range(20):
        await trio.sleep(0.1)
        if not set_readahead(mountpoint, kb):
            log.info("could not raise the kernel readahead (not root?)")
            return
    log.debug("kernel readahead set to %d KiB", kb)


async def _signals(on_signal: Callable[[], None]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
        async for signum in sigs:
            log.info("signal %d: unmounting", signum)
            on_signal()


async def serve(cfg: MountConfig, passphrase: str, ready: Callable[[], None]) -> None:
    """Unlock, mount, serve until unmounted, then commit. Raises MegafsError.

    A store that refuses writes (read-only folder, read-only credentials) is
    served read-only, with a warning in the log. Until the folder is mounted,
    store calls fail after the store's few default attempts; from then on
    each waits up to ``cfg.store_timeout`` for an unreachable store.
    """
    import pyfuse3

    from .fuse_ops import Operations, Options

    store = open_store(cfg.store_url, endpoint=cfg.endpoint)
    try:
        vault = await Vault.unlock(store, passphrase)
        cache_dir = cfg.cache_dir or default_cache_dir(vault.vault_id)
        claim_cache_dir(cache_dir, vault.keys)  # before anything in it is touched
        journal = None if cfg.read_only else Journal(cache_dir, vault.keys)
        cache_size = cfg.cache_size
        if cache_size is None:
            cache_size = 0 if isinstance(store, LocalStore) else DEFAULT_CACHE_SIZE
        cache = ContentCache(cache_dir, cache_size, vault.layout.sealed_block)
        try:
            fs = await Filesystem.load(
                vault, writable=not cfg.read_only, journal=journal, cache=cache
            )
        except* (StoreReadOnly, StoreAuthError) as refused:
            # The header and root were read, so the store refuses writes only:
            # serve what can be read, as mount(8) does for a write-protected disk.
            log.warning(
                "the store refuses writes, mounting read-only (changes in the local "
                "journal stay there for a writable mount): %s",
                _first_leaf(refused),
            )
            cfg = dataclasses.replace(cfg, read_only=True)
            if journal is not None:
                journal.close()
                journal = None
            fs = await Filesystem.load(vault, writable=False, cache=cache)
        # Mounting fails fast; once the folder is in use, operations ride out outages.
        store.set_timeout(cfg.store_timeout)
        ops = Operations(
            fs, Options(read_only=cfg.read_only, uid=cfg.uid, gid=cfg.gid, umask=cfg.umask)
        )
        options = {"fsname=megafs", "subtype=megafs"}
        if cfg.default_permissions:
            options.add("default_permissions")
        if cfg.read_only:
            options.add("ro")
        if cfg.allow_other:
            options.add("allow_other")
        if cfg.debug:
            options.add("debug")
        try:
            pyfuse3.init(ops, cfg.mountpoint, options)
        except RuntimeError as e:
            raise MountError(f"could not mount {cfg.mountpoint}: {e}") from None
        # The model's background work (chunk uploads, read-ahead) lives in
        # its own nursery, which is left to drain after the kernel is gone.
        async with trio.open_nursery() as background:
            fs.start_background(background)
            try:
                ready()
                async with trio.open_nursery() as nursery:
                    if not cfg.read_only:
                        nursery.start_soon(_commit_loop, fs, cfg.commit_interval)
                    nursery.start_soon(_signals, pyfuse3.terminate)
                    if cfg.readahead_kb:
                        nursery.start_soon(_raise_readahead, cfg.mountpoint, cfg.readahead_kb)
                    await pyfuse3.main()
                    nursery.cancel_scope.cancel()
            finally:
                pyfuse3.close(unmount=True)
            await fs.close()
            fs.stop_background()
        if journal is not None:
            journal.close()
    finally:
        await store.aclose()


def run_foreground(cfg: MountConfig, passphrase: str, ready: Callable[[], None]) -> None:
    """Serve in this process. Raises MegafsError.

    For ``megafs umount`` it writes, in the runtime folder: ``<key>.daemon``
    (this process's :func:`process_identity`), then ``<key>.pid`` (the pid
    alone); on the way out ``<key>.pid.status`` (0, or 1 if serving failed)
    and it removes the other two.
    """
    pid_path = _pid_path(cfg.mountpoint)
    ident_path = _ident_path(pid_path)
    write_runtime_file(ident_path, process_identity(os.getpid()) or f"{os.getpid()} - -")
    write_runtime_file(pid_path, str(os.getpid()))
    status = 1
    try:
        trio.run(serve, cfg, passphrase, ready)
        status = 0
    finally:
        write_runtime_file(pid_path + ".status", str(status))
        for path in (pid_path, ident_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _ident_path(pid_path: str) -> str:
    return pid_path[:-4] + ".daemon"


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


def log_path(mountpoint: str) -> str:
    """Where a background daemon logs (next to its pid file)."""
    return _pid_path(mountpoint)[:-4] + ".log"


def umount(mountpoint: str, timeout: float = 3600.0) -> int:
    """Unmount and wait until the daemon has committed and exited. Returns its status.

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
    pid_path = _pid_path(mp)
    status_path = pid_path + ".status"
    try:
        pid = int((read_runtime_file(pid_path) or "").strip())
    except ValueError:
        pid = 0
    if pid and not is_mount_daemon(pid, _ident_path(pid_path)):
        if os.path.ismount(mp):
            log.warning(
                "pid %d in %s is not the daemon of %s, so it is not signalled; unmounting "
                "without waiting for the daemon's final commit",
                pid,
                pid_path,
                mountpoint,
            )
        pid = 0
    if pid:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(status_path)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pid = 0
    if not pid:
        if not os.path.ismount(mp):
            raise MountError(f"not mounted: {mountpoint}")
        res = subprocess.run(["fusermount3", "-u", mp], capture_output=True, text=True)
        if res.returncode:
            raise MountError(f"could not unmount {mountpoint}: {res.stderr.strip()}")
        return 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            break
        time.sleep(0.05)
    else:
        raise MountError(f"the daemon of {mountpoint} did not exit within {timeout:.0f} s")
    try:
        return int((read_runtime_file(status_path) or "").strip() or "1")
    except ValueError:
        return 1
