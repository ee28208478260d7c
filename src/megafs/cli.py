"""The ``megafs`` command line: argument parsing, commands, exit codes.

Each command is one function registered with :func:`command`; it gets the
parsed arguments, obtains secrets first (blocking, before any trio run, so a
prompt never stalls the event loop), then does its store work in
``trio.run``. A new command (``mount``, ``umount``, ``fsck``) is one more
decorated function; the option groups below (:func:`store_arg`,
:func:`passphrase_options`, ...) can be reused by listing them.

Exit codes
----------

Exceptions are turned into exit codes in exactly one place,
:func:`exit_code`, which looks the exception's class (most specific first,
along its MRO) up in :data:`EXIT_CODES`. A foreseeable failure prints exactly
one line, ``megafs: <message>``, on stderr and never a traceback (``--debug``
adds one).

====  =====================================================================
code  meaning
====  =====================================================================
0     success
1     unexpected internal error (``--debug`` shows the traceback)
2     usage error: bad option or store URL (argparse also exits with 2)
3     wrong passphrase or wrong/mistyped recovery key. A tampered
      passphrase slot (or any byte it authenticates: vault id, geometry,
      its KDF parameters and salt) cannot be told apart from a wrong
      passphrase, so it also shows as 3
4     not a vault: the store holds no megafs header
5     the vault has a newer format version than this megafs supports
6     corrupt header (unparseable, or its MAC fails after a slot opened),
      integrity error in an object, or rollback of the root
7     store unreachable (connection refused, DNS, timeout)
8     store authentication error (credentials rejected, access denied)
9     no such bucket (S3) or folder (local store)
10    vault busy: another writer holds the lease, or the vault changed
      under our commit
11    ``init`` on a store that already holds a vault
12    no passphrase: no source, empty, unreadable ``--passfile``, failing
      ``--extpass``, confirmation mismatch at an interactive prompt
13    other store error: store full, read-only, missing object, I/O error
14    mount problem: mountpoint missing or already mounted, the kernel
      refused the mount, or the final commit at unmount failed
15    unsafe local folder: the runtime folder is not yours alone (owner,
      mode, a symlink) or holds a symlink for the log; or the cache folder
      belongs to another vault; megafs changed nothing in that folder
130   interrupted (Ctrl-C)
====  =====================================================================
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import IntEnum

import trio

from . import __version__, passphrase
from .crypto import KdfParams, Keys, Layout
from .errors import (
    CommitConflict,
    CorruptHeader,
    IntegrityError,
    LocalFolderError,
    MegafsError,
    MountError,
    NoSuchBucket,
    NotAVault,
    PassphraseError,
    StoreAuthError,
    StoreError,
    StoreUnreachable,
    UnsupportedVersion,
    UsageError,
    VaultBusy,
    VaultExists,
    WrongPassphrase,
)
from .header import (
    SLOT_PASSPHRASE,
    Header,
    format_recovery_key,
    parse,
    parse_recovery_key,
)
from .stores import Store, open_store
from .vault import HEADER, Root, Vault

log = logging.getLogger("megafs")


# --- exit codes -------------------------------------------------------------


class Exit(IntEnum):
    """Process exit codes; see the table in the module docstring."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    WRONG_SECRET = 3
    NOT_A_VAULT = 4
    UNSUPPORTED_VERSION = 5
    CORRUPT = 6
    STORE_UNREACHABLE = 7
    STORE_AUTH = 8
    NO_SUCH_BUCKET = 9
    BUSY = 10
    EXISTS = 11
    PASSPHRASE = 12
    STORE = 13
    MOUNT = 14
    LOCAL_FOLDER = 15
    INTERRUPTED = 130


#: Exception class -> exit code. Looked up along the raised class's MRO, so
#: the most specific entry wins and new subclasses inherit their parent's code.
EXIT_CODES: dict[type[BaseException], Exit] = {
    KeyboardInterrupt: Exit.INTERRUPTED,
    UsageError: Exit.USAGE,
    WrongPassphrase: Exit.WRONG_SECRET,
    NotAVault: Exit.NOT_A_VAULT,
    UnsupportedVersion: Exit.UNSUPPORTED_VERSION,
    CorruptHeader: Exit.CORRUPT,
    IntegrityError: Exit.CORRUPT,  # includes RollbackError
    StoreUnreachable: Exit.STORE_UNREACHABLE,
    StoreAuthError: Exit.STORE_AUTH,
    NoSuchBucket: Exit.NO_SUCH_BUCKET,
    VaultBusy: Exit.BUSY,
    CommitConflict: Exit.BUSY,
    VaultExists: Exit.EXISTS,
    PassphraseError: Exit.PASSPHRASE,
    StoreError: Exit.STORE,  # StoreFull, StoreReadOnly, ObjectNotFound, ...
    MountError: Exit.MOUNT,
    LocalFolderError: Exit.LOCAL_FOLDER,
    MegafsError: Exit.INTERNAL,
}


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _unwrap(exc: BaseException) -> BaseException:
    """Pick the exception to report from a (possibly nested) trio exception group.

    A Ctrl-C anywhere wins; otherwise the first foreseeable (megafs) error,
    unless some leaf is unexpected, which then is what gets reported.
    """
    leaves = _leaves(exc)
    for leaf in leaves:
        if isinstance(leaf, KeyboardInterrupt):
            return leaf
    for leaf in leaves:
        if not isinstance(leaf, MegafsError):
            return leaf
    return leaves[0]


def exit_code(exc: BaseException) -> int:
    """The exit code for ``exc`` (the single exception -> exit code mapping)."""
    exc = _unwrap(exc)
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return int(EXIT_CODES[cls])
    return int(Exit.INTERNAL)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def report(exc: BaseException, *, debug: bool) -> int:
    """Print ``exc`` as one ``megafs:`` line on stderr and return its exit code."""
    leaf = _unwrap(exc)
    code = exit_code(leaf)
    if debug:
        traceback.print_exception(exc)
    if isinstance(leaf, KeyboardInterrupt):
        msg = "interrupted"
    elif isinstance(leaf, MegafsError):
        msg = _one_line(str(leaf)) or type(leaf).__name__
    else:
        msg = f"internal error: {type(leaf).__name__}: {_one_line(str(leaf))}"
        if not debug:
            msg += " (run with --debug for a traceback)"
    print(f"megafs: {msg}", file=sys.stderr, flush=True)
    return code


# --- command registry -------------------------------------------------------

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


# --- reusable option groups ---------------------------------------------------


def _global_options(p: argparse.ArgumentParser, *, sub: bool) -> None:
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


def _positive_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


_SIZE = re.compile(r"(\d+)\s*([kmg]?)(?:i?b)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``'1048576'``, ``'1M'``, ``'1MiB'``, ``'256k'`` -> bytes (binary units)."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r}")
    shift = {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]
    return int(m.group(1)) << shift


def kdf_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("key derivation (Argon2id) for the passphrase")
    g.add_argument(
        "--kdf-memory",
        metavar="KIB",
        type=_positive_int,
        help=f"memory in KiB (default {KdfParams().memory_kib}; at least 8 per lane)",
    )
    g.add_argument(
        "--kdf-iterations",
        metavar="N",
        type=_positive_int,
        help=f"passes over memory (default {KdfParams().iterations})",
    )


def layout_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--chunk-size",
        metavar="BYTES",
        type=parse_size,
        help=f"plaintext bytes per store object (default {Layout().chunk_size}); "
        "suffixes K, M allowed",
    )


# --- helpers for commands -----------------------------------------------------

_MAX_CHUNK = 64 * 1024 * 1024
_MIN_BLOCK = 4096


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
    default = Layout()
    chunk = args.chunk_size or default.chunk_size
    block = min(default.block_size, chunk)
    if not (_MIN_BLOCK <= chunk <= _MAX_CHUNK) or chunk % block:
        raise UsageError(
            f"chunk size {chunk} is invalid: it must be between {_MIN_BLOCK} and {_MAX_CHUNK} "
            f"bytes and a multiple of {default.block_size} when larger than that"
        )
    return Layout(chunk_size=chunk, block_size=block)


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
    """Second half of passwd/recover: write the new passphrase slot.

    The new passphrase is asked between two trio runs (so that a wrong old
    secret is reported before the new one is typed); refuse if the header
    changed in between rather than silently overwrite that change.
    """
    async with opened_store(args) as store:
        ptr = await store.read_pointer(HEADER)
        if ptr is None:
            raise NotAVault(f"no megafs vault at {store.url}")
        if parse(ptr.data)[0] != unlocked.header:
            raise CommitConflict("the vault header changed while unlocking; try again")
        vault = Vault(store, unlocked.header, unlocked.keys)
        await vault.set_passphrase(new, kdf)


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
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f}".removesuffix(".0") + f" {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# --- commands -------------------------------------------------------------------

RECOVERY_WARNING = """\
Your recovery key is printed below. It is shown ONLY THIS ONCE and is the
ONLY way back into this vault if you forget the passphrase. Write it down or
store it offline, apart from the vault; anyone holding it can read the vault.
Use it with: megafs recover STORE"""


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


@command("info", "show a vault's format, settings and usage", store_arg, passphrase_options)
def cmd_info(args: argparse.Namespace) -> None:
    secret = get_passphrase(args)

    async def run() -> tuple[Vault, Root]:
        async with unlocked_vault(args, secret) as vault:
            return vault, await vault.read_root()

    vault, root = trio.run(run)
    hdr = vault.header
    kdf = _passphrase_kdf(hdr)
    files, nbytes = [*root.stats, 0, 0][:2]
    rows = [
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
            f"packed, {root.next_pack} packs made so far"
            if hdr.packs_small_chunks
            else "one object each (format 1)",
        ),
        ("root generation", str(root.generation)),
        ("files", str(files)),
        ("bytes", f"{nbytes} ({human_size(nbytes)})"),
        ("writer lease", _lease_text(root)),
    ]
    width = max(len(k) for k, _ in rows) + 1
    for key, value in rows:
        print(f"{key + ':':<{width}} {value}")


# --- mount and umount ---------------------------------------------------------


def mount_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing empty folder")
    p.add_argument(
        "-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr"
    )
    p.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPTS",
        help="comma-separated mount options: ro, allow_other, default_permissions, uid=N, "
        "gid=N, umask=OCTAL, cache_dir=DIR, cache_size=SIZE, store_timeout=SECONDS, "
        "passfile=FILE, endpoint=URL",
    )
    p.add_argument("--cache-dir", metavar="DIR", help="default: $XDG_CACHE_HOME/megafs/<vault id>")
    p.add_argument(
        "--cache-size",
        metavar="SIZE",
        type=parse_size,
        default=None,
        help="default: 1G for S3, 0 for a local folder",
    )
    p.add_argument(
        "--commit-interval",
        metavar="SECONDS",
        type=float,
        default=5.0,
        help="commit changes to the store this often (default 5)",
    )
    p.add_argument(
        "--store-timeout",
        metavar="SECONDS",
        type=_positive_float,
        default=None,
        help="how long a file operation waits for an unreachable store before it fails "
        "with EIO (default 60)",
    )
    p.add_argument("--log-file", metavar="FILE", help="where the background daemon logs")


@command(
    "mount",
    "mount a vault as a folder (also: megafs STORE MOUNTPOINT -o OPTS, for mount.fuse3)",
    store_arg,
    mount_options,
    passphrase_options,
)
def cmd_mount(args: argparse.Namespace) -> None:
    """Mount; the runtime folder is checked (and the log opened) before the
    passphrase is read, and every secret variable is out of the environment
    before the daemon starts (:func:`megafs.passphrase.scrub_environment`)."""
    from .mount import (
        MountConfig,
        check_mountpoint,
        daemonize,
        log_path,
        open_log,
        run_foreground,
        runtime_dir,
    )

    cfg = MountConfig(
        args.store,
        os.path.realpath(args.mountpoint),
        endpoint=args.endpoint,
        foreground=args.foreground,
        debug=args.debug,
        cache_dir=args.cache_dir,
        commit_interval=args.commit_interval,
        log_file=args.log_file,
    )
    for opts in args.options:
        cfg.apply_options(opts)
    if args.cache_size is not None:
        cfg.cache_size = args.cache_size
    if args.store_timeout is not None:
        cfg.store_timeout = args.store_timeout
    if cfg.extra.get("passfile") and not args.passfile:
        args.passfile = cfg.extra["passfile"]
    if cfg.extra.get("extpass") and not args.extpass:
        args.extpass = cfg.extra["extpass"]
    check_mountpoint(cfg.mountpoint)
    runtime_dir()  # an unsafe runtime folder is refused before the passphrase is read
    log_fd = None
    if not cfg.foreground:
        logfile = cfg.log_file or log_path(cfg.mountpoint)
        log_fd = open_log(logfile, follow=cfg.log_file is not None)
    try:
        secret = get_passphrase(args)
    finally:
        passphrase.scrub_environment()
    if log_fd is None:
        run_foreground(cfg, secret, lambda: log.info("mounted %s", cfg.mountpoint))
        return

    def child(ready: Callable[[], None]) -> tuple[int, str]:
        root = logging.getLogger()
        for h in list(root.handlers):
            root.removeHandler(h)
        handler = logging.StreamHandler(os.fdopen(log_fd, "a", buffering=1))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.DEBUG if args.debug else logging.INFO)
        # httpx logs every request at INFO: only with --debug, or the log grows without end.
        logging.getLogger("httpx").setLevel(logging.DEBUG if args.debug else logging.WARNING)
        try:
            run_foreground(cfg, secret, ready)
        except (Exception, KeyboardInterrupt, BaseExceptionGroup) as e:
            log.error("%s", e, exc_info=True)
            return exit_code(e), _one_line(str(_unwrap(e)) or type(e).__name__)
        return 0, ""

    code, reason = daemonize(child)
    os.close(log_fd)
    if code:
        print(f"megafs: {reason}", file=sys.stderr)
        raise SystemExit(code)


def umount_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT")


@command(
    "umount",
    "flush, commit and unmount; returns when everything is in the store",
    umount_options,
)
def cmd_umount(args: argparse.Namespace) -> None:
    from .mount import log_path, umount

    status = umount(args.mountpoint)
    if status:
        raise MountError(
            f"unmounted, but the final commit failed (status {status}); the changes stay in "
            f"the local journal for the next mount; see {log_path(args.mountpoint)}"
        )


# --- fsck -------------------------------------------------------------------------


def fsck_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--repair",
        action="store_true",
        help="delete unreferenced objects (takes the writer lease while it runs)",
    )


@command(
    "fsck",
    "verify that every object authenticates and is reachable; list garbage",
    store_arg,
    fsck_options,
    passphrase_options,
)
def cmd_fsck(args: argparse.Namespace) -> None:
    from .fsck import check

    secret = get_passphrase(args)
    tty = sys.stderr.isatty() and not args.quiet

    def progress(stage: str, done: int, total: int) -> None:
        if tty and total:
            width = 30
            filled = width * done // total
            bar = "#" * filled + "." * (width - filled)
            print(f"\r{stage:>9} [{bar}] {done}/{total}", end="", file=sys.stderr, flush=True)

    async def run() -> object:
        async with unlocked_vault(args, secret) as vault:
            return await check(vault, repair=args.repair, progress=progress)

    report = trio.run(run)
    if tty:
        print(file=sys.stderr)
    from .fsck import Report

    assert isinstance(report, Report)
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
    if report.problems or report.missing:
        raise IntegrityError(
            "fsck", f"{len(report.problems)} problems, {len(report.missing)} missing objects"
        )
    say(args, "clean")


# --- entry point ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megafs",
        description="End-to-end encrypted cloud drive over S3 or a local folder.",
        epilog="Exit codes are listed in the documentation of megafs.cli.",
    )
    parser.add_argument("--version", action="version", version=f"megafs {__version__}")
    _global_options(parser, sub=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, sub=True)
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
    """Run the command line; return the exit code (see the table above)."""
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


if __name__ == "__main__":
    sys.exit(main())
