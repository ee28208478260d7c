"""Frozen vectors of the share format, version 1 (docs/sharing.md):
``tests/vectors/share-v1.json``, written once by
``tests/vectors/generate_share_v1.py``. Every later megafs must open them,
and a reader written from the document alone (no megafs code) opens them
too, so the document, the code and the vectors are checked against each
other."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from megafs.format import crypto
from megafs.format import share as fmt

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "share-v1.json"


def _fixed(n: int, start: int) -> bytes:
    return bytes((start + i) % 256 for i in range(n))


def make_vectors() -> dict[str, Any]:
    """The vectors, from fixed keys, ids and nonces."""
    link_key, share_id = _fixed(32, 0x10), _fixed(16, 0x40)
    vault_id, file_id, obj_id = _fixed(16, 0x50), _fixed(16, 0x60), _fixed(16, 0x70)
    file_key = _fixed(32, 0x80)
    block, chunk_len = 4096, 5000
    plain = bytes(i * 7 % 251 for i in range(chunk_len))
    okey = crypto.object_key(file_key, obj_id)
    sealed_blocks = []
    for b, off in enumerate(range(0, chunk_len, block)):
        nonce = _fixed(12, 0xA0 + b)
        aad = crypto.block_aad(vault_id, file_id, obj_id, 0, b, chunk_len)
        sealed_blocks.append(nonce + AESGCM(okey).encrypt(nonce, plain[off : off + block], aad))
    sealed_chunk = b"".join(sealed_blocks)
    m = fmt.Manifest(
        vault_id,
        "report.txt",
        "file",
        1_765_000_000.0,
        1_766_000_000.0,
        block,
        65536,
        ["../objects/70/" + obj_id.hex()],
        [obj_id],
        [
            fmt.Entry(
                "",
                "file",
                0o640,
                1_764_000_000.5,
                chunk_len,
                file_id,
                None,
                [fmt.Chunk(0, 0, 0, chunk_len, False, okey)],
            )
        ],
    )
    key = fmt.manifest_key(link_key, share_id)
    sealed = crypto.seal_committed(key, m.to_json(), fmt.AAD_MANIFEST + share_id, _fixed(24, 0xC0))
    pw = fmt.PasswordParams(_fixed(16, 0xE0))
    pw_key = fmt.manifest_key(link_key, share_id, "correct horse", pw)
    pw_sealed = crypto.seal_committed(
        pw_key, m.to_json(), fmt.AAD_MANIFEST + share_id, _fixed(24, 0xD0)
    )
    env = fmt.Envelope(share_id, sealed, b"\x00" * 72)
    return {
        "link_key": link_key.hex(),
        "share_id": share_id.hex(),
        "link": fmt.make_link("https://example.org/bucket/s/" + share_id.hex() + ".html", link_key),
        "manifest_json": m.to_json().decode(),
        "manifest_key": key.hex(),
        "sealed_manifest": sealed.hex(),
        "password": "correct horse",
        "password_salt": pw.salt.hex(),
        "password_iterations": pw.iterations,
        "password_manifest_key": pw_key.hex(),
        "password_sealed_manifest": pw_sealed.hex(),
        "envelope_json": env.to_json(),
        "chunk_plain": plain.hex(),
        "sealed_chunk": sealed_chunk.hex(),
    }


def write_frozen_share_v1() -> int:
    if VECTORS.exists():
        print(f"{VECTORS} exists: frozen vectors are never rewritten")
        return 1
    VECTORS.write_text(json.dumps(make_vectors(), indent=1) + "\n")
    return 0


@pytest.fixture(scope="module")
def frozen() -> dict[str, Any]:
    return dict(json.loads(VECTORS.read_text()))


def test_the_writer_reproduces_the_frozen_vectors(frozen: dict[str, Any]) -> None:
    assert make_vectors() == frozen


def test_the_frozen_share_opens(frozen: dict[str, Any]) -> None:
    _url, key = fmt.parse_link(frozen["link"])
    assert key.hex() == frozen["link_key"]
    page = b"<html>" + fmt.ENVELOPE_OPEN.encode() + frozen["envelope_json"].encode()
    env = fmt.Envelope.from_page(page + fmt.ENVELOPE_CLOSE.encode() + b"</html>")
    assert env.share_id.hex() == frozen["share_id"] and env.password is None
    m = fmt.open_manifest(fmt.manifest_key(key, env.share_id), env)
    assert m.to_json().decode() == frozen["manifest_json"]
    e, c = m.entries[0], m.entries[0].chunks[0]
    got = fmt.open_chunk(m, e, c, bytes.fromhex(frozen["sealed_chunk"]))
    assert got.hex() == frozen["chunk_plain"]
    pw = fmt.PasswordParams(bytes.fromhex(frozen["password_salt"]), frozen["password_iterations"])
    pw_env = fmt.Envelope(env.share_id, bytes.fromhex(frozen["password_sealed_manifest"]), b"", pw)
    pw_key = fmt.manifest_key(key, env.share_id, frozen["password"], pw)
    assert fmt.open_manifest(pw_key, pw_env).name == "report.txt"


# --- a reader written from docs/sharing.md and docs/format.md alone ------------------


def _hkdf(ikm: bytes, salt: bytes, info: bytes, n: int = 32) -> bytes:
    return HKDF(hashes.SHA256(), n, salt, info).derive(ikm)


def _doc_open_committed(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    nonce, commit, rest = sealed[:24], sealed[24:56], sealed[56:]
    label = b"megafs v3 committing AEAD: per-seal key and commitment (HKDF-SHA256)"
    out = _hkdf(key, nonce, label, 64)
    assert hmac.compare_digest(out[32:], commit), "wrong key"
    return AESGCM(out[:32]).decrypt(nonce[12:], rest, aad)


def test_a_reader_from_the_documents_opens_the_frozen_share(frozen: dict[str, Any]) -> None:
    key = bytes.fromhex(frozen["link_key"])
    sid = bytes.fromhex(frozen["share_id"])
    mkey = _hkdf(key, sid, b"megafs v1 share manifest key (HKDF-SHA256)")
    assert mkey.hex() == frozen["manifest_key"]
    sealed_m = bytes.fromhex(frozen["sealed_manifest"])
    manifest = json.loads(_doc_open_committed(mkey, sealed_m, b"megafs/v1/share\0" + sid))
    pw_ikm = key + hashlib.pbkdf2_hmac(
        "sha256",
        frozen["password"].encode(),
        bytes.fromhex(frozen["password_salt"]),
        frozen["password_iterations"],
        32,
    )
    assert (
        _hkdf(pw_ikm, sid, b"megafs v1 share manifest key (HKDF-SHA256)").hex()
        == (frozen["password_manifest_key"])
    )

    def b64(t: str) -> bytes:
        return base64.urlsafe_b64decode(t + "=" * (-len(t) % 4))

    vid = b64(manifest["vault"])
    entry = manifest["entries"][0]
    index, obj, off, length, packed, ckey = entry["chunks"][0]
    oid = b64(manifest["objects"][obj][1])
    sealed = bytes.fromhex(frozen["sealed_chunk"])[off:]
    block, plain = manifest["block"], b""
    for b in range(-(-length // block)):
        n = min(block, length - b * block)
        part = sealed[b * (block + 28) : b * (block + 28) + n + 28]
        aad = (
            b"megafs/v1/block\0"
            + vid
            + struct.pack(">16s16sQII", b64(entry["fid"]), oid, index, b, length)
        )
        plain += AESGCM(b64(ckey)).decrypt(part[:12], part[12:], aad)
    assert not packed and plain.hex() == frozen["chunk_plain"]
    assert entry["size"] == len(plain) and manifest["name"] == "report.txt"
    assert os.path.basename(manifest["objects"][0][0]) == oid.hex()
