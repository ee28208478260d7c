"""History benchmarks (docs/history.md, figures in docs/performance.md).

1. Browsing the past costs what browsing the live tree does: a vault of
   100,000 files (100 folders of 1,000) is built, its state pinned as
   ``old``, a tenth of the files changed; then, each time on a fresh mount
   (empty caches), ``ls -l`` of one folder of the live tree and of the same
   folder under ``.snapshots/old``, and a ``find`` over each whole tree.
2. The history's cost per commit: the time a commit spends in the keeper
   (adding its entry, applying the policy) and the whole commit, with 10 and
   with 1,000 kept roots, the policy applied as by default (at most once a
   minute) and at every commit.

Run from the repository root (one heavy job at a time):

    python3 bench/history.py [--files 100000] [--s3]

``--s3`` also runs part 1 on a SeaweedFS started here; ``--commits-only``
runs part 2 alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megafs.errors import FsError  # noqa: E402
from megafs.format.crypto import KdfParams  # noqa: E402
from megafs.fs.filesystem import Filesystem  # noqa: E402
from megafs.fs.inode import ROOT_INO  # noqa: E402
from megafs.stores import LocalStore, Store, open_store  # noqa: E402
from megafs.vault.retention import Policy  # noqa: E402
from megafs.vault.vault import Vault  # noqa: E402

PASS = "bench passphrase"
KDF = KdfParams(memory_kib=8192, iterations=1, lanes=1)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def build(store: Store, files: int) -> None:
    vault, _ = await Vault.init(store, PASS, KDF, None)
    fs = await Filesystem.load(vault)
    per = 1000
    dirs = []
    for d in range(files // per):
        dino = (await fs.mkdir(ROOT_INO, b"d%03d" % d, 0o755, 0, 0)).ino
        dirs.append(dino)
        for i in range(per):
            ino = (await fs.create(dino, b"f%04d.txt" % i, 0o644, 0, 0)).ino
            await fs.write(ino, 0, b"file %d/%d\n" % (d, i))
        if d % 10 == 9:
            await fs.commit()
            log(f"  built {(d + 1) * per} files")
    await fs.pin("old")
    for d, dino in enumerate(dirs):
        for i in range(0, per, 10):
            ino = (await fs.lookup(dino, b"f%04d.txt" % i)).ino
            await fs.write(ino, 0, b"CHANGED %d/%d\n" % (d, i))
    await fs.close()


def timed(argv: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def browse(url: str, base: Path, env_extra: dict[str, str]) -> dict[str, float]:
    env = dict(os.environ, MEGAFS_PASSPHRASE=PASS, MEGAFS_STATE_DIR=str(base / "state"),
               XDG_RUNTIME_DIR=str(base / "run"), **env_extra)
    (base / "run").mkdir(parents=True, exist_ok=True, mode=0o700)
    mnt = base / "mnt"
    mnt.mkdir(exist_ok=True)
    megafs = [sys.executable, "-m", "megafs"]
    work = {
        "ls -l, one live folder": ["ls", "-l", str(mnt / "d042")],
        "ls -l, the same folder in .snapshots/old": ["ls", "-l", str(mnt / ".snapshots/old/d042")],
        "find, the live tree": ["find", str(mnt), "-path", str(mnt / ".snapshots"), "-prune",
                                "-o", "-print"],
        "find, .snapshots/old": ["find", str(mnt / ".snapshots/old")],
    }
    out: dict[str, list[float]] = {k: [] for k in work}
    for _ in range(3):
        for name, argv in work.items():
            cache = base / f"cache-{time.monotonic_ns()}"
            subprocess.run([*megafs, "mount", url, str(mnt), "--cache-dir", str(cache)],
                           env=env, check=True)
            try:
                out[name].append(timed(argv, env))
            finally:
                subprocess.run([*megafs, "umount", str(mnt)], env=env, check=True)
    return {k: statistics.median(v) for k, v in out.items()}


async def commit_costs(
    store: Store, kept: int, force: bool, rounds: int = 60
) -> tuple[float, float]:
    """(median keeper time per commit, median commit time), in ms, with
    ``kept`` roots kept; the policy applied at every commit (``force``) or
    as commits do by default (at most once a minute)."""
    vault = await Vault.unlock(store, PASS)
    fs = await Filesystem.load(vault)
    await fs.set_retention(Policy(every=30 * 86400, tiers=()))
    try:
        ino = (await fs.lookup(ROOT_INO, b"counter")).ino
    except FsError:
        ino = (await fs.create(ROOT_INO, b"counter", 0o644, 0, 0)).ino
    while len(await fs.history()) < kept:
        await fs.write(ino, 0, os.urandom(100))
        await fs.commit()
    keeper = fs.committer.keeper
    spent: list[float] = []
    orig_prepare, orig_stage = keeper.prepare, keeper.stage
    current = [0.0]

    async def prepare(now_ns: int) -> None:
        t = time.perf_counter()
        await orig_prepare(now_ns)
        current[0] += time.perf_counter() - t

    def stage(*a, **k):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        try:
            return orig_stage(*a, **k)
        finally:
            current[0] += time.perf_counter() - t

    keeper.prepare = prepare  # type: ignore[method-assign]
    keeper.stage = stage  # type: ignore[method-assign]
    commits: list[float] = []
    for _ in range(rounds):
        await fs.write(ino, 0, os.urandom(100))
        if force:
            keeper.prune_now()
        current[0] = 0.0
        t = time.perf_counter()
        await fs.commit()
        commits.append(time.perf_counter() - t)
        spent.append(current[0])
    await fs.close()
    return statistics.median(spent) * 1e3, statistics.median(commits) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--s3", action="store_true")
    ap.add_argument("--commits-only", action="store_true", help="part 2 only")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="megafs-history-") as tmp:
        base = Path(tmp)
        os.environ["MEGAFS_STATE_DIR"] = str(base / "state")
        stores: list[tuple[str, str, dict[str, str]]] = [
            ("local", str(base / "store"), {})
        ]
        s3_ctx = None
        if args.s3:
            sys.path.insert(0, str(ROOT / "tests"))
            from tests.support.helpers import running_seaweedfs

            s3_ctx = running_seaweedfs(base / "seaweed", "bench", "bench")
            s3 = s3_ctx.__enter__()
            stores.append(("S3", f"s3://bench/h{os.getpid()}", s3.env))
        try:
            for label, url, env in [] if args.commits_only else stores:
                log(f"{label}: building a vault of {args.files} files")
                os.environ.update(env)
                store = open_store(url, create=True) if label == "S3" else LocalStore(
                    url, create=True)
                trio.run(build, store, args.files)
                log(f"{label}: browsing, fresh mount each time, medians of 3")
                for k, v in browse(url, base / label, env).items():
                    print(f"{label:5}  {k:45} {v:7.3f} s")
            store = LocalStore(str(base / "commits"), create=True)
            trio.run(_init, store)
            for kept in (10, 1000):
                for force, how in ((False, "policy once a minute"), (True, "policy every commit")):
                    keeper_ms, commit_ms = trio.run(commit_costs, store, kept, force)
                    print(f"local  {kept:5} kept roots, {how:21}: keeper {keeper_ms:6.2f} ms "
                          f"per commit, commit {commit_ms:6.2f} ms")
        finally:
            if s3_ctx is not None:
                s3_ctx.__exit__(None, None, None)


async def _init(store: Store) -> None:
    await Vault.init(store, PASS, KDF, None)


if __name__ == "__main__":
    main()
