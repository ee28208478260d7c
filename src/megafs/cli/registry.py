"""The command registry: every subcommand, registered with :func:`command`.

A command is one function that gets the parsed arguments, obtains secrets
first (blocking, before any ``trio.run``, so a prompt never stalls the event
loop), then does its store work in ``trio.run``. It returns normally for exit
0 and raises a :class:`megafs.errors.MegafsError` for anything else. A new
command is one more decorated function; the option groups of
:mod:`megafs.cli.options` are reused by listing them.

Owns: the list of commands and their order in ``--help``.
May not touch: anything a command does; it only records them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

Configure = Callable[[argparse.ArgumentParser], None]
Runner = Callable[[argparse.Namespace], None]


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Runner
    configure: tuple[Configure, ...]


#: Every subcommand, in the order ``--help`` lists them.
COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, *configure: Configure) -> Callable[[Runner], Runner]:
    """Register the decorated function as subcommand ``name``.

    ``configure`` functions add the subcommand's arguments to its parser.
    The function runs with the parsed arguments; it returns normally for
    exit 0 and raises a :class:`MegafsError` for anything else.
    """

    def register(run: Runner) -> Runner:
        if name in COMMANDS:
            raise ValueError(f"command {name!r} registered twice")
        COMMANDS[name] = Command(name, help, run, configure)
        return run

    return register
