"""The ``status`` command: what each running mount of this user is doing;
``sync``: commit one mount's changes now.

It asks the daemons on their Unix sockets in the runtime folder
(:func:`megafs.mount.runtime.ask_status`; the daemon's side is
:mod:`megafs.mount.status`), one mountpoint or all of them, and prints
their answers, as JSON (one object a line, the keys documented in the
README) or as text; ``--watch`` prints again every two seconds.

Owns: what ``status`` prints. May not touch: the daemon's internals, the
vault, the store.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from typing import Any

from ..errors import MountError, UsageError
from ..mount.runtime import ask_daemon, ask_status, pid_path, runtime_dir, socket_path
from .history_commands import mount_root
from .options import say
from .registry import command
from .vault_commands import human_size

#: How long ``sync`` waits for the commit (the store may be slow or away).
COMMIT_TIMEOUT = 600.0


def status_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "mountpoint", metavar="MOUNTPOINT", nargs="?", help="default: every megafs mount of yours"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per mount (stable keys)")
    p.add_argument("--watch", action="store_true", help="show it again every 2 s until Ctrl-C")


def _ago(t: float | None) -> str:
    if t is None:
        return "never"
    s = max(0, int(time.time() - t))
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago"


def text(st: dict[str, Any]) -> str:
    p, c, s, tr, ca = (
        st["pending"],
        st["last_commit"],
        st["store_state"],
        st["traffic"],
        st["cache"],
    )
    lines = [f"{st['mountpoint']}  ({st['store']}, pid {st['pid']}, megafs {st['version']})"]
    if st["read_only"]:
        lines.append("  read-only")
    if p["operations"] or p["dirty_bytes"] or p["uploads"]:
        lines.append(
            f"  not in the store yet: {p['operations']} changes, "
            f"{human_size(p['dirty_bytes'])} of data, {p['uploads']} uploads, "
            f"oldest {_ago(p['since'])}"
        )
    else:
        lines.append("  everything is in the store")
    lines.append(f"  journal: {human_size(p['journal_bytes'])}")
    lines.append(
        f"  last commit: {_ago(c['time'])}, generation {c['generation']}"
        + (f"; LAST COMMIT FAILED {_ago(c['error_time'])}: {c['error']}" if c["error"] else "")
    )
    lines.append(
        "  store: "
        + (f"reachable, {s['latency_ms']} ms" if s["reachable"] else "NOT REACHABLE")
        + f"; up {human_size(tr['upload_bps'])}/s, down {human_size(tr['download_bps'])}/s"
    )
    lookups = ca["hits"] + ca["misses"]
    rate = f", {100 * ca['hits'] // lookups} % hits" if lookups else ""
    lines.append(f"  cache: {human_size(ca['bytes'])} of {human_size(ca['limit'])}{rate}")
    others = [d for d in st["devices"] if not d["this"]]
    if others:
        lines.append(
            "  other devices: "
            + ", ".join(f"{d['name']} ({_ago(d['last_commit'])})" for d in others)
        )
    for cf in st["conflicts"][-5:]:
        lines.append(f"  conflict copy: {cf['name']} ({_ago(cf['time'])})")
    lines.append(f"  history: {st['history']['kept']} past states kept")
    return "\n".join(lines)


def _sockets(mountpoint: str | None) -> list[str]:
    if mountpoint is not None:
        return [socket_path(pid_path(mountpoint))]
    return sorted(glob.glob(os.path.join(runtime_dir(), "*.sock")))


@command(
    "status",
    "show what each running mount is doing (pending uploads, errors, store)",
    status_options,
)
def cmd_status(args: argparse.Namespace) -> None:
    while True:
        answers = []
        for path in _sockets(args.mountpoint):
            try:
                answers.append(ask_status(path))
            except (OSError, ValueError):
                if args.mountpoint is not None:
                    raise MountError(f"no megafs mount answers at {args.mountpoint}") from None
        if args.json:
            for a in answers:
                print(json.dumps(a, sort_keys=True))
        else:
            print("\n\n".join(text(a) for a in answers) if answers else "no megafs mounts")
        sys.stdout.flush()
        if not args.watch:
            return
        time.sleep(2)
        print()


def sync_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="the mountpoint, or any path in the mount")


@command(
    "sync",
    "commit a mount's changes now: in the store's root, seen by other devices, a history state",
    sync_options,
)
def cmd_sync(args: argparse.Namespace) -> None:
    root = mount_root(args.path)
    if root is None:
        raise UsageError(f"{args.path} is not in a mounted megafs vault")
    answer = ask_daemon(str(root), {"op": "commit"}, timeout=COMMIT_TIMEOUT)
    if answer.get("committed"):
        say(args, f"committed: root generation {answer['generation']}")
    else:
        say(args, f"nothing to commit: root generation {answer['generation']}")

