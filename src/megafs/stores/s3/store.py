"""The S3 store: the :class:`~megafs.stores.base.Store` contract over one bucket.

Layout under the store's key prefix::

    <prefix>o/<name>    immutable objects (the only keys ``list`` looks at)
    <prefix>p/<name>    pointers, overwritten only by conditional PUT

Pointer compare-and-swap is S3's conditional write: ``If-None-Match: *``
creates a pointer only if it is absent, ``If-Match: <etag>`` replaces it only
if it is unchanged; the server answers 412 (or 409 ConditionalRequestConflict)
when we lost. The version tag of a pointer is its S3 ETag. Every pointer
write carries ``Content-MD5``, so that a PUT whose body never arrives whole
(the daemon killed, or the network cut, between the headers and the body)
is refused by the server instead of replacing the pointer: SeaweedFS stores
an *empty* object when a PUT's connection closes right after its headers.
Objects do not need it: they are written under fresh names and referenced
only once their PUT has been answered.

Listings are read up to :data:`_LIST_BODY` bytes a page. Listed keys of any
shape but ``<prefix>o/<object name>`` are refused (see
:meth:`megafs.stores.base.Store.list`).

Owns :class:`S3Store`: the key layout, what each call sends and how it reads
the answer. May not touch: URLs, signing, credentials, retries or the HTTP
transport (every request goes through the store's
:class:`~.request.Requester`), nor read a body itself (:mod:`.bodies` does,
within the :class:`~.bodies.Expect` the call gives).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Sequence
from urllib.parse import urlsplit
from xml.sax.saxutils import escape as xml_escape

import botocore.session
import httpx

from ...errors import NoSuchBucket, PreconditionFailed, StoreError, UsageError
from ..base import (
    MAX_OBJECT_SIZE,
    MAX_PAGE_SIZE,
    MAX_POINTER_SIZE,
    Pointer,
    Refused,
    Store,
    check_object_name,
    check_pointer_name,
    check_share_name,
    is_object_name,
)
from .bodies import Expect
from .request import Requester, error_code
from .scrub import LOGGER_NAME

#: The longest a presigned URL may be valid (SigV4: 7 days).
PRESIGN_MAX = 7 * 24 * 3600

log = logging.getLogger(LOGGER_NAME)

#: Keys per DeleteObjects request (S3's maximum).
_DELETE_BATCH = 1000

#: Keys a listing refuses before it gives up.
_MAX_REFUSED = 100_000

#: The largest ListObjectsV2 page accepted (1000 keys take about 400 KiB).
_LIST_BODY = 16 << 20


def _delete_body(keys: list[str]) -> bytes:
    """The XML of a quiet DeleteObjects request for ``keys``."""
    items = "".join(f"<Object><Key>{xml_escape(k)}</Key></Object>" for k in keys)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Quiet>true</Quiet>{items}</Delete>"
    ).encode()


class S3Store(Store):
    """Store under ``prefix`` in an S3 ``bucket``.

    ``endpoint`` defaults to ``$MEGAFS_S3_ENDPOINT``, then to the AWS
    configuration (``AWS_ENDPOINT_URL``, ``endpoint_url`` in the profile), then
    to AWS itself. Custom endpoints use path-style addressing; AWS uses
    virtual-hosted addressing when the bucket name allows it.

    ``max_attempts=None`` leaves only ``retry_deadline`` to end the retries.
    ``transport`` replaces the HTTP transport (tests inject faults with it);
    ``session`` replaces the botocore session (and thus the credential chain).
    Constructing a store does no I/O; the first call resolves credentials.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        max_concurrency: int = 32,
        max_attempts: int | None = 8,
        retry_deadline: float = 60.0,
        backoff_base: float = 0.1,
        backoff_cap: float = 5.0,
        connect_timeout: float = 10.0,
        io_timeout: float = 60.0,
        list_page_size: int = 1000,
        transport: httpx.AsyncBaseTransport | None = None,
        session: botocore.session.Session | None = None,
    ) -> None:
        if not bucket:
            raise UsageError("an S3 store needs a bucket name: s3://bucket/prefix")
        self.bucket = bucket
        prefix = prefix.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self._list_page_size = list_page_size
        self._batch_delete = True  # until the server says it has no DeleteObjects
        self._requests = Requester(
            bucket,
            self.url,
            endpoint=endpoint,
            max_concurrency=max_concurrency,
            max_attempts=max_attempts,
            retry_deadline=retry_deadline,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            connect_timeout=connect_timeout,
            io_timeout=io_timeout,
            transport=transport,
            session=session,
        )

    @classmethod
    def from_url(cls, url: str, *, endpoint: str | None = None, **options: object) -> S3Store:
        """Make a store for ``s3://bucket[/prefix]``. Does no I/O."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise UsageError(f"not an S3 URL (expected s3://bucket/prefix): {url}")
        if parts.query or parts.fragment:
            raise UsageError(f"S3 URL must not have a query or fragment: {url}")
        return cls(parts.netloc, parts.path, endpoint=endpoint, **options)  # type: ignore[arg-type]

    def set_timeout(self, seconds: float) -> None:
        """Retry temporary failures for up to ``seconds``, however many attempts it takes.

        Each attempt then waits at most a quarter of that (and never more than
        ``io_timeout``) for a silent connection, so a stalled one is dropped
        and retried on a fresh connection well within the deadline. A call
        can outlast ``seconds`` by at most one attempt's timeout.
        """
        self._requests.set_timeout(seconds)

    # -- where things are --------------------------------------------------

    def _obj_key(self, name: str) -> str:
        check_object_name(name)
        return f"{self.prefix}o/{name}"

    def _ptr_key(self, name: str) -> str:
        check_pointer_name(name)
        return f"{self.prefix}p/{name}"

    # -- the Store contract ----------------------------------------------------

    async def check(self) -> None:
        """List at most one key: proves reachability, credentials and the bucket."""
        resp, _ = await self._requests.exchange(
            "GET",
            None,
            what=f"listing of {self.url}",
            query={"list-type": "2", "max-keys": "1", "prefix": self.prefix},
        )
        if resp.status_code == 404:
            raise NoSuchBucket(
                f"S3 bucket {self.bucket!r} does not exist ({self._requests.where()})"
            )
        if resp.status_code != 200:
            raise self._requests.error(resp, f"listing of {self.url}")

    async def put(self, name: str, data: bytes) -> None:
        """PUT the object; retried on temporary failures (PUT is idempotent)."""
        if len(data) > MAX_OBJECT_SIZE:
            raise ValueError(f"object {name} is larger than {MAX_OBJECT_SIZE} bytes")
        resp, _ = await self._requests.exchange(
            "PUT", self._obj_key(name), what=f"object {name}", body=data
        )
        if resp.status_code != 200:
            raise self._requests.error(resp, f"object {name}", name)

    async def get(self, name: str, max_size: int = MAX_OBJECT_SIZE) -> bytes:
        """GET the whole object; retried on temporary failures."""
        expect = Expect(name, min(max_size, MAX_OBJECT_SIZE))
        resp, _ = await self._requests.exchange(
            "GET", self._obj_key(name), what=f"object {name}", expect=expect
        )
        if resp.status_code != 200:
            raise self._requests.error(resp, f"object {name}", name)
        return resp.content

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        """Ranged GET. A range starting at or past the end is b"" (S3 answers 416).

        At most ``length`` bytes of the answer are read (of a server that
        ignores Range: up to ``offset + length``, keeping only the range).
        """
        key = self._obj_key(name)
        if length <= 0:
            return b""
        resp, _ = await self._requests.exchange(
            "GET",
            key,
            what=f"object {name}",
            headers={"Range": f"bytes={offset}-{offset + length - 1}"},
            expect=Expect(name, length, offset, length),
        )
        if resp.status_code in (200, 206):
            return resp.content
        if resp.status_code == 416:
            return b""
        raise self._requests.error(resp, f"object {name}", name)

    async def delete(self, name: str) -> None:
        """DELETE the object; a missing object (404, or S3's 204) is fine. Retried."""
        resp, _ = await self._requests.exchange(
            "DELETE", self._obj_key(name), what=f"object {name}"
        )
        if resp.status_code in (200, 204):
            return
        if resp.status_code == 404 and error_code(resp) != "NoSuchBucket":
            return
        raise self._requests.error(resp, f"object {name}", name)

    async def delete_many(self, names: Sequence[str]) -> list[str]:
        """DeleteObjects (``POST ?delete``), up to 1000 keys a request, in quiet
        mode (the answer lists only failures); retried like any request.

        A server that does not implement it (HTTP 501, or 400/405 naming the
        request) is asked one key at a time instead, from then on.
        """
        for name in names:
            check_object_name(name)
        failed: list[str] = []
        if not self._batch_delete:
            return await super().delete_many(names)
        for start in range(0, len(names), _DELETE_BATCH):
            batch = list(names[start : start + _DELETE_BATCH])
            body = _delete_body([self._obj_key(n) for n in batch])
            md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
            resp, _ = await self._requests.exchange(
                "POST",
                None,
                what=f"deletion of {len(batch)} objects",
                query={"delete": ""},
                body=body,
                headers={"Content-MD5": md5, "Content-Type": "application/xml"},
            )
            if resp.status_code in (400, 405, 501) and error_code(resp) in (
                "",
                "NotImplemented",
                "MethodNotAllowed",
                "InvalidRequest",
            ):
                log.info("S3 server does not take DeleteObjects; deleting one by one")
                self._batch_delete = False
                failed += await super().delete_many(names[start:])
                return failed
            if resp.status_code != 200:
                raise self._requests.error(resp, f"deletion of {len(batch)} objects")
            failed += self._delete_failures(resp, batch)
        return failed

    def _delete_failures(self, resp: httpx.Response, batch: list[str]) -> list[str]:
        """Names of a DeleteObjects answer's <Error> entries (a missing key is no failure)."""
        try:
            root = ET.fromstring(resp.content)
        except ET.ParseError:
            return batch
        base = f"{self.prefix}o/"
        out = []
        for err in root.iterfind("{*}Error"):
            if (err.findtext("{*}Code") or "") == "NoSuchKey":
                continue
            key = err.findtext("{*}Key") or ""
            out.append(key[len(base) :] if key.startswith(base) else key)
        return out

    async def list(
        self,
        prefix: str = "",
        *,
        refused: list[Refused] | None = None,
        ages: dict[str, float] | None = None,
    ) -> AsyncIterator[tuple[str, int]]:
        """ListObjectsV2 under ``<prefix>o/``, page by page (continuation tokens).

        Refused: any key but ``<prefix>o/<object name>`` (directory markers,
        ending in ``/``, are skipped), and a size that is not a number.

        A listing must advance: keys come in strictly increasing order (as S3
        sends them) and a continuation token is never repeated, else
        StoreError; and at most :data:`_MAX_REFUSED` keys are refused before
        it gives up (StoreError), so a hostile server cannot keep a caller
        listing, or collecting refusals, forever.
        """
        base = f"{self.prefix}o/"
        token: str | None = None
        bad: list[Refused] = []
        tokens: set[str] = set()
        last_key = ""
        refusals = 0
        while True:
            query = {
                "list-type": "2",
                "prefix": base + prefix,
                "max-keys": str(self._list_page_size),
            }
            if token:
                query["continuation-token"] = token
            resp, _ = await self._requests.exchange(
                "GET",
                None,
                what=f"listing of {self.url}",
                query=query,
                expect=Expect(f"listing of {self.url}", _LIST_BODY),
            )
            if resp.status_code != 200:
                raise self._requests.error(resp, f"listing of {self.url}")
            try:
                root = ET.fromstring(resp.content)
            except ET.ParseError as e:
                raise StoreError(
                    f"S3 listing is not valid XML ({self._requests.where()}): {e}"
                ) from e
            items: list[tuple[str, int]] = []
            for item in root.iterfind("{*}Contents"):
                key = item.findtext("{*}Key") or ""
                size = (item.findtext("{*}Size") or "").strip()
                if key <= last_key:
                    raise StoreError(
                        f"S3 listing of {self.url} does not advance (keys out of order); "
                        "refusing to go on"
                    )
                last_key = key
                if key.startswith(base) and key.endswith("/"):
                    continue  # directory markers some servers report
                entry = key[len(self.prefix) :] if key.startswith(self.prefix) else key
                name = key[len(base) :]
                if not key.startswith(base + prefix):
                    bad.append(Refused(entry[:300], "outside the listed prefix"))
                elif not is_object_name(name):
                    bad.append(Refused(entry[:300], "not an object name"))
                elif not size.isdigit():
                    bad.append(Refused(entry, f"size {size[:40]!r} is not a number"))
                else:
                    items.append((name, int(size)))
                    if ages is not None:
                        ages[name] = _timestamp(item.findtext("{*}LastModified"))
            refusals += len(bad)
            if refusals > _MAX_REFUSED:
                raise StoreError(
                    f"S3 listing of {self.url} holds more than {_MAX_REFUSED} keys that are not "
                    "objects; refusing to go on"
                )
            if refused is not None:
                refused.extend(bad)
                bad = []
            for pair in items:
                yield pair
            token = root.findtext("{*}NextContinuationToken")
            if (root.findtext("{*}IsTruncated") or "").lower() != "true" or not token:
                break
            if token in tokens:
                raise StoreError(
                    f"S3 listing of {self.url} repeats a continuation token; refusing to go on"
                )
            tokens.add(token)
        if bad:
            log.warning("listing of %s refused %d keys (first: %s)", self.url, len(bad), bad[0])

    async def read_pointer(self, name: str, max_size: int = MAX_POINTER_SIZE) -> Pointer | None:
        """GET the pointer and its ETag; None on NoSuchKey. Retried."""
        resp, _ = await self._requests.exchange(
            "GET",
            self._ptr_key(name),
            what=f"pointer {name}",
            expect=Expect(name, min(max_size, MAX_POINTER_SIZE)),
        )
        if resp.status_code == 200:
            etag = resp.headers.get("etag")
            if not etag:
                raise StoreError(
                    f"S3 server sent no ETag for pointer {name} ({self._requests.where()})"
                )
            return Pointer(resp.content, etag)
        if resp.status_code == 404 and error_code(resp) != "NoSuchBucket":
            return None
        raise self._requests.error(resp, f"pointer {name}")

    async def cas_pointer(self, name: str, data: bytes, expected: str | None) -> str:
        """Conditional PUT of a pointer; retried on temporary failures.

        A retried attempt may meet its own earlier, applied write and get 412;
        then the pointer is re-read and, if it holds exactly ``data``, the
        write counts as ours. (Another writer storing the very same bytes
        in that window is indistinguishable, and equally harmless.)
        """
        key = self._ptr_key(name)
        if len(data) > MAX_POINTER_SIZE:
            raise ValueError(f"pointer {name} is larger than {MAX_POINTER_SIZE} bytes")
        cond = {"If-None-Match": "*"} if expected is None else {"If-Match": expected}
        md5 = hashlib.md5(data, usedforsecurity=False).digest()
        cond["Content-MD5"] = base64.b64encode(md5).decode()
        what = f"pointer {name}"
        resp, maybe_applied = await self._requests.exchange(
            "PUT", key, what=what, body=data, headers=cond
        )
        if resp.status_code == 200:
            etag: str | None = resp.headers.get("etag")
            if etag:
                return etag
            current = await self.read_pointer(name)
            if current is not None and current.data == data:
                return current.etag
            # Already replaced by someone else: S3's ETag of a plain PUT is the
            # MD5 of the body, and it cannot match the pointer's current tag.
            return f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'
        if resp.status_code == 404 and error_code(resp) != "NoSuchBucket":
            # AWS answers If-Match on a missing key with 404 NoSuchKey.
            raise PreconditionFailed(f"S3 conditional write of {what} lost (pointer is absent)")
        err = self._requests.error(resp, what)
        if isinstance(err, PreconditionFailed) and maybe_applied:
            current = await self.read_pointer(name)
            if current is not None and current.data == data:
                log.info("S3 CAS of %s: an earlier attempt was applied; treating as success", name)
                return current.etag
        raise err

    # -- the share area: PREFIX/s/<id>.html ------------------------------------------

    def _page_key(self, share: str) -> str:
        check_share_name(share)
        return f"{self.prefix}s/{share}.html"

    async def put_page(self, share: str, data: bytes) -> None:
        """PUT the page with its content type, so that a browser shows it."""
        key = self._page_key(share)
        resp, _ = await self._requests.exchange(
            "PUT",
            key,
            what=f"share {share}",
            body=data,
            headers={"Content-Type": "text/html; charset=utf-8"},
        )
        if resp.status_code != 200:
            raise self._requests.error(resp, f"share {share}")

    async def get_page(self, share: str) -> bytes | None:
        expect = Expect(f"share {share}", MAX_PAGE_SIZE)
        resp, _ = await self._requests.exchange(
            "GET", self._page_key(share), what=f"share {share}", expect=expect
        )
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self._requests.error(resp, f"share {share}")
        return resp.content

    async def delete_page(self, share: str) -> None:
        resp, _ = await self._requests.exchange(
            "DELETE", self._page_key(share), what=f"share {share}"
        )
        if resp.status_code not in (200, 204, 404):
            raise self._requests.error(resp, f"share {share}")

    async def check_share_urls(self, *, base_url: str | None, expires_in: int) -> None:
        if base_url is not None:
            if not base_url.startswith(("http://", "https://")):
                raise UsageError(f"--base-url must be an http:// or https:// URL: {base_url}")
        elif expires_in > PRESIGN_MAX:
            raise UsageError(
                "a presigned S3 link lasts at most 7 days: give --expires 7d or less, or "
                "publish the prefix's s/ and o/ keys (a bucket policy) and give --base-url"
            )

    async def share_urls(
        self, share: str, objects: Sequence[str], *, base_url: str | None, expires_in: int
    ) -> tuple[str, Sequence[str]]:
        """Presigned GET URLs (valid ``expires_in`` seconds, at most 7 days),
        or with ``base_url`` (the URL of this prefix, published by a bucket
        policy) ``BASE/s/<id>.html`` and ``../o/<name>`` relative to it."""
        await self.check_share_urls(base_url=base_url, expires_in=expires_in)
        page_key = self._page_key(share)
        if base_url is not None:
            for name in objects:
                check_object_name(name)
            return f"{base_url.rstrip('/')}/s/{share}.html", [f"../o/{name}" for name in objects]
        page = await self._requests.presign(page_key, expires_in)
        urls = [await self._requests.presign(self._obj_key(n), expires_in) for n in objects]
        return page, urls

    async def aclose(self) -> None:
        """Close the connection pool. Idempotent."""
        await self._requests.aclose()


def _timestamp(text: str | None) -> float:
    """An S3 LastModified time (ISO 8601, UTC) in seconds; now if absent or
    unreadable (so that fsck counts the object as young and leaves it)."""
    try:
        stamp = (text or "").strip().replace("Z", "+00:00")
        return datetime.datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return time.time()
