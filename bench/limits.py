"""Bandwidth limits: how close ``--upload-limit`` and ``--download-limit``
keep a large transfer to the rate asked (README, "Mount options"; figures
in docs/performance.md).

On a SeaweedFS started here (loopback), a file of SIZE bytes is written
through a mount and fsynced (durable in the store), once without a limit
and once with ``--upload-limit RATE``; then read back cold (fresh mount,
empty cache) without a limit and with ``--download-limit RATE``. Each rate
is the file's size over the time the transfer took; the limited ones are
shown as a share of RATE (the limiter allows one second of burst, so a
transfer of N seconds may run up to (N+1)/N of RATE).

Run from the repository root (one heavy job at a time):

    python3 bench/limits.py [--size 64M] [--rate 5M]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megafs.mount.config import parse_size  # noqa: E402

PASS = "bench passphrase"
MEGAFS = [sys.executable, "-m", "megafs"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=parse_size, default=64 << 20)
    ap.add_argument("--rate", default="5M")
    args = ap.parse_args()
    rate = parse_size(args.rate)
    sys.path.insert(0, str(ROOT / "tests"))
    from tests.support.helpers import running_seaweedfs

    with tempfile.TemporaryDirectory(prefix="megafs-limits-") as tmp:
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
            url = f"s3://bench/limits{os.getpid()}"
            mnt = base / "mnt"
            mnt.mkdir()
            init = [*MEGAFS, "init", url, "--kdf-memory", "8192", "--kdf-iterations", "1"]
            subprocess.run(init, env=env, check=True, capture_output=True)
            data = os.urandom(1 << 20)

            def mounted(*opts: str) -> None:
                cache = base / f"cache-{time.monotonic_ns()}"
                argv = [*MEGAFS, "mount", url, str(mnt), "--cache-dir", str(cache), *opts]
                subprocess.run(argv, env=env, check=True, capture_output=True)

            def umount() -> None:
                subprocess.run([*MEGAFS, "umount", str(mnt)], env=env, check=True)

            def write(name: str) -> float:
                t = time.perf_counter()
                with open(mnt / name, "wb") as f:
                    for _ in range(args.size >> 20):
                        f.write(data)
                    f.flush()
                    os.fsync(f.fileno())  # durable in the store (fsync=store)
                return time.perf_counter() - t

            def read(name: str) -> float:
                t = time.perf_counter()
                with open(mnt / name, "rb") as f:
                    while f.read(1 << 20):
                        pass
                return time.perf_counter() - t

            results: list[tuple[str, float, bool]] = []
            for label, opts, name in (
                ("upload, no limit", (), "free.bin"),
                (f"upload, --upload-limit {args.rate}", ("--upload-limit", args.rate), "slow.bin"),
            ):
                mounted(*opts)
                try:
                    secs = write(name)
                finally:
                    umount()
                results.append((label, secs, bool(opts)))
                log(f"{label}: {secs:.2f} s")
            for label, opts in (
                ("cold read, no limit", ()),
                (f"cold read, --download-limit {args.rate}", ("--download-limit", args.rate)),
            ):
                mounted(*opts)
                try:
                    secs = read("free.bin")
                finally:
                    umount()
                results.append((label, secs, bool(opts)))
                log(f"{label}: {secs:.2f} s")
            mib = args.size / (1 << 20)
            print(f"{mib:.0f} MiB over loopback SeaweedFS, limit {args.rate} = {rate} B/s")
            for label, secs, limited in results:
                bps = args.size / secs
                share = f"  {bps / rate:6.1%} of the limit" if limited else ""
                print(f"{label:36} {bps / (1 << 20):8.2f} MiB/s ({secs:6.2f} s){share}")


if __name__ == "__main__":
    main()
