"""The store is the adversary: what it sees, and what it cannot do unnoticed.

Every test runs on both stores (``any_store``: a local folder and a prefix on
the session's SeaweedFS). The store is attacked the way a malicious server
could: reading every byte, flipping, cutting, swapping, replaying, deleting
and planting objects and pointers. A few tests (marked "insider") go further
and re-seal metadata with the vault's own keys, to show that each inner layer
(wrapped file keys, inline data, chunk maps, object kinds) is bound on its own
and not only protected by the layer around it. docs/security.md refers to
these tests by name.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import pkgutil
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from megafs.errors import (
    CorruptHeader,
    IntegrityError,
    NotAVault,
    RollbackError,
    UnsupportedVersion,
    WrongPassphrase,
)
from megafs.format import crypto, header
from megafs.fs import fsck
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.stores import LocalStore, Store
from megafs.stores.base import ForwardingStore
from megafs.stores.s3 import S3Store
from megafs.vault.retention import Policy
from megafs.vault.root import DEVICE_BITS
from megafs.vault.tables import MID_BITS, PAGE_BITS
from megafs.vault.vault import KIND_BODY, KIND_INDEX, KIND_LEAF, Vault, obj_name

from ..support.helpers import FAST_KDF, PASS, SMALL, new_vault
from ..support.seaweed import SeaweedFS, signed_request

MARKER = "MEGAFS-MARKER-7f3a"
M = MARKER.encode()
CS = SMALL.chunk_size
BS = SMALL.block_size
SB = SMALL.sealed_block


@pytest.fixture
def store(any_store: Store) -> Store:
    return any_store


def marked(n: int) -> bytes:
    """``n`` bytes: the marker every 1000 bytes, random bytes between."""
    out = bytearray()
    while len(out) < n:
        out += M + os.urandom(1000 - len(M))
    return bytes(out[:n])


# --- a sample vault, and where each of its objects is --------------------------

DIR = M
SMALL_FILE = M + b"/" + M + b".txt"  # inline
TINY_FILE = M + b"/tiny.txt"  # inline
BIG_FILE = M + b"/big-" + M  # 3 full chunks and a partial one (in a pack)
OTHER_FILE = M + b"/other.bin"  # 2 full chunks
LINK = M + b"/ln"
BIGDIR = b"bigdir-" + M  # its entries need more than 8 KiB: an external body
BIGDIR_NAMES = [f"{MARKER}-{i:03}-".encode() + b"x" * 60 for i in range(100)]
XATTR = (b"user." + M, M * 3)


@dataclass
class Sample:
    store: Store
    files: dict[bytes, bytes]  # path -> content
    link_target: bytes
    roles: dict[str, str] = field(default_factory=dict)  # role -> object name


async def make_sample(store: Store) -> Sample:
    vault = await new_vault(store)
    fs = await Filesystem.load(vault)
    # only the newest root kept: its history is one entry (four objects)
    fs.committer.keeper.set_policy(Policy(every=0, tiers=()))
    d = (await fs.mkdir(ROOT_INO, DIR, 0o755, 0, 0)).ino
    files = {
        SMALL_FILE: M * 10,
        TINY_FILE: b"tiny " + M,
        BIG_FILE: marked(3 * CS + 1000),
        OTHER_FILE: marked(2 * CS),
    }
    for path, data in files.items():
        ino = (await fs.create(d, path.rsplit(b"/", 1)[1], 0o644, 0, 0)).ino
        await fs.write(ino, 0, data)
    small = (await fs.lookup(d, SMALL_FILE.rsplit(b"/", 1)[1])).ino
    await fs.setxattr(small, *XATTR)
    target = b"../" + M + b"/target"
    await fs.symlink(d, b"ln", target, 0, 0)
    bd = (await fs.mkdir(ROOT_INO, BIGDIR, 0o755, 0, 0)).ino
    for name in BIGDIR_NAMES:
        await fs.create(bd, name, 0o644, 0, 0)
    await fs.close()
    sample = Sample(store, files, target)
    sample.roles = await find_roles(store)
    return sample


async def open_ro(store: Store) -> Filesystem:
    return await Filesystem.load(await Vault.unlock(store, PASS), writable=False)


async def resolve(fs: Filesystem, path: bytes) -> int:
    ino = ROOT_INO
    for part in path.split(b"/"):
        ino = (await fs.lookup(ino, part)).ino
    return ino


async def find_roles(store: Store) -> dict[str, str]:
    """Name the object that plays each role, by walking the vault's own structure."""
    fs = await open_ro(store)
    big = fs.table.inodes[await resolve(fs, BIG_FILE)]
    other = fs.table.inodes[await resolve(fs, OTHER_FILE)]
    bigdir = fs.table.inodes[await resolve(fs, BIGDIR)]
    assert fs.root.itab is not None and bigdir.body_ref is not None
    # The root folder (inode 1, made with the vault) is on page 0; everything
    # else on the first page of the writing device's range (prefix 1).
    page = (1 << DEVICE_BITS) >> PAGE_BITS
    hi, lo = page >> MID_BITS, page & ((1 << MID_BITS) - 1)
    assert sorted(fs.table.index.top) == [0, hi]
    assert list(fs.table.index.mids[0]) == [0] and list(fs.table.index.mids[hi]) == [lo]
    assert sorted(big.chunks) == [0, 1, 2, 3] and sorted(other.chunks) == [0, 1]
    assert big.chunks[3].packed and not any(r.packed for r in other.chunks.values())
    assert fs.committer.packs is not None and fs.root.ptab is not None
    await fs.committer.packs.load(page)  # the device's first pack is on the same page number
    roles = {
        "top": obj_name(fs.root.itab),
        "root_mid": obj_name(fs.table.index.top[0]),
        "root_leaf": obj_name(fs.table.index.mids[0][0]),
        "mid": obj_name(fs.table.index.top[hi]),
        "leaf": obj_name(fs.table.index.mids[hi][lo]),  # also holds the inline files
        "body": obj_name(bigdir.body_ref),
        **{f"big{i}": obj_name(r.obj) for i, r in big.chunks.items()},  # big3: a pack
        **{f"other{i}": obj_name(r.obj) for i, r in other.chunks.items()},
        "ptab": obj_name(fs.root.ptab),  # the pack table: top index, mid index, page
        "ptab_mid": obj_name(fs.committer.packs.index.top[hi]),
        "ptab_leaf": obj_name(fs.committer.packs.index.mids[hi][lo]),
    }
    # the history (docs/history.md): one entry, in the root itself (no object)
    [entry] = await fs.history()
    assert fs.root.hist is None and entry.inline is not None and entry.lists is None
    names = {n async for n, _ in store.list()}
    assert set(roles.values()) == names, "every object has a known role"
    return roles


async def exercise(s: Sample) -> None:
    """Open the vault and read everything; assert every byte read is right."""
    fs = await open_ro(s.store)
    for path, data in s.files.items():
        ino = await resolve(fs, path)
        assert await fs.read(ino, 0, len(data) + 10) == data, path
    assert await fs.readlink(await resolve(fs, LINK)) == s.link_target
    assert await fs.getxattr(await resolve(fs, SMALL_FILE), XATTR[0]) == XATTR[1]
    bd = await resolve(fs, BIGDIR)
    names: list[bytes] = []
    after = 0
    while batch := await fs.readdir(bd, after):
        names += [n for n, _, _ in batch if n not in (b".", b"..")]
        after = batch[-1][2]
    assert sorted(names) == BIGDIR_NAMES
    # the history, as a listing of snapshots reads it
    [entry] = await fs.history()
    assert entry.gen == fs.root.generation
    await fs.committer.keeper.table.lists(entry)


# --- store manipulation ---------------------------------------------------------

POINTERS = ("header", "root")


async def read_any(store: Store, name: str) -> bytes:
    if name in POINTERS:
        ptr = await store.read_pointer(name)
        assert ptr is not None
        return ptr.data
    return await store.get(name)


async def write_any(store: Store, name: str, data: bytes) -> None:
    """Overwrite an object or a pointer, as a malicious store would."""
    if name in POINTERS:
        ptr = await store.read_pointer(name)
        await store.cas_pointer(name, data, ptr.etag if ptr else None)
    else:
        await store.put(name, data)


def flipped(data: bytes, pos: int, mask: int = 0x01) -> bytes:
    b = bytearray(data)
    b[pos] ^= mask
    return bytes(b)


async def expect_integrity(s: Sample, obj: str) -> IntegrityError:
    with pytest.raises(IntegrityError) as e:
        await exercise(s)
    assert e.value.obj == obj, e.value
    return e.value


# --- a. what the store sees ---------------------------------------------------------


async def raw_store_bytes(store: Store, request: pytest.FixtureRequest) -> dict[str, bytes]:
    """Every stored byte under the vault, by the store's own key or path (not our API)."""
    if isinstance(store, LocalStore):
        return read_tree(Path(store.root))
    out: dict[str, bytes] = {}
    assert isinstance(store, S3Store)
    server: SeaweedFS = request.getfixturevalue("seaweedfs")

    def fetch() -> None:
        base = f"{server.endpoint}/{server.bucket}"
        url = f"{base}?list-type=2&max-keys=1000&prefix={store.prefix}"
        resp = signed_request("GET", url, server.access_key, server.secret_key)
        assert resp.status_code == 200
        root = ET.fromstring(resp.content)
        assert (root.findtext("{*}IsTruncated") or "false") == "false"
        for item in root.iterfind("{*}Contents"):
            key = item.findtext("{*}Key") or ""
            got = signed_request("GET", f"{base}/{key}", server.access_key, server.secret_key)
            assert got.status_code == 200
            out[key[len(store.prefix) :]] = got.content

    await trio.to_thread.run_sync(fetch)
    return out


def read_tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def forms(secret: bytes) -> list[bytes]:
    """A secret and the encodings it might leak in."""
    out = [secret, secret.hex().encode(), secret.hex().upper().encode(), base64.b64encode(secret)]
    try:
        text = secret.decode()
    except UnicodeDecodeError:
        return out
    return [*out, text.encode("utf-16-le"), text.encode("utf-16-be")]


async def test_store_never_sees_names_contents_or_keys(
    store: Store, request: pytest.FixtureRequest, _state_dir: Path
) -> None:
    s = await make_sample(store)
    vault = await Vault.unlock(store, PASS)
    fs = await open_ro(store)
    file_keys = []
    for path in s.files:
        node = fs.table.inodes[await resolve(fs, path)]
        assert node.file_key is not None
        file_keys.append(node.file_key)
    slot = vault.header.slots[0]
    kek = crypto.argon2id(header.normalize_passphrase(PASS), slot.salt, slot.kdf)
    k = vault.keys
    secrets = {
        "marker": M,
        "passphrase": PASS.encode(),
        "passphrase KEK": kek,
        "master key": k.master,
        **{
            f"subkey {n}": getattr(k, n)
            for n in ("header_mac", "root", "meta", "file_wrap", "cache")
        },
        **{f"file key {i}": fk for i, fk in enumerate(file_keys)},
    }
    # Through the store API: every object and pointer.
    seen: dict[str, bytes] = {}
    async for name, size in store.list():
        assert re.fullmatch(r"[0-9a-f]{32}", name), name
        seen["o/" + name] = await store.get(name)
        assert len(seen["o/" + name]) == size
    for p in POINTERS:
        seen["p/" + p] = await read_any(store, p)
    # Beneath it: every file of the folder, every key under the S3 prefix.
    raw = await raw_store_bytes(store, request)
    for key in raw:
        if isinstance(store, LocalStore):
            ok = re.fullmatch(r"objects/([0-9a-f]{2})/([0-9a-f]{32})", key)
            fan_ok = ok is not None and ok[2].startswith(ok[1])
            assert fan_ok or key in ("pointers/header", "pointers/root", "pointers/.lock"), key
        else:
            assert re.fullmatch(r"o/[0-9a-f]{32}|p/header|p/root", key), key
    assert len(raw) >= len(seen)
    everything = [*seen.items(), *raw.items(), *((f"name {k}", k.encode()) for k in raw)]
    for what, secret in secrets.items():
        for form in forms(secret):
            for where, data in everything:
                assert form not in data, f"{what} found in {where}"
    # The local state folder holds only the generation, the digest of the
    # newest root and a copy of the sealed root this client's state is built
    # on (bytes the store has, or had, anyway), and a random client id.
    state = read_tree(_state_dir)
    assert state
    for p, text in state.items():
        rec = json.loads(text)
        assert sorted(rec) == ["base", "client_id", "digest", "generation"], p
        assert M not in text
        assert bytes.fromhex(rec["base"]) in [d for _, d in everything], "base is a stored root"


async def test_identical_content_gives_unrelated_objects(store: Store) -> None:
    vault = await new_vault(store)
    fs = await Filesystem.load(vault)
    data = os.urandom(CS)
    for name in (b"a", b"b"):
        ino = (await fs.create(ROOT_INO, name, 0o644, 0, 0)).ino
        await fs.write(ino, 0, data)
    await fs.close()
    objs = [await store.get(n) async for n, size in store.list() if size == SMALL.sealed_len(CS)]
    assert len(objs) == 2 and objs[0] != objs[1]
    assert not set(objs[0][i : i + 16] for i in range(0, CS, 16)) & set(
        objs[1][i : i + 16] for i in range(0, CS, 16)
    )


# --- b. tampering: one flipped byte, in every kind of object --------------------------


def _slot_params_valid(mem: int, iters: int, lanes: int) -> bool:
    return 8 * lanes <= mem <= 1 << 20 and 1 <= iters <= 16 and 1 <= lanes <= 16


def header_verdict(data: bytes, pos: int) -> type[Exception]:
    """What unlocking with the passphrase must raise when byte ``pos`` is flipped (^1).

    Layout (format 3, 2 slots of 133 bytes): fixed part 0-33, slot count 34,
    passphrase slot 35-167 (kind 35, KDF parameters 36-47, salt 48-63, nonce
    64-87, commitment 88-119, wrapped key and tag 120-167), recovery slot
    168-300, MAC 301-332. What changes the key-encryption key or the
    commitment (KDF parameters, salt, nonce, commitment) is a wrong key: it
    cannot be told apart from a wrong passphrase. Past the commitment the key
    is right, so anything else that fails (the slot's tag over its associated
    data, then the MAC over the rest) is a corrupt header.
    """
    bad = flipped(data, pos)
    if pos < 8:
        return NotAVault
    if pos < 10:
        version = int.from_bytes(bad[8:10], "big")
        return UnsupportedVersion if version > header.VERSION else CorruptHeader
    if pos < 36:
        return CorruptHeader  # vault id, geometry, slot count, slot kind
    if pos < 48:
        mem, iters, lanes = (int.from_bytes(bad[i : i + 4], "big") for i in (36, 40, 44))
        return WrongPassphrase if _slot_params_valid(mem, iters, lanes) else CorruptHeader
    if pos < 120:
        return WrongPassphrase  # salt, nonce, commitment
    return CorruptHeader  # the slot's ciphertext and tag, the recovery slot, the MAC


async def test_header_every_byte_flipped(store: Store) -> None:
    vault = await new_vault(store)
    await (await Filesystem.load(vault)).close()
    good = await read_any(store, "header")
    assert len(good) == 333
    assert [s.kind for s in vault.header.slots] == [header.SLOT_PASSPHRASE, header.SLOT_RECOVERY]
    counts: dict[str, int] = {}
    for pos in range(len(good)):
        want = header_verdict(good, pos)
        await write_any(store, "header", flipped(good, pos))
        with pytest.raises(Exception) as e:
            await Vault.unlock(store, PASS)
        assert type(e.value) is want, (pos, e.value)
        counts[want.__name__] = counts.get(want.__name__, 0) + 1
    assert set(counts) == {"NotAVault", "UnsupportedVersion", "CorruptHeader", "WrongPassphrase"}
    # Cut or extended: never parsed as something else.
    for bad, want2 in [
        (good[:-1], CorruptHeader),
        (good + b"\0", CorruptHeader),
        (good[:40], CorruptHeader),
        (b"", NotAVault),
    ]:
        await write_any(store, "header", bad)
        with pytest.raises(want2):
            await Vault.unlock(store, PASS)
    await write_any(store, "header", good)
    await Vault.unlock(store, PASS)


async def test_header_flips_seen_through_the_recovery_slot(store: Store) -> None:
    vault, recovery = await Vault.init(store, PASS, FAST_KDF, SMALL)
    good = await read_any(store, "header")
    for pos, want in [
        (50, CorruptHeader),  # the passphrase slot: the MAC fails
        (100, CorruptHeader),
        (140, CorruptHeader),
        (185, CorruptHeader),  # the recovery slot's salt: its tag fails
        (200, WrongPassphrase),  # its nonce and commitment: a wrong key
        (230, WrongPassphrase),
        (260, CorruptHeader),  # its wrapped key and tag
        (310, CorruptHeader),  # the MAC
    ]:
        await write_any(store, "header", flipped(good, pos))
        with pytest.raises(want):
            await Vault.unlock_recovery(store, recovery)
    await write_any(store, "header", good)
    assert (await Vault.unlock_recovery(store, recovery)).keys.master == vault.keys.master


@pytest.mark.parametrize("role", ["root", "top", "mid", "leaf", "body", "big0", "big3"])
async def test_flipped_byte_is_detected(store: Store, role: str) -> None:
    s = await make_sample(store)
    name = "root" if role == "root" else s.roles[role]
    good = await read_any(store, name)
    await exercise(s)
    positions = sorted({0, 11, 12, len(good) // 2, len(good) - 17, len(good) - 1})
    for pos in positions:
        for mask in (0x01, 0x80):
            await write_any(store, name, flipped(good, pos, mask))
            await expect_integrity(s, name)
    await write_any(store, name, good)
    await exercise(s)


async def test_every_block_of_a_chunk_is_checked(store: Store) -> None:
    """One tag per 4 KiB block: a flip in any block fails the read of that block only."""
    s = await make_sample(store)
    name = s.roles["big1"]
    good = await store.get(name)
    for b in range(CS // BS):
        await store.put(name, flipped(good, b * SB + 20))
        fs = await open_ro(store)
        ino = await resolve(fs, BIG_FILE)
        with pytest.raises(IntegrityError) as e:
            await fs.read(ino, CS + b * BS, 1)
        assert e.value.obj == name
        if b + 1 < CS // BS:  # the next block still reads (and is right)
            nxt = CS + (b + 1) * BS
            assert await fs.read(ino, nxt, BS) == s.files[BIG_FILE][nxt : nxt + BS]
    await store.put(name, good)


async def test_inline_data_lives_inside_the_authenticated_leaf(store: Store) -> None:
    """A small file's bytes are inside the leaf; flipping any of them fails the leaf.

    AES-GCM is a stream cipher, so byte ``56 + i`` of the sealed leaf (after
    the nonce and the commitment) encrypts byte ``i`` of its plaintext: that
    is how the test finds where the inline data sits without the store being
    able to.
    """
    s = await make_sample(store)
    leaf = s.roles["leaf"]
    good = await store.get(leaf)
    vault = await Vault.unlock(store, PASS)
    obj = bytes.fromhex(leaf)
    plain = crypto.open_committed(
        vault.keys.meta, good, crypto.meta_aad(vault.vault_id, KIND_LEAF, obj)
    )
    fs = await open_ro(store)
    ino = await resolve(fs, SMALL_FILE)
    node = fs.table.inodes[ino]
    assert node.small == s.files[SMALL_FILE] and not node.chunks
    inline = bytes(msgpack.unpackb(plain, strict_map_key=False)[ino]["b"]["i"])
    at = plain.index(inline)
    assert plain.count(inline) == 1 and len(inline) == len(s.files[SMALL_FILE]) + 72
    for i in range(0, len(inline), 3):
        await store.put(leaf, flipped(good, 56 + at + i))
        await expect_integrity(s, leaf)
    await store.put(leaf, good)
    await exercise(s)


@pytest.mark.parametrize("role", ["top", "mid", "leaf", "body", "big2"])
async def test_deleted_object_is_an_integrity_error(store: Store, role: str) -> None:
    s = await make_sample(store)
    await store.delete(s.roles[role])
    await expect_integrity(s, s.roles[role])


async def test_deleted_root_pointer(store: Store, tmp_path: Path) -> None:
    s = await make_sample(store)
    if isinstance(store, LocalStore):
        os.unlink(os.path.join(store.root, "pointers", "root"))
    else:
        # A store cannot delete a pointer through our API; it can serve garbage.
        await write_any(store, "root", b"")
    await expect_integrity(s, "root")


# --- c. swapping, replaying, truncating, rolling back --------------------------------


async def test_chunks_swapped_within_a_file(store: Store) -> None:
    s = await make_sample(store)
    a, b = s.roles["big0"], s.roles["big1"]  # both full chunks: same size
    da, db = await store.get(a), await store.get(b)
    assert len(da) == len(db)
    await store.put(a, db)
    await store.put(b, da)
    await expect_integrity(s, a)


async def test_chunks_swapped_between_files(store: Store) -> None:
    s = await make_sample(store)
    a, b = s.roles["big0"], s.roles["other0"]
    da, db = await store.get(a), await store.get(b)
    assert len(da) == len(db)
    await store.put(a, db)
    await store.put(b, da)
    await expect_integrity(s, a)


async def test_blocks_reordered_within_a_chunk(store: Store) -> None:
    s = await make_sample(store)
    name = s.roles["big0"]
    d = await store.get(name)
    await store.put(name, d[SB : 2 * SB] + d[:SB] + d[2 * SB :])
    await expect_integrity(s, name)


async def test_older_version_of_a_chunk_replayed(store: Store) -> None:
    s = await make_sample(store)
    old_name = s.roles["big0"]
    old = await store.get(old_name)
    fs = await Filesystem.load(await Vault.unlock(store, PASS))
    ino = await resolve(fs, BIG_FILE)
    await fs.write(ino, 100, b"NEW")
    await fs.close()
    data = bytearray(s.files[BIG_FILE])
    data[100:103] = b"NEW"
    s.files[BIG_FILE] = bytes(data)
    await exercise(s)
    new_name = obj_name(fs.table.inodes[ino].chunks[0].obj)
    assert new_name != old_name
    assert len(await store.get(new_name)) == len(old)
    await store.put(new_name, old)  # the old version under the new name
    await expect_integrity(s, new_name)
    await store.put(old_name, old)  # the old object back under its own name: unreferenced
    await store.put(new_name, old)
    await expect_integrity(s, new_name)


@pytest.mark.parametrize("cut", ["last byte", "last block", "all but one block", "empty"])
async def test_truncated_chunk(store: Store, cut: str) -> None:
    s = await make_sample(store)
    name = s.roles["big1"]
    d = await store.get(name)
    keep = {
        "last byte": len(d) - 1,
        "last block": len(d) - SB,
        "all but one block": SB,
        "empty": 0,
    }[cut]
    await store.put(name, d[:keep])
    await expect_integrity(s, name)


async def test_extended_chunk_is_never_read_past_its_length(store: Store) -> None:
    s = await make_sample(store)
    name = s.roles["big3"]  # the partial last chunk
    await store.put(name, await store.get(name) + os.urandom(SB))
    await exercise(s)  # the extra bytes are never requested: content is exact


async def test_root_rolled_back(store: Store) -> None:
    await make_sample(store)
    old = await read_any(store, "root")
    fs = await Filesystem.load(await Vault.unlock(store, PASS))
    seen = fs.root.generation
    await fs.create(ROOT_INO, b"later", 0o644, 0, 0)
    await fs.close()
    await write_any(store, "root", old)
    with pytest.raises(RollbackError) as e:
        await open_ro(store)
    assert e.value.obj == "root"
    assert e.value.served < e.value.seen and e.value.seen > seen


async def test_root_from_another_vault(store: Store, tmp_path: Path) -> None:
    s = await make_sample(store)
    other = LocalStore(str(tmp_path / "other"), create=True)
    await new_vault(other)
    await write_any(store, "root", await read_any(other, "root"))
    await expect_integrity(s, "root")


async def test_objects_planted_from_another_vault(store: Store, tmp_path: Path) -> None:
    """A store cannot plant files: objects of a vault it controls do not open in ours."""
    s = await make_sample(store)
    other_store = LocalStore(str(tmp_path / "other"), create=True)
    other = await make_sample(other_store)
    for role in ("top", "mid", "leaf", "body", "big0"):
        name = s.roles[role]
        good = await store.get(name)
        await store.put(name, await other_store.get(other.roles[role]))
        await expect_integrity(s, name)
        await store.put(name, good)
    await exercise(s)


async def test_object_moved_to_another_name(store: Store) -> None:
    """Each object's own id is in its associated data: a copy under another name fails."""
    s = await make_sample(store)
    for src, dst in [("leaf", "mid"), ("mid", "top"), ("body", "leaf"), ("big1", "big0")]:
        name = s.roles[dst]
        good = await store.get(name)
        await store.put(name, await store.get(s.roles[src]))
        await expect_integrity(s, name)
        await store.put(name, good)


# --- d. MEGA's attack classes, from the inside -----------------------------------------


async def reseal(store: Store, kind: int, name: str, edit: Callable[[Any], Any]) -> None:
    """Insider: open a metadata object with the vault's keys, edit it, seal it again."""
    vault = await Vault.unlock(store, PASS)
    obj = bytes.fromhex(name)
    payload = await vault.get_meta(kind, obj)
    await store.put(name, vault.seal_meta(kind, obj, edit(payload)))


async def records(store: Store, s: Sample) -> tuple[dict[int, Any], dict[bytes, int]]:
    fs = await open_ro(store)
    inos = {p: await resolve(fs, p) for p in s.files}
    vault = await Vault.unlock(store, PASS)
    leaf = await vault.get_meta(KIND_LEAF, bytes.fromhex(s.roles["leaf"]))
    return leaf, inos


async def test_reseal_control_an_honest_reseal_still_opens(store: Store) -> None:
    """The insider helper itself changes nothing by accident: a no-op edit reads fine."""
    s = await make_sample(store)
    await reseal(store, KIND_LEAF, s.roles["leaf"], lambda p: p)
    await exercise(s)


async def test_file_key_moved_to_another_file(store: Store) -> None:
    """MEGA key overwriting: a wrapped key only unwraps for the file id it was made for."""
    s = await make_sample(store)
    _, inos = await records(store, s)
    a, b = inos[BIG_FILE], inos[OTHER_FILE]

    def swap(p: Any) -> Any:
        p[a]["k"], p[b]["k"] = p[b]["k"], p[a]["k"]
        return p

    await reseal(store, KIND_LEAF, s.roles["leaf"], swap)
    e = await expect_integrity(s, s.roles["leaf"])
    assert "file key" in e.detail


async def test_a_key_moved_between_empty_files_is_found_by_fsck_and_refused_at_a_write(
    store: Store,
) -> None:
    """Keys are unwrapped on first use, and no read uses an empty file's key:
    fsck unwraps every key it walks past, and a write checks the key before
    it changes anything (never later, inside a commit)."""
    s = await make_sample(store)
    fs = await open_ro(store)
    bd = await resolve(fs, BIGDIR)
    a = (await fs.lookup(bd, BIGDIR_NAMES[0])).ino
    b = (await fs.lookup(bd, BIGDIR_NAMES[1])).ino
    assert a >> PAGE_BITS == b >> PAGE_BITS
    leaf_id = await fs.table.index.leaf_id(a >> PAGE_BITS)
    assert leaf_id is not None
    leaf = obj_name(leaf_id)

    def swap(p: Any) -> Any:
        p[a]["k"], p[b]["k"] = p[b]["k"], p[a]["k"]
        return p

    await reseal(store, KIND_LEAF, leaf, swap)
    report = await fsck.check(await Vault.unlock(store, PASS))
    assert [p for p in report.problems if "file key of inode" in p and leaf in p], report
    await exercise(s)  # listing the folder and reading the other files is unaffected
    rw = await Filesystem.load(await Vault.unlock(store, PASS))
    with pytest.raises(IntegrityError) as e:
        await rw.write(a, 0, b"x")
    assert e.value.obj == leaf and "file key" in e.value.detail
    assert (await rw.getattr(a)).size == 0 and not rw.committer.has_changes()
    await rw.close()


async def test_file_key_wrapped_by_another_vault(store: Store, tmp_path: Path) -> None:
    s = await make_sample(store)
    _, inos = await records(store, s)
    a = inos[BIG_FILE]
    foreign = await new_vault(LocalStore(str(tmp_path / "other"), create=True))

    def rewrap(p: Any) -> Any:
        p[a]["k"] = crypto.wrap_file_key(foreign.keys, p[a]["f"], os.urandom(32))
        return p

    await reseal(store, KIND_LEAF, s.roles["leaf"], rewrap)
    e = await expect_integrity(s, s.roles["leaf"])
    assert "file key" in e.detail


async def test_inline_data_moved_to_another_file(store: Store) -> None:
    s = await make_sample(store)
    _, inos = await records(store, s)
    a, b = inos[SMALL_FILE], inos[TINY_FILE]

    def swap(p: Any) -> Any:
        p[a]["b"], p[b]["b"] = p[b]["b"], p[a]["b"]
        p[a]["s"], p[b]["s"] = p[b]["s"], p[a]["s"]
        return p

    await reseal(store, KIND_LEAF, s.roles["leaf"], swap)
    e = await expect_integrity(s, s.roles["leaf"])
    assert "inline data" in e.detail


async def test_inline_data_bit_flipped_inside_a_valid_leaf(store: Store) -> None:
    """MEGA's malleable encryption: a changed inline ciphertext never decrypts to anything."""
    s = await make_sample(store)
    _, inos = await records(store, s)
    a = inos[SMALL_FILE]
    leaf = s.roles["leaf"]
    good = await store.get(leaf)
    for pos in (0, 11, 12, 20, -16, -1):

        def flip(p: Any, pos: int = pos) -> Any:
            i = bytearray(p[a]["b"]["i"])
            i[pos] ^= 1
            p[a]["b"]["i"] = bytes(i)
            return p

        await reseal(store, KIND_LEAF, leaf, flip)
        e = await expect_integrity(s, leaf)
        assert "inline data" in e.detail
        await store.put(leaf, good)
    await exercise(s)


async def test_chunk_map_moved_to_another_file(store: Store) -> None:
    """Chunks of file A listed in file B's record: B's key and id do not open them."""
    s = await make_sample(store)
    _, inos = await records(store, s)
    a, b = inos[BIG_FILE], inos[OTHER_FILE]

    def steal(p: Any) -> Any:
        p[b]["b"]["c"] = p[a]["b"]["c"][:2]
        return p

    await reseal(store, KIND_LEAF, s.roles["leaf"], steal)
    fs = await open_ro(store)
    with pytest.raises(IntegrityError) as e:
        await fs.read(await resolve(fs, OTHER_FILE), 0, 2 * CS)
    assert e.value.obj == s.roles["big0"]


async def test_file_id_is_bound_into_every_block(store: Store) -> None:
    """Defence in depth: even given file A's own key, A's chunks do not read as file B's.

    The insider wraps A's content key for B's file id (which the store cannot
    do) and lists A's chunks in B's record; the file id in each block's
    associated data still refuses them.
    """
    s = await make_sample(store)
    vault = await Vault.unlock(store, PASS)
    fs = await open_ro(store)
    a = fs.table.inodes[await resolve(fs, BIG_FILE)]
    b = await resolve(fs, OTHER_FILE)
    assert a.file_key is not None

    def graft(p: Any) -> Any:
        assert a.file_key is not None
        p[b]["k"] = crypto.wrap_file_key(vault.keys, p[b]["f"], a.file_key)
        p[b]["b"]["c"] = p[a.ino]["b"]["c"][:2]
        return p

    await reseal(store, KIND_LEAF, s.roles["leaf"], graft)
    fs = await open_ro(store)
    with pytest.raises(IntegrityError) as e:
        await fs.read(await resolve(fs, OTHER_FILE), 0, 2 * CS)
    assert e.value.obj == s.roles["big0"]


async def test_file_id_is_bound_into_inline_data(store: Store) -> None:
    """The same for a small file's inline data: it opens only for the file it was sealed for."""
    s = await make_sample(store)
    vault = await Vault.unlock(store, PASS)
    fs = await open_ro(store)
    a = fs.table.inodes[await resolve(fs, SMALL_FILE)]
    b = await resolve(fs, TINY_FILE)

    def graft(p: Any) -> Any:
        assert a.file_key is not None
        p[b]["k"] = crypto.wrap_file_key(vault.keys, p[b]["f"], a.file_key)
        p[b]["b"], p[b]["s"] = p[a.ino]["b"], p[a.ino]["s"]
        return p

    await reseal(store, KIND_LEAF, s.roles["leaf"], graft)
    e = await expect_integrity(s, s.roles["leaf"])
    assert "inline data" in e.detail


async def test_chunk_index_changed_in_the_map(store: Store) -> None:
    """Reordering a file's chunk map (chunk 0 listed as 1 and back) fails on read."""
    s = await make_sample(store)
    _, inos = await records(store, s)
    a = inos[BIG_FILE]

    def reorder(p: Any) -> Any:
        c = p[a]["b"]["c"]
        c[0][1], c[1][1] = c[1][1], c[0][1]
        return p

    await reseal(store, KIND_LEAF, s.roles["leaf"], reorder)
    await expect_integrity(s, s.roles["big1"])


async def test_chunk_length_changed_in_the_map(store: Store) -> None:
    s = await make_sample(store)
    _, inos = await records(store, s)
    a = inos[BIG_FILE]

    def shorten(p: Any) -> Any:
        p[a]["b"]["c"][1][2] -= BS  # a full chunk now claims one block less
        return p

    await reseal(store, KIND_LEAF, s.roles["leaf"], shorten)
    await expect_integrity(s, s.roles["big1"])


async def test_object_kind_is_bound(store: Store) -> None:
    """An index re-sealed as a leaf under its own id does not open as an index."""
    s = await make_sample(store)
    vault = await Vault.unlock(store, PASS)
    for role, kind, as_kind in [("top", KIND_INDEX, KIND_LEAF), ("body", KIND_BODY, KIND_INDEX)]:
        name = s.roles[role]
        obj = bytes.fromhex(name)
        good = await store.get(name)
        payload = vault.open_meta(kind, obj, good)
        await store.put(name, vault.seal_meta(as_kind, obj, payload))
        await expect_integrity(s, name)
        await store.put(name, good)


# --- nonces and randomness ---------------------------------------------------------------


class Recorder(ForwardingStore):
    """Passes everything to ``inner`` and keeps every byte written."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.puts: list[tuple[str, bytes]] = []

    async def put(self, name: str, data: bytes) -> None:
        self.puts.append((name, data))
        await self.inner.put(name, data)

    async def cas_pointer(self, name: str, data: bytes, expected: str | None) -> str:
        self.puts.append(("pointer:" + name, data))
        return await self.inner.cas_pointer(name, data, expected)


async def test_no_nonce_is_ever_used_twice(store: Store) -> None:
    """Rewriting the same bytes at the same place, commit after commit: all nonces differ.

    Every AES-GCM seal in the written bytes is collected: header slots, roots,
    index/leaf/body objects, the wrapped keys and inline data inside leaves,
    every block of every chunk. A nonce may appear twice only as the very same
    sealed bytes written again (an unchanged header slot).
    """
    rec = Recorder(store)
    vault = await new_vault(rec)
    fs = await Filesystem.load(vault)
    big = (await fs.create(ROOT_INO, b"big", 0o644, 0, 0)).ino
    small = (await fs.create(ROOT_INO, b"small", 0o644, 0, 0)).ino
    chunk_objs: set[bytes] = set()
    data = os.urandom(CS + 3 * BS)
    for _ in range(6):
        await fs.write(big, 0, data)
        await fs.write(small, 0, b"same small content")
        await fs.commit()
        chunk_objs |= {r.obj for r in fs.table.inodes[big].chunks.values()}
    await fs.close()
    await vault.replace_passphrase("another passphrase", FAST_KDF)
    # Each: nonce || ... ; blocks have 96-bit nonces, every other seal of
    # format 3 (slots, roots, metadata, wrapped keys, inline data) 192-bit ones.
    seals: list[tuple[bytes, bytes]] = []
    slot = header.slot_len(vault.header.version)
    x = crypto.XNONCE_SIZE
    inner = 0
    for name, data in rec.puts:
        if name == "pointer:header":
            for i in range(data[34]):
                sealed = data[35 + slot * i + 29 : 35 + slot * (i + 1)]
                seals.append((sealed[:x], sealed))
        elif name.startswith("pointer:"):
            seals.append((data[:x], data))
        elif bytes.fromhex(name) in chunk_objs:
            seals += [(data[i : i + 12], data[i : i + SB]) for i in range(0, len(data), SB)]
        else:
            seals.append((data[:x], data))
            found = inner_seals(vault, bytes.fromhex(name), data)
            inner += len(found)
            seals += [(v[:x], v) for v in found]
    by_nonce: dict[bytes, set[bytes]] = {}
    for nonce, sealed in seals:
        by_nonce.setdefault(nonce, set()).add(sealed)
    assert len(chunk_objs) == 6 * 2
    assert inner >= 6 * 2  # the wrapped keys and the inline data of every leaf written
    assert len(by_nonce) > 6 * (CS // BS + 3 + 2)
    assert all(len(v) == 1 for v in by_nonce.values())



def inner_seals(vault: Vault, obj: bytes, data: bytes) -> list[bytes]:
    """The wrapped keys and inline data sealed inside a leaf page."""
    try:
        plain = crypto.open_for(
            vault.keys, vault.keys.meta, data, crypto.meta_aad(vault.vault_id, KIND_LEAF, obj)
        )
    except crypto.AuthFailed:
        return []  # an index or a body
    out = []
    for r in msgpack.unpackb(plain, strict_map_key=False).values():
        if "k" in r:
            out.append(bytes(r["k"]))
        if "b" in r and "i" in r["b"]:
            out.append(bytes(r["b"]["i"]))
    return out


async def test_all_randomness_comes_from_the_os(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys, ids, salts and nonces are bytes os.urandom returned (MEGA used a weak RNG)."""
    given: set[bytes] = set()
    real = os.urandom

    def recording(n: int) -> bytes:
        b = real(n)
        given.add(b)
        return b

    monkeypatch.setattr(os, "urandom", recording)
    vault, recovery = await Vault.init(store, PASS, FAST_KDF, SMALL)
    fs = await Filesystem.load(vault)
    ino = (await fs.create(ROOT_INO, b"f", 0o644, 0, 0)).ino
    await fs.write(ino, 0, os.urandom(CS + 100))
    await fs.close()
    monkeypatch.setattr(os, "urandom", real)
    node = fs.table.inodes[ino]
    assert node.file_key is not None and fs.root.itab is not None
    produced = [
        vault.vault_id,
        vault.keys.master,
        recovery,
        vault.header.slots[0].salt,
        vault.state.client_id,
        node.file_id,
        node.file_key,
        fs.root.itab,
        *fs.table.index.top.values(),
        *(obj for mid in fs.table.index.mids.values() for obj in mid.values()),
    ]
    for ref in node.chunks.values():
        produced.append(ref.obj)
        sealed = await store.get(obj_name(ref.obj))
        produced += [sealed[i : i + 12] for i in range(0, len(sealed), SB)]
    for s in vault.header.slots:  # format 3: the committing seal's 192-bit nonce
        produced.append(s.sealed[: crypto.XNONCE_SIZE])
    produced.append((await read_any(store, "root"))[: crypto.XNONCE_SIZE])
    missing = [p.hex() for p in produced if p not in given]
    assert not missing


def test_no_weak_randomness_anywhere_in_the_package() -> None:
    """No module of megafs imports ``random`` (or ``numpy.random``): every random
    byte comes from the OS (``os.urandom``, or ``secrets`` for backoff jitter).

    The modules are found by walking the installed package, and the walk must
    find every ``.py`` file under it, among them the ones that write to the
    store, so the test cannot pass vacuously after a rename or a move.
    """
    import megafs

    root = Path(megafs.__file__).parent
    found = {
        m.name for m in pkgutil.walk_packages([str(root)], prefix="megafs.")
    } | {"megafs"}
    on_disk = {
        "megafs" + ("." + ".".join(p.relative_to(root).with_suffix("").parts)).replace(
            ".__init__", ""
        )
        for p in root.rglob("*.py")
    }
    on_disk = {m.rstrip(".") for m in on_disk}
    assert found == on_disk
    for must in (
        "megafs.format.crypto",
        "megafs.vault.vault",
        "megafs.stores.s3",
        "megafs.stores.local",
    ):
        assert must in found
    checked = 0
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] != "random", f"{path} imports {name}"
                assert not name.startswith("numpy.random"), f"{path} imports {name}"
        checked += 1
    assert checked == len(on_disk) >= 15


# --- the passphrase slot: what passwd does and does not do ---------------------------------


async def test_passwd_replaces_the_slot_but_an_old_header_still_opens(store: Store) -> None:
    """Honest limit: the master key does not change, so a kept old header still opens."""
    vault, recovery = await Vault.init(store, PASS, FAST_KDF, SMALL)
    fs = await Filesystem.load(vault)
    await fs.create(ROOT_INO, b"f", 0o644, 0, 0)
    await fs.close()
    old_header = await read_any(store, "header")
    await vault.replace_passphrase("new passphrase", FAST_KDF)
    new_header = await read_any(store, "header")
    assert len(new_header) == len(old_header) == 333
    # Only the passphrase slot and the MAC changed; the recovery slot is kept.
    assert new_header[:35] == old_header[:35] and new_header[168:301] == old_header[168:301]
    assert new_header[35:168] != old_header[35:168]
    with pytest.raises(WrongPassphrase):
        await Vault.unlock(store, PASS)
    assert (await Vault.unlock(store, "new passphrase")).keys.master == vault.keys.master
    assert (await Vault.unlock_recovery(store, recovery)).keys.master == vault.keys.master
    # A store that kept the old header can serve it: the old passphrase opens it, and
    # the data, because the master key is the same.
    await write_any(store, "header", old_header)
    with pytest.raises(WrongPassphrase):
        await Vault.unlock(store, "new passphrase")
    fs2 = await open_ro(store)
    assert (await fs2.lookup(ROOT_INO, b"f")).size == 0


async def test_wrong_passphrase_and_wrong_recovery_key(store: Store) -> None:
    await Vault.init(store, PASS, FAST_KDF, SMALL)
    with pytest.raises(WrongPassphrase):
        await Vault.unlock(store, PASS + " ")
    with pytest.raises(WrongPassphrase):
        await Vault.unlock_recovery(store, os.urandom(32))
