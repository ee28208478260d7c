"""The share commands: ``share``, ``shares``, ``unshare`` (the vault's owner)
and ``get`` (anyone with a link; no vault, no passphrase). docs/sharing.md.

``share``, ``shares`` and ``unshare`` take a path in a mounted vault (the
running daemon does the work, asked on its status socket) or a STORE (the
vault is opened in this process; one mounted writable on this machine is
refused: give a path in the mount). A link's password comes from
``--password-file``, ``$MEGAFS_LINK_PASSWORD`` or a prompt.

Owns: what these commands print. May not touch: the filesystem model beyond
:mod:`megafs.fs.shares`, FUSE, the vault's objects.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import trio

from ..client import passphrase
from ..errors import MegafsError, UsageError
from ..mount.runtime import ask_daemon
from ..vault.retention import parse_duration
from .history_commands import mount_root
from .options import get_passphrase, passphrase_options, say, unlocked_vault
from .progress import progress
from .registry import command
from .vault_commands import human_size

#: How long ``share`` waits for the daemon (a commit, then the page).
SHARE_TIMEOUT = 300.0


def _password(args: argparse.Namespace, *, confirm: bool) -> str:
    return passphrase.obtain(
        passfile=args.password_file,
        env=passphrase.ENV_LINK_PASSWORD,
        prompt_text="Link password: ",
        confirm="Link password again: " if confirm else None,
        passfile_option="--password-file",
        extpass_option="",
    )


def _password_options(p: argparse.ArgumentParser, *, making: bool) -> None:
    if making:
        p.add_argument(
            "--password",
            action="store_true",
            help="the link alone is not enough: ask for a password too "
            "(from --password-file, $MEGAFS_LINK_PASSWORD or a prompt)",
        )
    p.add_argument(
        "--password-file",
        metavar="FILE",
        help="read the link's password from the first line of FILE",
    )


def _ask_daemon(root: Path, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    return ask_daemon(str(root), request, timeout)


def _rel(root: Path, path: str) -> str:
    rel = Path(os.path.abspath(path)).relative_to(root)
    if rel.parts[:1] == (".snapshots",):
        raise UsageError("share from the live tree, not from .snapshots")
    return "/" + str(rel)


def _when(t: float | None) -> str:
    return "never" if t is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


# --- share -------------------------------------------------------------------------


def share_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "target",
        metavar="PATH|STORE",
        help="a file or folder in a mounted vault; or a STORE, then PATH inside the vault",
    )
    p.add_argument("path", metavar="PATH", nargs="?", help="with a STORE: the path in the vault")
    p.add_argument(
        "--expires",
        metavar="DURATION",
        help="the link stops working after this long (e.g. 1h, 2d, 1w; default: never "
        "with --base-url, 7d, the longest a presigned S3 link lasts, without)",
    )
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="where a web server (or a bucket policy) publishes the store: links point "
        "there instead of at presigned S3 URLs; needed for a local-folder vault",
    )
    _password_options(p, making=True)


@command(
    "share",
    "make a link to a file or folder as it is now, to download in a browser or with megafs get",
    share_options,
    passphrase_options,
)
def cmd_share(args: argparse.Namespace) -> None:
    expires: float | None = None
    if args.expires is not None:
        try:
            expires = time.time() + parse_duration(args.expires)
        except ValueError as e:
            raise UsageError(str(e)) from None
    elif args.base_url is None and not (args.path is None and _local_mount(args.target)):
        expires = time.time() + 7 * 24 * 3600  # presigned: the longest S3 allows
    secret = _password(args, confirm=True) if args.password else None
    request = {
        "op": "share",
        "expires": expires,
        "password": secret,
        "base_url": args.base_url,
    }
    if args.path is None:
        root = mount_root(args.target)
        if root is None:
            raise UsageError(f"{args.target} is not in a mounted megafs vault (or give STORE PATH)")
        answer = _on_vault(args, {**request, "path": _rel(root, args.target)})
    else:
        answer = _on_vault(args, {**request, "path": args.path})
    link = str(answer["share"]["link"])
    print(link, flush=True)


def _local_mount(target: str) -> bool:
    """Whether ``target`` is in a mount of a local-folder vault (whose links
    need --base-url anyway, and never expire by themselves)."""
    root = mount_root(target)
    if root is None:
        return False
    try:
        status = _ask_daemon(root, {"op": "status"})
    except MegafsError:
        return False
    return str(status.get("store", "")).startswith("file://")


# --- shares, unshare -----------------------------------------------------------------


def _target(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "target",
        metavar="TARGET",
        help="a path in a mounted vault, or a STORE (folder, file:///path, s3://bucket/prefix)",
    )


def shares_options(p: argparse.ArgumentParser) -> None:
    _target(p)
    p.add_argument(
        "--urls",
        action="store_true",
        help="print each share's page URL as well (without its key, which is kept nowhere: "
        "the link is shown once, by megafs share)",
    )


def _on_vault(args: argparse.Namespace, req: dict[str, Any]) -> dict[str, Any]:
    """Carry out ``req`` (:func:`megafs.fs.shares.request`) by the daemon of
    the mount ``args.target`` is in, else on the vault at STORE
    ``args.target``, opened here."""
    root = mount_root(args.target)
    if root is not None:
        return _ask_daemon(root, req, SHARE_TIMEOUT)
    from ..fs import shares
    from ..fs.history_admin import as_device

    unlock = get_passphrase(args)
    args.store = args.target

    async def run() -> dict[str, Any]:
        async with unlocked_vault(args, unlock) as vault, as_device(vault) as fs:
            return await shares.request(fs, req)

    return trio.run(run)


@command("shares", "list a vault's share links", shares_options, passphrase_options)
def cmd_shares(args: argparse.Namespace) -> None:
    found = _on_vault(args, {"op": "shares"})["shares"]
    if not found:
        say(args, "no shares")
        return
    print(f"{'ID':10} {'CREATED':16} {'EXPIRES':16} {'DEVICE':12} PATH")
    for s in found:
        expires = _when(s["expires"])
        if s["expires"] is not None and s["expires"] <= time.time():
            expires += " (expired)"
        print(
            f"{s['share_id'][:10]} {_when(s['created']):16} {expires:16} "
            f"{s['device']:12} {s['path']}"
        )
        if args.urls:
            print(f"  {s['link']}")


def unshare_options(p: argparse.ArgumentParser) -> None:
    _target(p)
    p.add_argument("id", metavar="ID", help="the share's id (or its first characters)")


@command(
    "unshare",
    "revoke a share link: its page is deleted and what it kept is released",
    unshare_options,
    passphrase_options,
)
def cmd_unshare(args: argparse.Namespace) -> None:
    _on_vault(args, {"op": "unshare", "id": args.id})
    say(args, f"revoked {args.id}")


# --- get -------------------------------------------------------------------------------


def get_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("link", metavar="LINK", help="the link (quote it: it holds a #)")
    p.add_argument(
        "dest",
        metavar="DEST",
        nargs="?",
        help="where to save it (default: its name in the current folder; "
        "an existing folder: inside it)",
    )
    _password_options(p, making=False)


@command(
    "get",
    "download a file or folder from a megafs link, verifying every block (resumes if interrupted)",
    get_options,
)
def cmd_get(args: argparse.Namespace) -> None:
    from ..links import fetch

    async def run() -> tuple[Path, int]:
        async with fetch.client() as client:
            opened = await fetch.open_link(
                client, args.link, lambda: _password(args, confirm=False)
            )
            dest = fetch.destination(opened, args.dest)
            with progress(
                opened.total, unit="B", desc=opened.manifest.name, enabled=not args.quiet
            ) as bar:
                await fetch.download(client, opened, dest, bar.update)
            return dest, opened.total

    dest, total = trio.run(run)
    say(args, f"saved {dest} ({human_size(total)})")
