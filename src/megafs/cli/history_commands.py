"""The history commands: ``snapshots``, ``snapshot``, ``retention``,
``prune``, ``versions``, ``restore`` (docs/history.md).

A TARGET is a path in a mounted vault (the commands then go through the
mount's hidden ``.snapshots`` folder: ``mkdir`` pins, its attributes hold
the retention policy and run a prune) or a STORE (the vault is opened in
this process; one that is mounted writable on this machine is refused:
give the mountpoint). ``versions`` and ``restore`` take a path in a mounted
vault and read the kept roots through ``.snapshots``; ``restore`` copies
with ``cp -a`` (modes, times, xattrs and hard links kept), next to the
current file unless told otherwise, and never over an existing file
without ``--force``; a copy that takes more than a second shows its
progress on a terminal.

Owns: what these commands print, how they find a mount's ``.snapshots``.
May not touch: the filesystem model beyond :mod:`megafs.fs.history_admin`,
FUSE, the vault's objects.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ..errors import UsageError
from ..vault.retention import Policy, duration_text, parse_duration
from .options import get_passphrase, passphrase_options, say, unlocked_vault
from .progress import progress, wanted
from .registry import command
from .vault_commands import human_size

if TYPE_CHECKING:
    from ..fs.history_admin import Snapshot

SNAPDIR = ".snapshots"
RETENTION_XATTR = "user.megafs.retention"
PRUNE_XATTR = "user.megafs.prune"
PRUNED_XATTR = "user.megafs.pruned"


def mount_root(path: str) -> Path | None:
    """The root of the megafs mount ``path`` is in, if it is in one."""
    try:
        p = Path(path).resolve()
    except OSError:
        return None
    if not p.exists():
        p = p.parent
    while True:
        if os.path.ismount(p):
            try:
                os.getxattr(p / SNAPDIR, RETENTION_XATTR)
            except OSError:
                return None
            return p
        if p.parent == p:
            return None
        p = p.parent


def target_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "target",
        metavar="TARGET",
        help="a path in a mounted vault, or a STORE (folder, file:///path, s3://bucket/prefix)",
    )


def _store_args(args: argparse.Namespace) -> argparse.Namespace:
    args.store = args.target
    return args


def _when(time_ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time_ns / 1e9))


# --- snapshots, snapshot ------------------------------------------------------


def snapshots_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", metavar="STORE", help="a folder, file:///path or s3://bucket/prefix")
    p.add_argument("--json", action="store_true", help="one JSON object per kept root")


@command(
    "snapshots",
    "list the kept past states of a vault (time, device, name, space only each keeps)",
    snapshots_options,
    passphrase_options,
)
def cmd_snapshots(args: argparse.Namespace) -> None:
    from ..fs.history_admin import snapshots

    secret = get_passphrase(args)

    async def run() -> tuple[list[Snapshot], Policy]:
        async with unlocked_vault(args, secret) as vault:
            return await snapshots(vault)

    snaps, policy = trio.run(run)
    if args.json:
        for s in snaps:
            print(
                json.dumps(
                    {
                        "folder": s.folder,
                        "generation": s.gen,
                        "time_ns": s.time_ns,
                        "device": s.device,
                        "name": s.name,
                        "files": s.files,
                        "bytes": s.bytes,
                        "only_bytes": s.only,
                    }
                )
            )
        return
    rows = [("WHEN", "DEVICE", "NAME", "FILES", "SIZE", "ONLY IT KEEPS", "FOLDER")]
    for s in snaps:
        rows.append(
            (
                _when(s.time_ns),
                s.device,
                s.name or "-",
                str(s.files),
                human_size(s.bytes),
                human_size(s.only),
                s.folder,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    say(args, f"{len(snaps)} kept; policy: {policy.text()}")


def snapshot_options(p: argparse.ArgumentParser) -> None:
    target_arg(p)
    p.add_argument(
        "name",
        metavar="NAME",
        nargs="?",
        help="the name to keep it under (default: pin-YYYYMMDD-HHMMSS)",
    )


@command(
    "snapshot",
    "keep the vault's current state under a name until removed (rmdir .snapshots/NAME)",
    snapshot_options,
    passphrase_options,
)
def cmd_snapshot(args: argparse.Namespace) -> None:
    name = args.name or time.strftime("pin-%Y%m%d-%H%M%S")
    root = mount_root(args.target)
    if root is not None:
        try:
            os.mkdir(root / SNAPDIR / name)
        except FileExistsError:
            raise UsageError(f"a snapshot named {name!r} exists already") from None
        except OSError as e:
            raise UsageError(f"cannot pin {name!r}: {e.strerror}") from None
    else:
        from ..fs.history_admin import pin

        secret = get_passphrase(args)

        async def run() -> None:
            async with unlocked_vault(_store_args(args), secret) as vault:
                await pin(vault, name)

        trio.run(run)
    say(args, f"kept as {name!r}")


# --- retention, prune -----------------------------------------------------------


def retention_options(p: argparse.ArgumentParser) -> None:
    target_arg(p)
    p.add_argument(
        "--every",
        metavar="DURATION",
        help="keep every commit's state this long (e.g. 1h; default 1h)",
    )
    p.add_argument(
        "--keep",
        metavar="PERIOD:COUNT",
        action="append",
        help="then the newest state of each of the last COUNT periods (e.g. 1d:30); "
        "repeat for several (default 1h:48 1d:30 1w:26)",
    )
    p.add_argument("--default", action="store_true", help="set the default policy")


@command(
    "retention",
    "show or set how long a vault keeps its past states (stored in the vault, for every device)",
    retention_options,
    passphrase_options,
)
def cmd_retention(args: argparse.Namespace) -> None:
    change = args.default or args.every is not None or args.keep
    policy: Policy | None = None
    if change:
        try:
            base = Policy()
            every = parse_duration(args.every) if args.every is not None else base.every
            tiers = base.tiers
            if args.keep:
                tiers = Policy.parse(" ".join(args.keep)).tiers
            policy = Policy(every, tiers)
        except ValueError as e:
            raise UsageError(str(e)) from None
    root = mount_root(args.target)
    if root is not None:
        if policy is not None:
            os.setxattr(root / SNAPDIR, RETENTION_XATTR, policy.spec().encode())
        now = Policy.parse(os.getxattr(root / SNAPDIR, RETENTION_XATTR).decode())
    else:
        from ..fs.history_admin import set_retention, snapshots

        secret = get_passphrase(args)

        async def run() -> Policy:
            async with unlocked_vault(_store_args(args), secret) as vault:
                if policy is not None:
                    await set_retention(vault, policy)
                return (await snapshots(vault))[1]

        now = trio.run(run)
    print(f"keeps {now.text()} (pinned states until removed)")


@command(
    "prune",
    "apply the retention policy now and report what it freed",
    target_arg,
    passphrase_options,
)
def cmd_prune(args: argparse.Namespace) -> None:
    root = mount_root(args.target)
    if root is not None:
        os.setxattr(root / SNAPDIR, PRUNE_XATTR, b"now")
        dropped, freed, nbytes = map(int, os.getxattr(root / SNAPDIR, PRUNED_XATTR).split())
    else:
        from ..fs.history_admin import prune

        secret = get_passphrase(args)

        async def run() -> tuple[int, int, int]:
            async with unlocked_vault(_store_args(args), secret) as vault:
                r = await prune(vault)
                return r.dropped, r.freed, r.freed_bytes

        dropped, freed, nbytes = trio.run(run)
    say(args, f"dropped {dropped} past states, freed {freed} objects ({human_size(nbytes)})")


# --- versions, restore ------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    number: int
    folder: str  # under .snapshots
    path: Path  # the version's path under .snapshots
    size: int
    mtime_ns: int


def _in_mount(path: str) -> tuple[Path, Path]:
    """(mount root, path relative to it) of ``path``, which must be in a mounted vault."""
    root = mount_root(path)
    if root is None:
        raise UsageError(f"{path} is not in a mounted megafs vault")
    rel = Path(os.path.abspath(path)).relative_to(root)
    if rel.parts[:1] == (SNAPDIR,):
        raise UsageError(f"{path} is in the past already: give the path in the live tree")
    return root, rel


def versions_of(root: Path, rel: Path) -> list[Version]:
    """The distinct versions of ``rel`` across the kept roots, oldest first
    (one entry per change of size or modification time)."""
    out: list[Version] = []
    last: tuple[int, int, bool] | None = None
    for folder in sorted(os.listdir(root / SNAPDIR), key=_folder_order(root)):
        p = root / SNAPDIR / folder / rel
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            last = None
            continue
        key = (st.st_size, st.st_mtime_ns, os.path.isdir(p))
        if key != last:
            out.append(Version(len(out) + 1, folder, p, st.st_size, st.st_mtime_ns))
        last = key
    return out


def _folder_order(root: Path) -> Callable[[str], tuple[int, str]]:
    """Sort key: the snapshot folder's time (its ctime is the root's time), then name."""

    def key(folder: str) -> tuple[int, str]:
        return (os.stat(root / SNAPDIR / folder).st_ctime_ns, folder)

    return key


def versions_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="a file or folder in a mounted vault")


@command(
    "versions",
    "list the kept versions of a file or folder in a mounted vault",
    versions_options,
)
def cmd_versions(args: argparse.Namespace) -> None:
    root, rel = _in_mount(args.path)
    found = versions_of(root, rel)
    if not found:
        raise UsageError(f"no kept version of {args.path}")
    for v in found:
        print(f"{v.number:>4}  {_when(v.mtime_ns)}  {human_size(v.size):>10}  {v.folder}")


def restore_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="the file or folder's path in the mounted vault")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--version", type=int, metavar="N", help="version N of `megafs versions`")
    g.add_argument(
        "--at",
        metavar="TIME",
        help="the version kept at that time (YYYY-MM-DD[ HH:MM[:SS]], local time), "
        "or that long ago (e.g. 2d)",
    )
    p.add_argument("--to", metavar="DEST", help="where to put it (default: beside PATH)")
    p.add_argument("--force", action="store_true", help="replace DEST (or PATH) if it exists")


def destination(live: Path, to: str | None, force: bool, when: float) -> Path:
    """Where a restore puts its copy: ``to``, else ``live`` if it is gone,
    else beside it as ``NAME (restored DATE).EXT``. Whatever is there goes
    first with ``force``; without it, an existing ``to`` is a UsageError."""
    if to is not None:
        dest = Path(to)
    elif force or not os.path.lexists(live):
        dest = live
    else:
        stamp = time.strftime("%Y-%m-%d %H%M%S", time.localtime(when))
        dest = live.with_name(f"{live.stem} (restored {stamp}){live.suffix}")
    if os.path.lexists(dest):
        if not force:
            raise UsageError(f"{dest} exists (--force replaces it)")
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        else:
            dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest


#: A restore still copying after this many seconds shows its progress.
SHOW_AFTER = 1.0


def tree_bytes(path: Path) -> int:
    """The size of ``path``'s files, or of ``path`` itself if it is not a
    folder (symlinks not followed; what vanishes meanwhile counts 0)."""
    total = 0
    with contextlib.suppress(OSError):
        total = os.lstat(path).st_size if not path.is_dir() or path.is_symlink() else 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def copy_back(source: Path, dest: Path, *, quiet: bool = False) -> None:
    """Copy ``source`` (under .snapshots) to ``dest`` with ``cp -a``: modes,
    times, xattrs and the hard links within a folder kept.

    On a terminal (unless ``quiet``), a copy still running after
    :data:`SHOW_AFTER` seconds shows the bytes at ``dest`` against the
    size of ``source`` (:mod:`.progress`), measured again every half second
    or, for a large tree, less often (at most a fifth of the time goes to
    measuring).
    """
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(
            ["cp", "-a", "--", str(source), str(dest)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        try:
            proc.wait(timeout=SHOW_AFTER if not quiet and wanted() else None)
        except subprocess.TimeoutExpired:
            with progress(tree_bytes(source), unit="B", desc="restoring") as bar:
                while proc.poll() is None:
                    start = time.monotonic()
                    bar.set(tree_bytes(dest))
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=max(0.5, 4 * (time.monotonic() - start)))
        errors.seek(0)
        if proc.returncode != 0:
            raise UsageError(f"could not restore: {errors.read().strip()}")


def _at(text: str) -> float:
    try:
        return time.time() - parse_duration(text)
    except ValueError:
        pass
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return time.mktime(time.strptime(text, fmt))
        except ValueError:
            continue
    raise UsageError(f"not a time: {text!r} (YYYY-MM-DD[ HH:MM[:SS]] or e.g. 2d)")


@command(
    "restore",
    "bring back a file or folder as it was (beside it, unless --to or --force)",
    restore_options,
)
def cmd_restore(args: argparse.Namespace) -> None:
    root, rel = _in_mount(args.path)
    found = versions_of(root, rel)
    if not found:
        raise UsageError(f"no kept version of {args.path}")
    if args.version is not None:
        if not 1 <= args.version <= len(found):
            raise UsageError(f"there are versions 1 to {len(found)}")
        v = found[args.version - 1]
    elif args.at is not None:
        t = _at(args.at) * 1e9
        when = _folder_order(root)
        older = [x for x in found if when(x.folder)[0] <= t]
        if not older:
            raise UsageError(f"no version of {args.path} kept from before {args.at}")
        v = older[-1]
    else:
        v = found[-1]
    dest = destination(root / rel, args.to, args.force, v.mtime_ns / 1e9)
    copy_back(v.path, dest, quiet=args.quiet)
    say(args, f"restored version {v.number} ({_when(v.mtime_ns)}) to {dest}")


__all__ = ["duration_text", "mount_root", "versions_of"]
