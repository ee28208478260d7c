"""Mount configuration: :class:`MountConfig`, the ``-o`` option grammar and the one
size parser (:func:`parse_size`, also behind the CLI's ``--cache-size`` and
``--chunk-size``).

Owns: turning user input (mount(8)/fstab ``-o`` strings, sizes) into settings,
the defaults of those settings, and the checks a mount makes before anything
is unlocked (:func:`check_mountpoint`).
May not touch: stores, vaults, the filesystem model, FUSE, processes; it opens
no file (it only looks at the mountpoint folder).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from fractions import Fraction

from ..errors import MountError, UsageError

#: Options of mount(8)/fstab that mean nothing to megafs and are ignored.
IGNORED_OPTIONS = {
    "rw", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "auto", "noauto", "user",
    "nouser", "users", "_netdev", "nofail", "defaults", "async", "atime", "noatime",
    "relatime", "diratime", "nodiratime",
}

#: Bytes of store objects cached on the local disk for a remote store.
DEFAULT_CACHE_SIZE = 1 << 30


@dataclass
class MountConfig:
    store_url: str
    mountpoint: str  # absolute, symlinks resolved (see megafs.mount.serve.set_readahead)
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
    #: How often to look for other devices' commits (0: never; docs/multidevice.md).
    poll_interval: float = 3.0
    #: "store": fsync returns once the change is in the store (a commit);
    #: "local": once it is durable in the local journal (docs: README).
    fsync: str = "store"
    #: How long a file operation waits for an unreachable store before EIO.
    store_timeout: float = 60.0
    readahead_kb: int = 1024
    log_file: str | None = None
    #: This device's name in the vault (``megafs info``); None: the host name.
    device_name: str | None = None
    #: Whether ``readdir`` of the root lists ``.snapshots`` (docs/history.md).
    snapdir_visible: bool = False
    #: Object bytes per second sent and received at most (None: no limit),
    #: and object transfers at once at most (:mod:`megafs.stores.limits`).
    upload_limit: int | None = None
    download_limit: int | None = None
    transfers: int | None = None
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
                elif key == "fsync":
                    if val not in ("store", "local"):
                        raise ValueError(val)
                    self.fsync = val
                elif key == "commit_interval":
                    self.commit_interval = float(val)
                elif key == "poll_interval":
                    self.poll_interval = float(val)
                    if not self.poll_interval >= 0:
                        raise ValueError(val)
                elif key == "store_timeout":
                    self.store_timeout = float(val)
                    if not self.store_timeout > 0:
                        raise ValueError(val)
                elif key == "readahead_kb":
                    self.readahead_kb = int(val)
                elif key in ("upload_limit", "download_limit"):
                    rate = parse_size(val)
                    if rate <= 0:
                        raise ValueError(val)
                    setattr(self, key, rate)
                elif key == "transfers":
                    self.transfers = int(val)
                    if self.transfers < 1:
                        raise ValueError(val)
                elif key == "snapdir":
                    if val not in ("hidden", "visible"):
                        raise ValueError(val)
                    self.snapdir_visible = val == "visible"
                elif key in ("device_name", "device-name"):
                    if not val:
                        raise ValueError(val)
                    self.device_name = val
                else:
                    raise UsageError(f"unknown mount option: {opt}")
            except ValueError:
                raise UsageError(f"bad value for mount option: {opt}") from None

    def fuse_options(self) -> set[str]:
        """The FUSE mount options the kernel gets for this configuration."""
        options = {"fsname=megafs", "subtype=megafs"}
        if self.default_permissions:
            options.add("default_permissions")
        if self.read_only:
            options.add("ro")
        if self.allow_other:
            options.add("allow_other")
        if self.debug:
            options.add("debug")
        return options


_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """A size in bytes: ``'1048576'``, ``'256k'``, ``'1.5G'``, ``'512MiB'``, ``'2 TB'``.

    A whole or decimal number, then optionally a unit K, M, G or T (binary:
    K is 1024; any case), then optionally ``B`` or ``iB``. A fraction of a
    byte is rounded down. Raises ValueError for anything else (negative
    sizes included).
    """
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"not a size in bytes: {text!r}")
    shift = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[m.group(2).lower()]
    return int(Fraction(m.group(1)) * (1 << shift))


def check_mountpoint(mountpoint: str) -> None:
    """Raise MountError unless ``mountpoint`` is a folder with nothing mounted on it."""
    if not os.path.isdir(mountpoint):
        raise MountError(f"mountpoint does not exist or is not a folder: {mountpoint}")
    if os.path.ismount(mountpoint):
        raise MountError(f"mountpoint is already mounted: {mountpoint}")


def default_cache_dir(vault_id: bytes) -> str:
    """``$XDG_CACHE_HOME/megafs/<vault id>`` (``~/.cache`` without XDG_CACHE_HOME)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "megafs", vault_id.hex())
