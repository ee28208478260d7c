"""Where a passphrase (or recovery key) comes from. Plain blocking functions, no trio.

Sources, in the order :func:`obtain` tries them (like gocryptfs)::

    --passfile FILE     first line of the file, trailing newline stripped
    --extpass CMD       first line of CMD's stdout; CMD is split with shlex
                        and run without a shell
    environment         e.g. MEGAFS_PASSPHRASE
    systemd credential  $CREDENTIALS_DIRECTORY/megafs-passphrase (a unit's
                        LoadCredential=megafs-passphrase:FILE), first line
    prompt              getpass on the terminal, only if stdin is a TTY

Every failure (unreadable file, empty secret, failing command, no source at
all, confirmation mismatch) raises :class:`megafs.errors.PassphraseError`
with a message fit to show the user; nothing here ever hangs waiting on a
stdin that is not a terminal.

Secrets do not stay in the environment: the variable a call is responsible
for is removed once :func:`obtain` (or :func:`obtain_recovery_key`) runs,
whichever source wins, and its bytes in the environment block the process
started with are zeroed, so neither a child (``--extpass``, ``fusermount3``)
nor a fork (the mount daemon) nor ``/proc/<pid>/environ`` shows it. The
``--extpass`` command never gets any of :data:`SECRET_ENV`.

May not touch: trio, keys or crypto (it returns the secret; unlocking is the
vault's), the header, the store, the vault, the journal or cache, the
filesystem model; of megafs it imports only :mod:`megafs.errors`.
"""

from __future__ import annotations

import contextlib
import ctypes
import getpass
import os
import shlex
import subprocess
import sys

from ..errors import PassphraseError

ENV_PASSPHRASE = "MEGAFS_PASSPHRASE"
ENV_NEW_PASSPHRASE = "MEGAFS_NEW_PASSPHRASE"
ENV_RECOVERY_KEY = "MEGAFS_RECOVERY_KEY"
#: The password of a share link (``megafs share --password``, ``megafs get``).
ENV_LINK_PASSWORD = "MEGAFS_LINK_PASSWORD"
#: The systemd credential (``LoadCredential=NAME:FILE``) a passphrase is read
#: from, in the folder systemd names in ``$CREDENTIALS_DIRECTORY``.
CREDENTIAL = "megafs-passphrase"

#: Every environment variable that may hold a secret of ours.
SECRET_ENV = (ENV_PASSPHRASE, ENV_NEW_PASSPHRASE, ENV_RECOVERY_KEY, ENV_LINK_PASSWORD)
#: Store credentials the process itself may need (the AWS credential chain
#: reads them), but that no command megafs runs does: kept from its children.
STORE_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def child_environment() -> dict[str, str]:
    """The environment for a command megafs runs (``--extpass``,
    ``fusermount3``): this process's, without any secret of ours or of the
    store's."""
    hidden = {*SECRET_ENV, *STORE_SECRET_ENV}
    return {k: v for k, v in os.environ.items() if k not in hidden}


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

    The command inherits stdin and stderr, so it may prompt the user itself,
    and the environment without any of :data:`SECRET_ENV` or
    :data:`STORE_SECRET_ENV` (:func:`child_environment`).
    """
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise PassphraseError(f"--extpass command {command!r} cannot be parsed: {e}") from None
    if not argv:
        raise PassphraseError("--extpass command is empty")
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, env=child_environment(), check=False)
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


def _wipe_exec_environment(var: str) -> None:
    """Zero every ``var=...`` string in the environment block this process got at exec.

    ``unsetenv`` only drops the pointer to the string: its bytes stay where
    the kernel put them, which is what ``/proc/<pid>/environ`` shows, and a
    fork (the mount daemon) copies them. Linux only (the block's bounds come
    from ``/proc/self/stat``, fields 50 and 51); elsewhere nothing is done.
    """
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[47]), int(fields[48])
    except (OSError, IndexError, ValueError):
        return
    if not 0 < start < end:
        return
    prefix = var.encode() + b"="
    pos = start
    for entry in ctypes.string_at(start, end - start).split(b"\0"):
        if entry.startswith(prefix):
            ctypes.memset(pos, 0, len(entry))
        pos += len(entry) + 1


def take_env(var: str) -> str | None:
    """Remove ``var`` from the environment and return what it held (None if unset).

    Afterwards neither ``os.environ``, the C environment (what children get),
    nor the process's original environment block holds it.
    """
    value = os.environ.pop(var, None)
    with contextlib.suppress(OSError):
        os.unsetenv(var)
    _wipe_exec_environment(var)
    return value


def scrub_environment() -> None:
    """Remove every variable of :data:`SECRET_ENV` (see :func:`take_env`).

    Call once every secret is read and before starting a long-lived process
    or children, e.g. the mount daemon.
    """
    for var in SECRET_ENV:
        take_env(var)


def _checked(var: str, value: str | None) -> str | None:
    """``value`` taken from ``var``; PassphraseError if it is set but empty."""
    if value is not None and not value:
        raise PassphraseError(f"environment variable {var} is set but empty")
    return value


def from_env(var: str) -> str | None:
    """Take ``var`` out of the environment (:func:`take_env`); None if it was
    unset, PassphraseError if it was empty."""
    return _checked(var, take_env(var))


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

    The variable ``env`` is taken out of the environment first, even when a
    file or command wins (:func:`take_env`), so no child sees it.
    ``confirm`` (the text of a second prompt) asks twice, but only at an
    interactive prompt: a file, command or variable needs no confirmation.
    The ``*_option`` names only shape the error hint.
    """
    value = take_env(env)
    if passfile is not None:
        return read_passfile(passfile)
    if extpass is not None:
        return run_extpass(extpass)
    value = _checked(env, value)
    if value is not None:
        return value
    credential = _credential() if env == ENV_PASSPHRASE else None
    if credential is not None:
        return read_passfile(credential)
    sources = [passfile_option]
    if extpass_option:
        sources.append(extpass_option)
    hint = f"use {', '.join(sources)} or the environment variable {env}"
    if confirm is not None:
        return prompt_twice(prompt_text, confirm, hint=hint)
    return prompt(prompt_text, hint=hint)


def _credential() -> str | None:
    """The path of the passphrase credential systemd passed, if it did."""
    folder = os.environ.get("CREDENTIALS_DIRECTORY")
    if not folder:
        return None
    path = os.path.join(folder, CREDENTIAL)
    return path if os.path.exists(path) else None


def obtain_recovery_key(*, keyfile: str | None = None) -> str:
    """The recovery key text from ``keyfile``, MEGAFS_RECOVERY_KEY or a prompt.

    A key file may hold the key on one line or spread over several; the
    whole content is returned, stripped. Parsing is the caller's job.
    MEGAFS_RECOVERY_KEY is taken out of the environment (:func:`take_env`).
    """
    value = take_env(ENV_RECOVERY_KEY)
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
    value = _checked(ENV_RECOVERY_KEY, value)
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
    "SECRET_ENV",
    "from_env",
    "obtain",
    "obtain_recovery_key",
    "prompt",
    "prompt_twice",
    "read_passfile",
    "run_extpass",
    "scrub_environment",
    "take_env",
]
