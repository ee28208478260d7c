"""The entry point: parse the command line, set up logging, run one command,
turn what it raised into an exit code.

The commands are those in :data:`megafs.cli.registry.COMMANDS`, which the
package (:mod:`megafs.cli`, always imported before this module) fills by
importing every command module.

Owns: the top-level parser, logging for the foreground process, the
mount.fuse3 calling convention (``megafs STORE MOUNTPOINT -o OPTS``).
May not touch: what any command does; exit codes are looked up in
:mod:`megafs.cli.exit_codes`, never decided here.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .. import __version__
from .exit_codes import Exit, report
from .options import global_options
from .registry import COMMANDS

log = logging.getLogger("megafs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megafs",
        description="End-to-end encrypted cloud drive over S3 or a local folder.",
        epilog="Exit codes are listed in the documentation of megafs.cli.",
    )
    parser.add_argument("--version", action="version", version=f"megafs {__version__}")
    global_options(parser, sub=False)
    common = argparse.ArgumentParser(add_help=False)
    global_options(common, sub=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, parents=[common])
        for configure in cmd.configure:
            configure(p)
        p.set_defaults(run=cmd.run)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.debug else logging.ERROR if args.quiet else logging.WARNING
    fmt = "megafs: %(levelname)s: %(name)s: %(message)s" if args.debug else "megafs: %(message)s"
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (:class:`megafs.cli.exit_codes.Exit`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # mount.fuse3 / fstab convention: "megafs STORE MOUNTPOINT -o opts"
    if len(argv) >= 2 and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "mount")
    args = build_parser().parse_args(argv)
    _setup_logging(args)
    log.debug("megafs %s, pid %d", __version__, os.getpid())
    try:
        args.run(args)
    except SystemExit as e:
        return int(e.code or 0)
    except (Exception, KeyboardInterrupt, BaseExceptionGroup) as e:
        return report(e, debug=args.debug)
    return int(Exit.OK)
