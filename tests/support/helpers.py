"""Shared helpers for tests (fixtures live in conftest.py)."""

from __future__ import annotations

import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from megafs.format.crypto import KdfParams, Layout
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.stores import Store
from megafs.vault.retention import Policy
from megafs.vault.vault import Vault

from .seaweed import SeaweedFS, SeaweedStartError

FAST_KDF = KdfParams(memory_kib=8192, iterations=1, lanes=1)
PASS = "correct horse battery staple"
#: Small geometry so tests cross chunk and block boundaries with little data.
SMALL = Layout(chunk_size=64 * 1024, block_size=4096)
#: ``megafs init`` flags for the same fast KDF.
KDF_ARGS = ("--kdf-memory", "8192", "--kdf-iterations", "1")
#: The command that runs this checkout's megafs: every test runs it this way.
MEGAFS = (sys.executable, "-m", "megafs")
#: How long a CLI command or tool may take in a test.
COMMAND_TIMEOUT = 120.0


def run_megafs(
    *args: str | Path,
    env: Mapping[str, str],
    timeout: float = COMMAND_TIMEOUT,
    cwd: Path | None = None,
    wrap: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run ``megafs ARGS`` (behind the command ``wrap``, which ends by running
    its arguments) with exactly ``env``, no stdin, output captured as text;
    the exit code is the caller's to check."""
    return subprocess.run(
        [*wrap, *MEGAFS, *map(str, args)],
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def new_vault(store: Store, layout: Layout | None = SMALL) -> Vault:
    vault, _ = await Vault.init(store, PASS, FAST_KDF, layout)
    return vault


async def forget_history(fs: Filesystem) -> None:
    """Make ``fs``'s vault keep no past root (a retention policy that keeps
    only the newest), committed: garbage goes as soon as a commit makes it,
    as it did before history (tests of what a commit deletes)."""
    fs.committer.keeper.set_policy(Policy(every=0, tiers=()))
    await fs.commit()


async def read_tree(fs: Filesystem) -> dict[bytes, bytes | None]:
    """Every path under ``fs``'s root: file content (symlinks: their target),
    None for folders."""
    out: dict[bytes, bytes | None] = {}

    async def walk(ino: int, prefix: bytes) -> None:
        after = 0
        while batch := await fs.readdir(ino, after):
            for name, attr, cookie in batch:
                after = cookie
                path = prefix + name
                if stat.S_ISDIR(attr.mode):
                    out[path] = None
                    await walk(attr.ino, path + b"/")
                elif stat.S_ISLNK(attr.mode):
                    out[path] = await fs.readlink(attr.ino)
                else:
                    out[path] = await fs.read(attr.ino, 0, 1 << 30)

    await walk(ROOT_INO, b"")
    return out


async def reopen(store: Store, *, writable: bool = True) -> Filesystem:
    vault = await Vault.unlock(store, PASS)
    return await Filesystem.load(vault, writable=writable)


def unique_prefix() -> str:
    """A fresh S3 key prefix, so tests sharing the session's bucket never meet."""
    return "t-" + secrets.token_hex(8)


@contextmanager
def running_seaweedfs(base: Path, bucket: str, user: str) -> Iterator[SeaweedFS]:
    """A started :class:`SeaweedFS`, stopped on leaving; failing to start fails the test."""
    server = SeaweedFS(base, bucket, user=user)
    try:
        server.start()
    except SeaweedStartError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield server
    finally:
        server.stop()
