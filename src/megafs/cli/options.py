"""Option groups shared by the commands, the values they turn into, and the
few helpers every command uses (:func:`say`, :func:`opened_store`).

An option group is a function that adds arguments to a subcommand's parser;
a command lists the groups it takes (:func:`megafs.cli.registry.command`).
Secrets are read here (blocking, before any ``trio.run``, so a prompt never
stalls the event loop).

Owns: option names, help texts, argument types (sizes use the one grammar,
:func:`megafs.mount.config.parse_size`) and their checks.
May not touch: the vault beyond unlocking it (header and slots are
:class:`megafs.vault.vault.Vault`'s), the filesystem, the mount lifecycle.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from ..client import passphrase
from ..errors import UsageError
from ..format.crypto import MAX_CHUNK_SIZE, MIN_BLOCK_SIZE, KdfParams, Layout
from ..mount.config import parse_size
from ..stores import Store, open_store
from ..vault.vault import Vault


def global_options(p: argparse.ArgumentParser, *, sub: bool) -> None:
    """``--endpoint``, ``--quiet``, ``--debug``: before or after the subcommand."""

    # On subcommands the defaults are SUPPRESS, so that an option given
    # before the subcommand is not overwritten by the subparser's default.
    def d(value: object) -> object:
        return argparse.SUPPRESS if sub else value

    p.add_argument(
        "--endpoint",
        metavar="URL",
        default=d(None),
        help="S3 endpoint URL (default: $MEGAFS_S3_ENDPOINT, else AWS)",
    )
    p.add_argument("-q", "--quiet", action="store_true", default=d(False), help="print only errors")
    p.add_argument(
        "-d", "--debug", action="store_true", default=d(False), help="debug logging, tracebacks"
    )


def store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", metavar="STORE", help="a folder, file:///path or s3://bucket/prefix")


def passphrase_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "passphrase",
        "taken from the first of: --passfile, --extpass, $MEGAFS_PASSPHRASE, a prompt",
    )
    g.add_argument("--passfile", metavar="FILE", help="read the passphrase from FILE's first line")
    g.add_argument(
        "--extpass",
        metavar="CMD",
        help="run CMD (no shell) and use the first line it prints as the passphrase",
    )


def new_passphrase_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "new passphrase",
        "taken from the first of: --new-passfile, $MEGAFS_NEW_PASSPHRASE, a prompt (asked twice)",
    )
    g.add_argument("--new-passfile", metavar="FILE", help="read the new passphrase from FILE")


def recovery_key_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--recovery-key-file",
        metavar="FILE",
        help="read the recovery key from FILE (default: $MEGAFS_RECOVERY_KEY, else a prompt)",
    )


def kdf_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("key derivation (Argon2id) for the passphrase")
    g.add_argument(
        "--kdf-memory",
        metavar="KIB",
        type=positive_int,
        help=f"memory in KiB (default {KdfParams().memory_kib}; at least 8 per lane)",
    )
    g.add_argument(
        "--kdf-iterations",
        metavar="N",
        type=positive_int,
        help=f"passes over memory (default {KdfParams().iterations})",
    )


def layout_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--chunk-size",
        metavar="BYTES",
        type=size_arg,
        help=f"plaintext bytes per store object (default {Layout().chunk_size}); "
        "suffixes K, M allowed",
    )
    p.add_argument(
        "--block-size",
        metavar="BYTES",
        type=size_arg,
        help=f"plaintext bytes per authenticated block (default {Layout().block_size}, "
        f"at least {MIN_BLOCK_SIZE}): the least a read fetches and decrypts; smaller "
        "blocks speed up small random reads and cost a little on large transfers",
    )


# --- argument types -------------------------------------------------------------


def positive_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def size_arg(text: str) -> int:
    """A size in bytes, in the grammar of :func:`megafs.mount.config.parse_size`."""
    try:
        return parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r}") from None


# --- values from the options ----------------------------------------------------

def kdf_from_args(args: argparse.Namespace, base: KdfParams) -> KdfParams:
    """``base`` with the ``--kdf-*`` options applied; UsageError if out of range."""
    kdf = KdfParams(
        memory_kib=args.kdf_memory or base.memory_kib,
        iterations=args.kdf_iterations or base.iterations,
        lanes=base.lanes,
    )
    try:
        kdf.check()
    except ValueError as e:
        raise UsageError(str(e)) from None
    return kdf


def layout_from_args(args: argparse.Namespace) -> Layout:
    """The layout ``--chunk-size`` and ``--block-size`` ask for; UsageError if
    no vault can have it. Without ``--block-size`` the block is the default
    one, or the whole chunk when the chunk is smaller."""
    default = Layout()
    chunk = default.chunk_size if args.chunk_size is None else args.chunk_size
    block = min(default.block_size, chunk) if args.block_size is None else args.block_size
    try:
        layout = Layout(chunk_size=chunk, block_size=block)
        layout.check()
    except ValueError:
        raise UsageError(
            f"chunk size {chunk} with block size {block} is invalid: both must lie between "
            f"{MIN_BLOCK_SIZE} and {MAX_CHUNK_SIZE} bytes, the block no larger than the "
            "chunk and the chunk a multiple of the block"
        ) from None
    return layout


def get_passphrase(args: argparse.Namespace, prompt_text: str = "Passphrase: ") -> str:
    """The passphrase to unlock with, from the sources in :func:`passphrase_options`."""
    return passphrase.obtain(passfile=args.passfile, extpass=args.extpass, prompt_text=prompt_text)


def get_new_passphrase(args: argparse.Namespace) -> str:
    """The new passphrase for passwd/recover, from :func:`new_passphrase_options`."""
    return passphrase.obtain(
        passfile=args.new_passfile,
        env=passphrase.ENV_NEW_PASSPHRASE,
        prompt_text="New passphrase: ",
        confirm="Repeat new passphrase: ",
        passfile_option="--new-passfile",
        extpass_option="",
    )


# --- helpers for commands ---------------------------------------------------------


def say(args: argparse.Namespace, text: str) -> None:
    """Print a confirmation on stdout unless ``--quiet``."""
    if not args.quiet:
        print(text, flush=True)


@asynccontextmanager
async def opened_store(args: argparse.Namespace, *, create: bool = False) -> AsyncIterator[Store]:
    """The store named by ``args.store``; always closed on the way out."""
    store = open_store(args.store, endpoint=args.endpoint, create=create)
    try:
        yield store
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()


@asynccontextmanager
async def unlocked_vault(args: argparse.Namespace, secret: str) -> AsyncIterator[Vault]:
    """The vault at ``args.store`` unlocked with passphrase ``secret``."""
    async with opened_store(args) as store:
        yield await Vault.unlock(store, secret)
