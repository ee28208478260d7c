"""The vault header: format version, geometry, key slots. Pure, no I/O.

Layout (all integers big-endian; see docs/format.md)::

    magic        8   b"MEGAFS\\x00\\x1a"
    version      2   format version (3; 2 and 1 for older vaults)
    vault_id    16
    chunk_size   4
    block_size   4
    nslots       1   1 or 2: at most one passphrase and one recovery slot
    nslots x slot (89 bytes; 133 from format 3):
        kind 1 | kdf_memory_kib 4 | kdf_iterations 4 | kdf_lanes 4 | salt 16
        | nonce 12 (24 in format 3) | [commitment 32, format 3]
        | wrapped master key 32 | tag 16
    mac         32   HMAC-SHA256(header_mac key, every byte before it)

Each slot's AAD is the fixed part (magic .. block_size, 34 bytes) plus the
slot's own kind, KDF parameters and salt, so no parameter can be changed
without the slot failing to open. The trailing MAC, under a key derived from
the master key, authenticates the whole header once any slot has opened.
A recovery slot has zero KDF parameters and salt: its KEK is HKDF of the
256-bit recovery key, which needs no stretching.

Wrong-key failures are indistinguishable (docs/security.md, "Key
commitment"): from format 3 a slot is a key-committing seal, so it opens
under one KEK only, and a wrong passphrase is always found by the
commitment, before anything else is checked. In formats 1 and 2 a slot is
plain AES-GCM, which a forger can make open under several passphrases; there
a slot that opens but leaves the header MAC failing is reported exactly like
a wrong passphrase, so the outcome does not tell which passphrase opened it.
"""

from __future__ import annotations

import base64
import struct
import unicodedata
from dataclasses import dataclass, replace

from ..errors import CorruptHeader, NotAVault, UnsupportedVersion, WrongPassphrase
from . import crypto
from .crypto import KdfParams, Keys, Layout

MAGIC = b"MEGAFS\x00\x1a"
VERSION = 3
#: The oldest format this megafs reads (and writes, in that format).
MIN_VERSION = 1
SLOT_PASSPHRASE = 1
SLOT_RECOVERY = 2

_FIXED = struct.Struct(">8sH16sII")
_SLOT_HEAD = struct.Struct(">BIII16s")
_SEALED_LEN = crypto.NONCE_SIZE + crypto.KEY_SIZE + crypto.TAG_SIZE
SLOT_LEN = _SLOT_HEAD.size + _SEALED_LEN  # 89, formats 1 and 2
SLOT_LEN_V3 = _SLOT_HEAD.size + crypto.COMMITTED_OVERHEAD + crypto.KEY_SIZE  # 133
#: At most this many slots: one passphrase slot and one recovery slot.
MAX_SLOTS = 2
_MAC_LEN = 32
FIXED_LEN = _FIXED.size  # 34
#: The largest header any format has (two format 3 slots): 333 bytes.
MAX_HEADER_LEN = FIXED_LEN + 1 + MAX_SLOTS * SLOT_LEN_V3 + _MAC_LEN
_NO_KDF = KdfParams(0, 0, 0)
_WRONG = "wrong passphrase"
_WRONG_RECOVERY = "wrong recovery key"


def slot_len(version: int) -> int:
    """Bytes of one key slot in a header of format ``version``."""
    return SLOT_LEN_V3 if version >= crypto.COMMITTING_VERSION else SLOT_LEN


@dataclass(frozen=True)
class Slot:
    """One key slot: how to derive its KEK, and the master key sealed under it."""

    kind: int
    kdf: KdfParams
    salt: bytes
    sealed: bytes  # nonce || wrapped master key || tag (60 bytes)

    def head(self) -> bytes:
        k = self.kdf
        return _SLOT_HEAD.pack(self.kind, k.memory_kib, k.iterations, k.lanes, self.salt)


@dataclass(frozen=True)
class Header:
    vault_id: bytes
    layout: Layout
    slots: tuple[Slot, ...] = ()
    version: int = VERSION

    @property
    def packs_small_chunks(self) -> bool:
        """Format 2 packs small chunks into shared objects; format 1 does not."""
        return self.version >= 2

    def fixed_bytes(self) -> bytes:
        return _FIXED.pack(
            MAGIC, self.version, self.vault_id, self.layout.chunk_size, self.layout.block_size
        )

    def slot_aad(self, slot_head: bytes) -> bytes:
        return b"megafs/v1/slot\x00" + self.fixed_bytes() + slot_head

    def body_bytes(self) -> bytes:
        out = bytearray(self.fixed_bytes())
        out.append(len(self.slots))
        for s in self.slots:
            out += s.head()
            out += s.sealed
        return bytes(out)

    def encode(self, keys: Keys) -> bytes:
        """Serialize and MAC the header under ``keys.header_mac``."""
        body = self.body_bytes()
        return body + crypto.hmac_sha256(keys.header_mac, body)


def normalize_passphrase(passphrase: str) -> bytes:
    """NFC-normalize and UTF-8 encode, so the same text typed anywhere unlocks."""
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def parse(data: bytes) -> tuple[Header, bytes, bytes]:
    """Parse header bytes into (header, authenticated body, mac). Does not verify.

    Raises NotAVault, UnsupportedVersion or CorruptHeader; never anything else.
    """
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise NotAVault("not a megafs vault (no megafs header)")
    if len(data) < FIXED_LEN + 1 + _MAC_LEN:
        raise CorruptHeader("vault header is truncated")
    _, version, vault_id, chunk, block = _FIXED.unpack_from(data)
    if version > VERSION:
        raise UnsupportedVersion(
            f"vault format version {version} is newer than this megafs supports ({VERSION})"
        )
    if version < MIN_VERSION:
        raise CorruptHeader(f"vault header has invalid version {version}")
    nslots = data[FIXED_LEN]
    slen = slot_len(version)
    end = FIXED_LEN + 1 + nslots * slen
    if len(data) != end + _MAC_LEN or not 1 <= nslots <= MAX_SLOTS:
        raise CorruptHeader("vault header has a wrong length")
    try:
        layout = Layout(chunk_size=chunk, block_size=block)
        layout.check()
    except ValueError:
        raise CorruptHeader("vault header has invalid chunk geometry") from None
    slots: list[Slot] = []
    pos = FIXED_LEN + 1
    for _ in range(nslots):
        kind, mem, iters, lanes, salt = _SLOT_HEAD.unpack_from(data, pos)
        sealed = data[pos + _SLOT_HEAD.size : pos + slen]
        kdf = KdfParams(memory_kib=mem, iterations=iters, lanes=lanes)
        if kind not in (SLOT_PASSPHRASE, SLOT_RECOVERY) or any(s.kind == kind for s in slots):
            raise CorruptHeader(f"vault header has an unknown or repeated key slot kind {kind}")
        if kind == SLOT_PASSPHRASE:
            try:
                kdf.check(legacy=version < crypto.COMMITTING_VERSION)
            except ValueError as e:
                raise CorruptHeader(f"vault header KDF parameters invalid: {e}") from None
        slots.append(Slot(kind=kind, kdf=kdf, salt=salt, sealed=sealed))
        pos += slen
    hdr = Header(vault_id=vault_id, layout=layout, slots=tuple(slots), version=version)
    return hdr, data[:end], data[end:]


def _recovery_kek(vault_id: bytes, recovery_key: bytes) -> bytes:
    return crypto.hkdf(recovery_key, vault_id, crypto.LABELS["recovery_kek"])


def _seal_slot(hdr: Header, kek: bytes, master: bytes, head: bytes) -> bytes:
    if hdr.version >= crypto.COMMITTING_VERSION:
        return crypto.seal_committed(kek, master, hdr.slot_aad(head))
    return crypto.seal(kek, master, hdr.slot_aad(head))


def _open_slot(
    hdr: Header, body: bytes, mac: bytes, slot: Slot, kek: bytes, wrong: str
) -> Keys:
    """The vault keys if ``kek`` opens ``slot`` and the header MAC then holds.

    Format 3: a failed commitment is a wrong key (WrongPassphrase); past it
    the key is the right one, so a failing tag or MAC is tampering
    (CorruptHeader). Formats 1 and 2: every failure is reported as the same
    WrongPassphrase line, since a forged slot may open under several keys.
    """
    aad = hdr.slot_aad(slot.head())
    if hdr.version >= crypto.COMMITTING_VERSION:
        try:
            master = crypto.open_committed(kek, slot.sealed, aad)
        except crypto.WrongKey:
            raise WrongPassphrase(wrong) from None
        except crypto.AuthFailed:
            raise CorruptHeader("vault header key slot failed authentication") from None
        keys = Keys(master, hdr.vault_id, hdr.version)
        if not crypto.hmac_verify(keys.header_mac, body, mac):
            raise CorruptHeader("vault header failed authentication (tampered or corrupt)")
        return keys
    try:
        master = crypto.open_sealed(kek, slot.sealed, aad)
    except crypto.AuthFailed:
        raise WrongPassphrase(wrong) from None
    keys = Keys(master, hdr.vault_id, hdr.version)
    if not crypto.hmac_verify(keys.header_mac, body, mac):
        raise WrongPassphrase(wrong)
    return keys


def _slot(hdr: Header, kind: int, wrong: str) -> Slot:
    for s in hdr.slots:
        if s.kind == kind:
            return s
    raise WrongPassphrase(wrong)


def unlock(data: bytes, passphrase: str) -> tuple[Header, Keys]:
    """Open the passphrase slot. Raises WrongPassphrase, CorruptHeader, ... CPU-heavy
    (one Argon2id run: a header has at most one passphrase slot)."""
    hdr, body, mac = parse(data)
    slot = _slot(hdr, SLOT_PASSPHRASE, _WRONG)
    try:
        slot.kdf.check()
    except ValueError as e:  # an older vault made with more than megafs now runs
        raise CorruptHeader(
            f"the passphrase slot asks for more Argon2id work than megafs runs ({e}); "
            "unlock with the recovery key (megafs recover) and set a new passphrase"
        ) from None
    kek = crypto.argon2id(normalize_passphrase(passphrase), slot.salt, slot.kdf)
    return hdr, _open_slot(hdr, body, mac, slot, kek, _WRONG)


def unlock_recovery(data: bytes, recovery_key: bytes) -> tuple[Header, Keys]:
    """Open the recovery slot with the 32-byte recovery key."""
    hdr, body, mac = parse(data)
    slot = _slot(hdr, SLOT_RECOVERY, _WRONG_RECOVERY)
    kek = _recovery_kek(hdr.vault_id, recovery_key)
    return hdr, _open_slot(hdr, body, mac, slot, kek, _WRONG_RECOVERY)


def _passphrase_slot(hdr: Header, master: bytes, passphrase: str, kdf: KdfParams) -> Slot:
    salt = crypto.random_bytes(16)
    head = Slot(SLOT_PASSPHRASE, kdf, salt, b"").head()
    kek = crypto.argon2id(normalize_passphrase(passphrase), salt, kdf)
    return Slot(SLOT_PASSPHRASE, kdf, salt, _seal_slot(hdr, kek, master, head))


def create(
    passphrase: str,
    kdf: KdfParams | None = None,
    layout: Layout | None = None,
) -> tuple[Header, Keys, bytes]:
    """Make a new vault header. Returns (header, keys, recovery key). CPU-heavy."""
    hdr = Header(vault_id=crypto.new_id(), layout=layout or Layout())
    master = crypto.random_bytes(crypto.KEY_SIZE)
    recovery = crypto.random_bytes(crypto.KEY_SIZE)
    keys = Keys(master, hdr.vault_id, hdr.version)
    pslot = _passphrase_slot(hdr, master, passphrase, kdf or KdfParams())
    rhead = Slot(SLOT_RECOVERY, _NO_KDF, bytes(16), b"").head()
    rslot = Slot(
        SLOT_RECOVERY,
        _NO_KDF,
        bytes(16),
        _seal_slot(hdr, _recovery_kek(hdr.vault_id, recovery), master, rhead),
    )
    return replace(hdr, slots=(pslot, rslot)), keys, recovery


def with_new_passphrase(
    hdr: Header, keys: Keys, passphrase: str, kdf: KdfParams | None = None
) -> Header:
    """Return ``hdr`` with its passphrase slot replaced by one for ``passphrase``.

    The new slot gets a fresh salt (and ``kdf``, default: the old slot's
    parameters); the recovery slot is kept as it is. Encode the result with
    the same ``keys`` to get a valid MAC. CPU-heavy.
    """
    old = [s for s in hdr.slots if s.kind == SLOT_PASSPHRASE]
    params = kdf or (old[0].kdf if old else KdfParams())
    new_slot = _passphrase_slot(hdr, keys.master, passphrase, params)
    others = tuple(s for s in hdr.slots if s.kind != SLOT_PASSPHRASE)
    return replace(hdr, slots=(new_slot, *others))


# --- recovery key text form -------------------------------------------------


def format_recovery_key(key: bytes) -> str:
    """32 bytes -> 'ABCD-EFGH-...': base32 of key + 3 checksum bytes, 14 groups of 4."""
    check = crypto.hmac_sha256(b"megafs recovery checksum", key)[:3]
    text = base64.b32encode(key + check).decode().rstrip("=")
    return "-".join(text[i : i + 4] for i in range(0, len(text), 4))


def parse_recovery_key(text: str) -> bytes:
    """Inverse of :func:`format_recovery_key`; ValueError if mistyped."""
    clean = "".join(ch for ch in text.upper() if ch.isalnum())
    clean = clean.replace("0", "O").replace("1", "I").replace("8", "B")
    pad = "=" * (-len(clean) % 8)
    try:
        raw = base64.b32decode(clean + pad)
    except ValueError:
        raise ValueError("recovery key is not valid (bad characters)") from None
    if len(raw) != crypto.KEY_SIZE + 3:
        raise ValueError("recovery key has the wrong length")
    key, check = raw[: crypto.KEY_SIZE], raw[crypto.KEY_SIZE :]
    if crypto.hmac_sha256(b"megafs recovery checksum", key)[:3] != check:
        raise ValueError("recovery key checksum does not match (typo?)")
    return key
