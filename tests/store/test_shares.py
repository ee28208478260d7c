"""Share links against hostile stores and holders: tampered, truncated and
swapped objects, a page of another vault, and what the link key opens
(only the shared version's objects). Both stores: presigned SeaweedFS URLs,
and a local folder published by a static web server."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from megafs.cli.exit_codes import Exit
from megafs.errors import TamperedShare, WrongLinkKey
from megafs.format import crypto
from megafs.format import share as fmt
from megafs.fs import fsck, shares
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.links import fetch
from megafs.stores import LocalStore, Store
from megafs.vault.vault import Vault, obj_name

from ..support.helpers import PASS, new_vault, run_megafs
from ..support.mounting import one_error_line
from ..support.shares import static_server


@pytest.fixture
def base_url(any_store: Store, tmp_path: Path) -> Iterator[str | None]:
    """None on S3 (presigned URLs); the URL of a static web server that
    publishes the local store's folder."""
    if not isinstance(any_store, LocalStore):
        yield None
        return
    with static_server(Path(any_store.root), tmp_path / "http.log") as base:
        yield base


@pytest.fixture
async def fs(any_store: Store) -> AsyncIterator[Filesystem]:
    await new_vault(any_store, crypto.Layout(chunk_size=64 * 1024, block_size=16 * 1024))
    f = await Filesystem.load(await Vault.unlock(any_store, PASS))
    yield f
    await f.close()


async def _write(fs: Filesystem, parent: int, name: bytes, data: bytes) -> int:
    ino = (await fs.create(parent, name, 0o644, 0, 0)).ino
    await fs.write(ino, 0, data)
    return ino


def _get(link: str, dest: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run_megafs("get", link, dest, env={**os.environ, **env})


async def _object_of(fs: Filesystem, info: shares.ShareInfo, nth: int = 0) -> str:
    """The store name of the ``nth`` object a share's manifest names."""
    async with fetch.client() as c:
        opened = await fetch.open_link(c, info.link)
    return obj_name(opened.manifest.object_ids[nth])


async def test_tampered_truncated_and_swapped_objects_fail_with_no_output(
    fs: Filesystem, any_store: Store, base_url: str | None, tmp_path: Path
) -> None:
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    data = os.urandom(200_000)  # 4 chunks of 64 KiB: whole objects
    await _write(fs, ROOT_INO, b"f", data)
    info = await shares.share(fs, "/f", base_url=base_url)
    out = tmp_path / "f"
    proc = _get(info.link, out)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == data
    out.unlink()

    name = await _object_of(fs, info, 1)
    good = await any_store.get(name)
    for bad, what in [
        (good[:100] + bytes([good[100] ^ 1]) + good[101:], "tampered"),
        (good[:-1000], "truncated"),
    ]:
        await any_store.put(name, bad)
        proc = _get(info.link, out)
        assert proc.returncode == Exit.CORRUPT, proc.stderr
        assert what in one_error_line(proc)
        assert not list(tmp_path.iterdir()), "no output file, no part file"
    # another object of the same size, of this vault (a chunk of another file)
    other_ino = await _write(fs, ROOT_INO, b"g", os.urandom(70_000))
    await fs.commit()
    other = obj_name((await fs.table.get(other_ino)).chunks[0].obj)
    await any_store.put(name, await any_store.get(other))
    proc = _get(info.link, out)
    assert proc.returncode == Exit.CORRUPT, proc.stderr
    assert not list(tmp_path.iterdir())
    await any_store.put(name, good)

    # the page itself: a changed manifest byte, then junk
    page = await any_store.get_page(info.share_id)
    assert page is not None
    env = fmt.Envelope.from_page(page)
    env.manifest = env.manifest[:-1] + bytes([env.manifest[-1] ^ 1])
    from megafs.links.page import render

    await any_store.put_page(info.share_id, render(env))
    proc = _get(info.link, out)
    assert proc.returncode == Exit.CORRUPT, proc.stderr
    assert "tampered" in one_error_line(proc)
    await any_store.put_page(info.share_id, b"<html>nothing</html>")
    proc = _get(info.link, out)
    assert proc.returncode != 0
    one_error_line(proc)
    assert not list(tmp_path.iterdir())


async def test_a_page_of_another_vault_or_share_is_a_wrong_key(
    fs: Filesystem, any_store: Store, base_url: str | None, tmp_path: Path
) -> None:
    """The link's key on another share's page (of this vault or of another
    vault on the same store's web server) is refused as a wrong key."""
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    await _write(fs, ROOT_INO, b"a", os.urandom(5000))
    await _write(fs, ROOT_INO, b"b", os.urandom(5000))
    a = await shares.share(fs, "/a", base_url=base_url)
    b = await shares.share(fs, "/b", base_url=base_url)
    # b's page served where a's is: a's link key on it
    page_b = await any_store.get_page(b.share_id)
    assert page_b is not None
    await any_store.put_page(a.share_id, page_b)
    proc = _get(a.link, tmp_path / "x")
    assert proc.returncode == Exit.WRONG_SECRET, proc.stderr
    assert "wrong link key" in one_error_line(proc)
    # the owner record of a page from another vault does not open here
    with pytest.raises(TamperedShare):
        other_keys = crypto.Keys(crypto.random_bytes(32), crypto.new_id(), version=3)
        fmt.OwnerRecord.open(other_keys, fmt.Envelope.from_page(page_b))
    assert not list(tmp_path.iterdir())


async def test_the_link_key_opens_only_the_shared_version(
    fs: Filesystem, any_store: Store, base_url: str | None
) -> None:
    """With the link key and the whole store, nothing but the shared
    version's chunks opens: no key in the manifest is a vault key or a file
    key; no metadata object, root or header slot opens under any of them;
    the chunks of a later version of the same file, and of another file in
    the same pack, do not open under them."""
    folder = (await fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0)).ino
    shared = await _write(fs, folder, b"shared", os.urandom(150_000))
    await _write(fs, folder, b"small", os.urandom(3000))  # packed
    neighbour = await _write(fs, ROOT_INO, b"neighbour", os.urandom(3000))  # same pack
    info = await shares.share(fs, "/d/shared", base_url=base_url)
    await fs.write(shared, 0, os.urandom(150_000))  # a later version: new objects
    await fs.commit()

    async with fetch.client() as c:
        opened = await fetch.open_link(c, info.link)
    m = opened.manifest
    keys = {c.key for e in m.entries for c in e.chunks}
    assert keys
    vault = fs.vault
    vk = vault.keys
    secret = {vk.meta, vk.root, vk.file_wrap, vk.header_mac, vk.cache, vk.master}
    node = await fs.table.get(shared)
    assert keys.isdisjoint(secret | {node.file_key})
    listed = {o for e in m.entries for c in e.chunks for o in [m.object_ids[c.obj]]}
    others: list[bytes] = []
    async for name, _size in any_store.list():
        obj = bytes.fromhex(name)
        if obj not in listed:
            others.append(obj)
    assert others
    for obj in others:
        sealed = await any_store.get(obj_name(obj))
        for key in keys:
            # as metadata (committing seal) under any kind
            for kind in range(1, 7):
                with pytest.raises(crypto.AuthFailed):
                    crypto.open_committed(key, sealed, crypto.meta_aad(vault.vault_id, kind, obj))
    # later version and the neighbour's packed chunk: their first block under each key
    later = (await fs.table.get(shared)).chunks
    nb = (await fs.table.get(neighbour)).chunks
    targets = [(node.file_id, idx, ref) for idx, ref in later.items()] + [
        ((await fs.table.get(neighbour)).file_id, idx, ref) for idx, ref in nb.items()
    ]
    for file_id, idx, ref in targets:
        assert ref.obj not in listed or ref.packed
        n = min(vault.layout.block_size, ref.length)
        sealed = await any_store.get_range(obj_name(ref.obj), ref.off, n + crypto.OVERHEAD)
        aad = crypto.block_aad(vault.vault_id, file_id, ref.obj, idx, 0, ref.length, ref.pack_off)
        for key in keys:
            from cryptography.exceptions import InvalidTag
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            with pytest.raises(InvalidTag):
                AESGCM(key).decrypt(sealed[:12], sealed[12:], aad)
    # the header's slots and the root: none opens under a link key either
    root = await any_store.read_pointer("root")
    assert root is not None
    for key in keys:
        with pytest.raises(crypto.AuthFailed):
            crypto.open_committed(key, root.data, crypto.root_aad(vault.vault_id))


async def test_the_shared_version_survives_edits_pruning_and_the_collector(
    fs: Filesystem, any_store: Store, base_url: str | None, tmp_path: Path
) -> None:
    """Edits, deletion and a prune under a policy that keeps nothing else:
    the share's root stays pinned, fsck finds nothing missing, the link
    downloads the shared bytes; after unshare and a prune the objects go."""
    from megafs.vault.retention import Policy

    data = os.urandom(300_000)
    ino = await _write(fs, ROOT_INO, b"f", data)
    info = await shares.share(fs, "/f", base_url=base_url)
    await fs.write(ino, 0, os.urandom(300_000))
    await fs.commit()
    await fs.unlink(ROOT_INO, b"f")
    fs.committer.keeper.set_policy(Policy(every=0, tiers=()))
    await fs.commit()
    await fs.prune()
    report = await fsck.check(fs.vault)
    assert report.clean, report
    proc = _get(info.link, tmp_path / "f")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "f").read_bytes() == data
    name = await _object_of(fs, info)
    await shares.unshare(fs, info.share_id)
    await fs.prune()
    await fs.collector.drain()
    assert await any_store.get_page(info.share_id) is None
    assert name not in {n async for n, _ in any_store.list()}


async def test_expired_shares_are_unpinned_by_the_next_prune(
    fs: Filesystem, base_url: str | None
) -> None:
    """Past its expiry, a share's pin is dropped by the next prune (the
    periodic one of a commit, or megafs prune) and its page deleted."""
    await _write(fs, ROOT_INO, b"f", os.urandom(5000))
    info = await shares.share(fs, "/f", base_url=base_url, expires=time.time() + 1)
    assert [s.share_id for s in await shares.list_shares(fs)] == [info.share_id]
    await trio.sleep(1.2)
    await fs.prune()
    assert await shares.list_shares(fs) == []
    names = [e.name for e in await fs.committer.keeper.entries()]
    assert not any(n and n.startswith("share-") for n in names)
    assert await fs.vault.store.get_page(info.share_id) is None  # its page went too


async def test_wrong_key_and_malformed_manifests_are_refused() -> None:
    """Pure format checks: a wrong key or password raises WrongLinkKey; a
    manifest that opens but is malformed (paths with "..", out-of-range
    numbers, short keys) raises TamperedShare."""
    sid = crypto.new_id()
    m = fmt.Manifest(crypto.new_id(), "x", "file", 0.0, None, 4096, 65536, [], [], [])
    key = fmt.manifest_key(b"k" * 32, sid)
    env = fmt.Envelope(sid, fmt.seal_manifest(key, sid, m), b"")
    assert fmt.open_manifest(key, env).name == "x"
    with pytest.raises(WrongLinkKey):
        fmt.open_manifest(fmt.manifest_key(b"j" * 32, sid), env)
    for bad in [
        {"entries": [{"path": "../etc/passwd", "type": "file", "mode": 0, "mtime": 0}]},
        {"entries": [{"path": "a//b", "type": "dir", "mode": 0, "mtime": 0}]},
        {"block": 1},
        {"name": "a/b"},
        {"vault": "AAAA"},
    ]:
        raw = json.loads(m.to_json())
        raw.update(bad)
        sealed = crypto.seal_committed(key, json.dumps(raw).encode(), fmt.AAD_MANIFEST + sid)
        with pytest.raises(TamperedShare):
            fmt.open_manifest(key, fmt.Envelope(sid, sealed, b""))


async def test_an_interrupted_get_resumes_where_it_stopped(
    fs: Filesystem, any_store: Store, base_url: str | None, tmp_path: Path
) -> None:
    """A chunk object missing halfway (the store failing) stops the download
    with the verified prefix kept in the part file; the next run fetches
    only the chunks after it, and the file is whole."""
    data = os.urandom(40 * 64 * 1024)  # 40 chunks, whole objects
    ino = await _write(fs, ROOT_INO, b"f", data)
    info = await shares.share(fs, "/f", base_url=base_url)
    node = await fs.table.get(ino)
    missing = obj_name(node.chunks[20].obj)
    saved = await any_store.get(missing)
    await any_store.delete(missing)
    out = tmp_path / "out" / "f"
    out.parent.mkdir()
    async with fetch.client() as c:
        opened = await fetch.open_link(c, info.link)
        with pytest.raises(BaseException) as failed:
            await fetch.download(c, opened, out)
    assert "revoked" in str(failed.value) or "LinkGone" in repr(failed.value)
    parts = list(out.parent.iterdir())
    assert len(parts) == 1 and parts[0].name.endswith(".part")
    kept = parts[0].stat().st_size
    assert 0 < kept <= 20 * 64 * 1024 and kept % (64 * 1024) == 0
    assert parts[0].read_bytes() == data[:kept]
    await any_store.put(missing, saved)
    fetched: list[str] = []

    async def count(request: object) -> None:
        fetched.append(str(getattr(request, "url", "")))

    import httpx

    async with httpx.AsyncClient(event_hooks={"request": [count]}) as c:
        opened = await fetch.open_link(c, info.link)
        fetched.clear()
        await fetch.download(c, opened, out)
    assert len(fetched) == 40 - kept // (64 * 1024)
    assert out.read_bytes() == data and list(out.parent.iterdir()) == [out]


async def test_get_writes_into_nothing_that_exists_and_drops_special_modes(
    fs: Filesystem, base_url: str | None, tmp_path: Path
) -> None:
    """A shared folder named like an existing one is refused, not merged
    into; a symbolic link in the way is never followed; set-user-ID and
    other special bits are dropped and the umask applies; a file of the
    same size already there is not taken for the shared one."""
    folder = (await fs.mkdir(ROOT_INO, b".config", 0o755, 0, 0)).ino
    ino = (await fs.create(folder, b"run.sh", 0o6777, 0, 0)).ino
    await fs.write(ino, 0, b"#!/bin/sh\necho shared\n")
    one = await _write(fs, ROOT_INO, b"same.bin", b"B" * 5000)
    assert one
    folder_link = (await shares.share(fs, "/.config", base_url=base_url)).link
    file_link = (await shares.share(fs, "/same.bin", base_url=base_url)).link
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    (home / "elsewhere").mkdir()
    proc = _get(folder_link, home)  # -> home/.config, which exists
    assert proc.returncode == Exit.USAGE, proc.stderr
    assert "exists" in one_error_line(proc)
    assert list((home / ".config").iterdir()) == []
    (home / "link").symlink_to(home / "victim")  # dangling: get must not create through it
    proc = _get(file_link, home / "link")
    assert proc.returncode == Exit.USAGE, proc.stderr
    assert not (home / "victim").exists()
    os.umask(0o022)
    out = tmp_path / "fresh"
    proc = _get(folder_link, out)
    assert proc.returncode == 0, proc.stderr
    got = out / "run.sh"
    assert got.read_bytes() == b"#!/bin/sh\necho shared\n"
    assert got.stat().st_mode & 0o7777 == 0o755  # no set-user-ID, no world write
    assert not list(out.glob(".megafs-get-*"))  # the resume marker is gone once complete
    same = tmp_path / "same.bin"
    same.write_bytes(b"A" * 5000)  # another file of the same size
    proc = _get(file_link, same)
    assert proc.returncode == Exit.USAGE, proc.stderr
    assert same.read_bytes() == b"A" * 5000
