"""The operation log: one timestamp per operation, and every mutation
journalled before it is applied.

Owns: whether mutations are accepted at all (a read-only mount, or after
close), the operation's clock (the journalled time during replay), the count of
mutations logged so far (what group commit compares against), the journal
the records go to, and the inode number a replayed create must reuse.

May not touch: the vault, the store, Content or the cache, inodes, pages,
commits; of the journal only :meth:`Journal.append` (it never reads the
journal back: :mod:`.replay` drives that).

Contract with the components that mutate (:class:`~.namespace.Namespace`,
:class:`~.data.DataPath`): an operation is a method decorated with
:func:`operation`; it calls :meth:`OpLog.record` after every check and fetch
and right before its await-free section that mutates, and takes its
timestamps from :meth:`OpLog.now` only within that section.
"""

from __future__ import annotations

import errno
import functools
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from ..client.journal import Journal
from ..errors import FsError


class OpLog:
    """Timestamps and journals the mutations of one filesystem. No await."""

    def __init__(self, *, writable: bool) -> None:
        #: Mutations are accepted (False: every one fails with EROFS).
        self.writable = writable
        #: Where records go (None: a read-only or journal-less filesystem).
        self.journal: Journal | None = None
        #: Mutations logged so far; a snapshot taken when this was ``n`` holds
        #: the first ``n`` (see :meth:`~.committer.Committer.fsync`).
        self.mutations = 0
        #: During replay: the record's timestamp, and the inode number a
        #: replayed create reuses.
        self.replay_time: int | None = None
        self.replay_ino: int | None = None
        self._op_time: int | None = None

    def check_writable(self) -> None:
        if not self.writable:
            raise FsError(errno.EROFS)

    def begin(self) -> None:
        """A new operation starts: its first :meth:`now` fixes its time."""
        self._op_time = None

    def now(self) -> int:
        """The operation's timestamp: one per operation, the journalled one in replay."""
        if self.replay_time is not None:
            return self.replay_time
        if self._op_time is None:
            self._op_time = time.time_ns()
        return self._op_time

    def record(self, *record: Any) -> None:
        """Journal a mutation (op, timestamp, args...) *before* it is applied.

        If the journal cannot be written (a full cache disk, :class:`CacheFull`)
        this raises and the caller fails with nothing changed.
        """
        self.mutations += 1
        if self.journal is not None:
            self.journal.append([record[0], self.now(), *record[1:]])


class _Logged(Protocol):
    oplog: OpLog


F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, Any]])


def operation(fn: F) -> F:
    """Mark a journalled, mutating operation: it starts with a fresh timestamp."""

    @functools.wraps(fn)
    async def wrapper(self: _Logged, *args: Any, **kwargs: Any) -> Any:
        self.oplog.begin()
        return await fn(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
