"""Mount lifecycle: configuration, the runtime folder, the daemon, serving.

- :mod:`.config`: :class:`MountConfig`, the ``-o`` options, :func:`parse_size`.
- :mod:`.runtime`: the runtime folder and its pid, identity, status and log files.
- :mod:`.daemon`: forking the daemon, waiting until it is ready; ``umount``.
- :mod:`.notify`: telling systemd the mount is ready, or stopping.
- :mod:`.serve`: one mount inside the daemon (unlock, serve, commit, unmount).

Arrows point one way: ``serve`` uses ``config`` and ``runtime``, ``daemon``
uses ``runtime``, and those two use no other module here. Only ``serve``
reaches the vault (``daemon`` borrows only its ``pid_alive`` check), the
model and (through :mod:`megafs.fuse.operations`) the kernel. Importing it
loads the model and the FUSE library, so this package does not import it
and ``import megafs.mount`` stays cheap for every command; a mount imports
:mod:`megafs.mount.serve` itself.

Owns: everything between a parsed ``megafs mount``/``umount`` command line
and the filesystem model. May not touch: the FUSE library, the model's or
the vault's internals, the command line (:mod:`megafs.cli` calls this
package, never the other way round).
"""

from __future__ import annotations

from .config import (
    DEFAULT_CACHE_SIZE,
    IGNORED_OPTIONS,
    MountConfig,
    check_mountpoint,
    default_cache_dir,
    parse_size,
)
from .daemon import daemonize, umount
from .runtime import (
    check_own_folder,
    is_mount_daemon,
    log_path,
    open_log,
    process_identity,
    read_runtime_file,
    runtime_base,
    runtime_dir,
    write_runtime_file,
)

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "IGNORED_OPTIONS",
    "MountConfig",
    "check_mountpoint",
    "check_own_folder",
    "daemonize",
    "default_cache_dir",
    "is_mount_daemon",
    "log_path",
    "open_log",
    "parse_size",
    "process_identity",
    "read_runtime_file",
    "runtime_base",
    "runtime_dir",
    "umount",
    "write_runtime_file",
]
