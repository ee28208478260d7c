"""The ``megafs`` command line: ``megafs COMMAND ...``, ``python -m megafs``.

- :mod:`.app`: the entry point :func:`main` and the parser.
- :mod:`.registry`: the list of commands (:func:`~.registry.command`).
- :mod:`.options`: option groups shared by the commands, argument types.
- :mod:`.exit_codes`: the one exit-code table (:class:`~.exit_codes.Exit`,
  one comment per code) and the one-line error report.
- :mod:`.vault_commands`: ``init``, ``passwd``, ``recover``, ``info``.
- :mod:`.mount_commands`: ``mount``, ``umount``.
- :mod:`.fsck_command`: ``fsck``.
- :mod:`.status_command`: ``status`` (asks the running daemons).
- :mod:`.history_commands`: ``snapshots``, ``snapshot``, ``retention``,
  ``prune``, ``versions``, ``restore`` (docs/history.md).
- :mod:`.trash_command`: ``trash`` (list, restore, empty; the desktop trash too).
- :mod:`.completion_command`: ``completion`` (bash and zsh, made by shtab).
- :mod:`.progress`: the one progress helper (a bar on a terminal's stderr,
  nothing on a pipe), for every command that makes people wait.
- :mod:`.logs`: where a mount logs (its rotated log file, or the journal).

A foreseeable failure prints one line, ``megafs: <message>``, on stderr and
exits with its code from :data:`~.exit_codes.EXIT_CODES`; never a traceback
unless ``--debug``.

Owns: the user's side of megafs: arguments, prompts, what is printed.
May not touch: FUSE, the filesystem model, the vault's objects or the header's
bytes (it opens a store only to hand it to :class:`megafs.vault.vault.Vault`,
reads the parsed header, and calls Vault, :mod:`megafs.mount`,
:mod:`megafs.fs.fsck` and :mod:`megafs.fs.history_admin`); nothing below
imports this package.
"""

from __future__ import annotations

# Importing a command module registers its commands; --help lists them in
# the order of these imports.
# isort: split
from . import vault_commands

# isort: split
from . import mount_commands

# isort: split
from . import fsck_command

# isort: split
from . import status_command

# isort: split
from . import history_commands

# isort: split
from . import trash_command

# isort: split
from . import share_commands

# isort: split
from . import completion_command

# isort: split
from .app import build_parser, main
from .exit_codes import EXIT_CODES, Exit, exit_code, report
from .registry import COMMANDS, command

#: The modules whose import registered the commands, in ``--help`` order.
COMMAND_MODULES = (
    vault_commands,
    mount_commands,
    fsck_command,
    status_command,
    history_commands,
    trash_command,
    share_commands,
    completion_command,
)

__all__ = [
    "COMMANDS",
    "COMMAND_MODULES",
    "EXIT_CODES",
    "Exit",
    "build_parser",
    "command",
    "exit_code",
    "main",
    "report",
]
