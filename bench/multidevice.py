"""Several devices on one vault: how fast a change travels, and what merging costs.

    python bench/multidevice.py [--store local|s3] [--trials 20]
                                [--commit-interval 5] [--poll-interval 3]

Two devices (two ``megafs mount`` daemons, each with its own client state and
cache) mount one new vault, on a local folder or on SeaweedFS started on
127.0.0.1 by the script.

* **Propagation**: a small file is written (and closed) on device A; the
  delay until ``cat`` through device B's mount returns its content, over
  ``--trials`` files: median and 95th percentile. It is bounded by the
  commit interval (when A uploads) plus the poll interval (when B looks).
* **Merge cost**: the Django sdist (as ``bench/compare.py`` uses it) is
  extracted on A alone, until durable (an fsync through the mount commits
  everything); then on A and B at once, each into its own folder, until
  both are durable (one of them merges the other's commit, probably
  several times). Reported: the two wall times and their ratio, and how
  many merges each daemon logged.

Needs root (FUSE) and the test dependencies (``pip install -e .[test]``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from compare import prepare_tree  # noqa: E402
from tests.support.mounting import Drive  # noqa: E402
from tests.support.seaweed import SeaweedFS  # noqa: E402


@contextlib.contextmanager
def store(kind: str, base: Path) -> Iterator[tuple[str, dict[str, str]]]:
    if kind == "local":
        yield str(base / "store"), {}
        return
    server = SeaweedFS(base / "seaweed", "bench", user="bench")
    server.start()
    try:
        yield f"s3://{server.bucket}/multidevice", dict(server.env)
    finally:
        server.stop()


def durable(mnt: Path) -> None:
    """fsync through the mount: one commit of everything written so far."""
    probe = mnt / ".durable"
    with open(probe, "wb") as f:
        f.write(b"x")
        f.flush()
        os.fsync(f.fileno())


def extract(tar: Path, into: Path) -> None:
    into.mkdir()
    subprocess.run(["tar", "-xf", str(tar), "-C", str(into)], check=True)
    durable(into.parent)


def merges(d: Drive) -> int:
    return d.log_text().count("merged with ")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", choices=("local", "s3"), default="local")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--commit-interval", type=float, default=5.0)
    ap.add_argument("--poll-interval", type=float, default=3.0)
    ap.add_argument("--cache", type=Path, default=REPO / "bench" / ".cache")
    args = ap.parse_args(argv)
    tree = prepare_tree(args.cache, 0, install=True)
    base = Path(tempfile.mkdtemp(prefix="megafs-multidevice-"))
    with store(args.store, base) as (url, env):
        a, b = Drive(url, base / "a", env), Drive(url, base / "b", env)
        try:
            a.init()
            for name, d in (("A", a), ("B", b)):
                d.mount(
                    "--device-name", name,
                    "--commit-interval", str(args.commit_interval),
                    "--poll-interval", str(args.poll_interval),
                )  # fmt: skip
            delays = []
            for i in range(args.trials):
                data = f"trial {i} {time.time_ns()}".encode()
                start = time.monotonic()
                (a.mountpoint / f"p{i}.txt").write_bytes(data)
                while True:
                    try:
                        got = subprocess.run(
                            ["cat", str(b.mountpoint / f"p{i}.txt")], capture_output=True
                        ).stdout
                    except OSError:
                        got = b""
                    if got == data:
                        break
                    if time.monotonic() - start > 120:
                        raise SystemExit(f"trial {i}: not on B after 120 s")
                    time.sleep(0.02)
                delays.append(time.monotonic() - start)
            delays.sort()
            p95 = delays[min(len(delays) - 1, round(0.95 * (len(delays) - 1)))]
            print(
                f"propagation A -> B ({args.store}, commit {args.commit_interval:g} s, "
                f"poll {args.poll_interval:g} s, {len(delays)} files): "
                f"median {statistics.median(delays):.2f} s, p95 {p95:.2f} s"
            )
            t0 = time.monotonic()
            extract(tree.tar, a.mountpoint / "alone")
            alone = time.monotonic() - t0
            before = merges(a) + merges(b)
            errors: list[BaseException] = []

            def run(d: Drive, name: str) -> None:
                try:
                    extract(tree.tar, d.mountpoint / name)
                except BaseException as e:  # reported below
                    errors.append(e)

            threads = [
                threading.Thread(target=run, args=(a, "both-a")),
                threading.Thread(target=run, args=(b, "both-b")),
            ]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            both = time.monotonic() - t0
            if errors:
                raise errors[0]
            print(
                f"{tree.name} ({tree.files} files) extracted until durable: one device alone "
                f"{alone:.2f} s; two devices at once, each its own folder, {both:.2f} s "
                f"({both / alone:.2f}x; {merges(a) + merges(b) - before} merges)"
            )
            # both trees, whole, on both devices once caught up
            time.sleep(args.commit_interval + args.poll_interval + 1)
            for d in (a, b):
                for sub in ("both-a", "both-b"):
                    n = sum(len(fs) for _, _, fs in os.walk(d.mountpoint / sub))
                    if n != tree.files:
                        raise SystemExit(f"{d.mountpoint}/{sub}: {n} files, not {tree.files}")
            print("both extractions complete on both devices")
        finally:
            for d in (a, b):
                d.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
