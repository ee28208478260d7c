"""Cryptographic primitives and key schedule. Pure: no I/O, no trio.

Everything the store sees is produced here. See ``docs/format.md`` for byte
layouts and ``docs/security.md`` for why each piece is as it is.

* AEAD: AES-256-GCM, 96-bit nonces from the OS CSPRNG (``os.urandom``),
  fresh for every seal; a rewrite never reuses a nonce.
* Subkeys: HKDF-SHA256 over the 256-bit master key, salt = vault id, one
  ``info`` label per job (:data:`LABELS`).
* Passphrase: Argon2id (RFC 9106) to a key-encryption key that AEAD-wraps
  the master key; nothing derived from the passphrase is stored besides that
  wrapped key.
* Content: files are cut into chunks, chunks into blocks that are sealed one
  by one so a read fetches only the blocks it needs. A chunk is an object of
  its own, or (format 2) one of many small chunks packed into a *pack*
  object. The associated data of a block binds vault id, file id, the object
  id, the chunk's offset in a pack, chunk index, block index and chunk length.
* Format 3 adds two things (docs/security.md, "Key commitment" and "How
  much each key seals"): key slots and wrapped file keys are sealed with a
  *key-committing* AEAD (:func:`seal_committed`), so no ciphertext opens
  under two keys; and no long-lived key encrypts directly any more: blocks
  are sealed under a key derived from the file key and the object id
  (:func:`object_key`), everything else under a one-time key derived from
  the vault key and a fresh random 192-bit nonce (the committing seal
  again), so no AES-GCM key ever approaches its 2^32 random-nonce limit.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE
ID_SIZE = 16

#: HKDF ``info`` labels, one per key and job. Never reuse a label for a new job.
LABELS = {
    "header_mac": b"megafs v1 header MAC (HMAC-SHA256)",
    "root": b"megafs v1 root pointer (AES-256-GCM)",
    "meta": b"megafs v1 metadata objects (AES-256-GCM)",
    "file_wrap": b"megafs v1 file content key wrapping (AES-256-GCM)",
    "cache": b"megafs v1 local cache (AES-256-GCM)",
    "recovery_kek": b"megafs v1 recovery key slot (AES-256-GCM)",
    # format 3
    "committing": b"megafs v3 committing AEAD: per-seal key and commitment (HKDF-SHA256)",
    "object_key": b"megafs v3 chunk object key (HKDF-SHA256 of the file key)",
}

#: The first format version with key commitment and derived per-seal keys.
COMMITTING_VERSION = 3
#: The committing seal's random nonce: 192 bits (the HKDF salt of its one-time
#: key; its last 96 bits are also the GCM nonce under that key).
XNONCE_SIZE = 24
#: Bytes a committing seal adds to its plaintext: nonce, commitment, tag.
COMMIT_SIZE = 32
COMMITTED_OVERHEAD = XNONCE_SIZE + COMMIT_SIZE + TAG_SIZE


class AuthFailed(Exception):
    """AEAD or MAC verification failed. Callers turn it into IntegrityError."""


class WrongKey(AuthFailed):
    """A committing seal's commitment does not match: the key is not the one it
    was sealed under (checked before any decryption)."""


def random_bytes(n: int) -> bytes:
    """Bytes from the OS CSPRNG. The only source of randomness in megafs."""
    return os.urandom(n)


def new_id() -> bytes:
    """A fresh random 128-bit identifier (vault, file and object ids)."""
    return os.urandom(ID_SIZE)


def hkdf(master: bytes, salt: bytes, label: bytes, length: int = KEY_SIZE) -> bytes:
    """Derive one subkey with HKDF-SHA256."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=label).derive(master)


#: Ceilings on Argon2id parameters megafs runs: for new slots, and for any
#: slot it unlocks.
MAX_KDF_MEMORY_KIB = 1 << 20  # 1 GiB
MAX_KDF_ITERATIONS = 16
MAX_KDF_LANES = 16
#: The wider range older megafs allowed at init: a format 1 or 2 header with
#: parameters in it parses (and opens with its recovery key), but its
#: passphrase slot is not unlocked above the ceilings.
LEGACY_KDF = (4 << 20, 64, 64)


@dataclass(frozen=True)
class KdfParams:
    """Argon2id parameters as stored in the vault header."""

    memory_kib: int = 65536
    iterations: int = 3
    lanes: int = 4

    def check(self, *, legacy: bool = False) -> None:
        """Raise ValueError if the parameters are out of the accepted range.

        The ceilings bound what a header from the store can make an unlock
        cost (at most :data:`MAX_KDF_MEMORY_KIB` of memory and
        :data:`MAX_KDF_ITERATIONS` passes: about 15 s on one core here), and
        what ``--kdf-*`` accepts, so a vault can always be unlocked again.
        ``legacy`` checks the wider range of :data:`LEGACY_KDF` instead.
        """
        mem, iters, lanes = (
            LEGACY_KDF if legacy else (MAX_KDF_MEMORY_KIB, MAX_KDF_ITERATIONS, MAX_KDF_LANES)
        )
        if not (8 * self.lanes <= self.memory_kib <= mem):
            raise ValueError(
                f"Argon2id memory {self.memory_kib} KiB out of range ({8 * self.lanes}..{mem})"
            )
        if not (1 <= self.iterations <= iters):
            raise ValueError(f"Argon2id iterations {self.iterations} out of range (1..{iters})")
        if not (1 <= self.lanes <= lanes):
            raise ValueError(f"Argon2id lanes {self.lanes} out of range (1..{lanes})")


def argon2id(passphrase: bytes, salt: bytes, params: KdfParams) -> bytes:
    """Stretch a passphrase into a 256-bit key-encryption key. CPU-heavy (blocks)."""
    params.check()
    return Argon2id(
        salt=salt,
        length=KEY_SIZE,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_kib,
    ).derive(passphrase)


@functools.lru_cache(maxsize=1024)
def _aes(key: bytes) -> AESGCM:
    """The AES-GCM context of ``key``, kept for reuse (setting one up costs
    more than sealing a small record). Safe to share between threads."""
    return AESGCM(key)


def seal(key: bytes, plaintext: bytes, aad: bytes, nonce: bytes | None = None) -> bytes:
    """AES-256-GCM: return ``nonce || ciphertext || tag``.

    ``nonce`` is for known-answer tests only; production always passes None
    and gets a fresh random nonce.
    """
    if nonce is None:
        nonce = os.urandom(NONCE_SIZE)
    return nonce + _aes(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Inverse of :func:`seal`; raises :class:`AuthFailed` on any mismatch."""
    if len(sealed) < OVERHEAD:
        raise AuthFailed("too short")
    try:
        return _aes(key).decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], aad)
    except InvalidTag:
        raise AuthFailed("tag mismatch") from None


def _committing_keys(key: bytes, xnonce: bytes) -> tuple[bytes, bytes]:
    """(AES key, commitment) of one committing seal: 64 bytes of HKDF-SHA256
    with ``key`` as input key material and the seal's 192-bit nonce as salt."""
    out = hkdf(key, xnonce, LABELS["committing"], KEY_SIZE + COMMIT_SIZE)
    return out[:KEY_SIZE], out[KEY_SIZE:]


def seal_committed(
    key: bytes, plaintext: bytes, aad: bytes, nonce: bytes | None = None
) -> bytes:
    """Key-committing AEAD (format 3): ``nonce (24) || commitment (32) ||
    ciphertext || tag (16)``.

    A fresh 192-bit random nonce *N* is the HKDF salt that derives, from
    ``key``, a one-time AES-256-GCM key and a 256-bit commitment to ``key``
    (the "UtC" construction of Bellare and Hoang, 2022, with HKDF-SHA256 as
    the committing PRF, and a 192-bit nonce as XAES-256-GCM has); the GCM
    nonce under the one-time key is the last 96 bits of *N*. So

    * no ciphertext opens under two keys: that would need two keys with the
      same HKDF output (an HMAC-SHA256 collision);
    * ``key`` itself never encrypts anything, and two seals share a one-time
      key only if their 192-bit nonces collide (about 2^-129 after 2^32
      seals; and even then each GCM nonce repeats only with the whole *N*):
      the number of seals under one ``key`` has no practical bound, unlike
      the 2^32 of AES-GCM with random 96-bit nonces.

    ``nonce`` (24 bytes) is for known-answer tests only.
    """
    if nonce is None:
        nonce = os.urandom(XNONCE_SIZE)
    enc, commit = _committing_keys(key, nonce)
    return nonce + commit + AESGCM(enc).encrypt(nonce[-NONCE_SIZE:], plaintext, aad)


def open_committed(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Inverse of :func:`seal_committed`. Checks the commitment first: a wrong
    key raises :class:`WrongKey` before any decryption; a right key with
    tampered bytes raises :class:`AuthFailed`."""
    if len(sealed) < COMMITTED_OVERHEAD:
        raise AuthFailed("too short")
    nonce = sealed[:XNONCE_SIZE]
    enc, commit = _committing_keys(key, nonce)
    if not hmac.compare_digest(commit, sealed[XNONCE_SIZE : XNONCE_SIZE + COMMIT_SIZE]):
        raise WrongKey("commitment mismatch")
    try:
        return AESGCM(enc).decrypt(
            nonce[-NONCE_SIZE:], sealed[XNONCE_SIZE + COMMIT_SIZE :], aad
        )
    except InvalidTag:
        raise AuthFailed("tag mismatch") from None


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def hmac_verify(key: bytes, data: bytes, tag: bytes) -> bool:
    return hmac.compare_digest(hmac_sha256(key, data), tag)


class Keys:
    """The subkeys of one unlocked vault. Holds key material: never log it."""

    __slots__ = (
        "cache",
        "committing",
        "file_wrap",
        "header_mac",
        "master",
        "meta",
        "root",
        "vault_id",
        "version",
    )

    def __init__(self, master: bytes, vault_id: bytes, version: int = 1) -> None:
        """Derive the subkeys. ``version`` is the vault's format version: from
        :data:`COMMITTING_VERSION` on, every seal of :func:`seal_for` is key
        committing with a derived key, and blocks use :func:`object_key`."""
        if len(master) != KEY_SIZE or len(vault_id) != ID_SIZE:
            raise ValueError("bad key or vault id size")
        self.master = master
        self.vault_id = vault_id
        self.version = version
        self.committing = version >= COMMITTING_VERSION
        self.header_mac = hkdf(master, vault_id, LABELS["header_mac"])
        self.root = hkdf(master, vault_id, LABELS["root"])
        self.meta = hkdf(master, vault_id, LABELS["meta"])
        self.file_wrap = hkdf(master, vault_id, LABELS["file_wrap"])
        self.cache = hkdf(master, vault_id, LABELS["cache"])


def seal_for(keys: Keys, key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Seal a record (root, metadata object, inline data, wrapped key) the way
    the vault's format does: committing (format 3) or plain AES-GCM."""
    if keys.committing:
        return seal_committed(key, plaintext, aad)
    return seal(key, plaintext, aad)


def open_for(keys: Keys, key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Inverse of :func:`seal_for`; raises :class:`AuthFailed`."""
    if keys.committing:
        return open_committed(key, sealed, aad)
    return open_sealed(key, sealed, aad)


def sealed_overhead(keys: Keys) -> int:
    """Bytes :func:`seal_for` adds to a plaintext."""
    return COMMITTED_OVERHEAD if keys.committing else OVERHEAD


# --- associated data -------------------------------------------------------
# Every AAD starts with a distinct domain string, so that no sealed object of
# one kind can ever be accepted as another kind.

AAD_ROOT = b"megafs/v1/root\x00"
AAD_META = b"megafs/v1/meta\x00"
AAD_FILEKEY = b"megafs/v1/filekey\x00"
AAD_BLOCK = b"megafs/v1/block\x00"
AAD_PACKED_BLOCK = b"megafs/v2/packed-block\x00"
AAD_INLINE = b"megafs/v1/inline\x00"
AAD_CACHE = b"megafs/v1/cache\x00"


def root_aad(vault_id: bytes) -> bytes:
    return AAD_ROOT + vault_id


def meta_aad(vault_id: bytes, kind: int, obj_id: bytes) -> bytes:
    """AAD of a metadata object: vault, object kind byte and its own id."""
    return AAD_META + vault_id + bytes([kind]) + obj_id


def filekey_aad(vault_id: bytes, file_id: bytes) -> bytes:
    return AAD_FILEKEY + vault_id + file_id


_BLOCK_AD = struct.Struct(">16s16sQII")
_PACKED_BLOCK_AD = struct.Struct(">16s16sQQII")


def block_aad(
    vault_id: bytes,
    file_id: bytes,
    obj_id: bytes,
    chunk_index: int,
    block_index: int,
    chunk_len: int,
    pack_off: int | None = None,
) -> bytes:
    """AAD of one content block.

    ``chunk_len`` is the plaintext length of the whole chunk, known to the
    reader from authenticated metadata: a truncated or extended chunk object
    fails, and so does the last block of an older, shorter version.
    ``pack_off`` is the byte offset of a packed chunk inside its pack object
    (``obj_id``); an unpacked chunk (``None``) keeps the format 1 AAD.
    """
    if pack_off is None:
        return AAD_BLOCK + vault_id + _BLOCK_AD.pack(
            file_id, obj_id, chunk_index, block_index, chunk_len
        )
    return AAD_PACKED_BLOCK + vault_id + _PACKED_BLOCK_AD.pack(
        file_id, obj_id, pack_off, chunk_index, block_index, chunk_len
    )


def inline_aad(vault_id: bytes, file_id: bytes, length: int) -> bytes:
    return AAD_INLINE + vault_id + file_id + struct.pack(">Q", length)


def wrap_file_key(keys: Keys, file_id: bytes, file_key: bytes, nonce: bytes | None = None) -> bytes:
    """Wrap a per-file content key under the vault's file-wrap key: 60 bytes
    of AES-GCM, or (format 3) 92 bytes of the committing seal."""
    aad = filekey_aad(keys.vault_id, file_id)
    if keys.committing:
        return seal_committed(keys.file_wrap, file_key, aad, nonce)
    return seal(keys.file_wrap, file_key, aad, nonce)


def unwrap_file_key(keys: Keys, file_id: bytes, wrapped: bytes) -> bytes:
    return open_for(keys, keys.file_wrap, wrapped, filekey_aad(keys.vault_id, file_id))


@functools.lru_cache(maxsize=4096)
def _object_aes(file_key: bytes, obj_id: bytes) -> AESGCM:
    return AESGCM(object_key(file_key, obj_id))


def object_key(file_key: bytes, obj_id: bytes) -> bytes:
    """The key that seals the blocks of one chunk (or pack) object in format 3:
    HKDF-SHA256 of the file key, salted with the object's random id.

    Object ids are fresh for every upload, so one such key seals the blocks
    of one object (a failed commit may seal them again, once per attempt):
    at most chunk size / block size blocks per attempt, far from 2^32.
    """
    return hkdf(file_key, obj_id, LABELS["object_key"])


def _block_aes(keys: Keys, file_key: bytes, obj_id: bytes) -> AESGCM:
    if keys.committing:
        return _object_aes(file_key, obj_id)
    return _aes(file_key)


# --- content layout -------------------------------------------------------


#: The smallest block and the largest chunk a vault may have (Layout.check).
MIN_BLOCK_SIZE = 4096
MAX_CHUNK_SIZE = 64 * 1024 * 1024


@dataclass(frozen=True)
class Layout:
    """Chunk and block geometry of a vault (fixed at init, in the header)."""

    chunk_size: int = 1 << 20
    block_size: int = 1 << 16

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.chunk_size % self.block_size:
            raise ValueError("chunk size must be a multiple of block size")

    def check(self) -> None:
        """Raise ValueError unless a vault may have this geometry: blocks of at
        least MIN_BLOCK_SIZE, chunks of at most MAX_CHUNK_SIZE. The one
        statement of the bounds, for the header parser and ``megafs init``."""
        if not MIN_BLOCK_SIZE <= self.block_size <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(
                f"chunk size {self.chunk_size} and block size {self.block_size} must lie "
                f"between {MIN_BLOCK_SIZE} and {MAX_CHUNK_SIZE} bytes"
            )

    @property
    def sealed_block(self) -> int:
        return self.block_size + OVERHEAD

    def sealed_len(self, plain_len: int) -> int:
        """Size of the chunk object holding ``plain_len`` plaintext bytes."""
        nblocks = -(-plain_len // self.block_size)
        return plain_len + nblocks * OVERHEAD

    def block_span(self, offset: int, length: int, chunk_len: int) -> tuple[int, int]:
        """Blocks [first, last) of a chunk that cover plaintext [offset, offset+length)."""
        end = min(offset + length, chunk_len)
        if end <= offset:
            return (0, 0)
        return offset // self.block_size, -(-end // self.block_size)


def seal_chunk(
    keys: Keys,
    layout: Layout,
    file_key: bytes,
    file_id: bytes,
    obj_id: bytes,
    chunk_index: int,
    data: bytes | bytearray,
    pack_off: int | None = None,
) -> bytes:
    """Seal a chunk's plaintext into the bytes of its store object (or, with
    ``pack_off``, of its place in a pack object). CPU-heavy."""
    return seal_blocks(
        keys, layout, file_key, file_id, obj_id, chunk_index, len(data), 0, data, pack_off
    )


def seal_blocks(
    keys: Keys,
    layout: Layout,
    file_key: bytes,
    file_id: bytes,
    obj_id: bytes,
    chunk_index: int,
    chunk_len: int,
    first_block: int,
    data: bytes | bytearray | memoryview,
    pack_off: int | None = None,
) -> bytes:
    """Seal consecutive blocks of a chunk of ``chunk_len`` bytes, starting at
    block ``first_block``: the bytes that lie at ``first_block`` times
    :attr:`Layout.sealed_block` in its object. ``data`` must be whole blocks
    (the last may be short only at the chunk's end). The chunk's length is
    bound into every block, so blocks sealed ahead of the rest (a chunk
    staged block by block while a file is written) open only in a chunk of
    that length. CPU-heavy."""
    aes = _block_aes(keys, file_key, obj_id)
    bs = layout.block_size
    parts: list[bytes] = []
    view = memoryview(data)
    for bi, off in enumerate(range(0, len(view), bs), first_block):
        nonce = os.urandom(NONCE_SIZE)
        aad = block_aad(keys.vault_id, file_id, obj_id, chunk_index, bi, chunk_len, pack_off)
        parts.append(nonce)
        parts.append(aes.encrypt(nonce, view[off : off + bs], aad))
    return b"".join(parts)


def open_blocks(
    keys: Keys,
    layout: Layout,
    file_key: bytes,
    file_id: bytes,
    obj_id: bytes,
    chunk_index: int,
    chunk_len: int,
    first_block: int,
    sealed: bytes,
    pack_off: int | None = None,
) -> list[bytes]:
    """Verify and decrypt consecutive sealed blocks starting at ``first_block``;
    return each block's plaintext.

    ``sealed`` must be exactly the bytes of those blocks as stored; the
    expected size of each is derived from ``chunk_len``, so truncation and
    extension are detected. ``pack_off`` as for :func:`seal_chunk`. Raises
    :class:`AuthFailed`. CPU-heavy.
    """
    aes = _block_aes(keys, file_key, obj_id)
    bs = layout.block_size
    out: list[bytes] = []
    view = memoryview(sealed)
    pos = 0
    bi = first_block
    while pos < len(sealed):
        plain_len = min(bs, chunk_len - bi * bs)
        if plain_len <= 0:
            raise AuthFailed("data beyond the chunk's length")
        end = pos + plain_len + OVERHEAD
        if end > len(sealed):
            raise AuthFailed("block truncated")
        aad = block_aad(keys.vault_id, file_id, obj_id, chunk_index, bi, chunk_len, pack_off)
        try:
            out.append(aes.decrypt(view[pos : pos + NONCE_SIZE], view[pos + NONCE_SIZE : end], aad))
        except InvalidTag:
            raise AuthFailed(f"block {bi} tag mismatch") from None
        pos = end
        bi += 1
    return out
