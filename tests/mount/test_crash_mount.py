"""The mount daemon SIGKILLed at random moments loses nothing it acknowledged.

A child process (:mod:`tests.support.crash_mount_worker`) runs a write-heavy workload
in the mounted vault: creating files, appending, overwriting ranges,
truncating, renaming, the write-aside/fsync/rename-over pattern, fsyncs of
files and folders. It logs, outside the mount, every step that returned and
every fsync with the content hash. After a random delay the daemon is
SIGKILLed (no commit, no unmount), the dead mount is lazily unmounted, and:

1. ``megafs fsck`` on the vault as the kill left it exits 0: the committed
   root is whole; objects an interrupted commit uploaded are reported as
   unreferenced garbage, not as damage.
2. The vault is mounted again with the same cache folder: the journal is
   replayed. The workload's folder must then hold **exactly** the state after
   the last step the child saw return (*n*), or after the step in flight when
   the daemon died (*n* + 1), which the daemon may have journalled but not
   answered; for a write in flight, a prefix of it is also allowed (the
   kernel may split a write into several requests).
3. That mount is killed in turn right away and the vault mounted with a fresh
   cache folder (no journal): the same state must come back from the store
   alone, so the replay was uploaded by the remount itself.

In some trials the journal is also cut at a random byte before the remount,
as a crashed *machine* may lose the page-cache tail of it. Then the folder
must hold the state after some step *m* with *m* at least the last step
whose fsync returned (and at most *n* + 1), again with at most a prefix of
one write. Holding the state after step *m* means precisely: every file that
was fsynced has the content it was fsynced with or a later one the child
wrote, never an older or torn one; a file renamed into place after its fsync
is there whole or not at all (the old version is there instead); nothing is
half-visible.

Each trial works in a new folder; every earlier trial's folder is checked
again on every mount and must not change. ``bench/soak_crash.py`` runs the
same trials by the hundred.
"""

from __future__ import annotations

import errno
import os
import random
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from megafs.client.journal import Journal
from megafs.errors import StoreError
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.stores import LocalStore
from megafs.vault.vault import Vault

from ..support.crash_mount_worker import Step, Workload, apply_write, sha
from ..support.helpers import PASS, new_vault
from ..support.mounting import Drive, mounted_drive, sha256_file

pytestmark = pytest.mark.fuse

REPO = Path(__file__).resolve().parents[2]
#: How long the workload may take to start, and to notice a dead daemon.
WORKER_DEADLINE = 30.0


# --- reading what the child saw ----------------------------------------------------------


@dataclass(frozen=True)
class ChildLog:
    done: int  # the last step that returned (-1: none)
    synced: int  # the last step whose fsync returned (-1: none)
    fsyncs: list[tuple[int, str, str]]  # (step, path, sha256) of each fsync that returned
    failure: str  # how the child stopped ("" if it did not)


def read_log(path: Path) -> ChildLog:
    done = synced = -1
    fsyncs: list[tuple[int, str, str]] = []
    failure = ""
    for line in path.read_text().splitlines():
        words = line.split()
        if not words or words[0] == "start":
            continue
        n = int(words[0])
        if len(words) == 1:
            done = n
        elif words[1] == "fsync":
            done = synced = n
            fsyncs.append((n, words[2], words[3]))
        else:
            failure = line
    return ChildLog(done, synced, fsyncs, failure)


def folder_state(folder: Path) -> dict[str, str]:
    """path -> "dir" or the sha256 of the file, for everything below ``folder``."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        rel = os.path.relpath(dirpath, folder)
        for d in dirnames:
            out[os.path.normpath(os.path.join(rel, d))] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            assert stat.S_ISREG(os.lstat(p).st_mode), p
            out[os.path.normpath(os.path.join(rel, f))] = sha256_file(Path(p))
    return out


# --- deciding which state a folder holds -----------------------------------------------


@dataclass(frozen=True)
class Match:
    step: int  # the folder holds the state after this step (-1: before the first)
    partial: bool  # ... plus a prefix of the write of step + 1
    state: dict[str, str]  # what was read


def _diff(actual: dict[str, str], want: dict[str, str]) -> list[str]:
    return sorted(p for p in set(actual) | set(want) if actual.get(p) != want.get(p))


def match_state(seed: int, folder: Path, lo: int, hi: int) -> Match:
    """The step m in [lo, hi] after which the workload of ``seed`` left ``folder``'s state.

    A write that is cut short (a prefix of it applied) counts as the state
    before it plus that prefix. Fails with an explanation if there is none.
    """
    actual = folder_state(folder)
    w = Workload(seed)
    snaps: list[dict[str, str]] = [{}]  # snaps[i + 1]: after step i
    steps: list[Step] = []
    for _ in range(hi + 1):
        steps.append(w.next())
        snaps.append(w.snapshot())
    for m in range(hi, lo - 1, -1):
        if actual == snaps[m + 1]:
            return Match(m, False, actual)
    for m in range(hi, max(lo, -1), -1):  # a prefix of step m's write, on the state after m - 1
        s = steps[m]
        if s.op != "write" or _diff(actual, snaps[m]) != [s.path]:
            continue
        before = Workload(seed)
        for _ in range(m):
            before.next()
        old = before.files[s.path]
        got = (folder / s.path).read_bytes()
        data = s.data()
        off = len(old) if s.offset < 0 else s.offset
        k = 0
        while k < len(data) and off + k < len(got) and got[off + k] == data[k]:
            k += 1
        if 0 < k < len(data) and got == apply_write(old, off, data[:k]):
            return Match(m - 1, True, actual)
    raise AssertionError(_explain(actual, snaps, steps, lo, hi))


def which_steps(seed: int, upto: int, path: str, digest: str) -> list[int]:
    """The steps (of the first ``upto``) after which ``path`` held content ``digest``."""
    w = Workload(seed)
    out = [-1] if digest == "absent" else []
    for _ in range(upto + 1):
        s = w.next()
        if sha_or_absent(w, path) == digest:
            out.append(s.n)
    return out


def sha_or_absent(w: Workload, path: str) -> str:
    if path in w.dirs:
        return "dir"
    return sha(w.files[path]) if path in w.files else "absent"


def _explain(
    actual: dict[str, str], snaps: list[dict[str, str]], steps: list[Step], lo: int, hi: int
) -> str:
    """Which paths differ from the accepted states, and which step's version each holds."""
    lines = [f"the folder holds no state between step {lo} and step {hi}:"]
    for p in _diff(actual, snaps[hi + 1]):
        seen = [i - 1 for i, snap in enumerate(snaps) if p in actual and snap.get(p) == actual[p]]
        want = snaps[hi + 1].get(p, "absent")
        have = actual.get(p, "absent")
        lines.append(
            f"  {p}: holds {have[:12]} (the content after steps {seen[:3]}...{seen[-3:]}), "
            f"expected {want[:12]} after step {hi}"
        )
    lines.append(f"  steps {max(0, lo - 3)}..{hi}: " + ", ".join(
        f"{s.n}:{s.op} {s.path}" for s in steps[max(0, lo - 3) : hi + 1]
    ))
    return "\n".join(lines)


# --- one crash trial ---------------------------------------------------------------------------


def cut_journal(cache_dir: Path, rng: random.Random) -> int:
    """Keep a random prefix of the journal (all segments, in order): what a crashed
    machine's disk may hold. Returns the number of bytes dropped."""
    jdir = cache_dir / "journal"
    segs = sorted(jdir.glob("*.log"))
    sizes = [s.stat().st_size for s in segs]
    total = sum(sizes)
    if not total:
        return 0
    cut = rng.randrange(0, total)
    pos = 0
    for seg, size in zip(segs, sizes, strict=True):
        if pos + size <= cut:
            pos += size
            continue
        keep = max(0, cut - pos)
        os.truncate(seg, keep)
        pos += size
        if keep == 0:
            seg.unlink()
    return total - cut


@dataclass
class TrialResult:
    trial: int
    seed: int
    mode: str  # "kill" or "power" (journal cut as by a machine crash)
    delay: float
    commit_interval: float
    steps_done: int
    fsynced: int
    matched: Match
    dropped_journal_bytes: int = 0

    def line(self) -> str:
        extra = " + a prefix of the next write" if self.matched.partial else ""
        return (
            f"trial {self.trial} [{self.mode}] seed {self.seed} kill at {self.delay:.2f}s "
            f"(commit every {self.commit_interval}s): {self.steps_done + 1} steps returned, "
            f"last fsync at step {self.fsynced}, vault holds the state after step "
            f"{self.matched.step}{extra}"
        )


@dataclass
class CrashRun:
    """Trials on one vault, each in its own folder; remembers what every folder holds."""

    drive: Drive
    rng: random.Random
    work: Path  # for logs and cache folders, outside the mount
    expected: dict[str, dict[str, str]] = field(default_factory=dict)  # folder -> state
    seeds: dict[str, tuple[int, int]] = field(default_factory=dict)  # folder -> (seed, steps)
    results: list[TrialResult] = field(default_factory=list)
    caches: int = 0

    def new_cache(self) -> Path:
        self.caches += 1
        return self.work / f"cache-{self.caches}"

    def fsck_clean(self) -> str:
        proc = self.drive.megafs("fsck", self.drive.url)
        assert proc.returncode == 0, f"fsck exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
        assert "problem:" not in proc.stdout and "missing:" not in proc.stdout, proc.stdout
        return proc.stdout

    def check_earlier(self) -> None:
        for name, want in self.expected.items():
            got = folder_state(self.drive.mountpoint / name)
            if got != want:
                seed, upto = self.seeds[name]
                lines = [
                    f"  {p}: was {want.get(p, 'absent')[:12]}, now {got.get(p, 'absent')[:12]}, "
                    f"the content after steps {which_steps(seed, upto, p, got.get(p, 'absent'))}"
                    for p in _diff(got, want)
                ]
                raise AssertionError(f"{name} changed: {_diff(got, want)}\n" + "\n".join(lines))

    def kill_and_unmount(self) -> None:
        self.drive.kill_daemon()
        self.drive.lazy_unmount()
        end = time.monotonic() + WORKER_DEADLINE
        while os.path.ismount(self.drive.mountpoint):
            assert time.monotonic() < end, "the dead mount did not go away"
            time.sleep(0.05)

    def trial(self, max_delay: float, power: bool) -> TrialResult:
        drive, rng = self.drive, self.rng
        t = len(self.results)
        seed = rng.randrange(1 << 30)
        name = f"t{t}"
        interval = rng.choice([0.3, 2.0, 30.0])
        cache = self.new_cache()
        drive.mount("--commit-interval", str(interval), cache_dir=cache)
        self.check_earlier()  # from the store alone: this cache folder is new
        folder = drive.mountpoint / name
        folder.mkdir()
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)  # the folder itself is committed before the workload starts
        finally:
            os.close(fd)
        log = self.work / f"{name}.log"
        child = subprocess.Popen(
            [
                *(sys.executable, "-m", "tests.support.crash_mount_worker"),
                *(str(folder), str(log), str(seed)),
            ],
            cwd=REPO,
            env=drive.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            end = time.monotonic() + WORKER_DEADLINE
            while not (log.exists() and log.read_text().startswith("start")):
                assert child.poll() is None, child.communicate()[1].decode(errors="replace")
                assert time.monotonic() < end, "the workload did not start"
                time.sleep(0.01)
            delay = rng.uniform(0.0, max_delay)
            time.sleep(delay)
            assert child.poll() is None, child.communicate()[1].decode(errors="replace")
            self.kill_and_unmount()
            _, err = child.communicate(timeout=WORKER_DEADLINE)
            assert child.returncode == 0, err.decode(errors="replace")
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        seen = read_log(log)
        failed_with = int(seen.failure.split()[2]) if " error " in seen.failure else 0
        # ENOENT only from a path looked up after the lazy unmount, in the
        # empty mountpoint folder; any other error is the daemon's fault.
        unmounted = seen.failure.endswith(" unmounted")
        assert failed_with in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO, 0) or (
            failed_with == errno.ENOENT and unmounted
        ), seen.failure

        self.fsck_clean()  # the vault exactly as the kill left it
        dropped = cut_journal(cache, rng) if power else 0
        drive.mount(cache_dir=cache)  # replays what is left of the journal
        lo = seen.synced if power else seen.done
        matched = match_state(seed, folder, max(lo, -1), seen.done + 1)
        self.check_earlier()
        again = folder_state(folder)
        assert again == matched.state, (
            f"the same mount read {name} differently a second time: "
            f"{_diff(again, matched.state)}"
        )
        self.expected[name] = matched.state
        self.seeds[name] = (seed, seen.done + 1)
        result = TrialResult(
            t, seed, "power" if power else "kill", delay, interval, seen.done, seen.synced,
            matched, dropped,
        )
        self.results.append(result)
        # The replay is in the store already: kill this mount too and look again
        # (the next trial's mount reads everything from the store alone).
        self.kill_and_unmount()
        return result

    def finish(self) -> None:
        """Mount once more from the store alone, unmount cleanly, collect the garbage."""
        self.drive.mount(cache_dir=self.new_cache())
        self.check_earlier()
        self.drive.umount()
        self.fsck_clean()
        repaired = self.drive.megafs("fsck", "--repair", self.drive.url)
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        assert "unreferenced" not in self.fsck_clean()


ALLOWED = ("journal segment",)  # the warnings of a replay that met a cut journal


@pytest.fixture
def crash_drive(tmp_path: Path, any_store_url: tuple[str, dict[str, str]]) -> Iterator[Drive]:
    url, env = any_store_url
    with mounted_drive(url, tmp_path, env) as drive:
        drive.allowed_log.extend(ALLOWED)
        drive.umount()
        yield drive


@pytest.mark.slow
def test_killed_daemon_under_a_write_heavy_workload(crash_drive: Drive, tmp_path: Path) -> None:
    run = CrashRun(crash_drive, random.Random(20240605), tmp_path / "work")
    run.work.mkdir()
    for t in range(6):
        result = run.trial(max_delay=1.5, power=t % 3 == 2)
        print(result.line())
    run.finish()
    # The kills landed among the steps, after fsyncs, not all before the first one.
    assert sum(r.steps_done for r in run.results) > 50
    assert any(r.fsynced >= 0 for r in run.results)


# --- a crashed machine: a torn journal segment ends the replay -----------------------------


async def test_replay_stops_at_a_torn_segment_even_if_later_ones_are_whole(
    tmp_path: Path,
) -> None:
    """Page-cache writeback keeps no order: a crashed machine may keep a later
    journal segment whole and lose the tail of an earlier one. Replaying the
    later one on top of the cut one would build a state that never existed;
    the replay must stop at the cut."""
    store_dir = tmp_path / "store"
    store = LocalStore(str(store_dir), create=True)
    await new_vault(store)
    cache = tmp_path / "cache"

    async def open_fs() -> Filesystem:
        vault = await Vault.unlock(store, PASS)
        return await Filesystem.load(vault, journal=Journal(str(cache), vault.keys))

    fs = await open_fs()
    a = await fs.create(ROOT_INO, b"a", 0o644, 0, 0)
    await fs.write(a.ino, 0, b"committed")
    await fs.commit()
    await fs.write(a.ino, 0, b"segment k, kept")
    await fs.write(a.ino, 0, b"segment k, lost")
    # A commit that fails (the store folder is gone) still closes segment k.
    store_dir.rename(tmp_path / "away")
    with pytest.raises((StoreError, ExceptionGroup)):  # one upload's error, or several
        await fs.commit()
    (tmp_path / "away").rename(store_dir)
    await fs.rename(ROOT_INO, b"a", ROOT_INO, b"renamed in segment k+1")
    assert fs.journal is not None
    fs.journal.close()
    segs = sorted((cache / "journal").glob("*.log"))
    assert len(segs) == 2
    # the crash: segment k loses the end of its last record; segment k+1 survives
    os.truncate(segs[0], segs[0].stat().st_size - 5)

    fs = await open_fs()
    assert [n for n, _, _ in await fs.readdir(ROOT_INO, 0)] == [b"a"]
    ino = (await fs.lookup(ROOT_INO, b"a")).ino
    assert await fs.read(ino, 0, 100) == b"segment k, kept"
    await fs.close()
    fs = await open_fs()  # and the segments it could not apply are not applied later either
    assert [n for n, _, _ in await fs.readdir(ROOT_INO, 0)] == [b"a"]
    await fs.close()
