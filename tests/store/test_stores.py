"""The Store contract, run against every backend; then what is special to each.

The contract tests take ``any_store`` (a fresh local folder, or a fresh prefix
on the session's SeaweedFS). S3-only tests cover credentials, endpoints,
errors and retries against the same real server, with faults injected by a
transport that wraps the real one.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio

from megafs.errors import (
    NoSuchBucket,
    ObjectNotFound,
    PreconditionFailed,
    StoreAuthError,
    StoreUnreachable,
    UsageError,
)
from megafs.stores import LocalStore, Store, open_store
from megafs.stores.s3 import S3Store, is_temp_failure

from ..support.helpers import unique_prefix
from ..support.seaweed import SeaweedFS, free_ports


async def listing(store: Store, prefix: str = "") -> dict[str, int]:
    return {name: size async for name, size in store.list(prefix)}


def n(tag: str) -> str:
    """An object name (32 lowercase hex characters) that starts with hex ``tag``."""
    return tag.ljust(32, "0")


# -- the contract: objects ----------------------------------------------------


async def test_put_get_round_trip(any_store: Store) -> None:
    await any_store.put(n("a1b2c3"), b"hello world")
    assert await any_store.get(n("a1b2c3")) == b"hello world"


async def test_empty_object(any_store: Store) -> None:
    await any_store.put(n("e0"), b"")
    assert await any_store.get(n("e0")) == b""
    assert await any_store.get_range(n("e0"), 0, 10) == b""
    assert await listing(any_store) == {n("e0"): 0}


async def test_large_binary_object(any_store: Store) -> None:
    # Larger than SeaweedFS's 4 MiB chunk size, so it is stored in pieces.
    data = os.urandom(5 * 1024 * 1024 + 17)
    await any_store.put(n("b16"), data)
    assert await any_store.get(n("b16")) == data
    boundary = 4 * 1024 * 1024
    assert await any_store.get_range(n("b16"), boundary - 100, 200) == data[boundary - 100 :][:200]
    assert await any_store.get_range(n("b16"), len(data) - 5, 100) == data[-5:]


async def test_get_range_edges(any_store: Store) -> None:
    data = bytes(range(10))
    await any_store.put(n("12"), data)
    assert await any_store.get_range(n("12"), 0, 10) == data
    assert await any_store.get_range(n("12"), 2, 3) == data[2:5]
    assert await any_store.get_range(n("12"), 9, 1) == data[9:]
    assert await any_store.get_range(n("12"), 7, 100) == data[7:]  # short at the end
    assert await any_store.get_range(n("12"), 10, 5) == b""  # starts exactly at the end
    assert await any_store.get_range(n("12"), 50, 5) == b""  # starts beyond the end
    assert await any_store.get_range(n("12"), 3, 0) == b""


async def test_get_missing_object(any_store: Store) -> None:
    with pytest.raises(ObjectNotFound) as info:
        await any_store.get(n("deadbeef"))
    assert info.value.name == n("deadbeef")
    with pytest.raises(ObjectNotFound):
        await any_store.get_range(n("deadbeef"), 0, 10)


async def test_delete_is_idempotent(any_store: Store) -> None:
    await any_store.delete(n("dead"))
    await any_store.put(n("d1"), b"x")
    await any_store.delete(n("d1"))
    with pytest.raises(ObjectNotFound):
        await any_store.get(n("d1"))
    await any_store.delete(n("d1"))
    assert await listing(any_store) == {}


async def test_delete_many(any_store: Store) -> None:
    """Batches (S3: DeleteObjects, 1000 keys a request), missing names are fine."""
    names = [n(f"{i:04x}") for i in range(1100)]
    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(any_store.put, name, b"x")
    await any_store.put(n("ffff"), b"kept")
    failed = await any_store.delete_many([*names, n("dead")])
    assert failed == []
    assert await listing(any_store) == {n("ffff"): 4}
    assert await any_store.delete_many([]) == []


@pytest.mark.s3
async def test_s3_delete_many_without_delete_objects(
    seaweedfs: SeaweedFS, s3_env: dict[str, str]
) -> None:
    """A server without DeleteObjects (501) gets one DELETE per key instead."""
    transport = FaultyTransport(["501"], lambda r: r.method == "POST")
    async with S3Store(seaweedfs.bucket, unique_prefix(), transport=transport) as store:
        for name in ("a1", "b2", "c3"):
            await store.put(n(name), b"x")
        assert await store.delete_many([n("a1"), n("b2"), n("c3")]) == []
        assert await listing(store) == {}
        assert await store.delete_many([n("ee")]) == []
    methods = [m for m, _, _ in transport.seen]
    assert methods.count("POST") == 1 and methods.count("DELETE") == 4


async def test_list_with_prefix_and_sizes_excludes_pointers(any_store: Store) -> None:
    assert await listing(any_store) == {}
    objects = {n("aa01"): b"1", n("aa02"): b"22", n("ab03"): b"333", n("bb04"): b""}
    for name, data in objects.items():
        await any_store.put(name, data)
    await any_store.cas_pointer("root", b"pointer", None)
    await any_store.cas_pointer("header", b"pointer", None)
    assert await listing(any_store) == {k: len(d) for k, d in objects.items()}
    assert await listing(any_store, "aa") == {n("aa01"): 1, n("aa02"): 2}
    assert await listing(any_store, "a") == {n("aa01"): 1, n("aa02"): 2, n("ab03"): 3}
    assert await listing(any_store, "ff") == {}


async def test_objects_and_pointers_do_not_collide(any_store: Store) -> None:
    await any_store.put(n("00"), b"an object")
    assert await any_store.read_pointer("root") is None
    await any_store.cas_pointer("root", b"a pointer", None)
    assert await any_store.get(n("00")) == b"an object"


async def test_many_concurrent_puts(any_store: Store) -> None:
    blobs = {n(f"{i:04x}"): os.urandom(i * 37 % 5000) for i in range(120)}

    async with trio.open_nursery() as nursery:
        for name, data in blobs.items():
            nursery.start_soon(any_store.put, name, data)

    assert await listing(any_store) == {k: len(d) for k, d in blobs.items()}
    for name in (n("0000"), n("0031"), n("0077")):
        assert await any_store.get(name) == blobs[name]


# -- the contract: pointers ----------------------------------------------------


async def test_pointer_create_read_update(any_store: Store) -> None:
    assert await any_store.read_pointer("root") is None
    tag1 = await any_store.cas_pointer("root", b"gen 1", None)
    ptr = await any_store.read_pointer("root")
    assert ptr is not None
    assert (ptr.data, ptr.etag) == (b"gen 1", tag1)
    tag2 = await any_store.cas_pointer("root", b"gen 2", tag1)
    assert tag2 != tag1
    ptr = await any_store.read_pointer("root")
    assert ptr is not None
    assert (ptr.data, ptr.etag) == (b"gen 2", tag2)


async def test_cas_with_stale_tag_fails(any_store: Store) -> None:
    tag1 = await any_store.cas_pointer("root", b"gen 1", None)
    tag2 = await any_store.cas_pointer("root", b"gen 2", tag1)
    with pytest.raises(PreconditionFailed):
        await any_store.cas_pointer("root", b"gen 2 bis", tag1)
    ptr = await any_store.read_pointer("root")
    assert ptr is not None
    assert (ptr.data, ptr.etag) == (b"gen 2", tag2)


async def test_cas_create_when_present_fails(any_store: Store) -> None:
    await any_store.cas_pointer("header", b"first", None)
    with pytest.raises(PreconditionFailed):
        await any_store.cas_pointer("header", b"second", None)
    ptr = await any_store.read_pointer("header")
    assert ptr is not None
    assert ptr.data == b"first"


async def test_cas_update_when_absent_fails(any_store: Store) -> None:
    tag = await any_store.cas_pointer("header", b"x", None)
    with pytest.raises(PreconditionFailed):
        await any_store.cas_pointer("root", b"y", tag)
    assert await any_store.read_pointer("root") is None


async def _race(store: Store, expected: str | None, n: int) -> list[int]:
    """``n`` concurrent CAS of pointer "root" from ``expected``; return the winners.

    Every writer's content is new: version tags are content hashes on both
    backends, so rewriting the current content would be a second "winner".
    """
    label = expected or "none"
    winners: list[int] = []
    losers: list[int] = []

    async def attempt(i: int) -> None:
        try:
            await store.cas_pointer("root", f"{label}: writer {i}".encode(), expected)
        except PreconditionFailed:
            losers.append(i)
        else:
            winners.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(attempt, i)
    assert len(winners) + len(losers) == n
    return winners


async def test_concurrent_create_has_one_winner(any_store: Store) -> None:
    winners = await _race(any_store, None, 10)
    assert len(winners) == 1
    ptr = await any_store.read_pointer("root")
    assert ptr is not None
    assert ptr.data == f"none: writer {winners[0]}".encode()


async def test_concurrent_cas_has_one_winner(any_store: Store) -> None:
    tag = await any_store.cas_pointer("root", b"start", None)
    winners = await _race(any_store, tag, 10)
    assert len(winners) == 1
    ptr = await any_store.read_pointer("root")
    assert ptr is not None
    assert ptr.data == f"{tag}: writer {winners[0]}".encode()


# -- local only ----------------------------------------------------------------


async def test_local_missing_folder_is_no_such_bucket(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "absent"))
    with pytest.raises(NoSuchBucket):
        await store.check()
    with pytest.raises(NoSuchBucket):
        await store.read_pointer("header")
    assert not (tmp_path / "absent").exists()


_COUNTER_SCRIPT = """
import sys, trio
from megafs.errors import PreconditionFailed
from megafs.stores import LocalStore

async def main(root, n):
    store = LocalStore(root)
    for _ in range(n):
        while True:
            ptr = await store.read_pointer("root")
            try:
                await store.cas_pointer("root", b"%d" % (int(ptr.data) + 1), ptr.etag)
                break
            except PreconditionFailed:
                pass

trio.run(main, sys.argv[1], int(sys.argv[2]))
"""


async def test_local_cas_is_safe_between_processes(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = LocalStore(str(root), create=True)
    await store.check()
    await store.cas_pointer("root", b"0", None)
    procs, increments = 4, 40

    async with trio.open_nursery() as nursery:
        for _ in range(procs):
            nursery.start_soon(
                trio.run_process,
                [sys.executable, "-c", _COUNTER_SCRIPT, str(root), str(increments)],
            )

    ptr = await store.read_pointer("root")
    assert ptr is not None
    assert int(ptr.data) == procs * increments


# -- S3 only: URLs and endpoints -------------------------------------------------


def test_s3_url_parsing() -> None:
    s = S3Store.from_url("s3://bucket")
    assert (s.bucket, s.prefix, s.url) == ("bucket", "", "s3://bucket")
    s = S3Store.from_url("s3://bucket/some/prefix/")
    assert (s.bucket, s.prefix, s.url) == ("bucket", "some/prefix/", "s3://bucket/some/prefix")
    for bad in ("s3://", "s3:///prefix", "s3://b/p?x=1", "http://bucket/p"):
        with pytest.raises(UsageError):
            S3Store.from_url(bad)


@pytest.mark.s3
async def test_s3_open_store(seaweedfs: SeaweedFS, s3_env: dict[str, str]) -> None:
    url = f"s3://{seaweedfs.bucket}/{unique_prefix()}/nested"
    async with open_store(url, endpoint=seaweedfs.endpoint) as store:
        assert isinstance(store, S3Store)
        assert store.url == url
        await store.check()
        await store.put(n("0a"), b"via open_store")
        assert await store.get(n("0a")) == b"via open_store"


@pytest.mark.s3
async def test_s3_endpoint_from_megafs_env(seaweedfs: SeaweedFS, s3_env: dict[str, str]) -> None:
    assert os.environ["MEGAFS_S3_ENDPOINT"] == seaweedfs.endpoint
    async with S3Store(seaweedfs.bucket, unique_prefix()) as store:
        await store.check()


@pytest.mark.s3
async def test_s3_endpoint_from_aws_config(
    seaweedfs: SeaweedFS, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEGAFS_S3_ENDPOINT")
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweedfs.endpoint)
    async with S3Store(seaweedfs.bucket, unique_prefix()) as store:
        await store.put(n("0b"), b"x")
        assert await listing(store) == {n("0b"): 1}


@pytest.mark.s3
async def test_s3_list_follows_continuation_tokens(
    seaweedfs: SeaweedFS, s3_env: dict[str, str]
) -> None:
    async with S3Store(seaweedfs.bucket, unique_prefix(), list_page_size=3) as store:
        names = [n(f"{i:02x}") for i in range(11)]
        for name in names:
            await store.put(name, name[:2].encode())
        await store.cas_pointer("root", b"p", None)
        assert await listing(store) == dict.fromkeys(names, 2)


# -- S3 only: errors ---------------------------------------------------------------


@pytest.mark.s3
async def test_s3_wrong_secret_key(
    seaweedfs: SeaweedFS, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    async with S3Store(seaweedfs.bucket, unique_prefix()) as store:
        with pytest.raises(StoreAuthError) as info:
            await store.check()
    msg = str(info.value)
    assert "SignatureDoesNotMatch" in msg
    assert "secret" in msg
    assert seaweedfs.endpoint in msg


@pytest.mark.s3
async def test_s3_unknown_access_key(
    seaweedfs: SeaweedFS, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobodyknowsme")
    async with S3Store(seaweedfs.bucket, unique_prefix()) as store:
        with pytest.raises(StoreAuthError, match=r"InvalidAccessKeyId") as info:
            await store.put(n("00"), b"x")
    assert "nobodyknowsme" not in str(info.value)  # error messages never name the key


@pytest.mark.s3
async def test_s3_no_credentials(
    seaweedfs: SeaweedFS, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    async with S3Store(seaweedfs.bucket, unique_prefix()) as store:
        with pytest.raises(StoreAuthError, match=r"no AWS credentials found.*AWS_ACCESS_KEY_ID"):
            await store.check()


@pytest.mark.s3
async def test_s3_missing_bucket(seaweedfs: SeaweedFS, s3_env: dict[str, str]) -> None:
    async with S3Store("no-such-bucket", "x", endpoint=seaweedfs.endpoint) as store:
        with pytest.raises(NoSuchBucket, match="no-such-bucket"):
            await store.check()
        with pytest.raises(NoSuchBucket):
            await store.get(n("00"))
        with pytest.raises(NoSuchBucket):
            await store.read_pointer("header")
        with pytest.raises(NoSuchBucket):
            await store.put(n("00"), b"x")  # and it is not auto-created


@pytest.mark.s3
async def test_s3_unreachable_endpoint_fails_fast(s3_env: dict[str, str]) -> None:
    (port,) = free_ports(1)  # nothing listens there
    endpoint = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    async with S3Store("bucket", "p", endpoint=endpoint, retry_deadline=1.0) as store:
        pattern = f"unreachable.*{re.escape(endpoint)}.*cannot connect"
        with pytest.raises(StoreUnreachable, match=pattern):
            await store.check()
    assert time.monotonic() - start < 5


# -- S3 only: retries ---------------------------------------------------------------


class FaultyTransport(httpx.AsyncBaseTransport):
    """Forwards to the real server; the first ``faults`` matching requests misbehave.

    A fault is "503" (answer SlowDown without forwarding), "404" (answer
    NoSuchKey without forwarding), "501" (answer NotImplemented, as a server
    without that API does) or "lose-response" (forward, so the server
    applies the request, then raise a read timeout).
    """

    CANNED = {"503": (503, "SlowDown"), "404": (404, "NoSuchKey"), "501": (501, "NotImplemented")}

    def __init__(self, faults: list[str], match: Callable[[httpx.Request], bool]) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.faults = faults
        self.match = match
        self.seen: list[tuple[str, str, int]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        fault = self.faults.pop(0) if self.faults and self.match(request) else None
        if fault in self.CANNED:
            status, code = self.CANNED[fault]
            self.seen.append((request.method, request.url.path, status))
            return httpx.Response(status, content=f"<Error><Code>{code}</Code></Error>".encode())
        response = await self.inner.handle_async_request(request)
        await response.aread()
        self.seen.append((request.method, request.url.path, response.status_code))
        if fault == "lose-response":
            await response.aclose()
            raise httpx.ReadTimeout("injected: response lost", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def _is_pointer_put(request: httpx.Request) -> bool:
    return request.method == "PUT" and "/p/" in request.url.path


def test_is_temp_failure() -> None:
    req = httpx.Request("GET", "http://x/")
    for status in (500, 502, 503, 504, 429):
        assert is_temp_failure(httpx.Response(status)), status
    for status in (200, 206, 400, 401, 403, 404, 409, 412, 416, 501, 507):
        assert not is_temp_failure(httpx.Response(status)), status
    timeout = b"<Error><Code>RequestTimeout</Code></Error>"
    assert is_temp_failure(httpx.Response(400, content=timeout))
    for exc in (
        httpx.ConnectError("refused", request=req),
        httpx.ConnectTimeout("slow", request=req),
        httpx.ReadTimeout("slow", request=req),
        httpx.ReadError("reset", request=req),
        httpx.RemoteProtocolError("peer closed connection", request=req),
    ):
        assert is_temp_failure(exc), exc
    assert not is_temp_failure(httpx.UnsupportedProtocol("ftp", request=req))
    assert not is_temp_failure(ValueError("not a transport error"))


@pytest.mark.s3
async def test_s3_retries_temporary_failures(seaweedfs: SeaweedFS, s3_env: dict[str, str]) -> None:
    transport = FaultyTransport(["503", "503"], lambda r: r.method == "PUT")
    async with S3Store(
        seaweedfs.bucket, unique_prefix(), transport=transport, backoff_base=0.01
    ) as store:
        await store.put(n("00"), b"eventually")
        assert await store.get(n("00")) == b"eventually"
    puts = [status for method, _, status in transport.seen if method == "PUT"]
    assert puts == [503, 503, 200]


@pytest.mark.s3
async def test_s3_gives_up_after_max_attempts(seaweedfs: SeaweedFS, s3_env: dict[str, str]) -> None:
    transport = FaultyTransport(["503"] * 10, lambda r: True)
    async with S3Store(
        seaweedfs.bucket, unique_prefix(), transport=transport, backoff_base=0.01, max_attempts=4
    ) as store:
        with pytest.raises(StoreUnreachable, match="503 SlowDown after 4 attempts"):
            await store.get(n("00"))
    assert len(transport.seen) == 4


@pytest.mark.s3
async def test_s3_does_not_retry_auth_errors(
    seaweedfs: SeaweedFS, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    transport = FaultyTransport([], lambda r: False)
    async with S3Store(seaweedfs.bucket, unique_prefix(), transport=transport) as store:
        with pytest.raises(StoreAuthError):
            await store.put(n("00"), b"x")
    assert [status for _, _, status in transport.seen] == [403]


@pytest.mark.s3
async def test_s3_cas_retry_after_lost_response_counts_as_success(
    seaweedfs: SeaweedFS, s3_env: dict[str, str]
) -> None:
    # The first attempt of each CAS is applied by the server but its answer
    # is lost; the retry then meets its own write (412) and must recognise it.
    transport = FaultyTransport([], _is_pointer_put)
    async with S3Store(
        seaweedfs.bucket, unique_prefix(), transport=transport, backoff_base=0.01
    ) as store:
        transport.faults = ["lose-response"]
        tag1 = await store.cas_pointer("root", b"gen 1", None)
        transport.faults = ["lose-response"]
        tag2 = await store.cas_pointer("root", b"gen 2", tag1)
        ptr = await store.read_pointer("root")
        assert ptr is not None
        assert (ptr.data, ptr.etag) == (b"gen 2", tag2)
        with pytest.raises(PreconditionFailed):  # a real loss is still a loss
            await store.cas_pointer("root", b"gen 3", tag1)
    puts = [status for method, path, status in transport.seen if method == "PUT"]
    assert puts == [200, 412, 200, 412, 412]


@pytest.mark.s3
async def test_s3_cas_on_absent_pointer_answered_404_is_a_loss(
    seaweedfs: SeaweedFS, s3_env: dict[str, str]
) -> None:
    # AWS answers If-Match on a missing key with 404 NoSuchKey (SeaweedFS: 412).
    transport = FaultyTransport(["404"], _is_pointer_put)
    async with S3Store(seaweedfs.bucket, unique_prefix(), transport=transport) as store:
        with pytest.raises(PreconditionFailed):
            await store.cas_pointer("root", b"x", '"0123456789abcdef0123456789abcdef"')
