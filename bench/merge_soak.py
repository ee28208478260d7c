"""Soak test of the merge: hundreds of random three-device runs.

    python bench/merge_soak.py [--seeds 500] [--start 0] [--ops 80] [--minutes 30]

Runs the scenario of ``tests/unit/test_merge_random.py`` (read its docstring:
three devices, each its own client state, on one local-folder vault, random
operations with random commits and catch-ups; then all converge) for seeds
``--start`` .. ``--start + --seeds - 1``, or until ``--minutes`` have passed,
and prints how many runs ended in a *loss* (a committed write that stayed its
file's last change is missing), in *divergence* (the devices show different
trees), in an *fsck* problem, or in another error. Target: 0 of each. The
failing seeds are listed, to run again with ``MERGE_TRACE=1`` through the
test module.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import tests.unit.test_merge_random as scenario  # noqa: E402


class Env:
    """What the scenario's ``monkeypatch`` does: set environment variables."""

    def setenv(self, key: str, value: str) -> None:
        import os

        os.environ[key] = value


def classify(e: BaseException) -> str:
    text = str(e)
    if ": lost " in text:
        return "loss"
    if "devices differ" in text:
        return "divergence"
    if text.startswith("(") and ("inode" in text or "directory" in text or "chunk" in text):
        return "fsck"
    return "error"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=500)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--ops", type=int, default=scenario.OPS)
    ap.add_argument("--minutes", type=float, default=30.0)
    args = ap.parse_args(argv)
    scenario.OPS = args.ops
    counts: collections.Counter[str] = collections.Counter()
    failed: dict[str, list[int]] = collections.defaultdict(list)
    deadline = time.monotonic() + args.minutes * 60
    runs = 0
    for seed in range(args.start, args.start + args.seeds):
        if time.monotonic() > deadline:
            break
        tmp = Path(tempfile.mkdtemp(prefix="megafs-merge-soak-"))
        try:
            trio.run(scenario.run_seed, tmp, seed, Env())
            counts["ok"] += 1
        except BaseException as e:  # classified and counted
            leaf: Any = e
            while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
                leaf = leaf.exceptions[0]
            kind = classify(leaf)
            counts[kind] += 1
            failed[kind].append(seed)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        runs += 1
    print(
        f"{runs} runs of {args.ops} operations on three devices: "
        f"{counts['loss']} losses, {counts['divergence']} divergences, "
        f"{counts['fsck']} fsck problems, {counts['error']} other errors"
    )
    for kind, seeds in sorted(failed.items()):
        print(f"  {kind}: seeds {seeds[:30]}")
    return 1 if runs - counts["ok"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
