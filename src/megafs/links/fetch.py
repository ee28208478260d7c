"""``megafs get LINK [DEST]``: download a share without the vault.

Fetches the page (the link without its fragment), opens the manifest with
the link key (and password), then fetches each file's chunks with ranged
GETs, a few at a time, verifies every block (:func:`~megafs.format.share.open_chunk`)
and writes only verified bytes, in order, to ``NAME.megafs-<id>.part``
beside the destination; a complete file is renamed into place and gets
its mode and time. Interrupted, it resumes: a part file keeps its whole
chunks, a file already in place with its size is not fetched again. A
share that fails verification leaves no file behind (its part file is
removed); one that expired or was revoked fails before anything is written.

May not touch: vaults, stores, the filesystem model (a recipient has only
the link).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpx
import trio

from ..errors import LinkGone, StoreError, StoreUnreachable, TamperedShare, UsageError
from ..format import share as fmt

#: Chunks fetched at once, or fetched and waiting to be written in order.
WINDOW = 16
#: Seconds an HTTP exchange may stall.
TIMEOUT = 60.0


@dataclass
class Opened:
    """A link whose manifest opened."""

    url: str
    envelope: fmt.Envelope
    manifest: fmt.Manifest

    @property
    def total(self) -> int:
        return sum(e.size for e in self.manifest.entries if e.kind == "file")


def _refused(status: int, body: str, what: str) -> Exception:
    """The one-line error for a store's refusal (HTTP ``status``, the first
    bytes of its answer ``body``) of a link's URL."""
    if status == 416:  # a range past the object's end: cut short
        return TamperedShare(f"{what}: the object is truncated (HTTP 416)")
    if status == 403 and "expired" in body.lower():
        return LinkGone(f"the link has expired (the store refused {what}: HTTP 403)")
    if status in (403, 404, 410):
        return LinkGone(
            f"the link was revoked or has expired (the store refused {what}: HTTP {status})"
        )
    return StoreError(f"the store answered HTTP {status} for {what}")


async def _get(
    client: httpx.AsyncClient,
    url: str,
    what: str,
    *,
    limit: int,
    rng: tuple[int, int] | None = None,
) -> bytes:
    """GET ``url`` (bytes ``rng`` = (offset, length) of it), reading at most
    ``limit`` bytes of a whole answer. A server without ranges answers 200
    with everything: the range is cut out of it."""
    headers = {}
    if rng is not None:
        headers["Range"] = f"bytes={rng[0]}-{rng[0] + rng[1] - 1}"
    try:
        async with client.stream("GET", url, headers=headers) as resp:
            if resp.status_code not in (200, 206):
                body = b""
                async for part in resp.aiter_bytes():
                    body += part
                    if len(body) > 65536:
                        break
                raise _refused(resp.status_code, body.decode("utf-8", "replace"), what)
            whole = rng is not None and resp.status_code == 200
            want = rng[0] + rng[1] if whole and rng is not None else limit
            data = bytearray()
            async for part in resp.aiter_bytes():
                data += part
                if whole and len(data) >= want:
                    break  # (no ranges here: what follows is not needed)
                if len(data) > want:
                    raise TamperedShare(f"{what} is larger than it can be")
    except httpx.TransportError as e:
        raise StoreUnreachable(f"cannot fetch {what}: {e.__class__.__name__}: {e}") from None
    if rng is not None and resp.status_code == 200:
        return bytes(data[rng[0] : rng[0] + rng[1]])
    return bytes(data)


async def open_link(
    client: httpx.AsyncClient, link: str, password: Callable[[], str] | None = None
) -> Opened:
    """Fetch the page and open its manifest. Raises ShareError subclasses
    (LinkGone: expired or revoked; WrongLinkKey; TamperedShare) or
    StoreUnreachable. ``password`` is asked only for a password link."""
    url, key = fmt.parse_link(link)
    page = await _get(client, url, "the share page", limit=fmt.MAX_PAGE_SIZE)
    env = fmt.Envelope.from_page(page)
    secret = None
    if env.password is not None:
        if password is None:
            raise UsageError(
                "this link needs its password (give --password-file or $MEGAFS_LINK_PASSWORD)"
            )
        secret = password()
    mkey = await trio.to_thread.run_sync(fmt.manifest_key, key, env.share_id, secret, env.password)
    m = fmt.open_manifest(mkey, env)
    if m.expires is not None and m.expires <= time.time():
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(m.expires))
        raise LinkGone(f"the link expired on {when}")
    return Opened(url, env, m)


def destination(opened: Opened, dest: str | None) -> Path:
    """Where the share goes: DEST, DEST/NAME if DEST is a folder, else ./NAME."""
    name = opened.manifest.name
    if dest is None:
        return Path(name)
    p = Path(dest)
    if p.is_dir():
        return p / name
    return p


async def download(
    client: httpx.AsyncClient,
    opened: Opened,
    dest: Path,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Download every file of the share under ``dest`` (the file itself, or
    the top folder). Raises as :func:`open_link`; on TamperedShare the file
    being written is removed; a local file that cannot be written is a
    UsageError.

    Nothing already there is written into or trusted: a shared file's
    destination must not exist (unless a part file of this share is there
    to resume), nor a shared folder's, unless it holds the marker
    ``.megafs-get-<id>`` an interrupted download of this share left (then
    its complete files are kept). Folders met on the way must be real
    folders, not symbolic links. Modes keep the permission bits only,
    less the umask (never set-user-ID, for example)."""
    m = opened.manifest
    tag = opened.envelope.share_id.hex()[:8]
    umask = os.umask(0)
    os.umask(umask)
    keep = ~umask & 0o777
    try:
        resuming = False
        marker = dest / f".megafs-get-{tag}"
        if m.kind == "dir":
            resuming = _top_folder(dest, marker)
        dirs: list[tuple[Path, fmt.Entry]] = []
        for e in m.entries:
            target = dest / e.path if e.path else dest
            if e.kind == "dir":
                _mkdir(target)
                dirs.append((target, e))
                continue
            await _file(client, opened, e, target, tag, progress, resuming, keep)
        for target, e in reversed(dirs):  # children first: their writes moved the times
            os.chmod(target, e.mode & keep)
            os.utime(target, (e.mtime, e.mtime))
        if m.kind == "dir":
            marker.unlink()
    except OSError as err:
        where = err.filename or dest
        raise UsageError(f"cannot write {where}: {err.strerror}") from None


def _top_folder(dest: Path, marker: Path) -> bool:
    """Make the shared folder's top ``dest`` with the resume ``marker`` in
    it; True if an interrupted download of this share had made it."""
    if dest.exists() or dest.is_symlink():
        if dest.is_dir() and not dest.is_symlink() and marker.is_file():
            return True
        raise UsageError(f"{dest} exists; remove it or give another destination")
    _mkdir(dest)
    marker.touch()
    return False


def _holds(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``exc`` is a ``kind``, or an exception group holding one."""
    if isinstance(exc, BaseExceptionGroup):
        return any(_holds(e, kind) for e in exc.exceptions)
    return isinstance(exc, kind)


def _mkdir(path: Path) -> None:
    """Make folder ``path`` (its parent is one the download made or met
    already); an existing one must be a real folder."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise UsageError(f"{path} exists and is not a folder; nothing was written there")
    try:
        path.mkdir(exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot make the folder {path}: {err.strerror}") from None


def _open_part(target: Path, part: Path, size: int, resuming: bool) -> int | None:
    """The part file to write ``target`` through; None if ``target`` is
    complete already (a file of its size in a folder this share's download
    made: ``resuming``)."""
    if resuming and target.is_file() and not target.is_symlink() and target.stat().st_size == size:
        return None
    if (target.exists() or target.is_symlink()) and not part.exists():
        raise UsageError(f"{target} exists; remove it or give another destination")
    try:
        return os.open(part, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as err:
        raise UsageError(f"cannot write {part}: {err.strerror}") from None


async def _file(
    client: httpx.AsyncClient,
    opened: Opened,
    e: fmt.Entry,
    target: Path,
    tag: str,
    progress: Callable[[int], None] | None,
    resuming: bool,
    keep: int,
) -> None:
    m = opened.manifest
    part = target.with_name(f".{target.name[:200]}.megafs-{tag}.part")
    fd = _open_part(target, part, e.size, resuming)
    if fd is None:
        if progress:
            progress(e.size)  # already here (an earlier run): not fetched again
        return
    cs = m.chunk_size
    try:
        have = os.fstat(fd).st_size
        start = have // cs  # whole chunks kept from an interrupted run
        os.ftruncate(fd, start * cs)
        if progress and start:
            progress(min(start * cs, e.size))
        if e.inline is not None:
            os.pwrite(fd, e.inline, 0)
            if progress:
                progress(len(e.inline))
        todo = [c for c in e.chunks if c.index >= start]
        # A window of chunks in flight or waiting, written strictly in order
        # (so a part file is always a verified prefix).
        window = trio.Semaphore(WINDOW)
        got: dict[int, bytes] = {}
        ready = {c.index: trio.Event() for c in todo}

        async def one(c: fmt.Chunk) -> None:
            url = urljoin(opened.url, m.objects[c.obj])
            n = fmt.sealed_length(c.length, m.block_size)
            sealed = await _get(
                client, url, f"chunk {c.index} of {e.path or m.name}", limit=n, rng=(c.off, n)
            )
            got[c.index] = await trio.to_thread.run_sync(fmt.open_chunk, m, e, c, sealed)
            ready[c.index].set()

        async def start_all(nursery: trio.Nursery) -> None:
            for c in todo:
                await window.acquire()  # released once the chunk is written
                nursery.start_soon(one, c)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(start_all, nursery)
            for c in todo:
                await ready[c.index].wait()
                data = got.pop(c.index)
                await trio.to_thread.run_sync(os.pwrite, fd, data, c.index * cs)
                window.release()
                if progress:
                    progress(c.length)
        os.ftruncate(fd, e.size)  # holes and the tail up to the size are zeros
        os.fsync(fd)
    except BaseException as exc:
        os.close(fd)
        if _holds(exc, TamperedShare):  # nothing damaged is kept to resume from
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)
        raise
    os.close(fd)
    os.chmod(part, e.mode & keep)
    os.utime(part, (e.mtime, e.mtime))
    os.replace(part, target)


def client() -> httpx.AsyncClient:
    """The HTTP client of a download (no credentials: links are public)."""
    return httpx.AsyncClient(timeout=httpx.Timeout(TIMEOUT), follow_redirects=True)


__all__ = ["Opened", "client", "destination", "download", "open_link"]
