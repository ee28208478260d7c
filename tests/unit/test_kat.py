"""Known-answer tests: the on-store formats 1, 2 and 3, frozen.

Two kinds of frozen data live in ``tests/vectors/``:

* ``v1.json``: fixed keys, ids and nonces, and the exact bytes every layer
  makes of them (subkeys, associated data, header, root, wrapped file key,
  inline data, a leaf page, an index node, a body, a chunk); ``v2.json``:
  what format 2 adds (a pack object, a pack table page, a chunk map naming
  packed chunks, a root naming the pack table, the packed-block AAD);
  ``v3.json``: what format 3 changes (the key-committing seal, committed key
  slots and wrapped keys, records sealed with it, per-object block keys, a
  root naming its predecessor);
* ``vault-v1/``, ``vault-v2/``, ``vault-v3/``: a whole small vault of each
  format in a local-store folder.

Each pair was written once by ``tests/vectors/generate_v1.py`` (and
``generate_v2.py``, ``generate_v3.py``). Each vector is
checked both ways: the current writer reproduces the frozen bytes from the
frozen inputs, and the current reader opens the frozen bytes. A small reader
written from ``docs/format.md`` alone (:class:`DocReader`, no megafs imports)
reads the frozen vault and a freshly written one, so neither the code nor the
document can drift from the format silently.

Never regenerate the vectors to make a failing test here pass: a failure
means that vaults written by an earlier megafs would no longer open.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import os
import shutil
import stat
import struct
import unicodedata
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from megafs.errors import IntegrityError, WrongPassphrase
from megafs.format import crypto, header
from megafs.format.crypto import KdfParams, Keys, Layout
from megafs.format.header import Header, Slot
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO, Inode
from megafs.stores import LocalStore
from megafs.vault.content import ChunkRef
from megafs.vault.root import DEVICE_BITS, Lease, Root
from megafs.vault.tables import PackTable
from megafs.vault.vault import KIND_BODY, KIND_INDEX, KIND_LEAF, KIND_PACKS, Vault

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
V1_JSON = VECTORS / "v1.json"
V1_VAULT = VECTORS / "vault-v1"
V2_JSON = VECTORS / "v2.json"
V2_VAULT = VECTORS / "vault-v2"
V3_JSON = VECTORS / "v3.json"
V3_VAULT = VECTORS / "vault-v3"

# --- the inputs of v1.json --------------------------------------------------

KAT_LAYOUT = Layout(chunk_size=8192, block_size=4096)
KAT_KDF = KdfParams(memory_kib=8192, iterations=1, lanes=1)
#: The same passphrase typed two ways: precomposed (NFC) and decomposed (NFD).
KAT_PASS_NFC = "Passphrase caf\u00e9"
KAT_PASS_NFD = "Passphrase cafe\u0301"


def _seq(start: int, n: int) -> bytes:
    return bytes(range(start, start + n))


def _nonce(i: int) -> bytes:
    return i.to_bytes(crypto.NONCE_SIZE, "big")


def _xnonce(i: int) -> bytes:
    """A 192-bit nonce of format 3's committing seal."""
    return bytes(range(0x70, 0x70 + 12)) + i.to_bytes(crypto.NONCE_SIZE, "big")


MASTER = _seq(0x00, 32)
VAULT_ID = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
RECOVERY_KEY = _seq(0x80, 32)
SALT = _seq(0xE0, 16)
FILE_A = _seq(0x10, 16)  # inode 300, small file stored inline
FILE_B = _seq(0x20, 16)  # inode 301, one chunk
KEY_A = _seq(0x40, 32)
KEY_B = _seq(0x60, 32)
CHUNK_OBJ = _seq(0xA0, 16)
LEAF_OBJ = _seq(0xB0, 16)
MID_OBJ = _seq(0xC0, 16)
TOP_OBJ = _seq(0xC8, 16)
BODY_OBJ = _seq(0xD0, 16)
CLIENT_ID = _seq(0xF0, 16)
NONCES = {
    "passphrase_slot": _nonce(1),
    "recovery_slot": _nonce(2),
    "root": _nonce(3),
    "wrap_a": _nonce(4),
    "inline_a": _nonce(5),
    "wrap_b": _nonce(6),
    "leaf": _nonce(7),
    "index": _nonce(8),
    "body": _nonce(9),
    "chunk_block0": _nonce(10),
    "chunk_block1": _nonce(11),
}
INLINE_A = b"hello"
CHUNK_B = bytes((i * 31 + 7) % 256 for i in range(5000))  # two blocks: 4096 + 904
TIMES = [1_700_000_000_000_000_001, 1_700_000_000_000_000_002, 1_700_000_000_000_000_003]
INO_A, INO_B, INO_DIR, INO_LINK = 300, 301, 302, 303  # page 1: hi 0, lo 1
DIR_BODY: dict[str, Any] = {
    "p": ROOT_INO,
    "n": 5,
    "e": [[b"a.txt", INO_A, 3], [b"b.bin", INO_B, 4]],
}
KAT_ROOT = Root(
    generation=7,
    itab=TOP_OBJ,
    next_ino=304,
    orphans=[],
    lease=Lease(CLIENT_ID, "kat-host", 4242, 1_700_000_000.5),
    stats=[4, 5005],
)


@contextlib.contextmanager
def scripted_urandom(values: list[bytes]) -> Iterator[None]:
    """Make ``os.urandom`` return ``values`` in order (and nothing else)."""
    queue = list(values)
    real = os.urandom

    def fake(n: int) -> bytes:
        assert queue, "unexpected os.urandom call"
        v = queue.pop(0)
        assert len(v) == n, f"os.urandom({n}) but the script has {len(v)} bytes"
        return v

    setattr(os, "urandom", fake)  # noqa: B010 - patch the module attribute
    try:
        yield
    finally:
        setattr(os, "urandom", real)  # noqa: B010
    assert not queue, "os.urandom was called fewer times than scripted"


def kat_header(version: int = 1) -> Header:
    hdr = Header(vault_id=VAULT_ID, layout=KAT_LAYOUT, version=version)
    nonces = NONCES_V3 if version >= 3 else NONCES
    seal = crypto.seal_committed if version >= 3 else crypto.seal
    phead = Slot(header.SLOT_PASSPHRASE, KAT_KDF, SALT, b"").head()
    kek = crypto.argon2id(header.normalize_passphrase(KAT_PASS_NFC), SALT, KAT_KDF)
    pslot = Slot(
        header.SLOT_PASSPHRASE,
        KAT_KDF,
        SALT,
        seal(kek, MASTER, hdr.slot_aad(phead), nonces["passphrase_slot"]),
    )
    none = KdfParams(0, 0, 0)
    rhead = Slot(header.SLOT_RECOVERY, none, bytes(16), b"").head()
    rkek = crypto.hkdf(RECOVERY_KEY, VAULT_ID, crypto.LABELS["recovery_kek"])
    rslot = Slot(
        header.SLOT_RECOVERY,
        none,
        bytes(16),
        seal(rkek, MASTER, hdr.slot_aad(rhead), nonces["recovery_slot"]),
    )
    return Header(vault_id=VAULT_ID, layout=KAT_LAYOUT, slots=(pslot, rslot), version=version)


def kat_vault(tmp: Path) -> Vault:
    """A Vault object for the KAT keys (no store I/O; needs MEGAFS_STATE_DIR)."""
    return Vault(LocalStore(str(tmp / "unused")), kat_header(), Keys(MASTER, VAULT_ID))


def kat_inodes() -> list[Inode]:
    a = Inode(INO_A, stat.S_IFREG | 0o644, 1000, 1000)
    a.file_id, a.file_key, a.size, a.small = FILE_A, KEY_A, len(INLINE_A), INLINE_A
    a.xattrs = {b"user.k": b"v"}
    b = Inode(INO_B, stat.S_IFREG | 0o600, 1000, 1000)
    b.file_id, b.file_key, b.size = FILE_B, KEY_B, len(CHUNK_B)
    b.chunks = {0: ChunkRef(CHUNK_OBJ, len(CHUNK_B))}
    d = Inode(INO_DIR, stat.S_IFDIR | 0o755, 1000, 1000)
    d.nlink, d.file_id = 2, _seq(0x30, 16)
    d.body_ref, d.body_loaded, d.body_dirty = BODY_OBJ, False, False
    lnk = Inode(INO_LINK, stat.S_IFLNK | 0o777, 1000, 1000)
    lnk.file_id, lnk.target, lnk.size = _seq(0x38, 16), b"a.txt", 5
    for n in (a, b, d, lnk):
        n.atime, n.mtime, n.ctime = TIMES
    return [a, b, d, lnk]


def compute_vectors(tmp: Path) -> dict[str, Any]:
    """Everything in v1.json, computed with the current code from the fixed inputs."""
    keys = Keys(MASTER, VAULT_ID)
    vault = kat_vault(tmp)
    fs = Filesystem(vault, KAT_ROOT, writable=False)
    out: dict[str, Any] = {
        "inputs": {
            "master_key": MASTER.hex(),
            "vault_id": VAULT_ID.hex(),
            "recovery_key": RECOVERY_KEY.hex(),
            "passphrase_nfc": KAT_PASS_NFC,
            "passphrase_nfd": KAT_PASS_NFD,
            "kdf": [KAT_KDF.memory_kib, KAT_KDF.iterations, KAT_KDF.lanes],
            "salt": SALT.hex(),
            "layout": [KAT_LAYOUT.chunk_size, KAT_LAYOUT.block_size],
            "file_a": FILE_A.hex(),
            "file_key_a": KEY_A.hex(),
            "file_b": FILE_B.hex(),
            "file_key_b": KEY_B.hex(),
            "chunk_obj": CHUNK_OBJ.hex(),
            "leaf_obj": LEAF_OBJ.hex(),
            "mid_obj": MID_OBJ.hex(),
            "top_obj": TOP_OBJ.hex(),
            "body_obj": BODY_OBJ.hex(),
            "client_id": CLIENT_ID.hex(),
            "nonces": {k: v.hex() for k, v in NONCES.items()},
        }
    }
    out["subkeys"] = {
        "header_mac": keys.header_mac.hex(),
        "root": keys.root.hex(),
        "meta": keys.meta.hex(),
        "file_wrap": keys.file_wrap.hex(),
        "cache": keys.cache.hex(),
        "recovery_kek": crypto.hkdf(RECOVERY_KEY, VAULT_ID, crypto.LABELS["recovery_kek"]).hex(),
        "passphrase_kek": crypto.argon2id(
            header.normalize_passphrase(KAT_PASS_NFC), SALT, KAT_KDF
        ).hex(),
    }
    out["recovery_key_text"] = header.format_recovery_key(RECOVERY_KEY)
    hdr = kat_header()
    out["aad"] = {
        "root": crypto.root_aad(VAULT_ID).hex(),
        "meta_leaf": crypto.meta_aad(VAULT_ID, KIND_LEAF, LEAF_OBJ).hex(),
        "filekey_a": crypto.filekey_aad(VAULT_ID, FILE_A).hex(),
        "block_b_0": crypto.block_aad(VAULT_ID, FILE_B, CHUNK_OBJ, 0, 0, len(CHUNK_B)).hex(),
        "block_b_1": crypto.block_aad(VAULT_ID, FILE_B, CHUNK_OBJ, 0, 1, len(CHUNK_B)).hex(),
        "inline_a": crypto.inline_aad(VAULT_ID, FILE_A, len(INLINE_A) + crypto.OVERHEAD).hex(),
        "slot_passphrase": hdr.slot_aad(hdr.slots[0].head()).hex(),
        "slot_recovery": hdr.slot_aad(hdr.slots[1].head()).hex(),
    }
    out["header"] = hdr.encode(keys).hex()
    root_plain = KAT_ROOT.encode()
    out["root"] = {
        "plaintext": root_plain.hex(),
        "sealed": crypto.seal(
            keys.root, root_plain, crypto.root_aad(VAULT_ID), NONCES["root"]
        ).hex(),
    }
    out["wrapped_file_key_a"] = crypto.wrap_file_key(keys, FILE_A, KEY_A, NONCES["wrap_a"]).hex()
    out["inline_a"] = crypto.seal(
        KEY_A,
        INLINE_A,
        crypto.inline_aad(VAULT_ID, FILE_A, len(INLINE_A) + crypto.OVERHEAD),
        NONCES["inline_a"],
    ).hex()
    uploads: list[tuple[int, bytes, Any]] = []
    nodes = kat_inodes()
    with scripted_urandom([NONCES["wrap_a"], NONCES["inline_a"], NONCES["wrap_b"]]):
        leaf = {n.ino: fs.table.codec.encode(n, uploads, []) for n in nodes}
    assert not uploads
    meta: list[tuple[str, int, bytes, Any]] = [
        ("leaf", KIND_LEAF, LEAF_OBJ, leaf),
        ("index", KIND_INDEX, MID_OBJ, {INO_A >> 8 & 1023: LEAF_OBJ}),
        ("body", KIND_BODY, BODY_OBJ, DIR_BODY),
    ]
    for name, kind, obj, payload in meta:
        plain = msgpack.packb(payload, use_bin_type=True)
        with scripted_urandom([NONCES[name]]):
            sealed = vault.seal_meta(kind, obj, payload)
        out[name] = {"plaintext": plain.hex(), "sealed": sealed.hex()}
    with scripted_urandom([NONCES["chunk_block0"], NONCES["chunk_block1"]]):
        sealed = crypto.seal_chunk(keys, KAT_LAYOUT, KEY_B, FILE_B, CHUNK_OBJ, 0, CHUNK_B)
    out["chunk"] = {"plaintext": CHUNK_B.hex(), "sealed": sealed.hex()}
    return out


# --- the inputs of v2.json: what format 2 adds ----------------------------------

PACK_OBJ = _seq(0x58, 16)
PACK_NO = 0
FILE_C = _seq(0x28, 16)  # inode 304, two chunks, both packed
KEY_C = _seq(0x68, 32)
PACKS_LEAF_OBJ = _seq(0xB8, 16)
PTAB_OBJ = _seq(0xCC, 16)
CHUNK_C0 = bytes((i * 17 + 5) % 256 for i in range(4196))  # 2 blocks: 4096 + 100
CHUNK_C1 = bytes((i * 29 + 11) % 256 for i in range(3000))  # 1 block
NONCES_V2 = {
    "c0_block0": _nonce(21),
    "c0_block1": _nonce(22),
    "c1_block0": _nonce(23),
    "packs_leaf": _nonce(24),
    "body": _nonce(25),
    "root": _nonce(26),
}
KAT_ROOT_V2 = Root(
    generation=9,
    itab=TOP_OBJ,
    next_ino=305,
    orphans=[],
    lease=None,
    stats=[5, 12201],
    ptab=PTAB_OBJ,
    next_pack=1,
)


def packed_refs() -> tuple[ChunkRef, ChunkRef]:
    """The two chunks of file C, both in pack 0: C0 at offset 0, C1 after it."""
    c0 = ChunkRef(PACK_OBJ, len(CHUNK_C0), 0, PACK_NO)
    c1 = ChunkRef(PACK_OBJ, len(CHUNK_C1), KAT_LAYOUT.sealed_len(len(CHUNK_C0)), PACK_NO)
    return c0, c1


def compute_vectors_v2(tmp: Path) -> dict[str, Any]:
    """Everything in v2.json, computed with the current code from the fixed inputs."""
    keys = Keys(MASTER, VAULT_ID)
    vault = Vault(LocalStore(str(tmp / "unused")), kat_header(version=2), keys)
    c0, c1 = packed_refs()
    out: dict[str, Any] = {
        "inputs": {
            "file_c": FILE_C.hex(),
            "file_key_c": KEY_C.hex(),
            "pack_obj": PACK_OBJ.hex(),
            "pack_no": PACK_NO,
            "packs_leaf_obj": PACKS_LEAF_OBJ.hex(),
            "ptab_obj": PTAB_OBJ.hex(),
            "offsets": [c0.off, c1.off],
            "nonces": {k: v.hex() for k, v in NONCES_V2.items()},
        },
        "aad": {
            "c0_block0": crypto.block_aad(VAULT_ID, FILE_C, PACK_OBJ, 0, 0, c0.length, 0).hex(),
            "c0_block1": crypto.block_aad(VAULT_ID, FILE_C, PACK_OBJ, 0, 1, c0.length, 0).hex(),
            "c1_block0": crypto.block_aad(
                VAULT_ID, FILE_C, PACK_OBJ, 1, 0, c1.length, c1.off
            ).hex(),
        },
    }
    sealed = bytearray()
    with scripted_urandom([NONCES_V2["c0_block0"], NONCES_V2["c0_block1"]]):
        sealed += crypto.seal_chunk(keys, KAT_LAYOUT, KEY_C, FILE_C, PACK_OBJ, 0, CHUNK_C0, 0)
    with scripted_urandom([NONCES_V2["c1_block0"]]):
        sealed += crypto.seal_chunk(
            keys, KAT_LAYOUT, KEY_C, FILE_C, PACK_OBJ, 1, CHUNK_C1, c1.off
        )
    out["pack"] = {"plaintext": (CHUNK_C0 + CHUNK_C1).hex(), "sealed": bytes(sealed).hex()}
    node = Inode(304, stat.S_IFREG | 0o644, 1000, 1000)
    node.file_id, node.file_key, node.size = FILE_C, KEY_C, 8192 + len(CHUNK_C1)
    node.chunks = {0: c0, 1: c1}
    fs = Filesystem(vault, KAT_ROOT_V2, writable=False)
    meta: list[tuple[str, int, bytes, Any]] = [
        ("packs_leaf", KIND_PACKS, PACKS_LEAF_OBJ,
         {PACK_NO: [PACK_OBJ, 2, len(sealed), len(sealed)]}),
        ("body", KIND_BODY, _seq(0xD8, 16), fs.table.codec.encode_body(node)),
    ]
    for name, kind, obj, payload in meta:
        plain = msgpack.packb(payload, use_bin_type=True)
        with scripted_urandom([NONCES_V2[name]]):
            sealed_meta = vault.seal_meta(kind, obj, payload)
        out[name] = {"plaintext": plain.hex(), "sealed": sealed_meta.hex()}
    root_plain = KAT_ROOT_V2.encode()
    out["root"] = {
        "plaintext": root_plain.hex(),
        "sealed": crypto.seal(
            keys.root, root_plain, crypto.root_aad(VAULT_ID), NONCES_V2["root"]
        ).hex(),
    }
    out["header"] = kat_header(version=2).encode(keys).hex()
    return out


@pytest.fixture(scope="module")
def frozen() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(V1_JSON.read_text())
    return data


def h(s: str) -> bytes:
    return bytes.fromhex(s)


# --- the writer reproduces the frozen bytes ------------------------------------

SECTIONS = [
    "inputs",
    "subkeys",
    "recovery_key_text",
    "aad",
    "header",
    "root",
    "wrapped_file_key_a",
    "inline_a",
    "leaf",
    "index",
    "body",
    "chunk",
]


def test_vector_file_has_every_section(frozen: dict[str, Any]) -> None:
    assert sorted(frozen) == sorted(SECTIONS)


@pytest.mark.parametrize("section", SECTIONS)
def test_writer_reproduces_vector(frozen: dict[str, Any], tmp_path: Path, section: str) -> None:
    assert compute_vectors(tmp_path)[section] == frozen[section]


# --- the reader opens the frozen bytes ------------------------------------------


def _hkdf_rfc5869(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()  # L = 32: one block


def test_subkeys(frozen: dict[str, Any]) -> None:
    sub = frozen["subkeys"]
    keys = Keys(MASTER, VAULT_ID)
    got = {
        "header_mac": keys.header_mac,
        "root": keys.root,
        "meta": keys.meta,
        "file_wrap": keys.file_wrap,
        "cache": keys.cache,
    }
    for name, key in got.items():
        assert key.hex() == sub[name], name
        # An independent HKDF-SHA256 (RFC 5869) with the documented label.
        assert _hkdf_rfc5869(MASTER, VAULT_ID, crypto.LABELS[name]).hex() == sub[name], name
    assert _hkdf_rfc5869(RECOVERY_KEY, VAULT_ID, crypto.LABELS["recovery_kek"]) == h(
        sub["recovery_kek"]
    )
    assert crypto.LABELS["header_mac"] == b"megafs v1 header MAC (HMAC-SHA256)"
    assert len(set(crypto.LABELS.values())) == len(crypto.LABELS)


def test_passphrase_kek_is_argon2id_of_nfc(frozen: dict[str, Any]) -> None:
    want = h(frozen["subkeys"]["passphrase_kek"])
    nfd = header.normalize_passphrase(KAT_PASS_NFD)
    assert nfd == KAT_PASS_NFC.encode("utf-8")
    assert crypto.argon2id(nfd, SALT, KAT_KDF) == want
    direct = Argon2id(salt=SALT, length=32, iterations=1, lanes=1, memory_cost=8192)
    assert direct.derive(unicodedata.normalize("NFC", KAT_PASS_NFD).encode()) == want
    # Without normalisation the decomposed form would be another passphrase.
    assert crypto.argon2id(KAT_PASS_NFD.encode(), SALT, KAT_KDF) != want


def test_recovery_key_text(frozen: dict[str, Any]) -> None:
    text = frozen["recovery_key_text"]
    groups = text.split("-")
    assert len(groups) == 14 and all(len(g) == 4 for g in groups)
    assert header.parse_recovery_key(text) == RECOVERY_KEY
    assert header.parse_recovery_key(text.lower().replace("-", " ")) == RECOVERY_KEY
    typo = ("B" if text[0] != "B" else "C") + text[1:]
    with pytest.raises(ValueError, match="checksum"):
        header.parse_recovery_key(typo)


def test_header_opens_with_both_slots(frozen: dict[str, Any]) -> None:
    data = h(frozen["header"])
    assert len(data) == 245
    hdr, keys = header.unlock(data, KAT_PASS_NFD)
    assert keys.master == MASTER
    assert hdr.vault_id == VAULT_ID
    assert hdr.layout == KAT_LAYOUT
    assert [s.kind for s in hdr.slots] == [header.SLOT_PASSPHRASE, header.SLOT_RECOVERY]
    assert hdr.slots[0].kdf == KAT_KDF and hdr.slots[0].salt == SALT
    _, rkeys = header.unlock_recovery(data, header.parse_recovery_key(frozen["recovery_key_text"]))
    assert rkeys.master == MASTER


def test_root_opens(frozen: dict[str, Any], tmp_path: Path) -> None:
    vault = kat_vault(tmp_path)
    root = vault.open_root(h(frozen["root"]["sealed"]))
    assert root == KAT_ROOT
    assert Root.decode(h(frozen["root"]["plaintext"])) == KAT_ROOT


def test_wrapped_key_and_inline_open(frozen: dict[str, Any]) -> None:
    keys = Keys(MASTER, VAULT_ID)
    wrapped = h(frozen["wrapped_file_key_a"])
    assert len(wrapped) == 60
    assert crypto.unwrap_file_key(keys, FILE_A, wrapped) == KEY_A
    with pytest.raises(crypto.AuthFailed):
        crypto.unwrap_file_key(keys, FILE_B, wrapped)
    sealed = h(frozen["inline_a"])
    aad = crypto.inline_aad(VAULT_ID, FILE_A, len(sealed))
    assert crypto.open_sealed(KEY_A, sealed, aad) == INLINE_A


def test_leaf_page_opens_and_decodes(frozen: dict[str, Any], tmp_path: Path) -> None:
    vault = kat_vault(tmp_path)
    payload = vault.open_meta(KIND_LEAF, LEAF_OBJ, h(frozen["leaf"]["sealed"]))
    assert payload == msgpack.unpackb(h(frozen["leaf"]["plaintext"]), strict_map_key=False)
    fs = Filesystem(vault, KAT_ROOT, writable=False)
    nodes = {ino: fs.table.codec.decode(ino, rec, LEAF_OBJ.hex()) for ino, rec in payload.items()}
    a, b, d, lnk = (nodes[i] for i in (INO_A, INO_B, INO_DIR, INO_LINK))
    assert (a.mode, a.uid, a.gid, a.nlink, a.size) == (stat.S_IFREG | 0o644, 1000, 1000, 1, 5)
    assert [a.atime, a.mtime, a.ctime] == TIMES
    assert a.file_id == FILE_A and a.file_key == KEY_A and a.small == INLINE_A
    assert a.xattrs == {b"user.k": b"v"}
    assert b.file_key == KEY_B and b.small is None
    assert {i: (r.obj, r.length) for i, r in b.chunks.items()} == {0: (CHUNK_OBJ, 5000)}
    assert d.body_ref == BODY_OBJ and not d.body_loaded
    assert lnk.target == b"a.txt"
    # An external body opens as KIND_BODY and decodes into the directory.
    body = vault.open_meta(KIND_BODY, BODY_OBJ, h(frozen["body"]["sealed"]))
    fs.table.codec.decode_body(d, body, BODY_OBJ.hex())
    assert d.parent == ROOT_INO and d.next_cookie == 5
    assert d.entries == {b"a.txt": (INO_A, 3), b"b.bin": (INO_B, 4)}
    index = vault.open_meta(KIND_INDEX, MID_OBJ, h(frozen["index"]["sealed"]))
    assert index == {1: LEAF_OBJ}


def test_chunk_opens(frozen: dict[str, Any]) -> None:
    keys = Keys(MASTER, VAULT_ID)
    sealed = h(frozen["chunk"]["sealed"])
    assert len(sealed) == KAT_LAYOUT.sealed_len(5000) == 5000 + 2 * 28
    args = (keys, KAT_LAYOUT, KEY_B, FILE_B, CHUNK_OBJ, 0, 5000)
    assert b"".join(crypto.open_blocks(*args, 0, sealed)) == CHUNK_B
    sb = KAT_LAYOUT.sealed_block
    assert b"".join(crypto.open_blocks(*args, 1, sealed[sb:])) == CHUNK_B[4096:]
    # Block by block with AES-GCM directly, as docs/format.md describes it.
    for bi in range(2):
        piece = sealed[bi * sb : (bi + 1) * sb]
        aad = h(frozen["aad"][f"block_b_{bi}"])
        plain = AESGCM(KEY_B).decrypt(piece[:12], piece[12:], aad)
        assert plain == CHUNK_B[bi * 4096 : (bi + 1) * 4096]


# --- format 2: packs ------------------------------------------------------------

SECTIONS_V2 = ["inputs", "aad", "pack", "packs_leaf", "body", "root", "header"]


@pytest.fixture(scope="module")
def frozen_v2() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(V2_JSON.read_text())
    return data


def test_v2_vector_file_has_every_section(frozen_v2: dict[str, Any]) -> None:
    assert sorted(frozen_v2) == sorted(SECTIONS_V2)


@pytest.mark.parametrize("section", SECTIONS_V2)
def test_writer_reproduces_v2_vector(
    frozen_v2: dict[str, Any], tmp_path: Path, section: str
) -> None:
    assert compute_vectors_v2(tmp_path)[section] == frozen_v2[section]


def test_v2_header_and_root_open(frozen_v2: dict[str, Any], tmp_path: Path) -> None:
    hdr, keys = header.unlock(h(frozen_v2["header"]), KAT_PASS_NFC)
    assert hdr.version == 2 and hdr.packs_small_chunks and keys.master == MASTER
    vault = Vault(LocalStore(str(tmp_path / "unused")), hdr, keys)
    root = vault.open_root(h(frozen_v2["root"]["sealed"]))
    assert root == KAT_ROOT_V2 and root.ptab == PTAB_OBJ and root.next_pack == 1


def test_pack_opens(frozen_v2: dict[str, Any]) -> None:
    keys = Keys(MASTER, VAULT_ID)
    sealed = h(frozen_v2["pack"]["sealed"])
    c0, c1 = packed_refs()
    assert c1.off == KAT_LAYOUT.sealed_len(4196) == 4196 + 2 * 28
    assert len(sealed) == c1.off + KAT_LAYOUT.sealed_len(3000) == 7280
    for idx, ref, plain in ((0, c0, CHUNK_C0), (1, c1, CHUNK_C1)):
        part = sealed[ref.off : ref.off + KAT_LAYOUT.sealed_len(ref.length)]
        got = crypto.open_blocks(
            keys, KAT_LAYOUT, KEY_C, FILE_C, PACK_OBJ, idx, ref.length, 0, part, ref.off
        )
        assert b"".join(got) == plain
        # Moved to another offset (or read as unpacked), a chunk does not open.
        for wrong in (None, ref.off + 1):
            with pytest.raises(crypto.AuthFailed):
                crypto.open_blocks(
                    keys, KAT_LAYOUT, KEY_C, FILE_C, PACK_OBJ, idx, ref.length, 0, part, wrong
                )
    # Block by block with AES-GCM directly, as docs/format.md describes it.
    sb = KAT_LAYOUT.sealed_block
    pieces = {
        "c0_block0": sealed[0:sb],
        "c0_block1": sealed[sb : c1.off],
        "c1_block0": sealed[c1.off :],
    }
    plains = {"c0_block0": CHUNK_C0[:4096], "c0_block1": CHUNK_C0[4096:], "c1_block0": CHUNK_C1}
    for name, piece in pieces.items():
        aad = h(frozen_v2["aad"][name])
        assert aad.startswith(b"megafs/v2/packed-block\x00" + VAULT_ID)
        assert AESGCM(KEY_C).decrypt(piece[:12], piece[12:], aad) == plains[name]


def test_pack_table_page_and_chunk_map_decode(
    frozen_v2: dict[str, Any], tmp_path: Path
) -> None:
    keys = Keys(MASTER, VAULT_ID)
    vault = Vault(LocalStore(str(tmp_path / "unused")), kat_header(version=2), keys)
    raw = vault.open_meta(KIND_PACKS, PACKS_LEAF_OBJ, h(frozen_v2["packs_leaf"]["sealed"]))
    recs = PackTable.decode_page(raw, 0, PACKS_LEAF_OBJ.hex())
    assert [(n, r.obj, r.live, r.size, r.live_bytes) for n, r in recs.items()] == [
        (PACK_NO, PACK_OBJ, 2, 7280, 7280)
    ]
    body = msgpack.unpackb(h(frozen_v2["body"]["plaintext"]), strict_map_key=False)
    assert body == {"c": [[0, PACK_OBJ, 4196, 0, 0], [1, PACK_OBJ, 3000, 4252, 0]]}
    fs = Filesystem(vault, KAT_ROOT_V2, writable=False)
    node = Inode(304, stat.S_IFREG | 0o644, 1000, 1000)
    node.file_key = KEY_C
    fs.table.codec.decode_body(node, body, "body")
    assert tuple(node.chunks[i] for i in (0, 1)) == packed_refs()
    # A format 1 vault knows no packed chunks.
    v1 = Filesystem(kat_vault(tmp_path), KAT_ROOT, writable=False)
    with pytest.raises(IntegrityError):
        v1.table.codec.decode_body(Inode(304, stat.S_IFREG | 0o644, 0, 0), body, "body")


# --- the frozen vault ------------------------------------------------------------

# --- format 3: key commitment and per-object keys -------------------------------

NONCES_V3 = {
    "passphrase_slot": _xnonce(31),
    "recovery_slot": _xnonce(32),
    "root": _xnonce(33),
    "wrap_a": _xnonce(34),
    "inline_a": _xnonce(35),
    "index": _xnonce(36),
    "chunk_block0": _nonce(37),  # blocks: plain AES-GCM under the object key
    "chunk_block1": _nonce(38),
    "committing": _xnonce(39),
}
PREV_ROOT = _seq(0x90, 32)
KAT_ROOT_V3 = Root(
    generation=11,
    itab=TOP_OBJ,
    next_ino=304,
    orphans=[],
    lease=None,
    stats=[4, 5005],
    prev=PREV_ROOT,
)
COMMIT_AAD = b"kat associated data"
COMMIT_PLAIN = b"kat plaintext, 32 bytes long...."
SECTIONS_V3 = [
    "inputs",
    "committing",
    "header",
    "root",
    "wrapped_file_key_a",
    "inline_a",
    "index",
    "object_key",
    "chunk",
]


def compute_vectors_v3(tmp: Path) -> dict[str, Any]:
    """Everything in v3.json, computed with the current code from the fixed inputs."""
    keys = Keys(MASTER, VAULT_ID, 3)
    vault = Vault(LocalStore(str(tmp / "unused")), kat_header(version=3), keys)
    okm = crypto.hkdf(KEY_A, NONCES_V3["committing"], crypto.LABELS["committing"], 64)
    root_plain = KAT_ROOT_V3.encode()
    inline_len = len(INLINE_A) + crypto.COMMITTED_OVERHEAD
    out: dict[str, Any] = {
        "inputs": {
            "nonces": {k: v.hex() for k, v in NONCES_V3.items()},
            "prev_root": PREV_ROOT.hex(),
            "labels": {
                k: crypto.LABELS[k].decode() for k in ("committing", "object_key")
            },
        },
        "committing": {
            "key": KEY_A.hex(),
            "aad": COMMIT_AAD.hex(),
            "plaintext": COMMIT_PLAIN.hex(),
            "enc_key": okm[:32].hex(),
            "commitment": okm[32:].hex(),
            "sealed": crypto.seal_committed(
                KEY_A, COMMIT_PLAIN, COMMIT_AAD, NONCES_V3["committing"]
            ).hex(),
        },
        "header": kat_header(version=3).encode(keys).hex(),
        "root": {
            "plaintext": root_plain.hex(),
            "sealed": crypto.seal_committed(
                keys.root, root_plain, crypto.root_aad(VAULT_ID), NONCES_V3["root"]
            ).hex(),
        },
        "wrapped_file_key_a": crypto.wrap_file_key(
            keys, FILE_A, KEY_A, NONCES_V3["wrap_a"]
        ).hex(),
        "inline_a": crypto.seal_committed(
            KEY_A, INLINE_A, crypto.inline_aad(VAULT_ID, FILE_A, inline_len), NONCES_V3["inline_a"]
        ).hex(),
        "object_key": crypto.object_key(KEY_B, CHUNK_OBJ).hex(),
    }
    with scripted_urandom([NONCES_V3["index"]]):
        out["index"] = vault.seal_meta(KIND_INDEX, MID_OBJ, {1: LEAF_OBJ}).hex()
    with scripted_urandom([NONCES_V3["chunk_block0"], NONCES_V3["chunk_block1"]]):
        chunk = crypto.seal_chunk(keys, KAT_LAYOUT, KEY_B, FILE_B, CHUNK_OBJ, 0, CHUNK_B)
    out["chunk"] = {"plaintext": CHUNK_B.hex(), "sealed": chunk.hex()}
    return out


@pytest.fixture(scope="module")
def frozen_v3() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(V3_JSON.read_text())
    return data


def _hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 as RFC 5869 writes it, any length (independent of megafs)."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block = b"", b""
    for i in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


def _open_committed_doc(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """The committing seal opened as docs/format.md section 4 describes it."""
    label = b"megafs v3 committing AEAD: per-seal key and commitment (HKDF-SHA256)"
    nonce, commit, rest = sealed[:24], sealed[24:56], sealed[56:]
    okm = _hkdf_sha256(key, nonce, label, 64)
    assert hmac.compare_digest(okm[32:], commit), "commitment mismatch"
    return AESGCM(okm[:32]).decrypt(nonce[12:], rest, aad)


def test_v3_vector_file_has_every_section(frozen_v3: dict[str, Any]) -> None:
    assert sorted(frozen_v3) == sorted(SECTIONS_V3)


@pytest.mark.parametrize("section", SECTIONS_V3)
def test_writer_reproduces_v3_vector(
    frozen_v3: dict[str, Any], tmp_path: Path, section: str
) -> None:
    assert compute_vectors_v3(tmp_path)[section] == frozen_v3[section]


def test_v3_committing_seal(frozen_v3: dict[str, Any]) -> None:
    v = frozen_v3["committing"]
    sealed = h(v["sealed"])
    assert len(sealed) == len(COMMIT_PLAIN) + 72
    assert sealed[24:56] == h(v["commitment"])
    assert _open_committed_doc(KEY_A, sealed, COMMIT_AAD) == COMMIT_PLAIN
    assert crypto.open_committed(KEY_A, sealed, COMMIT_AAD) == COMMIT_PLAIN
    # Another key fails at the commitment, before any decryption.
    with pytest.raises(crypto.WrongKey):
        crypto.open_committed(KEY_B, sealed, COMMIT_AAD)
    # The right key with other associated data fails at the tag.
    with pytest.raises(crypto.AuthFailed) as e:
        crypto.open_committed(KEY_A, sealed, b"other")
    assert not isinstance(e.value, crypto.WrongKey)


def test_v3_header_opens_with_both_slots(frozen_v3: dict[str, Any]) -> None:
    data = h(frozen_v3["header"])
    assert len(data) == 34 + 1 + 2 * 133 + 32 == header.MAX_HEADER_LEN
    hdr, keys = header.unlock(data, KAT_PASS_NFD)
    assert keys.master == MASTER and hdr.version == 3 and keys.committing
    assert [s.kind for s in hdr.slots] == [header.SLOT_PASSPHRASE, header.SLOT_RECOVERY]
    _, rkeys = header.unlock_recovery(data, RECOVERY_KEY)
    assert rkeys.master == MASTER
    with pytest.raises(WrongPassphrase):
        header.unlock(data, "another passphrase")


def test_v3_records_open(frozen_v3: dict[str, Any], tmp_path: Path) -> None:
    keys = Keys(MASTER, VAULT_ID, 3)
    vault = Vault(LocalStore(str(tmp_path / "unused")), kat_header(version=3), keys)
    root = vault.open_root(h(frozen_v3["root"]["sealed"]))
    assert root == KAT_ROOT_V3 and root.prev == PREV_ROOT
    wrapped = h(frozen_v3["wrapped_file_key_a"])
    assert len(wrapped) == 104
    assert crypto.unwrap_file_key(keys, FILE_A, wrapped) == KEY_A
    assert _open_committed_doc(
        keys.file_wrap, wrapped, b"megafs/v1/filekey\x00" + VAULT_ID + FILE_A
    ) == KEY_A
    with pytest.raises(crypto.AuthFailed):
        crypto.unwrap_file_key(keys, FILE_B, wrapped)
    inline = h(frozen_v3["inline_a"])
    aad = crypto.inline_aad(VAULT_ID, FILE_A, len(inline))
    assert _open_committed_doc(KEY_A, inline, aad) == INLINE_A
    assert vault.open_meta(KIND_INDEX, MID_OBJ, h(frozen_v3["index"])) == {1: LEAF_OBJ}
    # Blocks: AES-GCM under HKDF(file key, salt = object id), not the file key.
    okey = _hkdf_sha256(KEY_B, CHUNK_OBJ, crypto.LABELS["object_key"], 32)
    assert okey == h(frozen_v3["object_key"])
    sealed = h(frozen_v3["chunk"]["sealed"])
    args = (keys, KAT_LAYOUT, KEY_B, FILE_B, CHUNK_OBJ, 0, 5000)
    assert b"".join(crypto.open_blocks(*args, 0, sealed)) == CHUNK_B
    sb = KAT_LAYOUT.sealed_block
    aad0 = crypto.block_aad(VAULT_ID, FILE_B, CHUNK_OBJ, 0, 0, 5000)
    assert AESGCM(okey).decrypt(sealed[:12], sealed[12:sb], aad0) == CHUNK_B[:4096]
    with pytest.raises(InvalidTag):
        AESGCM(KEY_B).decrypt(sealed[:12], sealed[12:sb], aad0)
    # The same object id under another file key gives another key.
    assert crypto.object_key(KEY_A, CHUNK_OBJ) != okey


FROZEN_PASSPHRASE = "frozen vault v1 \u2013 caf\u00e9"
FROZEN_RECOVERY = "7E6C-XUZ5-SKR7-PI2B-MHTQ-SZ4E-G3P7-O6EL-TC6C-EXBP-HYSA-UBYQ-GSOK-2U4K"
FROZEN_LAYOUT = Layout(chunk_size=8192, block_size=4096)
FROZEN_UID = 1000
FROZEN_MTIME = 1_600_000_000_123_456_789


def _pattern(n: int, mul: int, add: int) -> bytes:
    return bytes((i * mul + add) % 256 for i in range(n))


@dataclass(frozen=True)
class Entry:
    """One name in the frozen vault. ``data``: content, symlink target or link source."""

    path: bytes
    kind: str  # "file", "dir", "symlink", "fifo" or "hardlink"
    perm: int = 0o644
    data: bytes = b""
    offset: int = 0  # a file's data is written at this offset (a hole before it)
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    ino: int = 0  # if set, the inode number to allocate (to reach other index pages)


LONG = b"L" * 180
FROZEN_TREE: list[Entry] = [
    Entry(b"dir", "dir", 0o750),
    Entry(
        b"hello.txt",
        "file",
        data=b"Hello, megafs!\n",
        xattrs=((b"user.comment", b"frozen v1"), (b"user.empty", b"")),
    ),
    Entry(b"empty", "file", 0o600),
    Entry(b"dir/chunked.bin", "file", data=_pattern(20_000, 7, 3)),
    Entry(b"dir/exact.bin", "file", 0o640, data=_pattern(8192, 13, 1)),
    Entry(b"dir/sparse.bin", "file", data=b"tail", offset=30_000),
    Entry(b"dir/link", "symlink", 0o777, data=b"../hello.txt"),
    Entry(b"dir/sub", "dir", 0o700),
    Entry(b"hello-hardlink", "hardlink", data=b"hello.txt"),
    Entry(b"manylinks", "dir", 0o755),
    *[
        Entry(b"manylinks/link-%02d-" % i + LONG, "hardlink", data=b"dir/exact.bin")
        for i in range(45)
    ],
    Entry(b"far.txt", "file", data=b"far away\n", ino=300_000),  # page 1171: hi 1, lo 147
    Entry(b"caf\xc3\xa9 \xff.bin", "file", data=b"a name that is not UTF-8"),
    Entry(b"fifo", "fifo", 0o644),
]
#: The format 2 vault holds more small files, so that one pack holds several
#: chunks (and chunked.bin's last chunk is packed too).
FROZEN_TREE_V2: list[Entry] = [
    *FROZEN_TREE,
    *[
        Entry(b"dir/sub/small-%d.txt" % i, "file", data=_pattern(2100 + 700 * i, 11, i))
        for i in range(3)
    ],
]
FROZEN_RECOVERY_V2 = "HTCI-KMHI-3YG7-PITR-ALD7-KWD6-MDCV-AL5C-5BTQ-KRNJ-GDNA-YNJ7-IQTM-TFQK"
FROZEN_RECOVERY_V3 = "I43Q-65FQ-67LL-NQMJ-WFPH-ZQWS-FLZT-HO6O-VQYY-KGNN-RS2W-KKGY-PZFA-UK5W"


@dataclass
class Expect:
    mode: int
    nlink: int
    size: int
    content: bytes  # file content or symlink target
    xattrs: dict[bytes, bytes]


def expected_tree(tree: list[Entry] = FROZEN_TREE) -> dict[bytes, Expect]:
    """What every path of a frozen vault must look like."""
    fmt = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "fifo": stat.S_IFIFO}
    out: dict[bytes, Expect] = {}
    for e in tree:
        if e.kind == "hardlink":
            out[e.path] = out[e.data]
            out[e.data].nlink += 1
            continue
        content = bytes(e.offset) + e.data if e.kind == "file" else e.data
        out[e.path] = Expect(
            fmt[e.kind] | e.perm, 2 if e.kind == "dir" else 1, len(content), content, dict(e.xattrs)
        )
    for p, x in out.items():
        if stat.S_ISDIR(x.mode) and b"/" in p:
            out[p.rsplit(b"/", 1)[0]].nlink += 1
    return out


def children(path: bytes, tree: list[Entry] = FROZEN_TREE) -> set[bytes]:
    """Names directly inside ``path`` (b"" is the root directory)."""
    out = set()
    for e in tree:
        parent, _, name = e.path.rpartition(b"/")
        if parent == path:
            out.add(name)
    return out


async def build_vault(
    store_path: Path, passphrase: str, tree: list[Entry] = FROZEN_TREE
) -> bytes:
    """Write ``tree`` into a new vault; return the recovery key. Used by the generators."""
    store = LocalStore(str(store_path), create=True)
    vault, recovery = await Vault.init(store, passphrase, KAT_KDF, FROZEN_LAYOUT)
    fs = await Filesystem.load(vault)
    inos: dict[bytes, int] = {b"": ROOT_INO}
    for e in tree:
        parent_path, _, name = e.path.rpartition(b"/")
        parent = inos[parent_path]
        if e.ino:  # the same number in the writing device's range
            (dev,) = fs.root.devices.values()
            dev.next_ino = (dev.prefix << DEVICE_BITS) | e.ino
        if e.kind == "dir":
            ino = (await fs.mkdir(parent, name, e.perm, FROZEN_UID, FROZEN_UID)).ino
        elif e.kind == "file":
            ino = (await fs.create(parent, name, e.perm, FROZEN_UID, FROZEN_UID)).ino
            if e.data:
                await fs.write(ino, e.offset, e.data)
        elif e.kind == "symlink":
            ino = (await fs.symlink(parent, name, e.data, FROZEN_UID, FROZEN_UID)).ino
        elif e.kind == "fifo":
            mode = stat.S_IFIFO | e.perm
            ino = (await fs.mknod(parent, name, mode, 0, FROZEN_UID, FROZEN_UID)).ino
        else:
            ino = (await fs.link(inos[e.data], parent, name)).ino
        for k, v in e.xattrs:
            await fs.setxattr(ino, k, v)
        inos[e.path] = ino
    for ino in set(inos.values()):
        await fs.setattr(ino, atime_ns=FROZEN_MTIME, mtime_ns=FROZEN_MTIME)
    await fs.close()
    return recovery


def write_frozen(
    json_path: Path,
    vault_path: Path,
    compute: Callable[[Path], dict[str, Any]],
    tree: list[Entry],
    build: Callable[[Path, Path], Awaitable[bytes | None]] | None = None,
) -> int:
    """Write a format's frozen vectors and vault once (tests/vectors/generate_*.py).

    The vault is ``tree`` in a new vault, or what ``build(vault path, scratch
    folder)`` makes. Refuses to overwrite: they are the record of what that
    format looks like.
    """
    import tempfile

    import trio

    if json_path.exists() or vault_path.exists():
        print(f"refusing to overwrite {json_path} / {vault_path}")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MEGAFS_STATE_DIR"] = os.path.join(tmp, "state")
        vectors = compute(Path(tmp))
        json_path.write_text(json.dumps(vectors, indent=1, sort_keys=True) + "\n")
        recovery: bytes | None
        if build is None:
            recovery = trio.run(build_vault, vault_path, FROZEN_PASSPHRASE, tree)
        else:
            recovery = trio.run(build, vault_path, Path(tmp))
    print(f"wrote {json_path} and {vault_path}")
    if recovery is not None:
        print(f"recovery key of the frozen vault: {header.format_recovery_key(recovery)}")
    return 0


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


async def check_tree(
    fs: Filesystem, tree: list[Entry] = FROZEN_TREE, extra: frozenset[bytes] = frozenset()
) -> None:
    """Assert that ``fs`` holds exactly ``tree``, and ``extra`` names at the top."""
    want = expected_tree(tree)
    inos: dict[bytes, int] = {b"": ROOT_INO}
    for path in sorted(want, key=lambda p: p.count(b"/")):
        parent_path, _, name = path.rpartition(b"/")
        attr = await fs.lookup(inos[parent_path], name)
        inos[path] = attr.ino
        x = want[path]
        assert (attr.mode, attr.nlink, attr.size) == (x.mode, x.nlink, x.size), path
        assert (attr.uid, attr.gid, attr.mtime_ns) == (FROZEN_UID, FROZEN_UID, FROZEN_MTIME), path
        if stat.S_ISREG(x.mode):
            assert await fs.read(attr.ino, 0, x.size + 100) == x.content, path
        elif stat.S_ISLNK(x.mode):
            assert await fs.readlink(attr.ino) == x.content, path
        assert {k: await fs.getxattr(attr.ino, k) for k in await fs.listxattr(attr.ino)} == x.xattrs
    for path, x in want.items():
        if not stat.S_ISDIR(x.mode):
            continue
        assert await listdir(fs, inos[path]) == children(path, tree), path
    assert inos[b"far.txt"] & ((1 << DEVICE_BITS) - 1) == 300_000  # on a second mid index
    assert await listdir(fs, ROOT_INO) == children(b"", tree) | extra
    assert await fs.listxattr(ROOT_INO) == []


async def listdir(fs: Filesystem, ino: int) -> set[bytes]:
    names: list[bytes] = []
    after = 0
    while batch := await fs.readdir(ino, after):
        names += [n for n, _, _ in batch if n not in (b".", b"..")]
        after = batch[-1][2]
    assert len(names) == len(set(names))
    return set(names)


FROZEN = [
    pytest.param(V1_VAULT, FROZEN_TREE, FROZEN_RECOVERY, 1, id="v1"),
    pytest.param(V2_VAULT, FROZEN_TREE_V2, FROZEN_RECOVERY_V2, 2, id="v2"),
    pytest.param(V3_VAULT, FROZEN_TREE_V2, FROZEN_RECOVERY_V3, 3, id="v3"),
]


@pytest.mark.parametrize(("folder", "tree", "recovery", "version"), FROZEN)
async def test_frozen_vault_opens_and_matches(
    tmp_path: Path, folder: Path, tree: list[Entry], recovery: str, version: int
) -> None:
    copy = tmp_path / "vault"
    shutil.copytree(folder, copy)
    before = _tree_digest(copy)
    store = LocalStore(str(copy))
    vault = await Vault.unlock(store, unicodedata.normalize("NFD", FROZEN_PASSPHRASE))
    assert vault.layout == FROZEN_LAYOUT and vault.header.version == version
    fs = await Filesystem.load(vault, writable=False)
    await check_tree(fs, tree)
    packed = [r for n in fs.table.inodes.values() for r in n.chunks.values() if r.packed]
    assert len({r.obj for r in packed}) == (1 if version >= 2 else 0)
    assert len(packed) == (4 if version >= 2 else 0)
    # The recovery slot opens it too.
    rvault = await Vault.unlock_recovery(store, header.parse_recovery_key(recovery))
    assert rvault.keys.master == vault.keys.master
    assert _tree_digest(copy) == before, "a read-only open modified the store"


@pytest.mark.parametrize(("folder", "tree", "recovery", "version"), FROZEN)
async def test_frozen_vault_still_writable(
    tmp_path: Path, folder: Path, tree: list[Entry], recovery: str, version: int
) -> None:
    """An older vault is written in its own format: still readable by its megafs."""
    copy = tmp_path / "vault"
    shutil.copytree(folder, copy)
    vault = await Vault.unlock(LocalStore(str(copy)), FROZEN_PASSPHRASE)
    fs = await Filesystem.load(vault)
    ino = (await fs.create(ROOT_INO, b"new.bin", 0o644, 0, 0)).ino
    await fs.write(ino, 0, _pattern(3000, 3, 1))
    await fs.close()
    check_doc_reader(copy, FROZEN_PASSPHRASE, tree, extra=frozenset({b"new.bin"}))
    reader = DocReader(copy, FROZEN_PASSPHRASE)
    reader.tree()
    assert bool(reader.packs) == (version >= 2)


@pytest.mark.parametrize(("folder", "size"), [(V1_VAULT, 245), (V2_VAULT, 245), (V3_VAULT, 333)])
def test_frozen_vault_is_small_and_committed(folder: Path, size: int) -> None:
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert 0 < total < 100_000
    assert (folder / "pointers" / "header").stat().st_size == size


# --- an independent reader, written from docs/format.md ------------------------


@dataclass
class Read:
    mode: int
    nlink: int
    uid: int
    mtime: int
    size: int
    content: bytes
    xattrs: dict[bytes, bytes]


class DocReader:
    """Reads a local-store vault using only the documented format (no megafs code)."""

    def __init__(self, folder: Path, passphrase: str) -> None:
        self.folder = folder
        data = (folder / "pointers" / "header").read_bytes()
        magic, version, vid, self.chunk, self.block, nslots = struct.unpack_from(">8sH16sIIB", data)
        assert magic == b"MEGAFS\x00\x1a" and version in (1, 2, 3)
        self.version = version
        self.vid = vid
        fixed = data[:34]
        slot_len = 133 if version >= 3 else 89
        body_end = 35 + slot_len * nslots
        master = None
        for i in range(nslots):
            off = 35 + slot_len * i
            head = data[off : off + 29]
            kind, mem, iters, lanes, salt = struct.unpack(">BIII16s", head)
            sealed = data[off + 29 : off + slot_len]
            if kind != 1:
                continue
            kek = Argon2id(salt=salt, length=32, iterations=iters, lanes=lanes, memory_cost=mem)
            kek_bytes = kek.derive(unicodedata.normalize("NFC", passphrase).encode())
            aad = b"megafs/v1/slot\x00" + fixed + head
            master = self.aead_open(kek_bytes, sealed, aad)
        assert master is not None
        sub: Callable[[str], bytes] = lambda label: _hkdf_rfc5869(  # noqa: E731
            master, vid, f"megafs v1 {label}".encode()
        )
        mac_key = sub("header MAC (HMAC-SHA256)")
        assert hmac.compare_digest(
            hmac.new(mac_key, data[:body_end], hashlib.sha256).digest(), data[body_end:]
        )
        self.root_key = sub("root pointer (AES-256-GCM)")
        self.meta_key = sub("metadata objects (AES-256-GCM)")
        self.wrap_key = sub("file content key wrapping (AES-256-GCM)")

    def obj(self, obj_id: bytes) -> bytes:
        name = obj_id.hex()
        return (self.folder / "objects" / name[:2] / name).read_bytes()

    def aead_open(self, key: bytes, sealed: bytes, aad: bytes) -> bytes:
        """Formats 1 and 2: AES-GCM; format 3: the committing seal."""
        if self.version >= 3:
            return _open_committed_doc(key, sealed, aad)
        return AESGCM(key).decrypt(sealed[:12], sealed[12:], aad)

    def meta(self, kind: int, obj_id: bytes) -> Any:
        aad = b"megafs/v1/meta\x00" + self.vid + bytes([kind]) + obj_id
        plain = self.aead_open(self.meta_key, self.obj(obj_id), aad)
        return msgpack.unpackb(plain, raw=False, strict_map_key=False)

    def root(self) -> dict[str, Any]:
        sealed_root = (self.folder / "pointers" / "root").read_bytes()
        root: dict[str, Any] = msgpack.unpackb(
            self.aead_open(self.root_key, sealed_root, b"megafs/v1/root\x00" + self.vid),
            raw=False,
        )
        return root

    def history(self) -> dict[int, tuple[dict[str, Any], dict[str, Any]]]:
        """Root record version 3 (docs/history.md): generation -> (entry,
        its lists object), through the history table's pages of 64."""
        root = self.root()
        found: dict[int, dict[str, Any]] = {}
        if root.get("hist") is not None:
            for hi, mid_id in self.meta(1, root["hist"]).items():
                for lo, leaf_id in self.meta(1, mid_id).items():
                    for gen, entry in self.meta(5, leaf_id).items():
                        assert gen >> 6 == (hi << 10) | lo
                        found[gen] = entry
        for gen, entry in root.get("hnew", []):  # the newest, in the root itself
            assert gen not in found and all(gen > g for g in found)
            found[gen] = entry
        # the lists: inline ("L"), or in their own object ("l")
        return {
            gen: (e, e["L"] if "L" in e else self.meta(6, e["l"])) for gen, e in found.items()
        }

    def records(self, itab: bytes | None = None) -> dict[int, Any]:
        root = self.root()
        if root["v"] == 1:
            assert root["lease"] is None
        else:  # record version 2: the lease for version 1 writers; devices
            # (version 3: the same, and a history table: docs/history.md)
            assert root["v"] in (2, 3) and root["dlease"] is None
            history = root.get("hist") is not None or bool(root.get("hnew")) or "ret" in root
            assert (root["v"] == 3) == history
            assert root["lease"] == [bytes(16), "a newer megafs (several devices)", 0, math.inf]
            assert all(d["pfx"] >= 1 for d in root["devs"].values())
        self.packs = self.table(root["ptab"], 4) if root.get("ptab") is not None else {}
        return self.table(itab or root["itab"], 2)

    def table(self, top_id: bytes, leaf_kind: int) -> dict[int, Any]:
        """Every record of a paged table (inodes: leaf kind 2; packs: 4)."""
        out: dict[int, Any] = {}
        for hi, mid_id in self.meta(1, top_id).items():
            for lo, leaf_id in self.meta(1, mid_id).items():
                for key, rec in self.meta(leaf_kind, leaf_id).items():
                    assert key >> 8 == (hi << 10) | lo
                    out[key] = rec
        return out

    def content(self, rec: Any, body: Any) -> bytes:
        fid = rec["f"]
        fkey = self.aead_open(self.wrap_key, rec["k"], b"megafs/v1/filekey\x00" + self.vid + fid)
        if "i" in body:
            i = body["i"]
            aad = b"megafs/v1/inline\x00" + self.vid + fid + struct.pack(">Q", len(i))
            return self.aead_open(fkey, i, aad)
        out = bytearray(rec["s"])
        for entry in body["c"]:
            idx, obj_id, length = entry[:3]
            sealed_len = length + 28 * -(-length // self.block)
            data = self.obj(obj_id)
            if len(entry) == 5:  # packed (format 2): at an offset of a pack
                assert self.version >= 2
                off, pno = entry[3:]
                if pno in self.packs:  # (a past root's pack may be out of the table)
                    pack_id, live, size, _live_bytes = self.packs[pno]
                    assert pack_id == obj_id and live >= 1 and len(data) == size
                data = data[off : off + sealed_len]
            assert len(data) == sealed_len
            sb = self.block + 28
            bkey = fkey
            if self.version >= 3:  # a key per object: HKDF(file key, salt = object id)
                bkey = _hkdf_sha256(
                    fkey, obj_id, b"megafs v3 chunk object key (HKDF-SHA256 of the file key)", 32
                )
            plain = bytearray()
            for bi in range(-(-length // self.block)):
                if len(entry) == 5:
                    aad = (
                        b"megafs/v2/packed-block\x00"
                        + self.vid
                        + struct.pack(">16s16sQQII", fid, obj_id, entry[3], idx, bi, length)
                    )
                else:
                    aad = (
                        b"megafs/v1/block\x00"
                        + self.vid
                        + struct.pack(">16s16sQII", fid, obj_id, idx, bi, length)
                    )
                piece = data[bi * sb : (bi + 1) * sb]
                plain += AESGCM(bkey).decrypt(piece[:12], piece[12:], aad)
            out[idx * self.chunk : idx * self.chunk + length] = plain
        return bytes(out)

    def tree(self, itab: bytes | None = None) -> dict[bytes, Read]:
        """The tree of the root (or of the past root whose inode table is ``itab``)."""
        recs = self.records(itab)
        bodies = {ino: r["b"] if "b" in r else self.meta(3, r["B"]) for ino, r in recs.items()}
        out: dict[bytes, Read] = {}
        todo = [(b"", ROOT_INO)]
        while todo:
            path, ino = todo.pop()
            for name, child, _cookie in bodies[ino]["e"]:
                rec, body = recs[child], bodies[child]
                p = path + b"/" + name if path else name
                if stat.S_ISDIR(rec["m"]):
                    assert body["p"] == ino
                    todo.append((p, child))
                    content = b""
                elif stat.S_ISREG(rec["m"]):
                    content = self.content(rec, body)
                elif stat.S_ISLNK(rec["m"]):
                    content = body["l"]
                else:
                    content = b""
                out[p] = Read(
                    rec["m"], rec["n"], rec["u"], rec["t"][1], rec["s"], content, rec.get("x", {})
                )
        return out


def check_doc_reader(
    folder: Path,
    passphrase: str,
    tree: list[Entry] = FROZEN_TREE,
    extra: frozenset[bytes] = frozenset(),
) -> None:
    got = DocReader(folder, passphrase).tree()
    want = expected_tree(tree)
    assert sorted(set(got) - extra) == sorted(want)
    for path, x in want.items():
        r = got[path]
        assert (r.mode, r.nlink, r.size, r.xattrs) == (x.mode, x.nlink, x.size, x.xattrs), path
        assert (r.uid, r.mtime) == (FROZEN_UID, FROZEN_MTIME), path
        if not stat.S_ISDIR(x.mode):
            assert r.content == x.content, path


@pytest.mark.parametrize(("folder", "tree", "recovery", "version"), FROZEN)
def test_doc_reader_reads_frozen_vault(
    tmp_path: Path, folder: Path, tree: list[Entry], recovery: str, version: int
) -> None:
    shutil.copytree(folder, tmp_path / "vault")
    check_doc_reader(tmp_path / "vault", FROZEN_PASSPHRASE, tree)


async def test_doc_reader_reads_what_the_current_writer_writes(tmp_path: Path) -> None:
    await build_vault(tmp_path / "fresh", FROZEN_PASSPHRASE, FROZEN_TREE_V2)
    check_doc_reader(tmp_path / "fresh", FROZEN_PASSPHRASE, FROZEN_TREE_V2)
    reader = DocReader(tmp_path / "fresh", FROZEN_PASSPHRASE)
    reader.tree()
    assert reader.version == header.VERSION and len(reader.packs) == 1
    fs = await Filesystem.load(
        await Vault.unlock(LocalStore(str(tmp_path / "fresh")), FROZEN_PASSPHRASE), writable=False
    )
    await check_tree(fs, FROZEN_TREE_V2)
