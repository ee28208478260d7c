"""A fault-injecting HTTP/1.1 proxy between megafs and an S3 server, on loopback.

Point megafs at :attr:`FaultProxy.endpoint` instead of the server's own
endpoint. Requests are forwarded unchanged (SigV4 signs the ``Host`` header
megafs sent, which names the proxy, and the server checks the signature
against that header, so forwarding needs no re-signing). A random
fraction :attr:`~FaultProxy.rate` of requests meets one of these faults
instead, taken in turn from :attr:`~FaultProxy.kinds` (so a run with a few
faults has met every kind):

==============  ================================================================
``500``         answered 500 InternalError without forwarding
``503``         answered 503 SlowDown without forwarding
``429``         answered 429 TooManyRequests without forwarding
``500-after``   forwarded (the server applies it), then answered 500: a lost answer
``reset``       the connection is reset (RST) before forwarding
``reset-after`` forwarded, then the connection is reset: a lost answer
``stall``       nothing is sent for :attr:`~FaultProxy.stall` seconds, then the
                connection is closed (longer than megafs's per-attempt timeout)
``truncate``    forwarded; the answer's headers promise the whole body
                (``Content-Length``) but fewer bytes follow, then the
                connection is closed. Answers without a body are reset instead
``cut-request`` the request goes upstream with its headers but only part of its
                body, then both connections are closed: a client that died, or
                a network that broke, in the middle of an upload. Not in
                :data:`ALL_FAULTS` (a server that stores what it got of such a
                request is what this shows; ask for it by name)
==============  ================================================================

:meth:`FaultProxy.down` stops listening and drops every open connection (a
client then gets "connection refused"); :meth:`FaultProxy.up` listens again
on the same port.

The proxy runs in threads (one per client connection), so it serves a
megafs daemon in a subprocess and synchronous test code alike. Counters in
:attr:`FaultProxy.stats` say what happened.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BufferedReader
from types import TracebackType
from urllib.parse import urlsplit

ALL_FAULTS = (
    "500",
    "503",
    "429",
    "500-after",
    "reset",
    "reset-after",
    "stall",
    "truncate",
)

#: Faults that can only be asked for by name.
EXTRA_FAULTS = ("cut-request",)

_CANNED = {
    "500": (500, "Internal Server Error", "InternalError"),
    "500-after": (500, "Internal Server Error", "InternalError"),
    "503": (503, "Service Unavailable", "SlowDown"),
    "429": (429, "Too Many Requests", "TooManyRequests"),
}

#: Request headers that concern one hop only and are not forwarded.
_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"}


@dataclass
class Request:
    """One request as the client sent it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


class _Closed(Exception):
    """The client closed its connection (or sent garbage): stop serving it."""


def _read_request(rfile: BufferedReader) -> Request | None:
    line = rfile.readline(65537)
    if not line:
        return None
    parts = line.decode("latin-1").rstrip("\r\n").split(" ")
    if len(parts) != 3:
        raise _Closed(f"bad request line {line!r}")
    method, target, _version = parts
    headers: list[tuple[str, str]] = []
    while True:
        h = rfile.readline(65537)
        if not h:
            raise _Closed("connection closed in the headers")
        if h in (b"\r\n", b"\n"):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    req = Request(method, target, headers, b"")
    length = req.header("content-length")
    if req.header("transfer-encoding"):
        raise _Closed("chunked request bodies are not supported")
    if length:
        body = rfile.read(int(length))
        if len(body) != int(length):
            raise _Closed("connection closed in the body")
        req.body = body
    return req


class FaultProxy:
    """Forward to ``upstream`` (``http://host:port``), injecting faults. See the module doc.

    ``rate`` is the chance per request of a fault; ``kinds`` the faults to
    take in turn; ``match`` limits faults to some requests; ``seed`` fixes the
    random draws (which request meets which draw still depends on their order).
    """

    def __init__(
        self,
        upstream: str,
        *,
        rate: float = 0.0,
        kinds: tuple[str, ...] = ALL_FAULTS,
        stall: float = 3.0,
        seed: int | None = None,
        match: Callable[[Request], bool] | None = None,
    ) -> None:
        parts = urlsplit(upstream)
        assert parts.scheme == "http" and parts.hostname and parts.port, upstream
        unknown = set(kinds) - set(ALL_FAULTS) - set(EXTRA_FAULTS)
        assert not unknown, f"unknown faults {unknown}"
        self.upstream = (parts.hostname, parts.port)
        self.rate = rate
        self.kinds = kinds
        self.stall = stall
        self.match = match
        self.stats: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._turn = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._clients: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.port = 0
        self._listen()

    # --- control ----------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def faults(self) -> int:
        """How many faults were injected so far."""
        with self._lock:
            return sum(n for k, n in self.stats.items() if k.startswith("fault:"))

    def down(self) -> None:
        """Refuse new connections and drop every open one."""
        with self._lock:
            listener, self._listener = self._listener, None
            clients = list(self._clients)
            self.stats["down"] += 1
        if listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would
            # leave the socket listening until that accept() returned.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for c in clients:
            # Not close(): the serving thread's reader keeps the socket open. This
            # ends the connection now and wakes that thread.
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)

    def up(self) -> None:
        """Listen again on the same port."""
        if self._listener is None:
            self._listen()

    @contextlib.contextmanager
    def faults_off(self) -> Iterator[None]:
        """No faults inside the block (for setup and checks)."""
        rate, self.rate = self.rate, 0.0
        try:
            yield
        finally:
            self.rate = rate

    def close(self) -> None:
        self._stopping.set()
        self.down()
        for t in self._threads:
            t.join(timeout=self.stall + 5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        typ: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- serving ----------------------------------------------------------------

    def _listen(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(128)
        self.port = s.getsockname()[1]
        with self._lock:
            self._listener = s
        t = threading.Thread(target=self._accept, args=(s,), daemon=True, name="faultproxy")
        t.start()
        self._threads.append(t)

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down() or close()
            with self._lock:
                if self._listener is not listener:
                    _reset(client)
                    return
                self._clients.add(client)
            t = threading.Thread(target=self._serve, args=(client,), daemon=True)
            t.start()
            self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _pick(self, req: Request) -> str | None:
        with self._lock:
            self.stats["requests"] += 1
            if self.rate <= 0 or (self.match is not None and not self.match(req)):
                return None
            if self._rng.random() >= self.rate:
                return None
            kind = self.kinds[self._turn % len(self.kinds)]
            self._turn += 1
            self.stats[f"fault:{kind}"] += 1
            return kind

    def _serve(self, client: socket.socket) -> None:
        rfile = client.makefile("rb")
        try:
            while not self._stopping.is_set():
                req = _read_request(rfile)
                if req is None:
                    return
                if not self._handle(client, req):
                    return
        except (_Closed, OSError, http.client.HTTPException):
            return
        finally:
            with self._lock:
                self._clients.discard(client)
            rfile.close()
            with contextlib.suppress(OSError):
                client.close()

    def _handle(self, client: socket.socket, req: Request) -> bool:
        """Answer one request; False when the connection must not be used again."""
        fault = self._pick(req)
        if fault in ("500", "503", "429"):
            client.sendall(_error_response(fault))
            return True
        if fault == "reset":
            _reset(client)
            return False
        if fault == "stall":
            self._stopping.wait(self.stall)
            return False
        if fault == "cut-request":
            self._forward_cut(req)
            _reset(client)
            return False
        status, reason, headers, body = self._forward(req)
        if fault == "500-after":
            client.sendall(_error_response(fault))
            return True
        if fault == "reset-after" or (fault == "truncate" and len(body) < 2):
            _reset(client)
            return False
        head = _response_head(status, reason, headers, len(body), req.method == "HEAD")
        if fault == "truncate":
            with self._lock:
                cut = self._rng.randrange(0, len(body))
            client.sendall(head + body[:cut])
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)  # a clean FIN, mid-body
            return False
        client.sendall(head + body)
        return True

    def _forward(self, req: Request) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Send ``req`` upstream on a fresh connection; return the whole answer."""
        headers = [(k, v) for k, v in req.headers if k.lower() not in _HOP]
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            conn.putrequest(req.method, req.target, skip_host=True, skip_accept_encoding=True)
            for k, v in headers:
                conn.putheader(k, v)
            conn.endheaders(req.body if req.body else None)
            resp = conn.getresponse()
            body = resp.read()
            with self._lock:
                self.stats["forwarded"] += 1
            return resp.status, resp.reason, resp.getheaders(), body
        except (OSError, http.client.HTTPException) as e:
            with self._lock:
                self.stats["upstream-errors"] += 1
            msg = f"<Error><Code>BadGateway</Code><Message>{e!r}</Message></Error>".encode()
            return 502, "Bad Gateway", [("Content-Type", "application/xml")], msg
        finally:
            conn.close()


    def _forward_cut(self, req: Request) -> None:
        """Send ``req`` upstream with only part of its body, then hang up."""
        with self._lock:  # nothing of the body (headers only), or some of it
            cut = 0 if self._rng.random() < 0.5 else self._rng.randrange(len(req.body) or 1)
        head = [f"{req.method} {req.target} HTTP/1.1"]
        head += [f"{k}: {v}" for k, v in req.headers if k.lower() not in _HOP]
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + req.body[:cut]
        with contextlib.suppress(OSError), socket.create_connection(self.upstream, 10) as up:
            up.sendall(data)
            time.sleep(0.2)  # let the server start on it before the connection drops
            with self._lock:
                self.stats["cut-requests"] += 1


def _error_response(fault: str) -> bytes:
    status, reason, code = _CANNED[fault]
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>injected by faultproxy</Message></Error>"
    ).encode()
    return _response_head(status, reason, [("Content-Type", "application/xml")], len(body)) + body


def _response_head(
    status: int, reason: str, headers: list[tuple[str, str]], length: int, head: bool = False
) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    for k, v in headers:
        low = k.lower()
        if low in _HOP or low == "transfer-encoding" or (low == "content-length" and not head):
            continue
        lines.append(f"{k}: {v}")
    if not head:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0) rather than FIN.

    The RST goes out when the last reference closes: at once, or when the
    serving thread closes its reader.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)
