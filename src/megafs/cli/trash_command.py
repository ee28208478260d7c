"""The ``trash`` command: list, restore and empty what was deleted in a
mounted vault (docs/history.md).

Two kinds of items, both listed together:

* **deleted through the mount** (``rm``, a program's unlink): the history
  keeps them as long as a kept root holds them; the mount lists them in the
  attribute ``user.megafs.deleted`` of its ``.snapshots`` folder; restoring
  copies the item back out of that root with ``cp -a`` (modes, times,
  xattrs, hard links);
* **moved to the desktop trash** (``gio trash``, Nautilus, Thunar, Dolphin:
  the freedesktop.org trash specification): ``.Trash-$UID/`` (and
  ``.Trash/$UID/``) at the top of the mount, whose ``info/*.trashinfo``
  files name each item's original path; restoring moves it back.

Items get ids (``t1``, ``t2``... desktop; ``h1``, ``h2``... history) in the
order ``list`` prints them. ``empty`` empties the desktop trash (``--older-than``
keeps what is younger); what the history holds goes with the retention
policy (``megafs prune``).

Owns: what these commands print; reading and writing the freedesktop trash
folders. May not touch: the vault's objects or the filesystem model: it
works through the mount.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..vault.retention import parse_duration
from .history_commands import SNAPDIR, copy_back, destination, mount_root
from .options import say
from .registry import command
from .vault_commands import human_size

DELETED_XATTR = "user.megafs.deleted"


@dataclass(frozen=True)
class Item:
    id: str
    path: str  # original path, relative to the mount's root
    deleted: float  # seconds since the epoch
    device: str
    size: int
    is_dir: bool
    source: Path  # where it is now (the trash folder, or under .snapshots)
    info: Path | None  # its .trashinfo file (desktop trash only)


def _desktop_trashes(root: Path) -> list[Path]:
    uid = os.getuid()
    return [p for p in (root / f".Trash-{uid}", root / ".Trash" / str(uid)) if p.is_dir()]


def _size(p: Path) -> int:
    if p.is_symlink() or not p.is_dir():
        return p.lstat().st_size
    return sum(f.lstat().st_size for f in p.rglob("*") if not f.is_dir() or f.is_symlink())


def desktop_items(root: Path) -> list[Item]:
    out = []
    for trash in _desktop_trashes(root):
        for info in sorted((trash / "info").glob("*.trashinfo")):
            fields: dict[str, str] = {}
            for line in info.read_text(errors="replace").splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    fields[key.strip()] = value.strip()
            source = trash / "files" / info.name.removesuffix(".trashinfo")
            if "Path" not in fields or not os.path.lexists(source):
                continue
            path = urllib.parse.unquote(fields["Path"])
            if os.path.isabs(path):  # an absolute path must lie under the mount
                try:
                    path = str(Path(path).relative_to(root))
                except ValueError:
                    continue
            try:
                when = time.mktime(
                    time.strptime(fields.get("DeletionDate", ""), "%Y-%m-%dT%H:%M:%S")
                )
            except ValueError:
                when = info.stat().st_mtime
            out.append(
                Item("", path, when, "desktop trash", _size(source), source.is_dir(), source, info)
            )
    return out


def history_items(root: Path) -> list[Item]:
    raw = json.loads(os.getxattr(root / SNAPDIR, DELETED_XATTR))
    return [
        Item(
            "",
            d["path"],
            d["deleted_ns"] / 1e9,
            d["device"],
            d["size"],
            d["dir"],
            root / SNAPDIR / d["folder"] / d["path"],
            None,
        )
        for d in raw
    ]


def all_items(root: Path) -> list[Item]:
    desk = sorted(desktop_items(root), key=lambda i: -i.deleted)
    hist = history_items(root)
    out = [_with_id(i, f"t{n}") for n, i in enumerate(desk, 1)]
    out += [_with_id(i, f"h{n}") for n, i in enumerate(hist, 1)]
    return out


def _with_id(i: Item, ident: str) -> Item:
    return Item(ident, i.path, i.deleted, i.device, i.size, i.is_dir, i.source, i.info)


def trash_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "restore", "empty"], help="what to do")
    p.add_argument(
        "item",
        metavar="ITEM|PATH",
        nargs="?",
        help="restore: an id from `trash list`, or the item's original path; "
        "list and empty: a path in the mounted vault (default: the current folder)",
    )
    p.add_argument("--to", metavar="DEST", help="restore: where to put it")
    p.add_argument("--force", action="store_true", help="restore: replace DEST if it exists")
    p.add_argument(
        "--older-than", metavar="AGE", help="empty: only items deleted longer ago (e.g. 30d)"
    )
    p.add_argument("--json", action="store_true", help="list: one JSON object per item")


def _root_of(path: str | None) -> Path:
    root = mount_root(path or os.getcwd())
    if root is None:
        raise UsageError(f"{path or os.getcwd()} is not in a mounted megafs vault")
    return root


@command(
    "trash",
    "list, restore or empty what was deleted in a mounted vault (also the desktop trash)",
    trash_options,
)
def cmd_trash(args: argparse.Namespace) -> None:
    if args.action == "list":
        _list(args, _root_of(args.item))
    elif args.action == "restore":
        if not args.item:
            raise UsageError("trash restore needs an id from `megafs trash list` or a path")
        _restore(args)
    else:
        _empty(args, _root_of(args.item))


def _list(args: argparse.Namespace, root: Path) -> None:
    items = all_items(root)
    if args.json:
        for i in items:
            print(
                json.dumps(
                    {
                        "id": i.id,
                        "path": i.path,
                        "deleted": i.deleted,
                        "device": i.device,
                        "size": i.size,
                        "dir": i.is_dir,
                    }
                )
            )
        return
    for i in items:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i.deleted))
        kind = "folder" if i.is_dir else human_size(i.size)
        print(f"{i.id:>4}  {when}  {i.device:<14}  {kind:>10}  {i.path}")
    if not items:
        say(args, "the trash is empty")


def _find(args: argparse.Namespace) -> tuple[Path, Item]:
    item = args.item
    if item[:1] in "th" and item[1:].isdigit():
        root = _root_of(None)
        found = [i for i in all_items(root) if i.id == item]
    else:
        root = _root_of(item)
        rel = str(Path(os.path.abspath(item)).relative_to(root))
        found = [i for i in all_items(root) if i.path == rel][:1]
    if not found:
        raise UsageError(f"no trash item {item!r} (see `megafs trash list`)")
    return root, found[0]


def _restore(args: argparse.Namespace) -> None:
    root, item = _find(args)
    dest = destination(root / item.path, args.to, args.force, item.deleted)
    if item.info is not None:  # the desktop trash: move it back, as file managers do
        os.rename(item.source, dest)
        item.info.unlink()
    else:
        copy_back(item.source, dest, quiet=args.quiet)
    say(args, f"restored {item.path} to {dest}")


def _empty(args: argparse.Namespace, root: Path) -> None:
    cutoff = time.time() - parse_duration(args.older_than) if args.older_than else None
    gone = 0
    for i in desktop_items(root):
        if cutoff is not None and i.deleted > cutoff:
            continue
        if i.source.is_dir() and not i.source.is_symlink():
            shutil.rmtree(i.source)
        else:
            i.source.unlink()
        assert i.info is not None
        i.info.unlink()
        gone += 1
    say(
        args,
        f"removed {gone} items from the desktop trash; what the history keeps goes with "
        "the retention policy (megafs retention, megafs prune)",
    )
