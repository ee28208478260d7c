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
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from .cache import ContentCache
from .errors import MegafsError, MountError, StoreAuthError, StoreReadOnly, UsageError
from .journal import Journal
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


def runtime_dir() -> str:
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/megafs-{os.getuid()}"
    path = os.path.join(base, "megafs")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _pid_path(mountpoint: str) -> str:
    key = hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:24]
    return os.path.join(runtime_dir(), f"{key}.pid")


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
                fs.meta_dirty = True  # renew the writer lease
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
    """Serve in this process; pid file for ``megafs umount``. Raises MegafsError."""
    pid_path = _pid_path(cfg.mountpoint)
    with open(pid_path, "w") as f:
        f.write(str(os.getpid()))
    status = 1
    try:
        trio.run(serve, cfg, passphrase, ready)
        status = 0
    finally:
        with open(pid_path + ".status", "w") as f:
            f.write(str(status))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pid_path)


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
    """Unmount and wait until the daemon has committed and exited. Returns its status."""
    mp = os.path.realpath(mountpoint)
    pid_path = _pid_path(mp)
    status_path = pid_path + ".status"
    try:
        with open(pid_path) as f:
            pid = int(f.read().strip())
    except (FileNotFoundError, ValueError):
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
        with open(status_path) as f:
            return int(f.read().strip() or "1")
    except (FileNotFoundError, ValueError):
        return 1
