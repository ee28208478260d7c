"""Shares: a link to one file or folder as it is now (docs/sharing.md).

:func:`share` commits and pins the current root as ``share-<id>[-<expiry>]``
(the history then keeps every object the shared version needs until the
share is revoked or expires), walks the shared path in that pinned root
(not in the live tree, which may change meanwhile), and writes one page
object to the store's share area: the manifest sealed under a fresh link
key, and the owner record sealed under the vault's meta key.
:func:`list_shares` reads the owner records of the shares the history pins;
:func:`unshare` deletes a share's page and unpins it.

Owns: turning a kept root's inodes into a manifest. May not touch: FUSE,
the store beyond its share area (:meth:`Store.put_page` and friends).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import time
from dataclasses import dataclass
from typing import Any

import trio
import trio.lowlevel

from ..errors import FsError, MegafsError, UsageError, first_leaf
from ..format import crypto
from ..format import share as fmt
from ..links.page import render
from ..stores.base import MAX_PAGE_SIZE
from ..vault.history import Entry as HistEntry
from ..vault.vault import obj_name
from .filesystem import Filesystem
from .inode import ROOT_INO

log = logging.getLogger(__name__)

#: The longest a presigned S3 URL stays valid (SigV4 allows 7 days).
PRESIGN_MAX = 7 * 24 * 3600


@dataclass
class ShareInfo:
    """One share, as ``megafs shares`` lists it."""

    share_id: str
    path: str
    created: float
    expires: float | None
    device: str
    #: the link (when made), or the page's URL alone (when listed: the key
    #: is not kept anywhere)
    link: str
    generation: int

    @property
    def expired(self) -> bool:
        return self.expires is not None and self.expires <= time.time()


async def _walk_to(fs: Filesystem, parts: list[bytes]) -> int:
    """The inode at ``parts`` below the top. UsageError if there is none."""
    ino = ROOT_INO
    for name in parts:
        try:
            ino = (await fs.lookup(ino, name)).ino
        except FsError as e:
            path = "/" + "/".join(p.decode("utf-8", "replace") for p in parts)
            raise UsageError(f"{path}: {os.strerror(e.errno)} in the vault") from None
    return ino


async def _file_entry(
    fs: Filesystem, ino: int, path: str, m: fmt.Manifest, where: dict[bytes, int]
) -> fmt.Entry:
    """The entry of file ``ino``; objects new to the manifest are added to
    it (``where``: object id -> its index there)."""
    node = await fs.table.get(ino)
    e = fmt.Entry(path, "file", stat.S_IMODE(node.mode), node.mtime / 1e9, node.size)
    e.file_id = node.file_id
    if node.small is not None:
        e.inline = bytes(node.small[: node.size])
        return e
    keys = fs.vault.keys
    for idx in sorted(node.chunks):
        ref = node.chunks[idx]
        assert node.file_key is not None
        key = crypto.object_key(node.file_key, ref.obj) if keys.committing else node.file_key
        oi = where.get(ref.obj)
        if oi is None:
            oi = where[ref.obj] = len(m.object_ids)
            m.object_ids.append(ref.obj)
        e.chunks.append(fmt.Chunk(idx, oi, ref.off, ref.length, ref.packed, key))
    return e


async def _collect(
    fs: Filesystem, ino: int, m: fmt.Manifest, where: dict[bytes, int]
) -> None:
    """Every file and folder under folder ``ino`` of ``fs``, parents first."""
    stack: list[tuple[int, str]] = [(ino, "")]
    while stack:
        folder, prefix = stack.pop()
        after = 0
        while batch := await fs.readdir(folder, after):
            await trio.lowlevel.checkpoint()  # a large tree: let the mount serve meanwhile
            for name, attr, cookie in batch:
                after = cookie
                text = name.decode("utf-8", "surrogateescape")
                path = f"{prefix}{text}"
                if stat.S_ISDIR(attr.mode):
                    m.entries.append(
                        fmt.Entry(path, "dir", stat.S_IMODE(attr.mode), attr.mtime_ns / 1e9)
                    )
                    stack.append((attr.ino, path + "/"))
                elif stat.S_ISREG(attr.mode):
                    m.entries.append(await _file_entry(fs, attr.ino, path, m, where))


async def share(
    fs: Filesystem,
    path: str,
    *,
    expires: float | None = None,
    password: str | None = None,
    base_url: str | None = None,
    device: str | None = None,
) -> ShareInfo:
    """Share ``path`` (relative to the vault's top, "/" between names) as
    it is now; returns the share with its link. Commits twice (the pin, then
    nothing more is written but the page). Raises UsageError (not a file or
    folder; a link that cannot be made for this store) or store errors."""
    parts = [p.encode("utf-8", "surrogateescape") for p in path.strip("/").split("/") if p]
    if not parts:
        raise UsageError("share a file or a folder inside the vault, not its top")
    attr = (await fs.table.get(await _walk_to(fs, parts))).attr()
    if not (stat.S_ISREG(attr.mode) or stat.S_ISDIR(attr.mode)):
        raise UsageError(f"{path}: only files and folders can be shared")
    if device is None:
        device = fs.committer.device.name if fs.committer.device is not None else ""
    now = time.time()
    if expires is not None and expires <= now:
        raise UsageError("the expiry is in the past")
    store = fs.vault.store
    lifetime = int((expires or now + PRESIGN_MAX) - now)
    share_id = crypto.new_id()
    await store.check_share_urls(base_url=base_url, expires_in=lifetime)  # fails before pinning
    pin = fmt.share_pin(share_id, expires)
    try:
        await fs.pin(pin)
        entry = await _pinned(fs, pin)
        past = await fs.past(entry)
        ino = await _walk_to(past, parts)
        node = await past.table.get(ino)
        m = fmt.Manifest(
            fs.vault.vault_id,
            parts[-1].decode("utf-8", "surrogateescape"),
            "dir" if node.is_dir else "file",
            now,
            expires,
            fs.vault.layout.block_size,
            fs.vault.layout.chunk_size,
            [],
            [],
            [],
        )
        where: dict[bytes, int] = {}
        if node.is_dir:
            await _collect(past, ino, m, where)
        else:
            m.entries.append(await _file_entry(past, ino, "", m, where))
        page_url, urls = await store.share_urls(
            share_id.hex(),
            [obj_name(o) for o in m.object_ids],
            base_url=base_url,
            expires_in=lifetime,
        )
        m.objects = list(urls)
        link_key = crypto.random_bytes(crypto.KEY_SIZE)
        pw = fmt.PasswordParams(crypto.random_bytes(16)) if password is not None else None
        key = fmt.manifest_key(link_key, share_id, password, pw)
        link = fmt.make_link(page_url, link_key)
        info = ShareInfo(
            share_id.hex(), "/" + path.strip("/"), now, expires, device, link, entry.gen
        )
        owner = fmt.OwnerRecord(info.path, now, expires, device, page_url, entry.gen)
        env = fmt.Envelope(
            share_id, fmt.seal_manifest(key, share_id, m), owner.seal(fs.vault.keys, share_id), pw
        )
        page = render(env)
        if len(page) > MAX_PAGE_SIZE:
            raise UsageError(
                f"{info.path} has too many chunks for one link ({len(m.object_ids)} objects, "
                f"a {len(page) >> 20} MiB page): share its folders one by one"
            )
        await store.put_page(share_id.hex(), page)
    except BaseException:
        with trio.CancelScope(shield=True):  # (also when cancelled: no pin left behind)
            try:
                await fs.unpin(pin)
            except* MegafsError as e:
                log.warning("the pin %s of a share that failed stays: %s", pin, first_leaf(e))
        raise
    log.info("shared %s as %s (%d files)", info.path, share_id.hex(), len(m.entries))
    return info


async def _pinned(fs: Filesystem, pin: str) -> HistEntry:
    """The kept root pinned as ``pin``: the newest one, unless a commit
    came between (then the whole history is read)."""
    latest = await fs.committer.keeper.table.latest()
    if latest is not None and latest.name == pin:
        return latest
    for e in reversed(await fs.committer.keeper.entries()):
        if e.name == pin:
            return e
    raise MegafsError("the share's pinned root is not in the history")


async def list_shares(fs: Filesystem) -> list[ShareInfo]:
    """The shares the history keeps, oldest first (one read of each page)."""
    out: list[ShareInfo] = []
    for e in await fs.committer.keeper.entries():
        parsed = fmt.parse_share_pin(e.name)
        if parsed is None:
            continue
        share_id, _ = parsed
        page = await fs.vault.store.get_page(share_id.hex())
        if page is None:
            log.warning("share %s has no page (revoked elsewhere?)", share_id.hex())
            continue
        try:
            rec = fmt.OwnerRecord.open(fs.vault.keys, fmt.Envelope.from_page(page))
        except fmt.ShareError as err:
            log.warning("share %s: %s", share_id.hex(), err)
            continue
        out.append(
            ShareInfo(
                share_id.hex(),
                rec.path,
                rec.created,
                rec.expires,
                rec.device,
                rec.url,
                rec.generation,
            )
        )
    return out


async def unshare(fs: Filesystem, share_id: str) -> None:
    """Revoke a share: delete its page, then unpin its root (commits).
    ``share_id`` may be a unique prefix. Raises UsageError if no share has it."""
    found = [
        (e.name, p[0])
        for e in await fs.committer.keeper.entries()
        if e.name is not None
        and (p := fmt.parse_share_pin(e.name)) is not None
        and p[0].hex().startswith(share_id.lower())
    ]
    if len(found) != 1 or not share_id:
        what = "no share" if not found else "more than one share"
        raise UsageError(f"{what} has the id {share_id!r} (megafs shares lists them)")
    name, sid = found[0]
    await fs.vault.store.delete_page(sid.hex())  # (none left: nothing to do)
    assert name is not None
    await fs.unpin(name)


async def request(fs: Filesystem, req: dict[str, Any]) -> dict[str, Any]:
    """Carry out one request, a JSON object, as the daemon's socket takes it
    and ``megafs share/shares/unshare STORE`` make it: ``op`` "share" (with
    ``path``, ``expires``, ``password``, ``base_url``), "shares" or
    "unshare" (with ``id``). The answer is a JSON object too. Raises
    UsageError for a malformed request, else as :func:`share`."""
    op = req.get("op")
    if op == "share":
        path, expires = req.get("path"), req.get("expires")
        password, base_url = req.get("password"), req.get("base_url")
        if (
            not isinstance(path, str)
            or not isinstance(expires, int | float | None)
            or isinstance(expires, bool)
            or not isinstance(password, str | None)
            or not isinstance(base_url, str | None)
        ):
            raise UsageError("malformed share request")
        info = await share(fs, path, expires=expires, password=password, base_url=base_url)
        return {"share": dataclasses.asdict(info)}
    if op == "shares":
        return {"shares": [dataclasses.asdict(i) for i in await list_shares(fs)]}
    if op == "unshare":
        share_id = req.get("id")
        if not isinstance(share_id, str):
            raise UsageError("malformed unshare request")
        await unshare(fs, share_id)
        return {"ok": True}
    raise UsageError(f"unknown request {op!r}")


__all__ = ["ShareInfo", "list_shares", "request", "share", "unshare"]
