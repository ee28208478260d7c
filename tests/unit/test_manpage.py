"""The man page megafs(1) is what ``scripts/manpage`` makes of the live
parser, and lists every command and option that ``--help`` does, each
under its own command."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from megafs.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "contrib" / "man" / "megafs.1"


def generated() -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "manpage"), "-o", "-"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def plain(roff: str) -> str:
    """The page's text with roff's escaped hyphens and font changes undone."""
    return re.sub(r"\\f[BIRP]|\\[,/]", "", roff.replace("\\-", "-"))


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {
        name: sub
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name, sub in action.choices.items()
    }


def listed(parser: argparse.ArgumentParser) -> list[str]:
    """What ``--help`` of ``parser`` lists: its option strings, and the
    choices of positional arguments that have them."""
    out: list[str] = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        if isinstance(action, argparse._HelpAction):
            out.append("-h")  # the page shows it in the usage line, as help does
            continue
        out += action.option_strings
        if not action.option_strings and action.choices:
            out += [str(c) for c in action.choices]
    return out


def test_the_checked_in_page_is_up_to_date() -> None:
    assert PAGE.read_text() == generated(), (
        "contrib/man/megafs.1 differs from the parser: run `python3 scripts/manpage`"
    )


def test_every_command_and_option_is_in_the_page() -> None:
    text = plain(PAGE.read_text())
    parser = build_parser()
    help_text = parser.format_help()
    # the commands' sections come between the page's head and the options
    # of megafs itself (argparse-manpage writes the parser's groups in order)
    *sections, last = re.split(r"^\.SH COMMAND '", text, flags=re.M)
    last, options_head, tail = last.partition("\n.SH OPTIONS\n")
    top = sections[0] + options_head + tail
    by_command = {s.split("'", 1)[0]: s for s in [*sections[1:], last]}
    for option in listed(parser):
        assert option in help_text and re.search(rf"(?<![\w-]){re.escape(option)}\b", top), option
    commands = subcommands(parser)
    assert {f"megafs {n}" for n in commands} == set(by_command), sorted(by_command)
    for name, sub in commands.items():
        assert f"megafs {name}\n" in top, name  # in the list of commands
        section = by_command[f"megafs {name}"]
        sub_help = sub.format_help()
        for option in listed(sub):
            assert option in sub_help
            assert re.search(rf"(?<![\w-]){re.escape(option)}\b", section), (name, option)
    for heading in ("ENVIRONMENT", "FILES", "EXIT STATUS"):
        assert f"\n.SH {heading}\n" in text
