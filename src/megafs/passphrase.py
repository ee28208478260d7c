"""Where a passphrase (or recovery key) comes from. Plain blocking functions, no trio.

Sources, in the order :func:`obtain` tries them (like gocryptfs)::

    --passfile FILE     first line of the file, trailing newline stripped
    --extpass CMD       first line of CMD's stdout; CMD is split with shlex
                        and run without a shell
    environment         e.g. MEGAFS_PASSPHRASE
    prompt              getpass on the terminal, only if stdin is a TTY

Every failure (unreadable file, empty secret, failing command, no source at
all, confirmation mismatch) raises :class:`megafs.errors.PassphraseError`
with a message fit to show the user; nothing here ever hangs waiting on a
stdin that is not a terminal.
"""

from __future__ import annotations

import getpass
import os
import shlex
import subprocess
import sys

from .errors import PassphraseError

ENV_PASSPHRASE = "MEGAFS_PASSPHRASE"
ENV_NEW_PASSPHRASE = "MEGAFS_NEW_PASSPHRASE"
ENV_RECOVERY_KEY = "MEGAFS_RECOVERY_KEY"


def _first_line(text: str) -> str:
    """The text up to the first newline, without the newline (or CR LF) itself."""
    return text.split("\n", 1)[0].removesuffix("\r")


def read_passfile(path: str) -> str:
    """Return the first line of ``path`` (without its newline)."""
    try:
        with open(path, encoding="utf-8") as f:
            line = _first_line(f.readline())
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise PassphraseError(f"cannot read passphrase file {path}: {reason}") from None
    if not line:
        raise PassphraseError(f"passphrase file {path} is empty")
    return line


def run_extpass(command: str) -> str:
    """Run ``command`` (no shell) and return the first line of its stdout.

    The command inherits stdin and stderr, so it may prompt the user itself.
    """
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise PassphraseError(f"--extpass command {command!r} cannot be parsed: {e}") from None
    if not argv:
        raise PassphraseError("--extpass command is empty")
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, check=False)
    except OSError as e:
        raise PassphraseError(
            f"--extpass command {command!r} could not be run: {e.strerror or e}"
        ) from None
    if proc.returncode != 0:
        raise PassphraseError(
            f"--extpass command {command!r} failed with exit status {proc.returncode}"
        )
    try:
        line = _first_line(proc.stdout.decode("utf-8"))
    except UnicodeDecodeError:
        raise PassphraseError(f"--extpass command {command!r} printed invalid UTF-8") from None
    if not line:
        raise PassphraseError(f"--extpass command {command!r} printed an empty passphrase")
    return line


def from_env(var: str) -> str | None:
    """The value of environment variable ``var``; None if unset, error if empty."""
    value = os.environ.get(var)
    if value is None:
        return None
    if not value:
        raise PassphraseError(f"environment variable {var} is set but empty")
    return value


def _require_terminal(hint: str) -> None:
    if not sys.stdin.isatty():
        raise PassphraseError(f"stdin is not a terminal, so no prompt is possible; {hint}")


def prompt(text: str, *, hint: str) -> str:
    """Ask on the terminal with echo off. ``hint`` names the non-interactive sources."""
    _require_terminal(hint)
    try:
        value = getpass.getpass(text)
    except EOFError:
        raise PassphraseError("no input given at the prompt") from None
    if not value:
        raise PassphraseError("empty input at the prompt")
    return value


def prompt_twice(text: str, repeat: str, *, hint: str) -> str:
    """Ask twice on the terminal; the two answers must match."""
    first = prompt(text, hint=hint)
    if prompt(repeat, hint=hint) != first:
        raise PassphraseError("the passphrases do not match")
    return first


def obtain(
    *,
    passfile: str | None = None,
    extpass: str | None = None,
    env: str = ENV_PASSPHRASE,
    prompt_text: str = "Passphrase: ",
    confirm: str | None = None,
    passfile_option: str = "--passfile",
    extpass_option: str = "--extpass",
) -> str:
    """Get a passphrase from the first source that is given.

    ``confirm`` (the text of a second prompt) asks twice, but only at an
    interactive prompt: a file, command or variable needs no confirmation.
    The ``*_option`` names only shape the error hint.
    """
    if passfile is not None:
        return read_passfile(passfile)
    if extpass is not None:
        return run_extpass(extpass)
    value = from_env(env)
    if value is not None:
        return value
    sources = [passfile_option]
    if extpass_option:
        sources.append(extpass_option)
    hint = f"use {', '.join(sources)} or the environment variable {env}"
    if confirm is not None:
        return prompt_twice(prompt_text, confirm, hint=hint)
    return prompt(prompt_text, hint=hint)


def obtain_recovery_key(*, keyfile: str | None = None) -> str:
    """The recovery key text from ``keyfile``, MEGAFS_RECOVERY_KEY or a prompt.

    A key file may hold the key on one line or spread over several; the
    whole content is returned, stripped. Parsing is the caller's job.
    """
    if keyfile is not None:
        try:
            with open(keyfile, encoding="utf-8") as f:
                text = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise PassphraseError(f"cannot read recovery key file {keyfile}: {reason}") from None
        if not text:
            raise PassphraseError(f"recovery key file {keyfile} is empty")
        return text
    value = from_env(ENV_RECOVERY_KEY)
    if value is not None:
        return value
    return prompt(
        "Recovery key: ",
        hint=f"use --recovery-key-file or the environment variable {ENV_RECOVERY_KEY}",
    )


__all__ = [
    "ENV_NEW_PASSPHRASE",
    "ENV_PASSPHRASE",
    "ENV_RECOVERY_KEY",
    "from_env",
    "obtain",
    "obtain_recovery_key",
    "prompt",
    "prompt_twice",
    "read_passfile",
    "run_extpass",
]
