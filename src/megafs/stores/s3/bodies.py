"""Reading an S3 answer's body, never more of it than the call allows.

The server is not trusted with this process's memory: no answer is read
whole. A successful GET reads at most its maximum size plus one byte (its
range, for a ranged GET, even when the server ignores Range), checking
``Content-Length`` first; bodies of other answers (errors, PUT and DELETE
answers) are cut at :data:`_SMALL_BODY` bytes, error answers at
:data:`_ERROR_BODY`. Bodies are read raw: a ``Content-Encoding`` we did not
ask for is refused, never decompressed.

Owns :class:`Expect` (what a call will accept) and :func:`read_body`. May not
touch: sending, signing or retrying requests, and the store's key layout; it
reads the one answer it is given and closes nothing but the stream it stopped.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

import httpx

from ...errors import IntegrityError, StoreError

#: The most of an error answer's body that is read (it is only parsed for
#: its Code and Message).
_ERROR_BODY = 64 << 10

#: The most of any other answer's body that is read unless the call says
#: otherwise (PUT and DELETE answers, DeleteObjects results).
_SMALL_BODY = 1 << 20


@dataclass(frozen=True)
class Expect:
    """How much of a successful answer's body a call reads, and no more.

    A body longer than ``max_size`` is an IntegrityError of ``obj``. With
    ``length``, the call is a ranged read: the answer is cut at ``length``
    bytes (a server that ignores Range and sends the whole object: bytes
    ``offset`` to ``offset + length`` of it, the rest never read).
    """

    obj: str
    max_size: int
    offset: int = 0
    length: int | None = None


async def read_body(response: httpx.Response, expect: Expect | None) -> bytes:
    """Read as much of ``response``'s body as ``expect`` allows (see :class:`Expect`)."""
    status = response.status_code
    if not 200 <= status < 300:
        return await _read_span(response, 0, _ERROR_BODY)
    if expect is None:
        return await _read_span(response, 0, _SMALL_BODY)
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise StoreError(
            f"S3 server answered {expect.obj} with Content-Encoding {encoding[:40]!r}, "
            "which was not asked for"
        )
    if expect.length is not None:
        return await _read_span(response, expect.offset if status == 200 else 0, expect.length)
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > expect.max_size:
        raise IntegrityError(
            expect.obj,
            f"larger than {expect.max_size} bytes (the server announced {declared[:20]})",
        )
    data = await _read_span(response, 0, expect.max_size + 1)
    if len(data) > expect.max_size:
        raise IntegrityError(expect.obj, f"larger than {expect.max_size} bytes")
    return data


async def _read_span(response: httpx.Response, skip: int, length: int) -> bytes:
    """Bytes ``skip`` to ``skip + length`` of the raw body; reading stops there.

    A body that ends exactly there (its declared Content-Length) is read to
    its end, so that the connection goes back to the pool; one that goes on
    is cut, and its connection closed.
    """
    if response.is_stream_consumed:  # already in memory (a test's transport)
        return response.content[skip : skip + length]
    declared = response.headers.get("content-length", "")
    total = int(declared) if declared.isdigit() else None
    parts: list[bytes] = []
    got = 0
    seen = 0
    chunks = response.aiter_raw()
    try:
        async for chunk in chunks:
            seen += len(chunk)
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            if skip == 0 and len(chunk) <= length - got:
                part = chunk  # the common case: no copy
            else:
                part = chunk[skip : skip + length - got]
            skip = 0
            parts.append(part)
            got += len(part)
            if got >= length and (total is None or seen < total):
                break  # more is coming than wanted: do not read it
    finally:
        if isinstance(chunks, AsyncGenerator):  # stopped early: finish it now
            await chunks.aclose()
    return parts[0] if len(parts) == 1 else b"".join(parts)
