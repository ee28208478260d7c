"""Key commitment, per-object keys and header limits (security review, defects 4-6).

* AES-GCM is not key-committing: a 60-byte key slot can be forged that opens
  under two chosen passphrases (a multi-key collision: one linear equation in
  GF(2^128), solved below). In formats 1 and 2 the two outcomes of such a slot
  (opens but the MAC fails / does not open) used to give two exit codes, a
  partitioning oracle; now both are the same WrongPassphrase line. Format 3
  seals slots and wrapped keys with a committing AEAD, where the same forgery
  fails at the commitment.
* Blocks of format 3 are sealed under a key per chunk object, so no key
  approaches GCM's 2^32 random-nonce limit however often a file is rewritten.
* A header holds at most one passphrase and one recovery slot, with Argon2id
  parameters under a ceiling, so a hostile header cannot make unlock run
  255 Argon2id passes of 4 GiB each.
"""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from megafs.errors import CorruptHeader, WrongPassphrase
from megafs.format import crypto, header
from megafs.format.crypto import KdfParams, Keys, Layout
from megafs.format.header import Header, Slot
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.stores import Store
from megafs.vault.vault import Vault, obj_name

from ..support.helpers import FAST_KDF

SALT = bytes(range(16))
NONCE = bytes(range(100, 112))
XNONCE = bytes(range(100, 124))  # format 3's committing seal: 192 bits
PASS_1, PASS_2, PASS_3 = "first passphrase", "second passphrase", "third passphrase"


# --- a GCM multi-key collision (Len, Grubbs, Ristenpart 2021) -----------------


def _gf_mul(x: int, y: int) -> int:
    """Multiply in GHASH's GF(2^128) (NIST SP 800-38D, algorithm 1)."""
    r = 0xE1 << 120
    z, v = 0, y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ r if v & 1 else v >> 1
    return z


def _gf_inv(x: int) -> int:
    """x^(2^128 - 2), the inverse of x != 0."""
    result, base, e = 1 << 127, x, (1 << 128) - 2  # 1 << 127 is the field's one
    while e:
        if e & 1:
            result = _gf_mul(result, base)
        base = _gf_mul(base, base)
        e >>= 1
    return result


def _aes_block(key: bytes, block: bytes) -> int:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return int.from_bytes(enc.update(block) + enc.finalize(), "big")


def _blocks(data: bytes) -> list[int]:
    padded = data + bytes(-len(data) % 16)
    return [int.from_bytes(padded[i : i + 16], "big") for i in range(0, len(padded), 16)]


def gcm_collision(key1: bytes, key2: bytes, nonce: bytes, aad: bytes) -> bytes:
    """A 32-byte ciphertext plus tag that AES-GCM opens under both keys.

    The tag is GHASH_H(aad, C) xor E_K(J0). With C = C1 || C2 and C1 fixed,
    it is linear in C2 with coefficient H^2 (C2 is the second-to-last GHASH
    block), so equal tags under two keys is one linear equation for C2.
    """
    c1 = 0x5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A
    lens = struct.pack(">QQ", len(aad) * 8, 32 * 8)
    consts, squares = [], []
    for key in (key1, key2):
        h = _aes_block(key, bytes(16))
        ej0 = _aes_block(key, nonce + b"\x00\x00\x00\x01")
        acc = 0
        for x in [*_blocks(aad), c1, 0, *_blocks(lens)]:
            acc = _gf_mul(acc ^ x, h)
        consts.append(acc ^ ej0)  # the tag with C2 = 0
        squares.append(_gf_mul(h, h))
    c2 = _gf_mul(consts[0] ^ consts[1], _gf_inv(squares[0] ^ squares[1]))
    ct = c1.to_bytes(16, "big") + c2.to_bytes(16, "big")
    h1 = _aes_block(key1, bytes(16))
    acc = 0
    for x in [*_blocks(aad), *_blocks(ct), *_blocks(lens)]:
        acc = _gf_mul(acc ^ x, h1)
    tag = (acc ^ _aes_block(key1, nonce + b"\x00\x00\x00\x01")).to_bytes(16, "big")
    return ct + tag


def _kek(passphrase: str) -> bytes:
    return crypto.argon2id(header.normalize_passphrase(passphrase), SALT, FAST_KDF)


def _forged_header(version: int) -> tuple[bytes, bytes, bytes]:
    """A header whose passphrase slot is a GCM multi-key collision for PASS_1 and
    PASS_2, MACed under the master key PASS_1 opens. Returns (header, master
    under PASS_1, master under PASS_2)."""
    vault_id = bytes(range(50, 66))
    hdr = Header(vault_id=vault_id, layout=Layout(8192, 4096), version=version)
    head = Slot(header.SLOT_PASSPHRASE, FAST_KDF, SALT, b"").head()
    aad = hdr.slot_aad(head)
    k1, k2 = _kek(PASS_1), _kek(PASS_2)
    if version >= 3:  # the forger knows both keys, so both one-time GCM keys too
        okm1 = crypto.hkdf(k1, XNONCE, crypto.LABELS["committing"], 64)
        e1, c1 = okm1[:32], okm1[32:]
        e2 = crypto.hkdf(k2, XNONCE, crypto.LABELS["committing"], 64)[:32]
        gnonce = XNONCE[12:]
        body = gcm_collision(e1, e2, gnonce, aad)
        sealed = XNONCE + c1 + body
        m1 = AESGCM(e1).decrypt(gnonce, body, aad)
        m2 = AESGCM(e2).decrypt(gnonce, body, aad)  # the GCM part opens under both
    else:
        body = gcm_collision(k1, k2, NONCE, aad)
        sealed = NONCE + body
        m1 = AESGCM(k1).decrypt(NONCE, body, aad)
        m2 = AESGCM(k2).decrypt(NONCE, body, aad)
    assert m1 != m2
    forged = replace(hdr, slots=(Slot(header.SLOT_PASSPHRASE, FAST_KDF, SALT, sealed),))
    return forged.encode(Keys(m1, vault_id, version)), m1, m2


def test_the_collision_is_real() -> None:
    """The forgery works against plain AES-GCM: one slot, two passphrases."""
    k1, k2 = _kek(PASS_1), _kek(PASS_2)
    aad = b"some associated data, 78 bytes like a slot's" * 2
    sealed = gcm_collision(k1, k2, NONCE, aad)
    assert AESGCM(k1).decrypt(NONCE, sealed, aad) != AESGCM(k2).decrypt(NONCE, sealed, aad)


@pytest.mark.parametrize("version", [1, 2])
def test_old_format_forged_slot_is_no_oracle(version: int) -> None:
    """Format 1 and 2 headers: the passphrase that opens the forged slot but not
    the MAC fails exactly like one that opens nothing (same class, same line)."""
    data, m1, _ = _forged_header(version)
    _, keys = header.unlock(data, PASS_1)  # the forger's own vault
    assert keys.master == m1
    outcomes = []
    for pw in (PASS_2, PASS_3):
        with pytest.raises(Exception) as e:
            header.unlock(data, pw)
        outcomes.append((type(e.value), str(e.value)))
    assert outcomes[0] == outcomes[1] == (WrongPassphrase, "wrong passphrase")


def test_committed_slot_opens_under_one_key_only() -> None:
    """Format 3: the forged slot's GCM part opens under both one-time keys, yet
    the commitment lets only PASS_1 through; PASS_2 is a plain wrong passphrase."""
    data, m1, _ = _forged_header(3)
    _, keys = header.unlock(data, PASS_1)
    assert keys.master == m1
    for pw in (PASS_2, PASS_3):
        with pytest.raises(WrongPassphrase, match=r"^wrong passphrase$"):
            header.unlock(data, pw)
    slot = header.parse(data)[0].slots[0]
    with pytest.raises(crypto.WrongKey):
        crypto.open_committed(_kek(PASS_2), slot.sealed, b"")


def test_wrapped_file_keys_are_committed() -> None:
    keys = Keys(bytes(32), bytes(16), 3)
    fid = bytes(range(16))
    wrapped = crypto.wrap_file_key(keys, fid, bytes(range(32)))
    assert len(wrapped) == 104
    other = Keys(bytes([1]) * 32, bytes(16), 3)
    with pytest.raises(crypto.WrongKey):
        crypto.unwrap_file_key(other, fid, wrapped)


# --- header limits -----------------------------------------------------------


def _header_with(slots: tuple[Slot, ...], version: int = header.VERSION) -> bytes:
    hdr = Header(vault_id=bytes(16), layout=Layout(8192, 4096), slots=slots, version=version)
    return hdr.encode(Keys(bytes(32), bytes(16), version))


def _slot(kind: int, kdf: KdfParams = FAST_KDF, version: int = header.VERSION) -> Slot:
    return Slot(kind, kdf, SALT, bytes(header.slot_len(version) - 29))


@pytest.mark.parametrize("version", [1, 2, 3])
def test_at_most_one_slot_of_each_kind(version: int) -> None:
    p, r = header.SLOT_PASSPHRASE, header.SLOT_RECOVERY
    for slots in [
        (_slot(p, version=version), _slot(p, version=version)),
        (_slot(p, version=version), _slot(r, version=version), _slot(r, version=version)),
        tuple(_slot(p, version=version) for _ in range(255)),
        (_slot(7, version=version),),
    ]:
        with pytest.raises(CorruptHeader):
            header.parse(_header_with(slots, version))


@pytest.mark.parametrize(
    "kdf",
    [
        KdfParams(memory_kib=4 << 20, iterations=1, lanes=4),  # 4 GiB
        KdfParams(memory_kib=65536, iterations=64, lanes=4),
        KdfParams(memory_kib=65536, iterations=3, lanes=64),
    ],
)
def test_argon2id_parameters_have_a_ceiling(kdf: KdfParams) -> None:
    """Refused when parsed, before any Argon2id work, and refused for init too."""
    data = _header_with((_slot(header.SLOT_PASSPHRASE, kdf),))
    with pytest.raises(CorruptHeader, match="KDF"):
        header.parse(data)
    with pytest.raises(ValueError):
        kdf.check()


# --- a key per chunk object -----------------------------------------------------


async def test_blocks_are_sealed_under_a_key_per_object(any_store: Store) -> None:
    """Through a real vault on both stores: two chunk objects of one file are
    sealed under two different keys derived from the file key, never under the
    file key itself."""
    layout = Layout(chunk_size=16384, block_size=4096)
    vault, _ = await Vault.init(any_store, "per-object keys", FAST_KDF, layout)
    fs = await Filesystem.load(vault)
    ino = (await fs.create(ROOT_INO, b"big", 0o644, 0, 0)).ino
    data = bytes(range(256)) * 160  # 40,960 bytes: chunks of 16 KiB, 16 KiB, 8 KiB
    await fs.write(ino, 0, data)
    await fs.fsync()
    node = fs.table.inodes[ino]
    assert node.file_key is not None
    whole = [r for r in node.chunks.values() if not r.packed]
    assert len(whole) == 2
    seen_keys = set()
    for idx, ref in sorted(node.chunks.items()):
        if ref.packed:
            continue
        sealed = await any_store.get(obj_name(ref.obj))
        aad = crypto.block_aad(vault.vault_id, node.file_id, ref.obj, idx, 0, ref.length)
        block0 = sealed[: 4096 + crypto.OVERHEAD]
        key = crypto.object_key(node.file_key, ref.obj)
        assert AESGCM(key).decrypt(block0[:12], block0[12:], aad) == data[idx * 16384 :][:4096]
        with pytest.raises(InvalidTag):
            AESGCM(node.file_key).decrypt(block0[:12], block0[12:], aad)
        seen_keys.add(key)
    assert len(seen_keys) == 2
    await fs.close()
    fs2 = await Filesystem.load(await Vault.unlock(any_store, "per-object keys"), writable=False)
    attr = await fs2.lookup(ROOT_INO, b"big")
    assert await fs2.read(attr.ino, 0, attr.size) == data


def test_an_older_vault_with_stronger_kdf_settings_opens_with_its_recovery_key() -> None:
    """Older megafs let ``init`` choose up to 4 GiB and 64 passes. Such a format 2
    header still parses; its passphrase slot is refused before any Argon2id
    work (one clear line naming the way out), and its recovery key opens it."""
    strong = KdfParams(memory_kib=8192, iterations=40, lanes=1)
    vault_id = bytes(range(70, 86))
    hdr = Header(vault_id=vault_id, layout=Layout(8192, 4096), version=2)
    master, recovery = bytes(range(32)), bytes(range(32, 64))
    phead = Slot(header.SLOT_PASSPHRASE, strong, SALT, b"").head()
    pslot = Slot(header.SLOT_PASSPHRASE, strong, SALT, crypto.seal(bytes(32), master,
                                                                   hdr.slot_aad(phead)))
    none = KdfParams(0, 0, 0)
    rhead = Slot(header.SLOT_RECOVERY, none, bytes(16), b"").head()
    rkek = crypto.hkdf(recovery, vault_id, crypto.LABELS["recovery_kek"])
    rslot = Slot(header.SLOT_RECOVERY, none, bytes(16), crypto.seal(rkek, master,
                                                                     hdr.slot_aad(rhead)))
    data = replace(hdr, slots=(pslot, rslot)).encode(Keys(master, vault_id, 2))
    assert header.parse(data)[0].slots[0].kdf == strong
    with pytest.raises(CorruptHeader, match="recovery key"):
        header.unlock(data, "any passphrase")
    _, keys = header.unlock_recovery(data, recovery)
    assert keys.master == master
