"""Sending signed S3 requests to one bucket, retried, and reading what they mean.

Owns :class:`Requester`: the endpoint, region and credentials of one bucket,
the pooled HTTP transport and its concurrency limit, SigV4 signing, the retry
loop, and the mapping of a final answer to the exception tree
(:meth:`Requester.error`). :func:`is_temp_failure` is the only place that
decides what is retried.

Credentials, region and (when none is given) the endpoint are resolved once,
lazily, by botocore exactly as the AWS tools do it (environment, shared
credentials and config files, ``AWS_PROFILE``, SSO, instance metadata).
Requests are signed with botocore's SigV4 signer and sent through one pooled
HTTP transport per store, at most ``max_concurrency`` at a time.

Retries: a retried call backs off exponentially with full jitter, and gives
up after ``max_attempts`` attempts or ``retry_deadline`` seconds, whichever
comes first; the error it then raises is final. A mounted vault calls
:meth:`~megafs.stores.s3.store.S3Store.set_timeout`, which drops the attempt
limit, so that file operations ride out an outage of up to that many
seconds. A body shorter than its ``Content-Length`` (a connection cut
mid-answer) is a transport error raised by httpx, so it is retried like any
lost answer and never returned.

Error messages never name the access key (server and botocore text goes
through :func:`~.scrub.scrub`). A plain ``http://`` endpoint on a host other
than this machine gets one warning per store: the access key ID and any
session token would cross the network readable.

May not touch: the store's key layout (``o/``, ``p/``), object and pointer
names, and the Store contract; it sends the key it is given and returns the
answer, and how much of a body is read is :mod:`.bodies`' business.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import botocore.exceptions
import botocore.session
import httpx
import trio

from ...errors import (
    NoSuchBucket,
    ObjectNotFound,
    PreconditionFailed,
    StoreAuthError,
    StoreError,
    StoreFull,
    StoreUnreachable,
)
from .bodies import Expect, read_body
from .scrub import LOGGER_NAME, install_scrubber, remember_secrets, scrub

log = logging.getLogger(LOGGER_NAME)

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
        return status == 400 and error_code(failure) == "RequestTimeout"
    return isinstance(
        failure, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError
    )


def error_code(resp: httpx.Response) -> str:
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


def _describe(failure: BaseException | httpx.Response) -> str:
    if isinstance(failure, httpx.Response):
        code = error_code(failure)
        return f"HTTP {failure.status_code}" + (f" {code}" if code else "")
    return repr(failure)


@dataclass(frozen=True)
class _Resolved:
    """What botocore told us, resolved once per store."""

    endpoint: str
    region: str
    credentials: botocore.credentials.Credentials


class Requester:
    """Signed, retried requests to ``bucket``, for the store named ``url``.

    ``endpoint`` defaults to ``$MEGAFS_S3_ENDPOINT``, then to the AWS
    configuration (``AWS_ENDPOINT_URL``, ``endpoint_url`` in the profile), then
    to AWS itself. Custom endpoints use path-style addressing; AWS uses
    virtual-hosted addressing when the bucket name allows it.

    ``max_attempts=None`` leaves only ``retry_deadline`` to end the retries.
    ``transport`` replaces the HTTP transport; ``session`` replaces the
    botocore session (and thus the credential chain). Constructing one does
    no I/O (it installs the log scrubber); the first request resolves
    credentials.
    """

    def __init__(
        self,
        bucket: str,
        url: str,
        *,
        endpoint: str | None,
        max_concurrency: int,
        max_attempts: int | None,
        retry_deadline: float,
        backoff_base: float,
        backoff_cap: float,
        connect_timeout: float,
        io_timeout: float,
        transport: httpx.AsyncBaseTransport | None,
        session: botocore.session.Session | None,
    ) -> None:
        self.bucket = bucket
        self.url = url
        self._endpoint_arg = endpoint or os.environ.get("MEGAFS_S3_ENDPOINT") or None
        self._max_attempts = None if max_attempts is None else max(1, max_attempts)
        self._retry_deadline = retry_deadline
        self._io_timeout = io_timeout
        self._connect_timeout = connect_timeout
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
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
        install_scrubber()

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

    async def aclose(self) -> None:
        """Close the connection pool; later requests raise StoreError. Idempotent."""
        if not self._closed:
            self._closed = True
            await self._transport.aclose()

    # -- where things are --------------------------------------------------

    def where(self) -> str:
        """``endpoint ..., bucket ...``, for error messages."""
        ep = self._resolved.endpoint if self._resolved else (self._endpoint_arg or "AWS S3")
        return f"endpoint {ep}, bucket {self.bucket}"

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
                f"cannot load the AWS configuration for {self.url}: {scrub(str(e))}"
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
                    f"cannot refresh AWS credentials for {self.url}: {scrub(str(e))}"
                ) from None
            remember_secrets(self._frozen)
        return self._frozen

    async def presign(self, key: str, expires_in: int) -> str:
        """A URL that GETs ``key`` without credentials for ``expires_in``
        seconds (SigV4 query signing; at most 7 days). Signs with the
        current credentials: a URL signed with temporary ones stops working
        when they expire, whatever ``expires_in`` says."""
        frozen = await self._frozen_credentials()
        assert self._resolved is not None
        req = botocore.awsrequest.AWSRequest(method="GET", url=self._url(key), headers={})
        botocore.auth.S3SigV4QueryAuth(
            frozen, "s3", self._resolved.region, expires=expires_in
        ).add_auth(req)
        return str(req.url)

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
        expect: Expect | None,
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
                content = await read_body(response, expect)
            finally:
                await response.aclose()  # an unread rest closes the connection
            # The body is raw bytes: keep httpx from decoding it once more.
            kept = [(k, v) for k, v in response.headers.raw if k.lower() != b"content-encoding"]
            return httpx.Response(
                response.status_code, headers=kept, content=content, request=request
            )

    async def exchange(
        self,
        method: str,
        key: str | None,
        *,
        what: str,
        query: Mapping[str, str] | None = None,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        expect: Expect | None = None,
    ) -> tuple[httpx.Response, bool]:
        """Send one request, retrying temporary failures; return the final answer.

        The answer's body is read only as far as ``expect`` allows (see
        :class:`~.bodies.Expect`; None: at most :data:`.bodies._SMALL_BODY`
        bytes), and a body over its maximum size raises IntegrityError at
        once, unretried.

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
                        f"S3 {method} {what} failed ({self.where()}): {scrub(repr(e))}"
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
                return StoreUnreachable(f"{msg} ({self.where()})")
            return StoreError(f"{msg} ({self.where()})")
        if isinstance(failure, httpx.TimeoutException):
            cause = f"timed out ({type(failure).__name__})"
        elif isinstance(failure, httpx.ConnectError):
            cause = f"cannot connect: {scrub(str(failure))}"
        else:
            cause = f"connection lost: {scrub(repr(failure))}"
        return StoreUnreachable(f"S3 server unreachable ({self.where()}): {cause}, after {tries}")

    def error(self, resp: httpx.Response, what: str, name: str | None = None) -> StoreError:
        """Map a final non-success answer to the exception tree."""
        status = resp.status_code
        code, message = _parse_error(resp)
        code, message = scrub(code)[:100], scrub(message)[:500]
        detail = f"{code}: {message}" if message else code or f"HTTP {status}"
        where = self.where()
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
