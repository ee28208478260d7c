"""A store in an S3 bucket (AWS, SeaweedFS, MinIO, Garage, ...).

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

Credentials, region and (when none is given) the endpoint are resolved once,
lazily, by botocore exactly as the AWS tools do it (environment, shared
credentials and config files, ``AWS_PROFILE``, SSO, instance metadata).
Requests are signed with botocore's SigV4 signer and sent through one pooled
``httpx.AsyncClient`` per store, at most ``max_concurrency`` at a time.

Retries: :func:`is_temp_failure` is the only place that decides what is
retried. A retried call backs off exponentially with full jitter, and gives
up after ``max_attempts`` attempts or ``retry_deadline`` seconds, whichever
comes first; the error it then raises is final. A mounted vault calls
:meth:`S3Store.set_timeout`, which drops the attempt limit, so that file
operations ride out an outage of up to that many seconds. A body shorter than
its ``Content-Length`` (a connection cut mid-answer) is a transport error
raised by httpx, so it is retried like any lost answer and never returned.

The server is not trusted with this process's memory: no answer is read
whole. A successful GET reads at most its maximum size plus one byte (its
range, for a ranged GET, even when the server ignores Range), checking
``Content-Length`` first; bodies of other answers (errors, PUT and DELETE
answers) are cut at :data:`_SMALL_BODY` bytes, listings at :data:`_LIST_BODY`.
Bodies are read raw: a ``Content-Encoding`` we did not ask for is refused,
never decompressed. Listed keys of any shape but ``<prefix>o/<object name>``
are refused (see :meth:`megafs.stores.base.Store.list`).

Secrets never reach a log line or an error message: the access key ID,
secret key and session token of every store are scrubbed from the records
of the loggers that could print them (botocore's signer logs the canonical
request, which holds ``x-amz-security-token``; httpcore and urllib3 log
traffic), together with anything shaped like an ``Authorization`` or token
header or an XML/JSON credential field; and error messages never name the
access key. A plain ``http://`` endpoint on a host other than this machine
gets one warning per store: the access key ID and any session token would
cross the network readable.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import os
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlsplit
from xml.sax.saxutils import escape as xml_escape

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import botocore.exceptions
import botocore.session
import httpx
import trio

from ..errors import (
    IntegrityError,
    NoSuchBucket,
    ObjectNotFound,
    PreconditionFailed,
    StoreAuthError,
    StoreError,
    StoreFull,
    StoreUnreachable,
    UsageError,
)
from .base import (
    MAX_OBJECT_SIZE,
    MAX_POINTER_SIZE,
    Pointer,
    Refused,
    Store,
    check_object_name,
    check_pointer_name,
    is_object_name,
)

log = logging.getLogger(__name__)

#: Bodies at least this large are hashed and signed in a worker thread.
_THREAD_SIGN_BYTES = 256 * 1024

#: S3 error codes that mean "these credentials are not accepted".
_AUTH_CODES = {
    "InvalidAccessKeyId": "the access key ID is not known to the server",
    "SignatureDoesNotMatch": "the request signature does not match (wrong secret access key?)",
    "AccessDenied": "access denied to this bucket or key",
    "ExpiredToken": "the session token has expired",
    "InvalidToken": "the session token is malformed or invalid",
    "TokenRefreshRequired": "the session token must be refreshed",
    "RequestTimeTooSkewed": "this machine's clock differs too much from the server's",
    "AuthorizationHeaderMalformed": "the server rejected the authorization header",
    "MissingSecurityHeader": "the request is missing a required security header",
    "AllAccessDisabled": "all access to this bucket is disabled",
    "AccountProblem": "the account has a problem that prevents this operation",
}

#: S3 error codes that mean "no space left".
_FULL_CODES = {"QuotaExceeded", "InsufficientStorage", "StorageFull", "XMinioStorageFull"}

#: 5xx status codes that are a final answer, not a transient state.
_FINAL_5XX = {501, 505, 507}

_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")

#: Keys per DeleteObjects request (S3's maximum).
_DELETE_BATCH = 1000

#: The most of an error answer's body that is read (it is only parsed for
#: its Code and Message).
_ERROR_BODY = 64 << 10

#: The most of any other answer's body that is read unless the call says
#: otherwise (PUT and DELETE answers, DeleteObjects results).
_SMALL_BODY = 1 << 20

#: Keys a listing refuses before it gives up.
_MAX_REFUSED = 100_000

#: The largest ListObjectsV2 page accepted (1000 keys take about 400 KiB).
_LIST_BODY = 16 << 20


@dataclass(frozen=True)
class _Expect:
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


async def _read_body(response: httpx.Response, expect: _Expect | None) -> bytes:
    """Read as much of ``response``'s body as ``expect`` allows (see :class:`_Expect`)."""
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


# -- keeping secrets out of logs ---------------------------------------------------

#: Header-like and field-like spellings of credentials, whatever the format
#: (a canonical request's ``name:value``, a dict's ``'name': 'value'``, XML
#: and JSON fields of credential answers).
_SECRET_PATTERNS = (
    re.compile(
        r"(?i)((?:authorization|x-amz-security-token|x-amz-credential|x-amz-signature"
        r"|aws_secret_access_key|aws_session_token|aws_access_key_id)['\"]?\s*[:=]\s*b?['\"]?)"
        r"[^'\"\n,}]+"
    ),
    re.compile(r"(?i)(credential=)[^,\s'\"]+"),
    re.compile(r"(?i)(signature=)[0-9a-f]+"),
    re.compile(r"(?i)(<(?:AWSAccessKeyId|AccessKeyId|SecretAccessKey|SessionToken|Token)>)[^<]*"),
    re.compile(
        r"(?i)([\"'](?:AccessKeyId|SecretAccessKey|SessionToken|Token|access_key|secret_key"
        r"|token)[\"']\s*:\s*b?[\"'])[^\"']*"
    ),
)

#: Every credential string a store of this process has used (so also the
#: ones that no pattern would recognise).
_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()


def _scrub(text: str) -> str:
    """``text`` with every known credential and credential-shaped field masked."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1***", text)
    return text


class _ScrubFilter(logging.Filter):
    """Rewrites a record's message with :func:`_scrub` (only records that pass
    the logger's level reach it, so it costs nothing unless debugging)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as usual
            return True
        clean = _scrub(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = _scrub(logging.Formatter().formatException(record.exc_info))
        return True


_SCRUB_FILTER = _ScrubFilter()

#: Loggers whose records can carry credentials or signed headers.
_WATCHED_LOGGERS = (
    __name__,
    "botocore",
    "botocore.auth",
    "botocore.awsrequest",
    "botocore.client",
    "botocore.credentials",
    "botocore.endpoint",
    "botocore.hooks",
    "botocore.httpsession",
    "botocore.parsers",
    "botocore.retryhandler",
    "botocore.tokens",
    "botocore.utils",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpx",
    "urllib3",
    "urllib3.connectionpool",
)


def _install_scrubber() -> None:
    """Put the scrubbing filter on every watched logger (a filter acts only on
    records made by its own logger, hence each by name), and on any botocore,
    httpcore or urllib3 logger that exists already. Idempotent."""
    names = set(_WATCHED_LOGGERS)
    names.update(
        n
        for n in list(logging.Logger.manager.loggerDict)
        if n.split(".")[0] in ("botocore", "httpcore", "urllib3")
    )
    for n in names:
        logger = logging.getLogger(n)
        if _SCRUB_FILTER not in logger.filters:
            logger.addFilter(_SCRUB_FILTER)


def _remember_secrets(creds: botocore.credentials.ReadOnlyCredentials) -> None:
    with _SECRETS_LOCK:
        _SECRETS.update(v for v in (creds.access_key, creds.secret_key, creds.token) if v)


def _is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine: ``localhost``, 127.0.0.0/8 or ::1."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _jitter(high: float) -> float:
    """A uniform delay in ``[0, high)`` from the OS's random source."""
    return high * (int.from_bytes(os.urandom(7), "big") / (1 << 56))


def _delete_body(keys: list[str]) -> bytes:
    """The XML of a quiet DeleteObjects request for ``keys``."""
    items = "".join(f"<Object><Key>{xml_escape(k)}</Key></Object>" for k in keys)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Quiet>true</Quiet>{items}</Delete>"
    ).encode()


def is_temp_failure(failure: BaseException | httpx.Response) -> bool:
    """Decide whether a failed attempt is worth retrying. The one place that does.

    Retried: connection errors (refused, reset, DNS), dropped connections,
    timeouts, HTTP 5xx (but not 501/505/507), 429, and S3's
    ``400 RequestTimeout`` (the server gave up waiting for our body).
    Never retried: any other 4xx, notably 400, 401, 403, 404, 409 and 412.
    """
    if isinstance(failure, httpx.Response):
        status = failure.status_code
        if status == 429 or (500 <= status <= 599 and status not in _FINAL_5XX):
            return True
        return status == 400 and _error_code(failure) == "RequestTimeout"
    return isinstance(
        failure, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError
    )


def _error_code(resp: httpx.Response) -> str:
    """The ``<Code>`` of an S3 XML error body, or "" (HEAD answers have no body)."""
    code, _ = _parse_error(resp)
    return code


def _parse_error(resp: httpx.Response) -> tuple[str, str]:
    """``(Code, Message)`` of an S3 XML error body; empty strings if there is none."""
    try:
        root = ET.fromstring(resp.content)
    except ET.ParseError:
        return "", ""
    code = root.findtext("{*}Code") or ""
    message = root.findtext("{*}Message") or ""
    return code.strip(), message.strip()


@dataclass(frozen=True)
class _Resolved:
    """What botocore told us, resolved once per store."""

    endpoint: str
    region: str
    credentials: botocore.credentials.Credentials


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
        self._endpoint_arg = endpoint or os.environ.get("MEGAFS_S3_ENDPOINT") or None
        self._max_attempts = None if max_attempts is None else max(1, max_attempts)
        self._retry_deadline = retry_deadline
        self._io_timeout = io_timeout
        self._connect_timeout = connect_timeout
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._list_page_size = list_page_size
        self._session = session
        self._limiter = trio.CapacityLimiter(max_concurrency)
        # The transport alone, not an AsyncClient over it: a client's cookie
        # jar, auth and redirect machinery cost more per request than the
        # rest of a small GET, and S3 needs none of them.
        self._transport = transport or httpx.AsyncHTTPTransport(
            limits=httpx.Limits(
                max_connections=max_concurrency, max_keepalive_connections=max_concurrency
            ),
        )
        self._timeout = httpx.Timeout(io_timeout, connect=connect_timeout).as_dict()
        self._setup_lock = trio.Lock()
        self._resolved: _Resolved | None = None
        self._frozen: botocore.credentials.ReadOnlyCredentials | None = None
        self._closed = False
        self._batch_delete = True  # until the server says it has no DeleteObjects
        _install_scrubber()

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
        attempt = min(self._io_timeout, max(1.0, seconds / 4))
        self._retry_deadline = seconds
        self._max_attempts = None
        timeout = httpx.Timeout(attempt, connect=min(self._connect_timeout, attempt))
        self._timeout = timeout.as_dict()

    # -- where things are --------------------------------------------------

    def _where(self) -> str:
        ep = self._resolved.endpoint if self._resolved else (self._endpoint_arg or "AWS S3")
        return f"endpoint {ep}, bucket {self.bucket}"

    def _obj_key(self, name: str) -> str:
        check_object_name(name)
        return f"{self.prefix}o/{name}"

    def _ptr_key(self, name: str) -> str:
        check_pointer_name(name)
        return f"{self.prefix}p/{name}"

    def _url(self, key: str | None, query: Mapping[str, str] | None = None) -> str:
        assert self._resolved is not None
        base = self._resolved.endpoint.rstrip("/")
        parts = urlsplit(base)
        virtual = (
            (parts.hostname or "").endswith(".amazonaws.com")
            and _DNS_BUCKET.match(self.bucket) is not None
            and not parts.path
        )
        if virtual:
            netloc = f"{self.bucket}.{parts.netloc}"
            url = f"{parts.scheme}://{netloc}/"
        else:
            url = f"{base}/{quote(self.bucket, safe='')}"
            if key is not None:
                url += "/"
        if key is not None:
            url += quote(key, safe="/~")
        if query:
            url += "?" + "&".join(
                f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items())
            )
        return url

    # -- setup -----------------------------------------------------------------

    def _resolve(self) -> _Resolved:
        """Ask botocore for credentials, region and endpoint. Blocks (files, IMDS)."""
        try:
            session = self._session or botocore.session.get_session()
            creds = session.get_credentials()
            if creds is None:
                raise StoreAuthError(
                    "no AWS credentials found (set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE / ~/.aws/credentials) "
                    f"for {self.url}"
                )
            if self._endpoint_arg:
                endpoint = self._endpoint_arg
                region = session.get_config_variable("region") or "us-east-1"
            else:
                client = session.create_client("s3")
                endpoint = client.meta.endpoint_url
                region = client.meta.region_name
                if not region or region == "aws-global":
                    region = "us-east-1"
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            raise StoreAuthError(
                f"cannot load the AWS configuration for {self.url}: {_scrub(str(e))}"
            ) from None
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https"):
            raise StoreError(f"S3 endpoint must be an http:// or https:// URL: {endpoint}")
        if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
            log.warning(
                "S3 endpoint %s is plain http:// to another machine: the access key ID, "
                "any session token and every request's metadata cross the network "
                "unencrypted (object contents stay encrypted); use https://",
                endpoint,
            )
        return _Resolved(endpoint=endpoint, region=str(region), credentials=creds)

    async def _frozen_credentials(self) -> botocore.credentials.ReadOnlyCredentials:
        """Current credentials; refreshes (in a thread) only when botocore says so."""
        if self._resolved is None:
            async with self._setup_lock:
                if self._resolved is None:
                    self._resolved = await trio.to_thread.run_sync(self._resolve)
        creds = self._resolved.credentials
        stale = (
            isinstance(creds, botocore.credentials.RefreshableCredentials)
            and creds.refresh_needed()
        )
        if self._frozen is None or stale:
            try:
                self._frozen = await trio.to_thread.run_sync(creds.get_frozen_credentials)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
                raise StoreAuthError(
                    f"cannot refresh AWS credentials for {self.url}: {_scrub(str(e))}"
                ) from None
            _remember_secrets(self._frozen)
        return self._frozen

    # -- one HTTP exchange, retried -----------------------------------------------

    def _sign(
        self,
        frozen: botocore.credentials.ReadOnlyCredentials,
        method: str,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
    ) -> dict[str, str]:
        """SigV4-sign a request (hashes the body: pure CPU) and return its headers."""
        assert self._resolved is not None
        req = botocore.awsrequest.AWSRequest(
            method=method, url=url, data=body, headers=dict(headers)
        )
        botocore.auth.S3SigV4Auth(frozen, "s3", self._resolved.region).add_auth(req)
        return dict(req.headers.items())

    async def _attempt(
        self,
        method: str,
        key: str | None,
        query: Mapping[str, str] | None,
        body: bytes,
        headers: Mapping[str, str],
        expect: _Expect | None,
    ) -> httpx.Response:
        """One signed request; the answer with as much body as ``expect`` allows."""
        frozen = await self._frozen_credentials()
        url = self._url(key, query)
        hdrs = {"Accept-Encoding": "identity", **headers}
        async with self._limiter:  # sign late: a queued request keeps a fresh timestamp
            if len(body) >= _THREAD_SIGN_BYTES:
                signed = await trio.to_thread.run_sync(self._sign, frozen, method, url, body, hdrs)
            else:
                signed = self._sign(frozen, method, url, body, hdrs)
            request = httpx.Request(
                method, url, content=body, headers=signed, extensions={"timeout": self._timeout}
            )
            response = await self._transport.handle_async_request(request)
            try:
                response.request = request
                content = await _read_body(response, expect)
            finally:
                await response.aclose()  # an unread rest closes the connection
            # The body is raw bytes: keep httpx from decoding it once more.
            kept = [(k, v) for k, v in response.headers.raw if k.lower() != b"content-encoding"]
            return httpx.Response(
                response.status_code, headers=kept, content=content, request=request
            )

    async def _exchange(
        self,
        method: str,
        key: str | None,
        *,
        what: str,
        query: Mapping[str, str] | None = None,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        expect: _Expect | None = None,
    ) -> tuple[httpx.Response, bool]:
        """Send one request, retrying temporary failures; return the final answer.

        The answer's body is read only as far as ``expect`` allows (see
        :class:`_Expect`; None: at most :data:`_SMALL_BODY` bytes), and a
        body over its maximum size raises IntegrityError at once, unretried.

        The flag is True when an earlier attempt may have reached the server
        (it timed out or lost its connection after sending), so a write may
        already have been applied. Raises StoreUnreachable (or StoreError for a
        persistent 5xx) when the retries run out; any other answer is returned
        for the caller to interpret.
        """
        if self._closed:
            raise StoreError(f"S3 store {self.url} is closed")
        deadline = trio.current_time() + self._retry_deadline
        maybe_applied = False
        attempt = 0
        while True:
            attempt += 1
            failure: BaseException | httpx.Response
            try:
                resp = await self._attempt(method, key, query, body, headers or {}, expect)
            except httpx.TransportError as e:
                if not is_temp_failure(e):
                    raise StoreError(
                        f"S3 {method} {what} failed ({self._where()}): {_scrub(repr(e))}"
                    ) from e
                failure = e
                if not isinstance(e, httpx.ConnectError | httpx.ConnectTimeout):
                    maybe_applied = True
            else:
                if not is_temp_failure(resp):
                    return resp, maybe_applied
                failure = resp
                maybe_applied = True
            left = deadline - trio.current_time()
            out_of_attempts = self._max_attempts is not None and attempt >= self._max_attempts
            if out_of_attempts or left <= 0:
                raise self._gave_up(failure, method, what, attempt)
            # The last retry comes at the deadline, not before a backoff that would pass it.
            delay = min(
                left, _jitter(min(self._backoff_cap, self._backoff_base * 2 ** (attempt - 1)))
            )
            log.info(
                "S3 %s %s: temporary failure (%s), retry %d in %.2fs",
                method,
                what,
                _describe(failure),
                attempt,
                delay,
            )
            await trio.sleep(delay)

    def _gave_up(
        self, failure: BaseException | httpx.Response, method: str, what: str, attempts: int
    ) -> StoreError:
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        if isinstance(failure, httpx.Response):
            msg = f"S3 {method} {what} kept failing with {_describe(failure)} after {tries}"
            if failure.status_code in (502, 503, 504):
                return StoreUnreachable(f"{msg} ({self._where()})")
            return StoreError(f"{msg} ({self._where()})")
        if isinstance(failure, httpx.TimeoutException):
            cause = f"timed out ({type(failure).__name__})"
        elif isinstance(failure, httpx.ConnectError):
            cause = f"cannot connect: {_scrub(str(failure))}"
        else:
            cause = f"connection lost: {_scrub(repr(failure))}"
        return StoreUnreachable(f"S3 server unreachable ({self._where()}): {cause}, after {tries}")

    def _error(self, resp: httpx.Response, what: str, name: str | None = None) -> StoreError:
        """Map a final non-success answer to the exception tree."""
        status = resp.status_code
        code, message = _parse_error(resp)
        code, message = _scrub(code)[:100], _scrub(message)[:500]
        detail = f"{code}: {message}" if message else code or f"HTTP {status}"
        where = self._where()
        region = resp.headers.get("x-amz-bucket-region")
        hint = ""
        if region and self._resolved and region != self._resolved.region:
            hint = f" (the bucket is in region {region}: set AWS_DEFAULT_REGION={region})"
        if code == "NoSuchBucket":
            return NoSuchBucket(f"S3 bucket {self.bucket!r} does not exist ({where})")
        if code in _AUTH_CODES or status in (401, 403):
            reason = _AUTH_CODES.get(code, "credentials rejected")
            return StoreAuthError(
                f"S3 refused {what}: {code or f'HTTP {status}'}: {reason}{hint} ({where})"
            )
        if status == 404:
            return ObjectNotFound(name) if name is not None else ObjectNotFound(what)
        if status == 412 or code == "ConditionalRequestConflict":
            return PreconditionFailed(f"S3 conditional write of {what} lost ({detail})")
        if status == 507 or code in _FULL_CODES:
            return StoreFull(f"S3 store is full while writing {what}: {detail} ({where})")
        if status in (301, 307) or code in ("PermanentRedirect", "TemporaryRedirect"):
            return StoreError(f"S3 redirected {what}: {detail}{hint} ({where})")
        return StoreError(f"S3 {what} failed: HTTP {status} {detail} ({where})")

    # -- the Store contract ----------------------------------------------------

    async def check(self) -> None:
        """List at most one key: proves reachability, credentials and the bucket."""
        resp, _ = await self._exchange(
            "GET",
            None,
            what=f"listing of {self.url}",
            query={"list-type": "2", "max-keys": "1", "prefix": self.prefix},
        )
        if resp.status_code == 404:
            raise NoSuchBucket(f"S3 bucket {self.bucket!r} does not exist ({self._where()})")
        if resp.status_code != 200:
            raise self._error(resp, f"listing of {self.url}")

    async def put(self, name: str, data: bytes) -> None:
        """PUT the object; retried on temporary failures (PUT is idempotent)."""
        if len(data) > MAX_OBJECT_SIZE:
            raise ValueError(f"object {name} is larger than {MAX_OBJECT_SIZE} bytes")
        resp, _ = await self._exchange("PUT", self._obj_key(name), what=f"object {name}", body=data)
        if resp.status_code != 200:
            raise self._error(resp, f"object {name}", name)

    async def get(self, name: str, max_size: int = MAX_OBJECT_SIZE) -> bytes:
        """GET the whole object; retried on temporary failures."""
        expect = _Expect(name, min(max_size, MAX_OBJECT_SIZE))
        resp, _ = await self._exchange(
            "GET", self._obj_key(name), what=f"object {name}", expect=expect
        )
        if resp.status_code != 200:
            raise self._error(resp, f"object {name}", name)
        return resp.content

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        """Ranged GET. A range starting at or past the end is b"" (S3 answers 416).

        At most ``length`` bytes of the answer are read (of a server that
        ignores Range: up to ``offset + length``, keeping only the range).
        """
        key = self._obj_key(name)
        if length <= 0:
            return b""
        resp, _ = await self._exchange(
            "GET",
            key,
            what=f"object {name}",
            headers={"Range": f"bytes={offset}-{offset + length - 1}"},
            expect=_Expect(name, length, offset, length),
        )
        if resp.status_code in (200, 206):
            return resp.content
        if resp.status_code == 416:
            return b""
        raise self._error(resp, f"object {name}", name)

    async def delete(self, name: str) -> None:
        """DELETE the object; a missing object (404, or S3's 204) is fine. Retried."""
        resp, _ = await self._exchange("DELETE", self._obj_key(name), what=f"object {name}")
        if resp.status_code in (200, 204):
            return
        if resp.status_code == 404 and _error_code(resp) != "NoSuchBucket":
            return
        raise self._error(resp, f"object {name}", name)

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
            resp, _ = await self._exchange(
                "POST",
                None,
                what=f"deletion of {len(batch)} objects",
                query={"delete": ""},
                body=body,
                headers={"Content-MD5": md5, "Content-Type": "application/xml"},
            )
            if resp.status_code in (400, 405, 501) and _error_code(resp) in (
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
                raise self._error(resp, f"deletion of {len(batch)} objects")
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
        self, prefix: str = "", *, refused: list[Refused] | None = None
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
            resp, _ = await self._exchange(
                "GET",
                None,
                what=f"listing of {self.url}",
                query=query,
                expect=_Expect(f"listing of {self.url}", _LIST_BODY),
            )
            if resp.status_code != 200:
                raise self._error(resp, f"listing of {self.url}")
            try:
                root = ET.fromstring(resp.content)
            except ET.ParseError as e:
                raise StoreError(f"S3 listing is not valid XML ({self._where()}): {e}") from e
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
        resp, _ = await self._exchange(
            "GET",
            self._ptr_key(name),
            what=f"pointer {name}",
            expect=_Expect(name, min(max_size, MAX_POINTER_SIZE)),
        )
        if resp.status_code == 200:
            etag = resp.headers.get("etag")
            if not etag:
                raise StoreError(f"S3 server sent no ETag for pointer {name} ({self._where()})")
            return Pointer(resp.content, etag)
        if resp.status_code == 404 and _error_code(resp) != "NoSuchBucket":
            return None
        raise self._error(resp, f"pointer {name}")

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
        resp, maybe_applied = await self._exchange("PUT", key, what=what, body=data, headers=cond)
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
        if resp.status_code == 404 and _error_code(resp) != "NoSuchBucket":
            # AWS answers If-Match on a missing key with 404 NoSuchKey.
            raise PreconditionFailed(f"S3 conditional write of {what} lost (pointer is absent)")
        err = self._error(resp, what)
        if isinstance(err, PreconditionFailed) and maybe_applied:
            current = await self.read_pointer(name)
            if current is not None and current.data == data:
                log.info("S3 CAS of %s: an earlier attempt was applied; treating as success", name)
                return current.etag
        raise err

    async def aclose(self) -> None:
        """Close the connection pool. Idempotent."""
        if not self._closed:
            self._closed = True
            await self._transport.aclose()


def _describe(failure: BaseException | httpx.Response) -> str:
    if isinstance(failure, httpx.Response):
        code = _error_code(failure)
        return f"HTTP {failure.status_code}" + (f" {code}" if code else "")
    return repr(failure)


__all__ = ["S3Store", "is_temp_failure"]
