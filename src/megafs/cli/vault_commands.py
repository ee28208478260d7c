"""The vault commands: ``init``, ``passwd``, ``recover``, ``info``, ``adopt``.

``passwd`` and ``recover`` unlock in one trio run, then ask for the new
passphrase, then write it in a second run through
:meth:`megafs.vault.vault.Vault.replace_passphrase`, which refuses a header that
changed in between: a wrong old secret is reported before the new one is
typed.

Owns: what these commands print (the recovery key alone on stdout, its
warning on stderr; the ``info`` table).
May not touch: the header's bytes, slots or compare-and-swap (the vault's),
the filesystem, the mount lifecycle.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import trio

from .. import __version__
from ..client import passphrase
from ..errors import WrongPassphrase
from ..format.crypto import KdfParams, Keys
from ..format.header import SLOT_PASSPHRASE, Header, format_recovery_key, parse_recovery_key
from ..vault.retention import Policy
from ..vault.root import Device, Root
from ..vault.vault import Vault
from .options import (
    get_new_passphrase,
    get_passphrase,
    kdf_from_args,
    kdf_options,
    layout_from_args,
    layout_options,
    new_passphrase_options,
    opened_store,
    passphrase_options,
    recovery_key_options,
    say,
    store_arg,
    unlocked_vault,
)
from .registry import command

RECOVERY_WARNING = """\
Your recovery key is printed below. It is shown ONLY THIS ONCE and is the
ONLY way back into this vault if you forget the passphrase. Write it down or
store it offline, apart from the vault; anyone holding it can read the vault.
Use it with: megafs recover STORE"""


@dataclass(frozen=True)
class _Unlocked:
    header: Header
    keys: Keys


async def _unlock(
    args: argparse.Namespace, *, secret: str = "", recovery: bytes = b""
) -> _Unlocked:
    async with opened_store(args) as store:
        if recovery:
            vault = await Vault.unlock_recovery(store, recovery)
        else:
            vault = await Vault.unlock(store, secret)
        return _Unlocked(vault.header, vault.keys)


async def _replace_passphrase(
    args: argparse.Namespace, unlocked: _Unlocked, new: str, kdf: KdfParams | None
) -> None:
    """Second half of passwd/recover: write the new passphrase slot, unless the
    header is no longer the one unlocked in the first half."""
    async with opened_store(args) as store:
        await Vault(store, unlocked.header, unlocked.keys).replace_passphrase(new, kdf)


def _passphrase_kdf(hdr: Header) -> KdfParams:
    for slot in hdr.slots:
        if slot.kind == SLOT_PASSPHRASE:
            return slot.kdf
    return KdfParams()


def _new_kdf(args: argparse.Namespace, hdr: Header) -> KdfParams | None:
    """KDF parameters for a replaced slot: the old ones unless ``--kdf-*`` is given."""
    if args.kdf_memory is None and args.kdf_iterations is None:
        return None
    return kdf_from_args(args, _passphrase_kdf(hdr))


def human_size(n: int) -> str:
    """``1536`` -> ``'1.5 KiB'`` (binary units, one decimal)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f}".removesuffix(".0") + f" {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@command(
    "init",
    "create a new vault and print its recovery key",
    store_arg,
    passphrase_options,
    kdf_options,
    layout_options,
)
def cmd_init(args: argparse.Namespace) -> None:
    """Create a vault; the recovery key goes to stdout alone, the warning to stderr.

    Keeping the key alone on stdout lets ``megafs init STORE > key.txt`` make
    a file that ``megafs recover --recovery-key-file key.txt`` reads back.
    """
    kdf = kdf_from_args(args, KdfParams())
    layout = layout_from_args(args)
    secret = passphrase.obtain(
        passfile=args.passfile,
        extpass=args.extpass,
        prompt_text="New passphrase: ",
        confirm="Repeat passphrase: ",
    )

    async def run() -> bytes:
        async with opened_store(args, create=True) as store:
            _vault, key = await Vault.init(store, secret, kdf, layout)
            return key

    key = trio.run(run)
    print(RECOVERY_WARNING, file=sys.stderr, flush=True)
    print(format_recovery_key(key), flush=True)


@command(
    "passwd",
    "change the passphrase",
    store_arg,
    passphrase_options,
    new_passphrase_options,
    kdf_options,
)
def cmd_passwd(args: argparse.Namespace) -> None:
    secret = get_passphrase(args, "Current passphrase: ")
    unlocked = trio.run(lambda: _unlock(args, secret=secret))
    kdf = _new_kdf(args, unlocked.header)
    new = get_new_passphrase(args)
    trio.run(_replace_passphrase, args, unlocked, new, kdf)
    say(args, "Passphrase changed.")


@command(
    "recover",
    "set a new passphrase using the recovery key",
    store_arg,
    recovery_key_options,
    new_passphrase_options,
    kdf_options,
)
def cmd_recover(args: argparse.Namespace) -> None:
    text = passphrase.obtain_recovery_key(keyfile=args.recovery_key_file)
    try:
        key = parse_recovery_key(text)
    except ValueError as e:
        raise WrongPassphrase(f"invalid recovery key: {e}") from None
    unlocked = trio.run(lambda: _unlock(args, recovery=key))
    kdf = _new_kdf(args, unlocked.header)
    new = get_new_passphrase(args)
    trio.run(_replace_passphrase, args, unlocked, new, kdf)
    say(args, "New passphrase set. The recovery key is unchanged and still valid.")


def _lease_text(root: Root) -> str:
    lease = root.lease
    if lease is None:
        return "none"
    until = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(lease.until))
    expired = " (expired)" if lease.until < time.time() else ""
    return f"{lease.host} (pid {lease.pid}) until {until}{expired}"


def _root_record_text(root: Root) -> str:
    if root.version >= 3:
        return f"version {root.version} (several devices, history: docs/history.md)"
    if root.version >= 2:
        return f"version {root.version} (several devices: docs/multidevice.md)"
    return f"version {root.version} (upgraded to 2 by the next writable mount)"


def _devices_by_time(root: Root) -> list[Device]:
    return sorted(root.devices.values(), key=lambda d: (-d.time_ns, d.prefix))


def _device_text(dev: Device) -> str:
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(dev.time_ns / 1e9))
        if dev.time_ns
        else "never"
    )
    return f"{dev.name!r}: last commit {when}, generation {dev.generation}"


@command("info", "show a vault's format, settings and usage", store_arg, passphrase_options)
def cmd_info(args: argparse.Namespace) -> None:
    secret = get_passphrase(args)

    from ..fs.history_admin import usage

    async def run() -> tuple[Vault, Root, tuple[int, int, Policy]]:
        async with unlocked_vault(args, secret) as vault:
            return vault, await vault.read_root(), await usage(vault)

    vault, root, (past, held, policy) = trio.run(run)
    hdr = vault.header
    kdf = _passphrase_kdf(hdr)
    files, nbytes = [*root.stats, 0, 0][:2]
    rows = [
        ("megafs", __version__),
        ("store", vault.store.url),
        ("vault id", vault.vault_id.hex()),
        ("format version", str(hdr.version)),
        ("chunk size", f"{hdr.layout.chunk_size} bytes ({human_size(hdr.layout.chunk_size)})"),
        ("block size", f"{hdr.layout.block_size} bytes ({human_size(hdr.layout.block_size)})"),
        (
            "passphrase KDF",
            f"Argon2id, memory {kdf.memory_kib} KiB, iterations {kdf.iterations}, "
            f"lanes {kdf.lanes}",
        ),
        (
            "small chunks",
            f"packed, {root.packs_made()} packs made so far"
            if hdr.packs_small_chunks
            else "one object each (format 1)",
        ),
        ("root generation", str(root.generation)),
        ("files", str(files)),
        ("bytes", f"{nbytes} ({human_size(nbytes)})"),
        (
            "history",
            f"{past} past states kept, {held} bytes ({human_size(held)}) of content "
            "only they keep",
        ),
        ("retention", policy.text() + " (pinned states until removed)"),
        ("writer lease", _lease_text(root)),
        ("root record", _root_record_text(root)),
        *[("device", _device_text(dev)) for dev in _devices_by_time(root)],
    ]
    width = max(len(k) for k, _ in rows) + 1
    for key, value in rows:
        print(f"{key + ':':<{width}} {value}")


def adopt_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("device", metavar="DEVICE", help="the lost device's name, or its id's start")
    p.add_argument(
        "--force",
        action="store_true",
        help="adopt even if the device committed within the last 10 minutes",
    )


@command(
    "adopt",
    "commit what a lost device made durable (fsync) but never committed",
    store_arg,
    adopt_options,
    passphrase_options,
)
def cmd_adopt(args: argparse.Namespace) -> None:
    secret = get_passphrase(args)

    from ..fs.adopt import Adopted, adopt_device

    async def run() -> Adopted:
        async with unlocked_vault(args, secret) as vault:
            return await adopt_device(vault, args.device, force=args.force)

    done = trio.run(run)
    if not done.log_objects:
        say(args, f"{done.device}: nothing to adopt (everything it made durable is committed)")
    else:
        say(
            args,
            f"{done.device}: {done.records} changes from {done.log_objects} log "
            f"object{'s' if done.log_objects != 1 else ''} committed; do not mount the vault "
            "again with that device's old state",
        )
