"""A writer killed at any moment leaves the vault in its old or its new state.

A child process (:mod:`tests.support.crash_worker`) commits numbered files in a loop
and prints each number once its commit returned; the parent SIGKILLs it after
a random delay, many times over, on the same local-store vault. After every
kill the vault must open, and hold exactly the state of the last commit the
child reported, or of the one after it (committed, not yet reported): every
file complete and exact, nothing half-written, the overwritten ``counter``
file matching that same commit. The next child takes over the dead writer's
lease (same client id, dead pid).
"""

from __future__ import annotations

import random
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from megafs.format.crypto import Layout
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.stores import LocalStore
from megafs.vault.vault import Vault

from ..support.crash_worker import content, counter_content, name
from ..support.helpers import FAST_KDF, PASS

REPO = Path(__file__).resolve().parents[2]
READY_DEADLINE = 30.0


def run_child(
    store: Path, start: int, size: int, keep: int, delay: float, after_ready: bool
) -> list[int]:
    """Start a worker, SIGKILL it ``delay`` s after start (or after "ready"); return its output."""
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "tests.support.crash_worker"),
            *(str(store), str(start), str(size), str(keep)),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        if after_ready:
            sel = selectors.DefaultSelector()
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(READY_DEADLINE), "worker did not get ready"
            line = proc.stdout.readline()
            assert line == b"ready\n", (line, proc.stderr.read() if proc.poll() else b"")
        time.sleep(delay)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        out, err = proc.stdout.read(), proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert alive and proc.returncode == -signal.SIGKILL, err.decode(errors="replace")
    return [int(x) for x in out.split() if x != b"ready"]


async def check_vault(store: Path, reported: int, size: int, keep: int) -> int:
    """Assert the vault holds the state of commit ``reported`` or ``reported + 1``.

    Returns the number of the last commit it holds (-1: no file committed yet).
    """
    fs = await Filesystem.load(await Vault.unlock(LocalStore(str(store)), PASS), writable=False)
    names: set[bytes] = set()
    after = 0
    while batch := await fs.readdir(ROOT_INO, after):
        names |= {n for n, _, _ in batch if n.startswith(b"f")}
        after = batch[-1][2]

    def expected(k: int) -> set[bytes]:
        first = max(0, k - keep + 1) if keep else 0
        return {name(i) for i in range(first, k + 1)}

    held = [k for k in (reported, reported + 1) if names == expected(k)]
    assert held, f"vault holds {sorted(names)[-3:]}..., not commit {reported} or {reported + 1}"
    k = held[0]
    for i in range(max(0, k - (keep or 3) + 1), k + 1):  # the newest files, byte for byte
        ino = (await fs.lookup(ROOT_INO, name(i))).ino
        want = content(i, size)
        assert await fs.read(ino, 0, len(want) + 1) == want, name(i)
    for n in names:  # and every file's size
        i = int(n[1:])
        assert (await fs.lookup(ROOT_INO, n)).size == len(content(i, size)), n
    if k >= 0:
        ctr = (await fs.lookup(ROOT_INO, b"counter")).ino
        assert await fs.read(ctr, 0, 10**6) == counter_content(k)
    return k


def crash_loop(
    tmp_path: Path,
    *,
    layout: Layout,
    size: int,
    keep: int,
    trials: int,
    max_delay: float,
    seed: int,
) -> None:
    store = tmp_path / "store"

    async def init() -> None:
        vault, _ = await Vault.init(LocalStore(str(store), create=True), PASS, FAST_KDF, layout)
        await (await Filesystem.load(vault)).close()

    trio.run(init)
    rng = random.Random(seed)
    last = -1
    commits = 0
    for trial in range(trials):
        after_ready = trial % 4 != 0  # sometimes kill during startup and the lease commit
        delay = rng.uniform(0, max_delay)
        got = run_child(store, last + 1, size, keep, delay, after_ready)
        assert got == list(range(last + 1, last + 1 + len(got)))
        reported = got[-1] if got else last
        commits += len(got)
        last = trio.run(check_vault, store, reported, size, keep)
        print(f"trial {trial}: delay {delay * 1000:.0f} ms, reported {len(got)}, held {last}")
    assert commits >= trials, "the kills should land among commits, not only before them"

    async def reopen_writable() -> None:
        fs = await Filesystem.load(await Vault.unlock(LocalStore(str(store)), PASS))
        await fs.close()

    trio.run(reopen_writable)  # the dead writer's lease is taken over
    trio.run(check_vault, store, last, size, keep)


@pytest.mark.slow
def test_killed_writer_small_files(tmp_path: Path) -> None:
    """Small files (inline and one-chunk), every commit rewriting a leaf and the root."""
    crash_loop(
        tmp_path,
        layout=Layout(chunk_size=64 * 1024, block_size=4096),
        size=1500,
        keep=0,
        trials=30,
        max_delay=0.3,
        seed=1,
    )


def test_killed_writer_during_large_uploads(tmp_path: Path) -> None:
    """Multi-MiB files (several 1 MiB chunk objects per commit), and deletions."""
    crash_loop(
        tmp_path,
        layout=Layout(),
        size=3 * 1024 * 1024 + 100_000,
        keep=2,
        trials=16,
        max_delay=0.3,
        seed=2,
    )
