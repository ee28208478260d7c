"""``megafs completion bash|zsh``: the shell completion script.

Generated at run time from the command line's own parser by shtab, so it
completes exactly the commands and options that ``--help`` lists, today's
and any added later.

Owns: nothing but printing the script. May not touch: the vault, the
stores, the mount; it builds the parser of :mod:`.app` (imported when the
command runs: the parser is made of every registered command, this one
included).
"""

from __future__ import annotations

import argparse

from .registry import command

SHELLS = ("bash", "zsh")


def completion_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell", choices=SHELLS, help="the shell to complete in")


@command("completion", "print the shell completion script (bash or zsh)", completion_options)
def cmd_completion(args: argparse.Namespace) -> None:
    import shtab

    from .app import build_parser

    print(shtab.complete(build_parser(), shell=args.shell))
