"""Fault soak: a long random workload on a mount whose S3 store misbehaves.

    python bench/fault_soak.py [--minutes 10] [--rounds 1000] [--rate 0.15]
                               [--outage 3] [--store-timeout 10] [--seed N]
                               [--keep DIR]

Starts SeaweedFS on 127.0.0.1 and puts the fault proxy of
``tests/support/faultproxy.py`` in front of it (every kind of fault, ``--rate`` of
all requests). Then, round after round, it mounts the vault through the
proxy with a fresh cache, runs random operations (create, overwrite,
append, truncate, rename, delete, fsync, read back and compare) against an
in-memory model of what the folder must hold, takes the store away
altogether for ``--outage`` seconds at a random moment (shorter than
``--store-timeout``, so operations must ride it out), unmounts, mounts again
with another fresh cache and compares every file with the model.

Stops after ``--rounds`` rounds or ``--minutes`` minutes, whichever comes
first, and prints the counts of rounds, operations, requests, faults
injected (by kind), retries (the daemon's "temporary failure" log lines),
failed operations, and *losses*: files whose content read back differs from
the model, or that are missing or extra. Target: 0 failed and 0 lost. The
exit status is 1 if either is not 0. Everything runs on loopback.

Needs root (FUSE) and the test dependencies (``pip install -e .[test]``).
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import secrets
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.faultproxy import ALL_FAULTS, FaultProxy  # noqa: E402
from tests.support.helpers import unique_prefix  # noqa: E402
from tests.support.mounting import Drive, walk  # noqa: E402
from tests.support.seaweed import SeaweedFS  # noqa: E402

MiB = 1 << 20


class Soak:
    """One vault, a model of its files, and the counters."""

    def __init__(self, drive: Drive, proxy: FaultProxy, args: argparse.Namespace) -> None:
        self.drive = drive
        self.proxy = proxy
        self.args = args
        self.rnd = random.Random(args.seed)
        self.model: dict[str, bytes] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        self.failures: list[str] = []
        self.losses: list[str] = []
        self.mount_opts = (
            "--store-timeout",
            str(args.store_timeout),
            "--commit-interval",
            "1",
        )
        self.cache_no = 0

    # --- mounting ---------------------------------------------------------------

    def mount(self) -> None:
        self.cache_no += 1
        self.drive.mount(*self.mount_opts, cache_dir=self.drive.tmp / f"cache-{self.cache_no}")

    def umount(self) -> None:
        proc = self.drive.megafs("umount", str(self.drive.mountpoint), timeout=600)
        if proc.returncode:
            self.fail(f"umount exited {proc.returncode}: {proc.stderr.strip()}")
            self.drive.cleanup()
        shutil.rmtree(self.drive.tmp / f"cache-{self.cache_no}", ignore_errors=True)

    # --- bookkeeping ------------------------------------------------------------

    def fail(self, what: str) -> None:
        self.counts["failed"] += 1
        self.failures.append(what)
        print(f"  FAILED: {what}", flush=True)

    def lose(self, what: str) -> None:
        self.counts["lost"] += 1
        self.losses.append(what)
        print(f"  LOST: {what}", flush=True)

    def path(self, name: str) -> Path:
        return self.drive.mountpoint / name

    # --- the workload -----------------------------------------------------------

    def op(self) -> None:
        rnd = self.rnd
        names = sorted(self.model)
        kind = rnd.choice(
            ["create", "create", "overwrite", "append", "truncate", "rename", "delete",
             "fsync", "read", "read"]
        ) if names else "create"
        name = rnd.choice(names) if names else ""
        self.counts["ops"] += 1
        self.counts[f"op:{kind}"] += 1
        try:
            self._do(kind, name)
        except OSError as e:
            self.fail(f"{kind} {name}: {e}")
            try:  # resynchronise the model with what is there now
                self.model[name] = self.path(name).read_bytes()
            except OSError:
                self.model.pop(name, None)

    def _do(self, kind: str, name: str) -> None:
        rnd = self.rnd
        if kind == "create":
            name = f"d{rnd.randrange(4)}/f-{secrets.token_hex(4)}"
            size = rnd.choice([0, 100, 3000, 70_000, 900_000, MiB + 17, 3 * MiB - 5])
            data = rnd.randbytes(size)
            self.path(name).parent.mkdir(exist_ok=True)
            self.path(name).write_bytes(data)
            self.model[name] = data
        elif kind == "overwrite":
            old = self.model[name]
            off = rnd.randrange(len(old) + 1)
            piece = rnd.randbytes(rnd.choice([1, 5000, 300_000]))
            with open(self.path(name), "r+b") as f:
                f.seek(off)
                f.write(piece)
            new = bytearray(old)
            new[off : off + len(piece)] = piece
            self.model[name] = bytes(new)
        elif kind == "append":
            piece = rnd.randbytes(rnd.choice([10, 70_000, 1_200_000]))
            with open(self.path(name), "ab") as f:
                f.write(piece)
            self.model[name] += piece
        elif kind == "truncate":
            size = rnd.randrange(len(self.model[name]) + 100_000)
            os.truncate(self.path(name), size)
            self.model[name] = self.model[name][:size].ljust(size, b"\0")
        elif kind == "rename":
            new_name = f"d{rnd.randrange(4)}/r-{secrets.token_hex(4)}"
            self.path(new_name).parent.mkdir(exist_ok=True)
            os.rename(self.path(name), self.path(new_name))
            self.model[new_name] = self.model.pop(name)
        elif kind == "delete":
            os.unlink(self.path(name))
            del self.model[name]
        elif kind == "fsync":
            fd = os.open(self.path(name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        elif kind == "read" and self.path(name).read_bytes() != self.model[name]:
            self.lose(f"{name}: read back wrong while mounted")
            self.model[name] = self.path(name).read_bytes()

    def verify(self) -> None:
        """Every file of the model, exactly, and nothing else."""
        root = self.drive.mountpoint
        there = {str(p.relative_to(root)) for p in walk(root) if p.is_file()}
        for name in sorted(there - set(self.model)):
            self.lose(f"{name}: present, but deleted or never written")
        for name, data in sorted(self.model.items()):
            self.counts["verified"] += 1
            try:
                got = self.path(name).read_bytes()
            except OSError as e:
                self.lose(f"{name}: unreadable after remount: {e}")
                continue
            if got != data:
                self.lose(f"{name}: {len(got)} bytes read back, {len(data)} written")

    def outage(self, start: float) -> None:
        time.sleep(start)
        self.proxy.down()
        self.counts["outages"] += 1
        time.sleep(self.args.outage)
        self.proxy.up()

    def round(self, ops: int) -> None:
        self.mount()
        down = None
        if self.args.outage:
            down = threading.Thread(target=self.outage, args=(self.rnd.uniform(0, 2),))
            down.start()
        for _ in range(ops):
            self.op()
        if down is not None:
            down.join()
        self.umount()
        self.mount()
        self.verify()
        self.umount()
        self.counts["rounds"] += 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=1000)
    p.add_argument("--ops", type=int, default=40, help="operations per round")
    p.add_argument("--rate", type=float, default=0.15, help="fraction of requests faulted")
    p.add_argument("--outage", type=float, default=3.0, help="seconds the store is away, per round")
    p.add_argument("--store-timeout", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--keep", type=Path, default=None, help="keep the work folder here")
    args = p.parse_args()
    if args.seed is None:
        args.seed = secrets.randbelow(1 << 30)
    assert args.outage < args.store_timeout / 2, "an outage must be shorter than the timeout"
    work = Path(tempfile.mkdtemp(prefix="megafs-fault-soak-", dir=args.keep))
    server = SeaweedFS(work / "weed", "megafs-soak", user="soak")
    print(f"fault soak: seed {args.seed}, rate {args.rate}, work folder {work}", flush=True)
    started = time.monotonic()
    try:
        server.start()
        with FaultProxy(server.endpoint, rate=0.0, stall=args.store_timeout / 4 + 1) as proxy:
            env = {**server.env, "MEGAFS_S3_ENDPOINT": proxy.endpoint}
            drive = Drive(f"s3://{server.bucket}/{unique_prefix()}", work / "drive", env)
            soak = Soak(drive, proxy, args)
            try:
                drive.init()
                proxy.rate = args.rate
                end = started + 60 * args.minutes
                while soak.counts["rounds"] < args.rounds and time.monotonic() < end:
                    soak.round(args.ops)
                    c = soak.counts
                    print(
                        f"round {c['rounds']}: {c['ops']} ops, {proxy.faults} faults, "
                        f"{c['failed']} failed, {c['lost']} lost",
                        flush=True,
                    )
            finally:
                if os.path.ismount(drive.mountpoint):
                    drive.cleanup()
            retries = drive.log_text().count("temporary failure")
            problems = drive.log_problems()
    finally:
        server.stop()
    c = soak.counts
    faults = {k: proxy.stats.get(f"fault:{k}", 0) for k in ALL_FAULTS}
    print()
    print(f"minutes      {(time.monotonic() - started) / 60:.1f}")
    print(f"rounds       {c['rounds']} (each: mount, {args.ops} ops, outage, umount, verify)")
    print(f"operations   {c['ops']}  " + " ".join(
        f"{k[3:]}={v}" for k, v in sorted(c.items()) if k.startswith("op:")
    ))
    print(f"files checked after remount  {c['verified']}")
    print(f"requests     {proxy.stats['requests']}")
    print(f"faults       {proxy.faults}  " + " ".join(f"{k}={v}" for k, v in faults.items()))
    print(f"outages      {c['outages']} x {args.outage:g} s")
    print(f"retries      {retries}")
    print(f"log warnings/errors  {len(problems)}")
    print(f"failed ops   {c['failed']}")
    print(f"losses       {c['lost']}")
    for line in [*soak.failures, *soak.losses, *problems][:20]:
        print(f"  {line}")
    ok = not c["failed"] and not c["lost"]
    if ok and args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
