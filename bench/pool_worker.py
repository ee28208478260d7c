"""The worker processes' side of ``bench/pool_probe.py`` (a module of its
own, so that workers import it once and keep its HTTP client and keys
between calls)."""

from __future__ import annotations

from multiprocessing import shared_memory
from typing import Any

import httpx

from megafs.format import crypto

CHUNK = 1 << 20
LAYOUT = crypto.Layout()

_client: httpx.Client | None = None
_keys: dict[bytes, crypto.Keys] = {}
_segments: dict[str, shared_memory.SharedMemory] = {}


def fetch_and_open(
    url: str,
    length: int,
    master: bytes,
    vault_id: bytes,
    version: int,
    file_key: bytes,
    file_id: bytes,
    obj: bytes,
    index: int,
) -> bytes:
    """GET bytes [0, length) of a presigned URL (refusing more) and open them."""
    global _client
    if _client is None:
        _client = httpx.Client(timeout=30)
    keys = _keys.get(vault_id)
    if keys is None:
        keys = _keys[vault_id] = crypto.Keys(master, vault_id, version)
    with _client.stream("GET", url, headers={"Range": f"bytes=0-{length - 1}"}) as resp:
        if resp.status_code != 206 or resp.headers.get("content-length") != str(length):
            raise RuntimeError(f"GET answered {resp.status_code}, not the range")
        body = resp.read()  # (bounded by the length the store announced)
    plain = crypto.open_blocks(keys, LAYOUT, file_key, file_id, obj, index, CHUNK, 0, body)
    return b"".join(plain)


def fetch_into(segment: str, *args: Any) -> int:
    """:func:`fetch_and_open`, the plaintext left in shared memory ``segment``
    (the pipe then carries only its length). The probe owns the segment."""
    shm = _segments.get(segment)
    if shm is None:
        shm = _segments[segment] = shared_memory.SharedMemory(segment)
    plain = fetch_and_open(*args)
    assert shm.buf is not None
    shm.buf[: len(plain)] = plain
    return len(plain)
