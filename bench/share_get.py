"""``megafs get`` of a shared file against reading it through the mount
(docs/sharing.md; figures in docs/performance.md).

A vault on a SeaweedFS started here (loopback) gets one file of SIZE bytes
written through a mount; it is shared with ``megafs share`` (presigned
URLs). Then, three times each, medians reported:

* ``megafs get LINK`` into a fresh folder (every block verified, written
  to disk and fsynced);
* ``cat FILE > /dev/null`` through a fresh mount with an empty cache
  (the cold sequential read of the mount).

Run from the repository root (one heavy job at a time):

    python3 bench/share_get.py [--size 1G]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megafs.cli.options import size_arg  # noqa: E402

PASS = "bench passphrase"
MEGAFS = [sys.executable, "-m", "megafs"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(argv: list[str], env: dict[str, str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, check=True, text=True, capture_output=True, **kw)  # type: ignore[call-overload,no-any-return]


def timed(argv: list[str], env: dict[str, str], **kw: object) -> float:
    t = time.perf_counter()
    run(argv, env, **kw)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=size_arg, default=1 << 30)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from tests.support.helpers import running_seaweedfs

    with tempfile.TemporaryDirectory(prefix="megafs-share-") as tmp:
        base = Path(tmp)
        with running_seaweedfs(base / "seaweed", "bench", "bench") as s3:
            env = dict(
                os.environ,
                **s3.env,
                MEGAFS_PASSPHRASE=PASS,
                MEGAFS_STATE_DIR=str(base / "state"),
                XDG_RUNTIME_DIR=str(base / "run"),
            )
            (base / "run").mkdir(mode=0o700)
            url = f"s3://bench/share{os.getpid()}"
            mnt = base / "mnt"
            mnt.mkdir()
            run([*MEGAFS, "init", url, "--kdf-memory", "8192", "--kdf-iterations", "1"], env)

            def mount() -> None:
                cache = base / f"cache-{time.monotonic_ns()}"
                run([*MEGAFS, "mount", url, str(mnt), "--cache-dir", str(cache)], env)

            def umount() -> None:
                run([*MEGAFS, "umount", str(mnt)], env)

            log(f"writing {args.size >> 20} MiB through the mount")
            mount()
            block = os.urandom(1 << 20)
            with open(mnt / "big.bin", "wb") as f:
                left = args.size
                while left > 0:
                    f.write(block[: min(left, len(block))])
                    left -= len(block)
            link = run([*MEGAFS, "share", str(mnt / "big.bin")], env).stdout.strip()
            umount()
            gets, reads = [], []
            for i in range(args.runs):
                out = base / f"get-{i}"
                out.mkdir()
                gets.append(timed([*MEGAFS, "get", "-q", link, str(out / "big.bin")], env))
                shutil.rmtree(out)
                mount()
                try:
                    reads.append(
                        timed(["dd", f"if={mnt / 'big.bin'}", "of=/dev/null", "bs=1M"], env)
                    )
                finally:
                    umount()
                log(f"run {i + 1}: get {gets[-1]:.2f} s, cold read {reads[-1]:.2f} s")
            mib = args.size / (1 << 20)
            g, r = statistics.median(gets), statistics.median(reads)
            print(f"{mib:.0f} MiB over loopback SeaweedFS")
            print(f"megafs get:                              {mib / g:7.1f} MiB/s ({g:.2f} s)")
            print(f"cold read through the mount (dd bs=1M): {mib / r:7.1f} MiB/s ({r:.2f} s)")
            print(f"get / mount: {r / g:.2f}x")


if __name__ == "__main__":
    main()
