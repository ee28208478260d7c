"""One mount's life inside the daemon: unlock, mount, serve, flush, commit, unmount.

The single trio run owns one nursery holding every background task
(periodic commits, signal handling, the readahead setting) and the kernel
session (:class:`megafs.fuse.operations.FuseSession`). When the kernel unmounts
(``fusermount3 -u``, ``megafs umount``, SIGTERM, SIGINT) the nursery ends,
then everything is committed and the writer lease released before the
process exits 0. If the final commit fails, the changes are still in the
local journal and the next mount uploads them; the exit status is then
non-zero. ``megafs status`` answers from the start until that final commit
is done (``megafs umount`` shows from it what is left to upload).

Owns: the order of a mount's steps, the periodic commit loop, the signals
that end a mount, and the pid, identity and status files while serving.
May not touch: the FUSE library (only :mod:`megafs.fuse.operations` imports it), the
model's state (it asks, e.g. :meth:`Filesystem.renew_lease`), the store's
objects (the vault and the model read and write them).

Importing this module loads the filesystem model and the FUSE library, so
:mod:`megafs.mount` does not import it: a mount does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import signal
from collections.abc import Awaitable, Callable

import trio

from ..client.cache import ContentCache
from ..client.journal import Journal, claim_cache_dir
from ..errors import MegafsError, StoreAuthError, StoreReadOnly, first_leaf
from ..fs.filesystem import Filesystem
from ..fuse.operations import FuseSession, Operations, Options
from ..stores import LocalStore, Store, open_store
from ..stores.limits import LimitedStore, Meter
from ..vault.vault import Vault
from . import status as status_server
from .config import DEFAULT_CACHE_SIZE, MountConfig, default_cache_dir
from .notify import SystemdNotifier
from .runtime import (
    ident_path,
    pid_path,
    process_identity,
    socket_path,
    status_path,
    write_runtime_file,
)
from .status import MountState

log = logging.getLogger("megafs.mount")


#: Seconds after an fsync's device log object until the commit that folds it
#: into the root (at most the commit interval).
FOLD_DELAY = 1.0


async def _commit_loop(fs: Filesystem, interval: float, state: MountState) -> None:
    """Commit every ``interval`` seconds when there are changes.

    A failed commit (the store away, full, refusing) is logged and tried
    again next time; its changes stay in memory and in the journal. A commit
    uploads in parallel, so its errors come as an exception group.
    """
    while True:
        await trio.sleep(interval)
        await _commit_if_changed(fs, state)


async def _commit_if_changed(fs: Filesystem, state: MountState) -> None:
    """One background commit, if anything changed; a failure is logged and
    noted in ``state``, and tried again by the caller's next turn."""
    try:
        if fs.has_changes():
            await fs.commit()
            state.committed()
    except* MegafsError as failed:
        log.warning("background commit failed, will retry: %s", first_leaf(failed))
        state.failed(str(first_leaf(failed)))


async def _fold_loop(fs: Filesystem, delay: float, state: MountState) -> None:
    """Commit ``delay`` seconds after an fsync put a device log object, so
    that what fsync made durable reaches the root (and other devices) soon,
    whatever the commit interval; fsyncs meanwhile share that commit."""
    while True:
        await fs.committer.wait_logged()
        await trio.sleep(delay)
        await _commit_if_changed(fs, state)


async def _poll_loop(fs: Filesystem, interval: float) -> None:
    """Every ``interval`` seconds, look for other devices' commits and merge
    them in (:meth:`Filesystem.refresh`: one read of the root pointer when
    nothing changed). Failures are logged and tried again next time."""
    while True:
        await trio.sleep(interval)
        try:
            await fs.refresh()
        except* MegafsError as failed:
            log.warning("looking for other devices' changes failed: %s", first_leaf(failed))


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


async def _in_scope(scope: trio.CancelScope, run: Callable[[], Awaitable[None]]) -> None:
    """``await run()`` inside ``scope``: a task of a nursery that its owner
    can end alone."""
    with scope:
        await run()


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
    each waits up to ``cfg.store_timeout`` for an unreachable store. Under
    systemd (``NOTIFY_SOCKET``), it notifies ``READY=1`` once the folder is
    usable and ``STOPPING=1`` when unmounting begins (:mod:`.notify`).
    """
    systemd = SystemdNotifier.from_environment()  # READY=1 once usable, STOPPING=1
    store: Store = open_store(cfg.store_url, endpoint=cfg.endpoint)
    local_store = isinstance(store, LocalStore)
    meter = Meter(store)  # what megafs status reports of the traffic
    store = meter
    if cfg.upload_limit or cfg.download_limit or cfg.transfers:
        store = LimitedStore(
            store,
            upload=cfg.upload_limit,
            download=cfg.download_limit,
            transfers=cfg.transfers,
        )
    try:
        vault = await Vault.unlock(store, passphrase)
        # no other process of this machine writes the vault as this device
        writer_lock = None if cfg.read_only else vault.state.hold_writer()
        cache_dir = cfg.cache_dir or default_cache_dir(vault.vault_id)
        claim_cache_dir(cache_dir, vault.keys)  # before anything in it is touched
        journal = None if cfg.read_only else Journal(cache_dir, vault.keys)
        cache_size = cfg.cache_size
        if cache_size is None:
            cache_size = 0 if local_store else DEFAULT_CACHE_SIZE
        cache = ContentCache(cache_dir, cache_size, vault.layout.sealed_block)
        try:
            fs = await Filesystem.load(
                vault,
                writable=not cfg.read_only,
                journal=journal,
                cache=cache,
                fsync_local=cfg.fsync == "local",
                device_name=cfg.device_name,
            )
        except* (StoreReadOnly, StoreAuthError) as refused:
            # The header and root were read, so the store refuses writes only:
            # serve what can be read, as mount(8) does for a write-protected disk.
            log.warning(
                "the store refuses writes, mounting read-only (changes in the local "
                "journal stay there for a writable mount): %s",
                first_leaf(refused),
            )
            cfg = dataclasses.replace(cfg, read_only=True)
            if journal is not None:
                journal.close()
                journal = None
            fs = await Filesystem.load(vault, writable=False, cache=cache)
        # Mounting fails fast; once the folder is in use, operations ride out outages.
        store.set_timeout(cfg.store_timeout)
        ops = Operations(
            fs,
            Options(
                read_only=cfg.read_only,
                uid=cfg.uid,
                gid=cfg.gid,
                umask=cfg.umask,
                snapdir_visible=cfg.snapdir_visible,
            ),
        )
        # (before mounting: resolving the mountpoint afterwards would ask ourselves)
        status_socket = socket_path(pid_path(cfg.mountpoint))
        session = FuseSession.open(ops, cfg.mountpoint, cfg.fuse_options())
        # The model's background work (chunk uploads, read-ahead) lives in
        # its own nursery, which is left to drain after the kernel is gone.
        async with trio.open_nursery() as background:
            fs.start_background(background)
            # megafs status answers until the final commit is done (megafs
            # umount shows what is left to upload), so it lives out here.
            state = MountState(cfg.mountpoint, cfg.store_url, cfg.read_only)
            status_scope = trio.CancelScope()
            background.start_soon(
                _in_scope,
                status_scope,
                functools.partial(status_server.serve, status_socket, fs, store, meter, state),
            )
            try:
                ready()
                systemd.notify("READY=1")
                async with trio.open_nursery() as nursery:
                    if not cfg.read_only:
                        nursery.start_soon(_commit_loop, fs, cfg.commit_interval, state)
                        nursery.start_soon(
                            _fold_loop, fs, min(cfg.commit_interval, FOLD_DELAY), state
                        )
                        ops.start_invalidator(nursery)  # merges happen in commits too
                        if cfg.poll_interval > 0:
                            nursery.start_soon(_poll_loop, fs, cfg.poll_interval)
                    nursery.start_soon(_signals, session.terminate)
                    if cfg.readahead_kb:
                        nursery.start_soon(_raise_readahead, cfg.mountpoint, cfg.readahead_kb)
                    await session.run()
                    nursery.cancel_scope.cancel()
            finally:
                systemd.notify("STOPPING=1")
                session.close()
            await fs.close()
            status_scope.cancel()  # (on an exception the nursery cancels it)
            fs.stop_background()
        if journal is not None:
            journal.close()
        if writer_lock is not None:
            os.close(writer_lock)
    finally:
        await store.aclose()


def run_foreground(cfg: MountConfig, passphrase: str, ready: Callable[[], None]) -> None:
    """Serve in this process. Raises MegafsError.

    For ``megafs umount`` it writes, in the runtime folder: ``<key>.daemon``
    (this process's :func:`process_identity`), then ``<key>.pid`` (the pid
    alone); on the way out ``<key>.pid.status`` (0, or 1 if serving failed)
    and it removes the other two.
    """
    pid_file = pid_path(cfg.mountpoint)
    ident_file = ident_path(pid_file)
    write_runtime_file(ident_file, process_identity(os.getpid()) or f"{os.getpid()} - -")
    write_runtime_file(pid_file, str(os.getpid()))
    status = 1
    try:
        trio.run(serve, cfg, passphrase, ready)
        status = 0
    finally:
        write_runtime_file(status_path(pid_file), str(status))
        for path in (pid_file, ident_file):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
