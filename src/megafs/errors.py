"""The one exception tree of megafs.

Every foreseeable failure is one of these classes. They are mapped to
process exit codes in exactly one place (:mod:`megafs.cli`) and to errno
values in exactly one place (:mod:`megafs.fuse.operations`).

May not touch: any other megafs module (it imports only :mod:`errno`, and
every layer imports it), I/O, or pyfuse3.

::

    MegafsError
    ├── UsageError                 bad command-line input
    ├── MountError                 mountpoint missing, busy, or mounting failed
    ├── PassphraseError            no passphrase could be obtained
    ├── LocalFolderError           an unsafe runtime folder, or another vault's cache folder
    │   ├── LocalStateError        the local state file of a vault is damaged
    │   └── CacheFull              the cache disk is full (the journal takes no record)
    ├── VaultError                 the vault itself
    │   ├── NotAVault              no header, or not a megafs header
    │   ├── UnsupportedVersion     header written by a newer megafs
    │   ├── CorruptHeader          header unparseable or its MAC fails
    │   ├── WrongPassphrase        no key slot opens with this secret
    │   ├── IntegrityError         an object failed authentication
    │   │   └── RollbackError      the store served an older root
    │   ├── VaultBusy              another writer holds the vault
    │   ├── CommitConflict         the root changed under our commit
    │   └── VaultExists            init on a store that holds a vault
    ├── StoreError                 the store (local folder or S3)
    │   ├── StoreUnreachable       connection refused, DNS, timeouts
    │   ├── StoreAuthError         credentials rejected / access denied
    │   ├── NoSuchBucket           the bucket or folder does not exist
    │   ├── ObjectNotFound         a named object is missing
    │   ├── PreconditionFailed     compare-and-swap lost
    │   ├── StoreFull              no space left / quota
    │   └── StoreReadOnly          the store refuses writes
    └── FsError                    a POSIX error from the filesystem model
"""

from __future__ import annotations

import errno as _errno


class MegafsError(Exception):
    """Base of every error megafs raises on purpose."""


class UsageError(MegafsError):
    """The user gave input that cannot work (bad URL, bad option value)."""


class MountError(MegafsError):
    """The mountpoint is missing or already mounted, or the kernel refused the mount."""


class PassphraseError(MegafsError):
    """No passphrase could be read (empty, unreadable file, failing --extpass)."""


class LocalFolderError(MegafsError):
    """A local folder megafs keeps state in cannot be trusted with it.

    The runtime folder (pid, status and log files) is not a folder only this
    user controls, or holds a symlink where a file belongs; or the cache
    folder (journal, cached objects) belongs to another vault.
    """


class LocalStateError(LocalFolderError):
    """The client's local state of a vault (rollback protection: the newest
    root seen) cannot be read: the file is damaged."""


class CacheFull(LocalFolderError):
    """The disk of the cache folder is full: the journal cannot take the record
    of an operation, so the operation fails with nothing changed (ENOSPC)."""

    errno = _errno.ENOSPC


class VaultError(MegafsError):
    """A problem with the vault's contents."""


class NotAVault(VaultError):
    """The store holds no megafs header."""


class UnsupportedVersion(VaultError):
    """The header has a format version this megafs cannot read."""


class CorruptHeader(VaultError):
    """The header cannot be parsed, or its authentication fails."""


class WrongPassphrase(VaultError):
    """No key slot of the header opens with the given secret."""


class VaultExists(VaultError):
    """``init`` was asked to create a vault where one already exists."""


class IntegrityError(VaultError):
    """An object read from the store failed authentication.

    ``obj`` names the object (store name) so that logs can point at it.
    """

    def __init__(self, obj: str, detail: str = "authentication failed") -> None:
        super().__init__(f"integrity error in object {obj}: {detail}")
        self.obj = obj
        self.detail = detail


class StagedDataLost(IntegrityError):
    """A journal record names blocks staged into an object that the store no
    longer holds whole (a crashed machine lost them): the journal's replay
    stops there, as at a torn record, unless an fsync acknowledged the
    record (then the open fails with this error)."""


class RollbackError(IntegrityError):
    """The store served a root older than one this client has already seen, or
    one of the same generation that differs from it, or one that does not
    descend from it (``detail`` says which)."""

    def __init__(self, obj: str, seen: int, served: int, detail: str | None = None) -> None:
        super().__init__(
            obj,
            detail
            or f"store served generation {served}, but generation {seen} was already seen "
            "(rollback or stale replica)",
        )
        self.seen = seen
        self.served = served


class VaultBusy(VaultError):
    """Another client holds the writer lease of this vault."""


class CommitConflict(VaultError):
    """The root pointer changed between our read and our compare-and-swap."""


class ShareError(MegafsError):
    """A share link that cannot be used (docs/sharing.md); one line for the user."""


class WrongLinkKey(ShareError):
    """The link's key (or its password) does not open the share."""


class TamperedShare(ShareError):
    """A share's page, manifest or data failed authentication or is malformed."""


class LinkGone(ShareError):
    """The link expired or was revoked: the store no longer serves it."""


class StoreError(MegafsError):
    """A failure talking to the store."""


class StoreUnreachable(StoreError):
    """The store could not be reached (connection refused, DNS, timeout)."""


class StoreAuthError(StoreError):
    """The store rejected our credentials or denied access."""


class NoSuchBucket(StoreError):
    """The bucket (S3) or folder (local) does not exist."""


class ObjectNotFound(StoreError):
    """The named object does not exist in the store."""

    def __init__(self, name: str) -> None:
        super().__init__(f"object not found: {name}")
        self.name = name


class PreconditionFailed(StoreError):
    """A compare-and-swap lost: the pointer was not in the expected state."""


class StoreFull(StoreError):
    """The store has no space left (disk full, quota exceeded)."""


class StoreReadOnly(StoreError):
    """The store refuses writes."""


class FsError(MegafsError):
    """A POSIX error raised by the filesystem model, carrying an errno."""

    def __init__(self, errno: int, msg: str = "") -> None:
        super().__init__(msg or _errno.errorcode.get(errno, str(errno)))
        self.errno = errno


def first_leaf(
    exc: BaseException,
    expected: type[BaseException] | tuple[type[BaseException], ...] = MegafsError,
) -> BaseException:
    """The one exception to report for ``exc``, which may be a (nested) exception group.

    trio raises the failures of a nursery's tasks together as a group (a
    commit's parallel uploads fail together), but a log line, an errno or an
    exit code names one. Of the leaves, depth first, this is: a
    KeyboardInterrupt if there is one (the user asked to stop); else the first
    leaf that is not an instance of ``expected``, so that an unexpected error
    is never hidden behind a foreseeable one; else the first leaf. An
    exception that is not a group is its own only leaf.
    """
    leaves = _leaves(exc)
    for leaf in leaves:
        if isinstance(leaf, KeyboardInterrupt):
            return leaf
    for leaf in leaves:
        if not isinstance(leaf, expected):
            return leaf
    return leaves[0]


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


__all__ = [
    "CacheFull",
    "CommitConflict",
    "CorruptHeader",
    "FsError",
    "IntegrityError",
    "LocalFolderError",
    "LocalStateError",
    "MegafsError",
    "MountError",
    "NoSuchBucket",
    "NotAVault",
    "ObjectNotFound",
    "PassphraseError",
    "PreconditionFailed",
    "RollbackError",
    "StoreAuthError",
    "StoreError",
    "StoreFull",
    "StoreReadOnly",
    "StoreUnreachable",
    "UnsupportedVersion",
    "UsageError",
    "VaultBusy",
    "VaultError",
    "VaultExists",
    "WrongPassphrase",
    "first_leaf",
]
