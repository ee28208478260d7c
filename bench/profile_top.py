#!/usr/bin/env python3
"""Summarize py-spy speedscope profiles (from ``compare.py --profile DIR``).

    python bench/profile_top.py DIR/megafs-s3-rand_read-1.speedscope.json [-n 25]

Prints, over all threads, the functions with the most samples on the stack
(inclusive) and as the innermost frame (self), as shares of all samples.
py-spy leaves idle threads out by default, so the shares are of busy time.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


def summarize(path: Path, top: int) -> str:
    doc = json.loads(path.read_text())
    frames = doc["shared"]["frames"]
    names = [f"{f['name']} ({Path(f.get('file') or '?').name}:{f.get('line', '?')})"
             for f in frames]
    unit = doc["profiles"][0].get("unit", "samples") if doc["profiles"] else "samples"
    total = 0.0
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for prof in doc["profiles"]:
        for stack, weight in zip(prof["samples"], prof["weights"], strict=True):
            total += weight
            threads[prof["name"]] += weight
            if stack:
                own[names[stack[-1]]] += weight
            for name in {names[i] for i in stack}:
                inclusive[name] += weight
    if not total:
        return f"{path.name}: no samples\n"
    lines = [f"{path.name}: {total:.2f} {unit} of busy samples"]
    lines.append("threads: " + ", ".join(f"{t} {w / total:.0%}" for t, w in threads.most_common()))
    lines.append(f"\n  top {top} self:")
    lines += [f"  {w / total:6.1%}  {n}" for n, w in own.most_common(top)]
    lines.append(f"\n  top {top} inclusive:")
    lines += [f"  {w / total:6.1%}  {n}" for n, w in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("-n", type=int, default=20, help="how many functions (default 20)")
    a = ap.parse_args()
    for f in a.files:
        print(summarize(f, a.n))


if __name__ == "__main__":
    main()
