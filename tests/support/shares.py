"""Where share links lead in tests: a local store folder published by
Python's static web server, and raw access to the objects of a SeaweedFS
bucket (to damage them the way a store could). The shares themselves are
made by :func:`megafs.fs.shares.share`, as ``megafs share`` makes them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import botocore.config
import botocore.session
import httpx

from megafs.vault.vault import obj_name

from .seaweed import SeaweedFS, free_ports

# --- a local store folder on a static web server -----------------------------


def local_object_path(root: Path, obj: bytes) -> Path:
    name = obj_name(obj)
    return root / "objects" / name[:2] / name


@contextmanager
def static_server(root: Path, log: Path) -> Iterator[str]:
    """``python -m http.server`` serving ``root`` on 127.0.0.1 (it answers
    ranged GETs with the whole file: a 200); yields its base URL."""
    [port] = free_ports(1)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(base, timeout=1.0)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"http.server did not start: {log.read_text()}") from None
                time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- a SeaweedFS bucket ---------------------------------------------------------


class Bucket:
    """The objects under ``prefix`` of ``server``'s bucket, read and written
    directly (botocore), behind megafs's back."""

    def __init__(self, server: SeaweedFS, prefix: str) -> None:
        self.bucket = server.bucket
        self.prefix = prefix.strip("/") + "/"
        session = botocore.session.Session()
        self.client: Any = session.create_client(
            "s3",
            region_name=server.region,
            endpoint_url=server.endpoint,
            aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key,
            config=botocore.config.Config(
                signature_version="s3v4", s3={"addressing_style": "path"}
            ),
        )

    def object_key(self, obj: bytes) -> str:
        return f"{self.prefix}o/{obj_name(obj)}"

    def get(self, key: str) -> bytes:
        data: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return data

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)
