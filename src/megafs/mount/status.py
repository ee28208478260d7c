"""``megafs status``: the running daemon answers on a Unix socket.

The daemon listens on ``<key>.sock`` in the runtime folder
(:func:`~.runtime.socket_path`; :func:`~.runtime.ask_status` is the client side) (next to its pid
file; mode 0600 in a 0700 folder) and answers each connection that comes
from its own user (checked with ``SO_PEERCRED``) with one JSON object, the
*status*, then closes it. :func:`gather` makes the status; its keys are
stable (README, "megafs status") and new ones may be added:

* ``mountpoint``, ``store``, ``pid``, ``version``, ``read_only``;
* ``pending``: what is not in the store yet: ``operations`` (changes made
  since the last commit), ``dirty_bytes`` (file data in memory),
  ``uploads`` (chunks waiting for or in upload), ``since`` (when the oldest
  of them was made, seconds since the epoch, or null), ``journal_bytes``;
* ``last_commit``: ``time`` and ``generation`` of the newest root this
  device made or merged, ``commits`` (by this mount), ``error`` (the last
  failed commit's message and ``error_time``, null once a commit succeeds);
* ``store_state``: ``reachable`` and ``latency_ms`` of one read of the root
  pointer made for this answer (null when unreachable within 5 s);
* ``traffic``: ``upload_bps`` and ``download_bps`` over the last 10 s,
  ``uploaded`` and ``downloaded`` bytes since the mount;
* ``cache``: ``bytes``, ``limit``, ``hits``, ``misses``;
* ``devices``: name, last commit time and generation of each device of the
  vault; ``conflicts``: the last conflict copies merges made (folder inode,
  name, time); ``history``: ``kept`` past states.

May not touch: the filesystem model's components (it reads
:meth:`Filesystem.status`), pyfuse3.

Concurrency: trio, the mount's thread; one short task per connection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from .. import __version__
from ..errors import MegafsError, UsageError, first_leaf
from ..fs import shares
from ..fs.filesystem import Filesystem
from ..stores.base import Store
from ..stores.limits import Meter
from .runtime import short_socket_path

log = logging.getLogger(__name__)

#: How long the store check of one answer may take.
PROBE_TIMEOUT = 5.0


@dataclass
class MountState:
    """What the mount's own loops tell the status: the last commit error,
    the merges' conflict copies, when changes began waiting."""

    mountpoint: str
    store_url: str
    read_only: bool
    error: str | None = None
    error_time: float | None = None
    conflicts: list[dict[str, Any]] = field(default_factory=list)

    def failed(self, message: str) -> None:
        self.error, self.error_time = message, time.time()

    def committed(self) -> None:
        self.error = self.error_time = None


async def _probe(store: Store) -> tuple[bool, float | None]:
    start = trio.current_time()
    with trio.move_on_after(PROBE_TIMEOUT):
        try:
            await store.read_pointer("root")
        except MegafsError:
            return False, None
        return True, round((trio.current_time() - start) * 1000, 1)
    return False, None


async def gather(fs: Filesystem, store: Store, meter: Meter, state: MountState) -> dict[str, Any]:
    """The status (module docstring). Reads the root pointer once."""
    model = await fs.status()
    reachable, latency = await _probe(store)
    return {
        "mountpoint": state.mountpoint,
        "store": state.store_url,
        "pid": os.getpid(),
        "version": __version__,
        "read_only": state.read_only,
        "pending": model["pending"],
        "last_commit": {
            **model["last_commit"],
            "error": state.error,
            "error_time": state.error_time,
        },
        "store_state": {"reachable": reachable, "latency_ms": latency},
        "traffic": meter.traffic(),
        "cache": model["cache"],
        "devices": model["devices"],
        "conflicts": state.conflicts[-20:],
        "history": model["history"],
    }


def _peer_uid(sock: trio.socket.SocketType) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


async def serve(path: str, fs: Filesystem, store: Store, meter: Meter, state: MountState) -> None:
    """Answer status requests on ``path`` until cancelled; the socket file
    is removed on the way out. A socket that cannot be made is logged, and
    the mount goes on without ``megafs status``."""
    try:
        await _serve(path, fs, store, meter, state)
    except OSError as e:
        log.warning("megafs status will not answer for this mount: %s", e)


async def _serve(path: str, fs: Filesystem, store: Store, meter: Meter, state: MountState) -> None:
    folder = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        await _listen(path, short_socket_path(path, folder), fs, store, meter, state)
    finally:
        os.close(folder)


async def _listen(
    path: str, address: str, fs: Filesystem, store: Store, meter: Meter, state: MountState
) -> None:
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # one left by a killed daemon
        old = os.umask(0o177)
        try:
            await listener.bind(address)  # (a deep runtime folder: sockaddr_un is short)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        listener.listen(8)
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    conn, _ = await listener.accept()
                    nursery.start_soon(_answer, conn, fs, store, meter, state)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


#: The largest request a client may send.
REQUEST_MAX = 64 << 10


async def _request(conn: trio.socket.SocketType) -> dict[str, Any]:
    """The client's request: one JSON object on one line (an empty one, or
    none within a few seconds, asks for the status)."""
    buf = b""
    with trio.move_on_after(5):
        while b"\n" not in buf and len(buf) < REQUEST_MAX:
            part = await conn.recv(4096)
            if not part:
                break
            buf += part
    try:
        req = json.loads(buf.split(b"\n", 1)[0] or b"{}")
    except ValueError:
        req = None
    return req if isinstance(req, dict) else {"op": "invalid"}


async def _handle(
    req: dict[str, Any], fs: Filesystem, store: Store, meter: Meter, state: MountState
) -> dict[str, Any]:
    """The answer to one request. ``status`` (the default) is :func:`gather`;
    ``commit`` commits now (``megafs sync``); ``share``, ``shares`` and
    ``unshare`` manage share links
    (:mod:`megafs.fs.shares`; a failure answers ``error`` and ``kind``, the
    exception's class name in :mod:`megafs.errors`)."""
    op = req.get("op", "status")
    if op == "status":
        with trio.move_on_after(PROBE_TIMEOUT + 5):
            return await gather(fs, store, meter, state)
        return {"error": "the status took too long", "kind": "MegafsError"}
    leaf: BaseException
    try:
        if op == "commit":
            return await _commit_op(fs, state)
        return await _share_op(req, fs, state)
    except* MegafsError as failed:
        leaf = first_leaf(failed)
    except* Exception as failed:  # a bug, or a library's error: never the mount's end
        leaf = first_leaf(failed)
        log.error("request %r failed", op, exc_info=leaf)
    if not isinstance(leaf, MegafsError):
        return {"error": f"internal error: {leaf!r}", "kind": "MegafsError"}
    return {"error": str(leaf), "kind": type(leaf).__name__}


async def _commit_op(fs: Filesystem, state: MountState) -> dict[str, Any]:
    """``megafs sync``: commit now (even if only the device log holds the
    changes), and answer with the root's generation."""
    if state.read_only:
        raise UsageError("the vault is mounted read-only: nothing to commit")
    committed = await fs.commit()
    state.committed()
    return {"generation": fs.root.generation, "committed": committed}


async def _share_op(req: dict[str, Any], fs: Filesystem, state: MountState) -> dict[str, Any]:
    if state.read_only:
        raise UsageError("the vault is mounted read-only: shares are made by a writable mount")
    return await shares.request(fs, req)


async def _answer(
    conn: trio.socket.SocketType, fs: Filesystem, store: Store, meter: Meter, state: MountState
) -> None:
    with conn:
        try:
            if _peer_uid(conn) != os.getuid():
                return  # another user's process: nothing to say
            answer = await _handle(await _request(conn), fs, store, meter, state)
            data = json.dumps(answer).encode() + b"\n"
            while data:
                sent = await conn.send(data)
                data = data[sent:]
        except OSError as e:
            log.debug("status connection: %s", e)


__all__ = ["MountState", "gather", "serve"]
