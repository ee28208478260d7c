"""The ``fsck`` command: check a vault, list or remove garbage, draw the progress bar.

Owns: what fsck prints (the counts, one line per problem, missing or refused
object, the progress of each stage on a terminal's stderr through
:mod:`.progress`) and its exit code (6 when something is damaged or missing).
May not touch: how objects are checked (:mod:`megafs.fs.fsck`), the vault's or
the model's internals.
"""

from __future__ import annotations

import argparse

import trio

from ..errors import IntegrityError
from .options import get_passphrase, passphrase_options, say, store_arg, unlocked_vault
from .progress import progress
from .registry import command


def fsck_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--repair",
        action="store_true",
        help="delete unreferenced objects (with other devices: only those older than "
        "the grace period)",
    )


@command(
    "fsck",
    "verify that every object authenticates and is reachable; list garbage",
    store_arg,
    fsck_options,
    passphrase_options,
)
def cmd_fsck(args: argparse.Namespace) -> None:
    from ..fs.fsck import Report, check

    secret = get_passphrase(args)

    async def run() -> Report:
        with progress(enabled=not args.quiet) as bar:
            stage_now = ""

            def step(stage: str, done: int, total: int) -> None:
                nonlocal stage_now
                if stage != stage_now:
                    stage_now = stage
                    bar.stage(stage, total)
                bar.set_total(total)
                bar.set(done)

            async with unlocked_vault(args, secret) as vault:
                return await check(vault, repair=args.repair, progress=step)

    report = trio.run(run)
    say(args, f"{report.inodes} inodes, {report.bytes} bytes, {report.objects} objects in store")
    for line in report.problems:
        print(f"problem: {line}")
    for line in report.missing:
        print(f"missing: {line}")
    for entry in report.refused:
        print(f"refused: {entry} (not a megafs object: left alone; remove it by hand "
              "if it does not belong there)")
    if report.orphans:
        verb = "removed" if args.repair else "unreferenced (run with --repair to remove)"
        say(args, f"{len(report.orphans)} objects {verb}")
    if report.young:
        say(
            args,
            f"{len(report.young)} unreferenced objects younger than the grace period left "
            "alone (another device may still commit or read them)",
        )
    if report.problems or report.missing:
        raise IntegrityError(
            "fsck", f"{len(report.problems)} problems, {len(report.missing)} missing objects"
        )
    say(args, "clean")
