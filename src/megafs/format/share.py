"""Share links: the envelope in the share page, the sealed manifest, the
link text and the key schedule (docs/sharing.md). Pure: no I/O.

A share is one object, its *page*: a self-contained HTML file that holds
the *envelope* (JSON in a ``<script type="application/json"
id="megafs-share">`` element): the share id, the password parameters if
any, the *manifest* sealed under the manifest key, and the *owner record*
sealed under the vault's metadata key. The link is the page's URL with the
link key in the fragment, which browsers never send to a server::

    https://host/bucket/s/<id>.html?X-Amz-...#<link key, base64url, 43 chars>

The manifest key is HKDF-SHA256(ikm = link key [|| PBKDF2-HMAC-SHA256(password,
salt, iterations)], salt = share id, info = :data:`MANIFEST_LABEL`). The
manifest (JSON) holds the names, sizes, modes and times within the share,
the URLs of the objects holding their chunks, and for each chunk the AES key
of its blocks (format 3: the object key, which opens that object and no
other; formats 1 and 2: the file key); never a vault key. It is sealed with
the committing seal (:func:`~.crypto.seal_committed`), so a wrong key or
password is told apart from a tampered manifest.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import (
    ShareError,
    TamperedShare,
    UnsupportedVersion,
    UsageError,
    WrongLinkKey,
)
from . import crypto

#: Version of the envelope and manifest; a reader refuses a newer one.
SHARE_VERSION = 1
#: PBKDF2-HMAC-SHA256 iterations of a password link: OWASP's 2023 figure for
#: this hash. (WebCrypto has PBKDF2 and no memory-hard KDF; docs/sharing.md.)
PBKDF2_ITERATIONS = 600_000
#: A page above this size is refused before it is parsed.
MAX_PAGE_SIZE = 64 << 20
MANIFEST_LABEL = b"megafs v1 share manifest key (HKDF-SHA256)"
AAD_MANIFEST = b"megafs/v1/share\x00"
AAD_OWNER = b"megafs/v1/share-owner\x00"
#: The element of the page that holds the envelope.
ENVELOPE_OPEN = '<script type="application/json" id="megafs-share">'
ENVELOPE_CLOSE = "</script>"


def b64e(data: bytes) -> str:
    """Base64url without padding."""
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def b64d(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise TamperedShare("malformed base64 in the share") from None


def manifest_key(
    link_key: bytes, share_id: bytes, password: str | None = None, pw: PasswordParams | None = None
) -> bytes:
    """The key that seals a share's manifest. CPU-heavy with a password."""
    ikm = link_key
    if pw is not None:
        if password is None:
            raise UsageError("this link needs its password")
        ikm += hashlib.pbkdf2_hmac("sha256", password.encode(), pw.salt, pw.iterations, 32)
    return crypto.hkdf(ikm, share_id, MANIFEST_LABEL)


@dataclass(frozen=True)
class PasswordParams:
    salt: bytes
    iterations: int = PBKDF2_ITERATIONS

    def to_json(self) -> dict[str, Any]:
        return {"kdf": "PBKDF2-SHA256", "iterations": self.iterations, "salt": b64e(self.salt)}

    @staticmethod
    def from_json(raw: object) -> PasswordParams:
        if (
            not isinstance(raw, dict)
            or raw.get("kdf") != "PBKDF2-SHA256"
            or not isinstance(raw.get("iterations"), int)
            or not 100_000 <= raw["iterations"] <= 10_000_000
            or not isinstance(raw.get("salt"), str)
        ):
            raise TamperedShare("the share's password parameters are malformed")
        return PasswordParams(b64d(raw["salt"]), raw["iterations"])


@dataclass
class Envelope:
    """What the page holds in the clear (the store sees it)."""

    share_id: bytes
    manifest: bytes  # sealed
    owner: bytes  # sealed under the vault's meta key
    password: PasswordParams | None = None

    def to_json(self) -> str:
        raw = {
            "v": SHARE_VERSION,
            "id": b64e(self.share_id),
            "password": self.password.to_json() if self.password else None,
            "manifest": b64e(self.manifest),
            "owner": b64e(self.owner),
        }
        # (no "</" can end the script element early: base64url has no "<")
        return json.dumps(raw, separators=(",", ":"))

    @staticmethod
    def from_page(page: bytes) -> Envelope:
        """The envelope of a page. Raises ShareError (not a megafs share page,
        or a malformed one)."""
        if len(page) > MAX_PAGE_SIZE:
            raise TamperedShare("the share page is larger than any megafs page")
        text = page.decode("utf-8", "replace")
        start = text.find(ENVELOPE_OPEN)
        end = text.find(ENVELOPE_CLOSE, start + 1)
        if start < 0 or end < 0:
            raise ShareError("the link does not lead to a megafs share page")
        try:
            raw = json.loads(text[start + len(ENVELOPE_OPEN) : end])
        except ValueError:
            raise TamperedShare("the share page is damaged (its data does not parse)") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("v"), int):
            raise TamperedShare("the share page is damaged")
        if raw["v"] > SHARE_VERSION:
            raise UnsupportedVersion("the share was made by a newer megafs; upgrade megafs")
        for k in ("id", "manifest", "owner"):
            if not isinstance(raw.get(k), str):
                raise TamperedShare("the share page is damaged")
        share_id = b64d(raw["id"])
        if len(share_id) != crypto.ID_SIZE:
            raise TamperedShare("the share page is damaged (share id)")
        pw = raw.get("password")
        return Envelope(
            share_id,
            b64d(raw["manifest"]),
            b64d(raw["owner"]),
            PasswordParams.from_json(pw) if pw is not None else None,
        )


@dataclass
class Chunk:
    """Chunk ``index`` of a file: ``length`` plaintext bytes, sealed as
    blocks from byte ``off`` of object ``obj`` (an index into the manifest's
    URLs; its id is ``obj_id``), under ``key``; ``packed``: the blocks use
    the packed-block AAD with ``off``."""

    index: int
    obj: int
    off: int
    length: int
    packed: bool
    key: bytes


@dataclass
class Entry:
    """A file or folder in a share; ``path`` is relative to the share's
    top ("" for a shared file itself), with "/" between names."""

    path: str
    kind: str  # "file" or "dir"
    mode: int
    mtime: float
    size: int = 0
    file_id: bytes = b""
    inline: bytes | None = None
    chunks: list[Chunk] = field(default_factory=list)


@dataclass
class Manifest:
    vault_id: bytes
    name: str
    kind: str
    created: float
    expires: float | None
    block_size: int
    chunk_size: int
    objects: list[str]  # URLs, absolute or relative to the page
    object_ids: list[bytes]
    entries: list[Entry]

    def to_json(self) -> bytes:
        entries: list[dict[str, Any]] = []
        for e in self.entries:
            item: dict[str, Any] = {
                "path": e.path,
                "type": e.kind,
                "mode": e.mode,
                "mtime": e.mtime,
            }
            if e.kind == "file":
                item["size"] = e.size
                item["fid"] = b64e(e.file_id)
                if e.inline is not None:
                    item["inline"] = b64e(e.inline)
                item["chunks"] = [
                    [c.index, c.obj, c.off, c.length, c.packed, b64e(c.key)] for c in e.chunks
                ]
            entries.append(item)
        raw = {
            "v": SHARE_VERSION,
            "vault": b64e(self.vault_id),
            "name": self.name,
            "type": self.kind,
            "created": self.created,
            "expires": self.expires,
            "block": self.block_size,
            "chunk": self.chunk_size,
            "objects": [
                [url, b64e(oid)] for url, oid in zip(self.objects, self.object_ids, strict=True)
            ],
            "entries": entries,
        }
        return json.dumps(raw, separators=(",", ":")).encode()

    @staticmethod
    def from_json(data: bytes) -> Manifest:
        """Parse an opened (authenticated) manifest, checking every field's
        type and range. Raises TamperedShare."""
        try:
            raw = json.loads(data)
            objs = raw["objects"]
            m = Manifest(
                _sized(b64d(raw["vault"]), crypto.ID_SIZE),
                _name(raw["name"]),
                _kind(raw["type"]),
                _time(raw["created"]),
                None if raw["expires"] is None else _time(raw["expires"]),
                _int(raw["block"], 1 << 12, 1 << 26),
                _int(raw["chunk"], 1 << 12, crypto.MAX_CHUNK_SIZE),
                [str(u) for u, _ in objs],
                [_sized(b64d(o), crypto.ID_SIZE) for _, o in objs],
                [],
            )
            for item in raw["entries"]:
                e = Entry(
                    _path(item["path"]),
                    _kind(item["type"]),
                    _int(item["mode"], 0, 0o7777),
                    _time(item["mtime"]),
                )
                if e.kind == "file":
                    e.size = _int(item["size"], 0, 1 << 62)
                    e.file_id = _sized(b64d(item["fid"]), crypto.ID_SIZE)
                    if "inline" in item:
                        e.inline = b64d(item["inline"])
                    for i, o, off, n, packed, key in item["chunks"]:
                        e.chunks.append(
                            Chunk(
                                _int(i, 0, 1 << 62),
                                _int(o, 0, len(m.objects) - 1),
                                _int(off, 0, 1 << 62),
                                _int(n, 1, m.chunk_size),
                                bool(packed),
                                _sized(b64d(key), crypto.KEY_SIZE),
                            )
                        )
                m.entries.append(e)
        except (KeyError, TypeError, ValueError):
            raise TamperedShare("the share's manifest is malformed") from None
        if raw.get("v", 0) > SHARE_VERSION:
            raise UnsupportedVersion("the share was made by a newer megafs; upgrade megafs")
        return m


def _int(v: object, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ValueError(v)
    return v


def _time(v: object) -> float:
    """Seconds since the epoch: a finite number within 3,000 years of it."""
    if not isinstance(v, int | float) or isinstance(v, bool) or not abs(v) < 1e11:
        raise ValueError(v)
    return float(v)


def _sized(b: bytes, n: int) -> bytes:
    if len(b) != n:
        raise ValueError(b)
    return b


def _kind(v: object) -> str:
    if v not in ("file", "dir"):
        raise ValueError(v)
    return str(v)


def _name(v: object) -> str:
    if not isinstance(v, str) or v in ("", ".", "..") or "/" in v or "\0" in v:
        raise ValueError(v)
    return v


def _path(v: object) -> str:
    """A relative path with no "..", ".", empty or absolute part ("" is the top)."""
    if not isinstance(v, str):
        raise ValueError(v)
    if v == "":
        return v
    for part in v.split("/"):
        _name(part)
    return v


def seal_manifest(key: bytes, share_id: bytes, manifest: Manifest) -> bytes:
    return crypto.seal_committed(key, manifest.to_json(), AAD_MANIFEST + share_id)


def open_manifest(key: bytes, env: Envelope) -> Manifest:
    """Authenticate and parse the manifest. Raises WrongLinkKey (another
    key or password) or TamperedShare."""
    try:
        data = crypto.open_committed(key, env.manifest, AAD_MANIFEST + env.share_id)
    except crypto.WrongKey:
        what = "password or link" if env.password is not None else "link key"
        raise WrongLinkKey(f"wrong {what}: this link's key does not open the share") from None
    except crypto.AuthFailed:
        raise TamperedShare("the share's manifest was tampered with or damaged") from None
    return Manifest.from_json(data)


def sealed_length(length: int, block_size: int) -> int:
    """Stored bytes of a chunk of ``length`` plaintext bytes."""
    return length + crypto.OVERHEAD * -(-length // block_size)


def open_chunk(m: Manifest, e: Entry, c: Chunk, sealed: bytes) -> bytes:
    """Verify and decrypt every block of chunk ``c`` of file ``e`` (exactly
    its stored bytes). Raises TamperedShare: nothing of a chunk that fails is
    returned. CPU-heavy."""
    bs = m.block_size
    if len(sealed) != sealed_length(c.length, bs):
        raise TamperedShare(f"{e.path or m.name}: chunk {c.index} is truncated or extended")
    aes = AESGCM(c.key)
    oid = m.object_ids[c.obj]
    out = bytearray()
    view = memoryview(sealed)
    pos = 0
    for bi in range(-(-c.length // bs)):
        n = min(bs, c.length - bi * bs)
        aad = crypto.block_aad(
            m.vault_id, e.file_id, oid, c.index, bi, c.length, c.off if c.packed else None
        )
        end = pos + n + crypto.OVERHEAD
        try:
            out += aes.decrypt(
                view[pos : pos + crypto.NONCE_SIZE], view[pos + crypto.NONCE_SIZE : end], aad
            )
        except (InvalidTag, ValueError):
            raise TamperedShare(
                f"{e.path or m.name}: chunk {c.index} was tampered with or damaged"
            ) from None
        pos = end
    return bytes(out)


def owner_aad(vault_id: bytes, share_id: bytes) -> bytes:
    return AAD_OWNER + vault_id + share_id


@dataclass
class OwnerRecord:
    """What the vault's owner keeps about a share (sealed under the meta key
    in the page): what was shared, when, by which device, until when, and
    the page's URL. Never the link key: it reaches no store, even sealed
    (the link is shown once, when the share is made)."""

    path: str
    created: float
    expires: float | None
    device: str
    url: str
    generation: int

    def seal(self, keys: crypto.Keys, share_id: bytes) -> bytes:
        raw = json.dumps(self.__dict__, separators=(",", ":")).encode()
        return crypto.seal_committed(keys.meta, raw, owner_aad(keys.vault_id, share_id))

    @staticmethod
    def open(keys: crypto.Keys, env: Envelope) -> OwnerRecord:
        """Raises ShareError if the page is not this vault's or was tampered with."""
        try:
            raw = json.loads(
                crypto.open_committed(keys.meta, env.owner, owner_aad(keys.vault_id, env.share_id))
            )
            return OwnerRecord(
                str(raw["path"]),
                float(raw["created"]),
                None if raw["expires"] is None else float(raw["expires"]),
                str(raw["device"]),
                str(raw["url"]),
                int(raw["generation"]),
            )
        except crypto.AuthFailed:
            raise TamperedShare("a share page of another vault, or tampered with") from None
        except (KeyError, TypeError, ValueError):
            raise TamperedShare("a share's owner record is malformed") from None


_FRAGMENT = re.compile(r"^[A-Za-z0-9_-]{43}$")


def make_link(page_url: str, link_key: bytes) -> str:
    return f"{page_url}#{b64e(link_key)}"


def parse_link(link: str) -> tuple[str, bytes]:
    """(page URL, link key) of a link. Raises ShareError."""
    url, sep, frag = link.strip().partition("#")
    if not sep or not _FRAGMENT.match(frag) or not url.startswith(("http://", "https://")):
        raise UsageError("not a megafs link (http(s) URL#key expected; was it cut short?)")
    return url, b64d(frag)


_PIN = re.compile(r"^share-([0-9a-f]{32})(?:-([0-9]{1,12}))?$")


def share_pin(share_id: bytes, expires: float | None = None) -> str:
    """The pin name that keeps a share's root: ``share-<id>``, and
    ``-<expiry, seconds since the epoch>`` if it expires (the history unpins
    it at the first prune after that time)."""
    name = "share-" + share_id.hex()
    return name if expires is None else f"{name}-{int(expires)}"


def parse_share_pin(name: str | None) -> tuple[bytes, float | None] | None:
    """(share id, expiry) of a share's pin name; None for any other name."""
    m = _PIN.match(name or "")
    if m is None:
        return None
    return bytes.fromhex(m.group(1)), float(m.group(2)) if m.group(2) else None


def share_pin_expired(name: str | None, now: float) -> bool:
    parsed = parse_share_pin(name)
    return parsed is not None and parsed[1] is not None and parsed[1] <= now


__all__ = [
    "Chunk",
    "Entry",
    "Envelope",
    "Manifest",
    "OwnerRecord",
    "PasswordParams",
    "ShareError",
    "TamperedShare",
    "WrongLinkKey",
    "make_link",
    "manifest_key",
    "open_chunk",
    "open_manifest",
    "parse_link",
    "parse_share_pin",
    "seal_manifest",
    "sealed_length",
    "share_pin",
    "share_pin_expired",
]
