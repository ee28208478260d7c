"""Soak test: SIGKILL the mount daemon hundreds of times under a write-heavy workload.

    python bench/soak_crash.py [--trials 200] [--minutes 60] [--store local|s3]
                               [--batch 25] [--max-delay 1.5] [--power 0.33]
                               [--seed N] [--keep DIR]

Runs the trials of ``tests/mount/test_crash_mount.py`` (read its docstring for what
each trial checks) in batches: each batch is a fresh vault on which
``--batch`` trials run one after the other, each in its own folder, every
earlier folder re-checked on every mount; a batch ends with a clean unmount,
``fsck`` and ``fsck --repair``. A fraction ``--power`` of the trials also
cut the journal at a random byte before the remount, as a crashed machine
may.

Stops after ``--trials`` trials or ``--minutes`` minutes, whichever comes
first, and prints the count of trials and of *losses* (a folder that holds no
state the workload allows: lost, old or torn data; or an earlier folder that
changed), of ``fsck`` failures and of other errors (mounts or the workload
that failed). Target: 0 of each. A batch with a failure is kept for study
under ``--keep`` (default: a folder in /tmp) and the next batch starts on a
fresh vault. Everything runs on this machine: a local-folder store, or
SeaweedFS on 127.0.0.1 started and stopped by the script.

Needs root (FUSE) and the test dependencies (``pip install -e .[test]``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import random
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.mount.test_crash_mount import ALLOWED, CrashRun  # noqa: E402
from tests.support.mounting import Drive  # noqa: E402
from tests.support.seaweed import SeaweedFS  # noqa: E402


def classify(e: AssertionError) -> str:
    text = str(e)
    wrong = ("the folder holds no state", "the same mount read")
    if text.startswith(wrong) or " changed: " in text:
        return "loss"
    if text.startswith("fsck exited") or "problem:" in text or "missing:" in text:
        return "fsck"
    return "error"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=200, help="stop after this many trials")
    ap.add_argument("--minutes", type=float, default=60.0, help="... or after this long")
    ap.add_argument("--store", choices=["local", "s3"], default="local")
    ap.add_argument("--batch", type=int, default=25, help="trials per vault")
    ap.add_argument("--max-delay", type=float, default=1.5, help="longest wait before a kill (s)")
    ap.add_argument("--power", type=float, default=1 / 3, help="share of journal-cut trials")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", type=Path, default=None, help="where to keep failed batches")
    args = ap.parse_args(argv)
    if not 0 < args.trials <= 100_000 or not 0 < args.minutes <= 7 * 24 * 60:
        ap.error("--trials and --minutes must be positive and bounded")

    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    top = Path(tempfile.mkdtemp(prefix="megafs-soak-crash."))
    keep = args.keep or Path(tempfile.mkdtemp(prefix="megafs-soak-failed."))
    server = SeaweedFS(top / "seaweedfs", "soak", user="soak") if args.store == "s3" else None
    if server is not None:
        server.start()
    end = time.monotonic() + args.minutes * 60
    counts: collections.Counter[str] = collections.Counter()
    outcomes: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    steps = 0
    started = time.monotonic()
    print(f"soak_crash: seed {seed}, store {args.store}, work in {top}", flush=True)
    try:
        batch = 0
        while counts["trials"] < args.trials and time.monotonic() < end:
            batch += 1
            tmp = top / f"batch-{batch}"
            tmp.mkdir()
            if server is None:
                url, env = str(tmp / "store"), {}
            else:
                url = f"s3://{server.bucket}/batch-{batch}-{seed}"
                env = dict(server.env)
            drive = Drive(url, tmp, env)
            drive.allowed_log.extend(ALLOWED)
            run = CrashRun(drive, random.Random(rng.randrange(1 << 30)), tmp / "work")
            run.work.mkdir()
            failed = False
            try:
                drive.init()
                for _ in range(args.batch):
                    if counts["trials"] >= args.trials or time.monotonic() >= end:
                        break
                    counts["trials"] += 1
                    try:
                        r = run.trial(args.max_delay, power=rng.random() < args.power)
                    except AssertionError as e:
                        kind = classify(e)
                        counts[kind] += 1
                        failures.append(f"batch {batch} trial {len(run.results)}: {kind}: {e}")
                        print(f"  FAILED ({kind}): {e}", flush=True)
                        failed = True
                        break
                    steps += r.steps_done + 1
                    outcome = (
                        "n+1"
                        if r.mode == "kill" and r.matched.step > r.steps_done
                        else "n"
                        if r.mode == "kill"
                        else "cut"
                    )
                    outcomes[f"{r.mode}:{outcome}{'+prefix' if r.matched.partial else ''}"] += 1
                    print(f"  {r.line()}", flush=True)
                if not failed:
                    try:
                        run.finish()
                    except AssertionError as e:
                        kind = classify(e)
                        counts[kind] += 1
                        failures.append(f"batch {batch} finish: {kind}: {e}")
                        failed = True
                problems = drive.log_problems()
                if problems:
                    counts["log warnings"] += len(problems)
                    failures.append(f"batch {batch} daemon log: " + "; ".join(problems[:3]))
            except Exception as e:
                counts["error"] += 1
                failed = True
                failures.append(f"batch {batch}: error: {e!r}")
                traceback.print_exc()
            finally:
                try:
                    with contextlib.redirect_stdout(io.StringIO()):  # the daemon's log
                        drive.cleanup()
                except AssertionError as e:
                    counts["error"] += 1
                    failures.append(f"batch {batch} cleanup: {e}")
            if failed:
                shutil.copytree(tmp, keep / tmp.name, symlinks=True, dirs_exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(top, ignore_errors=True)

    minutes = (time.monotonic() - started) / 60
    summary: dict[str, Any] = {
        "trials": counts["trials"],
        "losses": counts["loss"],
        "fsck failures": counts["fsck"],
        "other errors": counts["error"],
        "daemon log warnings": counts["log warnings"],
        "workload steps acknowledged before the kills": steps,
        "minutes": round(minutes, 1),
    }
    print(f"\nsoak_crash summary (seed {seed}, {args.store} store):")
    for key, value in summary.items():
        print(f"  {key}: {value}")
    print("  outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    for line in failures:
        print("  " + line.splitlines()[0])
    if failures:
        print(f"  failed batches kept in {keep}")
    else:
        shutil.rmtree(keep, ignore_errors=True)
    bad = counts["loss"] + counts["fsck"] + counts["error"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
