#!/usr/bin/env python3
"""Would a pool of worker processes make cold sequential reads over S3 faster?

The mount daemon is one Python thread: a cold sequential read over S3 spends
about 5 ms of its CPU per MiB (docs/performance.md), so it cannot use a
second core. This probe measures the part a pool would take off it, outside
any mount, over a fresh SeaweedFS on 127.0.0.1:

- **in-process**: what the daemon does now for a chunk read ahead: a ranged
  GET of the whole chunk object through megafs's S3 store (httpx under trio)
  and AES-GCM opening of its blocks (:func:`megafs.format.crypto.open_blocks`),
  ``--inflight`` chunks at a time;
- **pool**: the same chunks fetched and opened by ``--workers`` worker
  processes (trio-parallel): the daemon signs a short-lived URL per chunk
  (S3 query signing: no credentials leave it), a worker GETs the range with
  a plain httpx client, opens the blocks and sends the plaintext back
  through trio-parallel's pipe;
- **pool+shm**: the same, the plaintext left in a shared-memory buffer of
  the daemon's (one per chunk in flight), the pipe carrying only its length.

It prints MiB/s and the CPU the main process spent per MiB. Chunks are
sealed by megafs's own code (format 3, 1 MiB chunks of 64 KiB blocks).

    python3 bench/pool_probe.py [--chunks 256] [--workers 2] [--inflight 4] [--rounds 2]

Installs trio-parallel with pip when it is missing (``--no-install``: fail
instead). One heavy job at a time: the S3 server shares the machine's cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# pool_worker is imported by name (workers then import it too, rather than
# receive the functions by value with fresh globals at every call)
sys.path[:0] = [str(ROOT / "src"), str(ROOT), str(ROOT / "bench")]

import trio  # noqa: E402
from pool_worker import CHUNK, LAYOUT, fetch_and_open, fetch_into  # noqa: E402

from megafs.format import crypto  # noqa: E402

# --- the daemon's side --------------------------------------------------------


def ensure_trio_parallel(install: bool) -> None:
    try:
        import trio_parallel  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        if not install:
            raise SystemExit("trio-parallel is missing: pip install trio-parallel") from None
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "trio-parallel",
            ],
            check=True,
        )


async def probe(args: argparse.Namespace, env: dict[str, str], bucket: str) -> None:
    import trio_parallel

    from megafs.stores import open_store

    os.environ.update(env)
    store: Any = open_store(f"s3://{bucket}", endpoint=env["MEGAFS_S3_ENDPOINT"])
    master, vault_id = os.urandom(32), os.urandom(16)
    keys = crypto.Keys(master, vault_id, crypto.COMMITTING_VERSION)
    file_key, file_id = os.urandom(32), os.urandom(16)
    objs = [crypto.new_id() for _ in range(args.chunks)]
    plain = os.urandom(CHUNK)
    sealed_len = LAYOUT.sealed_len(CHUNK)
    limit = trio.Semaphore(16)

    async def put(i: int, obj: bytes) -> None:
        async with limit:
            sealed = crypto.seal_chunk(keys, LAYOUT, file_key, file_id, obj, i, plain)
            await store.put(obj.hex(), sealed)

    async with trio.open_nursery() as nursery:
        for i, obj in enumerate(objs):
            nursery.start_soon(put, i, obj)

    workers = trio.CapacityLimiter(args.workers)

    async def in_process(i: int, obj: bytes) -> bytes:
        body = await store.get_range(obj.hex(), 0, sealed_len)
        opened = crypto.open_blocks(keys, LAYOUT, file_key, file_id, obj, i, CHUNK, 0, body)
        return b"".join(opened)

    async def job(i: int, obj: bytes) -> tuple[Any, ...]:
        """A worker's arguments for chunk ``i``: a presigned URL and the keys."""
        url = await store._requests.presign(store._obj_key(obj.hex()), 300)
        return (url, sealed_len, master, vault_id, keys.version, file_key, file_id, obj, i)

    async def pooled(i: int, obj: bytes) -> bytes:
        got: bytes = await trio_parallel.run_sync(
            fetch_and_open, *await job(i, obj), limiter=workers
        )
        return got

    free = [shared_memory.SharedMemory(create=True, size=CHUNK) for _ in range(args.inflight)]
    segments = list(free)

    async def pooled_shm(i: int, obj: bytes) -> bytes:
        work = await job(i, obj)
        shm = free.pop()
        try:
            n: int = await trio_parallel.run_sync(fetch_into, shm.name, *work, limiter=workers)
            assert shm.buf is not None
            return bytes(shm.buf[:n])
        finally:
            free.append(shm)

    await trio_parallel.run_sync(int, "0", limiter=workers)  # start the workers first
    modes = (("in-process", in_process), ("pool", pooled), ("pool+shm", pooled_shm))
    for rnd in range(args.rounds):
        for name, fn in modes:
            inflight = trio.Semaphore(args.inflight)
            wrong: list[int] = []

            async def one(
                i: int, obj: bytes, fn: Any = fn, inflight: Any = inflight, wrong: Any = wrong
            ) -> None:
                async with inflight:
                    if await fn(i, obj) != plain:
                        wrong.append(i)

            t0, c0 = time.perf_counter(), time.process_time()
            async with trio.open_nursery() as nursery:
                for i, obj in enumerate(objs):
                    nursery.start_soon(one, i, obj)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if wrong:
                raise SystemExit(f"{name}: chunks {wrong[:5]} read back wrong")
            mib = args.chunks * CHUNK / (1 << 20)
            print(
                f"round {rnd + 1}, {name:<10}: {mib / wall:6.0f} MiB/s, "
                f"main process {cpu * 1000 / mib:.2f} ms CPU per MiB",
                flush=True,
            )
    await store.aclose()
    for shm in segments:
        shm.close()
        shm.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=256, help="1 MiB chunks read per round")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--inflight", type=int, default=4, help="chunks fetched at once")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-install", action="store_true")
    args = ap.parse_args()
    ensure_trio_parallel(not args.no_install)
    from tests.support.seaweed import SeaweedFS

    print(f"{os.cpu_count()} cores; {args.workers} workers; {args.inflight} chunks in flight")
    with (
        tempfile.TemporaryDirectory(prefix="megafs-pool-") as tmp,
        SeaweedFS(Path(tmp), "probe") as s3,
    ):
        trio.run(probe, args, s3.env, "probe")


if __name__ == "__main__":
    main()
