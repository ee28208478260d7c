"""The one table of process exit codes, and the one place exceptions become them.

:func:`exit_code` looks the exception's class up in :data:`EXIT_CODES` along
its MRO (most specific first), so a new subclass inherits its parent's code.
:func:`report` prints a failure as exactly one line, ``megafs: <message>``,
on stderr and never a traceback for a foreseeable failure (``--debug`` adds
one). Of a trio exception group one leaf is reported
(:func:`megafs.errors.first_leaf`).

Owns: the codes, their meaning, the one-line message.
May not touch: stores, vaults, mounts; it reads nothing but the exception.
"""

from __future__ import annotations

import sys
import traceback
from enum import IntEnum

from ..errors import (
    CommitConflict,
    CorruptHeader,
    IntegrityError,
    LinkGone,
    LocalFolderError,
    MegafsError,
    MountError,
    NoSuchBucket,
    NotAVault,
    PassphraseError,
    ShareError,
    StoreAuthError,
    StoreError,
    StoreUnreachable,
    TamperedShare,
    UnsupportedVersion,
    UsageError,
    VaultBusy,
    VaultExists,
    WrongLinkKey,
    WrongPassphrase,
    first_leaf,
)


class Exit(IntEnum):
    """Process exit codes, one comment per code."""

    #: success
    OK = 0
    #: unexpected internal error (``--debug`` shows the traceback)
    INTERNAL = 1
    #: usage error: bad option or store URL (argparse also exits with 2)
    USAGE = 2
    #: wrong passphrase or wrong/mistyped recovery key. A tampered passphrase
    #: slot (or any byte it authenticates: vault id, geometry, its KDF
    #: parameters and salt) cannot be told apart from a wrong passphrase, so
    #: it also shows as 3
    WRONG_SECRET = 3
    #: not a vault: the store holds no megafs header
    NOT_A_VAULT = 4
    #: the vault has a newer format version than this megafs supports
    UNSUPPORTED_VERSION = 5
    #: corrupt header (unparseable, or its MAC fails after a slot opened),
    #: integrity error in an object, or rollback of the root
    CORRUPT = 6
    #: store unreachable (connection refused, DNS, timeout)
    STORE_UNREACHABLE = 7
    #: store authentication error (credentials rejected, access denied)
    STORE_AUTH = 8
    #: no such bucket (S3) or folder (local store)
    NO_SUCH_BUCKET = 9
    #: vault busy: another writer holds the lease, or the vault changed under
    #: our commit
    BUSY = 10
    #: ``init`` on a store that already holds a vault
    EXISTS = 11
    #: no passphrase: no source, empty, unreadable ``--passfile``, failing
    #: ``--extpass``, confirmation mismatch at an interactive prompt
    PASSPHRASE = 12
    #: other store error: store full, read-only, missing object, I/O error
    STORE = 13
    #: mount problem: mountpoint missing or already mounted, the kernel refused
    #: the mount, or the final commit at unmount failed
    MOUNT = 14
    #: unsafe local folder: the runtime folder is not yours alone (owner, mode,
    #: a symlink) or holds a symlink for the log; or the cache folder belongs
    #: to another vault; megafs changed nothing in that folder
    LOCAL_FOLDER = 15
    #: a share link that expired or was revoked (``megafs get``)
    LINK_GONE = 16
    #: interrupted (Ctrl-C)
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
    WrongLinkKey: Exit.WRONG_SECRET,  # or its password
    TamperedShare: Exit.CORRUPT,
    LinkGone: Exit.LINK_GONE,
    ShareError: Exit.USAGE,  # not a share page at that URL
    MegafsError: Exit.INTERNAL,
}


def exit_code(exc: BaseException) -> int:
    """The exit code for ``exc`` (the single exception -> exit code mapping)."""
    exc = first_leaf(exc)
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return int(EXIT_CODES[cls])
    return int(Exit.INTERNAL)


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines too) made one space."""
    return " ".join(text.split())


def reason(exc: BaseException) -> str:
    """The reported leaf of ``exc`` as one line (its class name if it has no message)."""
    return one_line(str(first_leaf(exc)) or type(exc).__name__)


def report(exc: BaseException, *, debug: bool) -> int:
    """Print ``exc`` as one ``megafs:`` line on stderr and return its exit code."""
    leaf = first_leaf(exc)
    code = exit_code(leaf)
    if debug:
        traceback.print_exception(exc)
    if isinstance(leaf, KeyboardInterrupt):
        msg = "interrupted"
    elif isinstance(leaf, MegafsError):
        msg = one_line(str(leaf)) or type(leaf).__name__
    else:
        msg = f"internal error: {type(leaf).__name__}: {one_line(str(leaf))}"
        if not debug:
            msg += " (run with --debug for a traceback)"
    print(f"megafs: {msg}", file=sys.stderr, flush=True)
    return code
