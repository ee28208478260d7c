"""Random 4 KiB reads through a mount of a local-folder vault, with the
store's files in the page cache (a warm daemon on a warm disk) or not
(``--drop-caches``: every block from the disk). The kernel's cache of the
mounted file is empty in both (a fresh mount, ``POSIX_FADV_RANDOM``), so
every read is a FUSE request.

Run from the repository root (one heavy job at a time), as root for
``--drop-caches``:

    python3 bench/random_reads.py [--size 256M] [--reads 20000] [--threads 1] [--src DIR]
        [--init '--block-size 4K']

``--src`` measures another checkout's ``src`` folder (e.g. a
``git worktree`` of an older commit).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def read_all(fd: int, offsets: list[int]) -> None:
    for off in offsets:
        os.pread(fd, 4096, off)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256, help="MiB")
    ap.add_argument("--reads", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--src", default=str(ROOT / "src"))
    ap.add_argument("--drop-caches", action="store_true")
    ap.add_argument("--init", default="", help="more `megafs init` options, e.g. '--block-size 4K'")
    ap.add_argument("--threads", type=int, default=1, help="readers at once, sharing the reads")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="megafs-rand-") as tmp:
        base = Path(tmp)
        env = dict(
            os.environ,
            PYTHONPATH=args.src,
            MEGAFS_PASSPHRASE="bench",
            MEGAFS_STATE_DIR=str(base / "state"),
            XDG_RUNTIME_DIR=str(base / "run"),
        )
        (base / "run").mkdir(mode=0o700)
        mnt, store = base / "mnt", base / "store"
        mnt.mkdir()
        megafs = [sys.executable, "-m", "megafs"]

        def run(*argv: str | Path) -> None:
            subprocess.run([*map(str, argv)], env=env, check=True, capture_output=True)

        def mount() -> None:
            run(*megafs, "mount", store, mnt, "--cache-dir", base / f"c{time.monotonic_ns()}")

        run(*megafs, "init", store, "--kdf-memory", "8192", "--kdf-iterations", "1",
            *args.init.split())
        mount()
        block = os.urandom(1 << 20)
        with open(mnt / "big.bin", "wb") as f:
            for _ in range(args.size):
                f.write(block)
        run(*megafs, "umount", mnt)
        rng = random.Random(1)
        offsets = [rng.randrange(args.size * 256) * 4096 for _ in range(args.reads)]
        times = []
        for _ in range(args.runs):
            mount()
            try:
                if args.drop_caches:
                    os.sync()
                    Path("/proc/sys/vm/drop_caches").write_text("3\n")
                fd = os.open(mnt / "big.bin", os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
                share = [offsets[i :: args.threads] for i in range(args.threads)]
                t = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
                    list(pool.map(functools.partial(read_all, fd), share))
                times.append(time.perf_counter() - t)
                os.close(fd)
            finally:
                run(*megafs, "umount", mnt)
        t = statistics.median(times)
        where = "from the disk" if args.drop_caches else "store files in the page cache"
        print(
            f"{args.reads} random 4 KiB reads of {args.size} MiB, {args.threads} at once, {where}: "
            f"{args.reads / t:,.0f} IOPS ({t / args.reads * 1e6:.0f} us per read; "
            f"median of {args.runs})"
        )


if __name__ == "__main__":
    main()
