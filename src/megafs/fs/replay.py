"""Replaying journal records: each record is the operation it logged, applied
again with its own timestamp (and, for creations, its own inode number).

Owns: the table of record codes. The codes are part of the journal's format
(docs/format.md section 12) and never change; the table names the methods
themselves, so renaming one fails here, at import, rather than silently
leaving old journals unreplayable.

May not touch: the journal's files (the journal yields records; the
filesystem hands them here), commits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from ..errors import FsError
from .data import DataPath
from .namespace import Namespace
from .oplog import OpLog

log = logging.getLogger(__name__)

_Op = Callable[..., Coroutine[Any, Any, Any]]

#: Records of the namespace's operations.
NAMESPACE_OPS: dict[str, _Op] = {
    "sa": Namespace.replay_setattr,
    "mk": Namespace.mkdir,
    "cr": Namespace.create,
    "mn": Namespace.mknod,
    "sl": Namespace.symlink,
    "ln": Namespace.link,
    "ul": Namespace.unlink,
    "rd": Namespace.rmdir,
    "rn": Namespace.rename,
    "sx": Namespace.setxattr,
    "rx": Namespace.removexattr,
}
#: Records of the data path's operations.
DATA_OPS: dict[str, _Op] = {
    "wr": DataPath.write,
    "ws": DataPath.write_staged,
    "tr": DataPath.truncate,
}
#: Records whose first argument is the inode number the creation used.
_CREATES = frozenset({"mk", "cr", "mn", "sl"})


def staged_object(rec: list[Any]) -> bytes | None:
    """The object a ``ws`` record's blocks were staged into (None for any
    other record): a store object no root references that the record needs
    until a commit covers it."""
    if rec and rec[0] == "ws" and len(rec) > 5 and isinstance(rec[5], bytes):
        return rec[5]
    return None


async def apply_record(rec: list[Any], namespace: Namespace, data: DataPath, oplog: OpLog) -> None:
    """Apply one journal record. Records that no longer apply are skipped.

    Blocks on the store as the operation does (loads); never commits.
    """
    op, t, *args = rec
    oplog.replay_time = int(t)
    try:
        if op in _CREATES:
            oplog.replay_ino = int(args[0])
            args = args[1:]
        if op in DATA_OPS:
            await DATA_OPS[op](data, *args)
        else:
            await NAMESPACE_OPS[op](namespace, *args)
    except FsError as e:
        log.info("journal record %s no longer applies: %s", op, e)
    finally:
        oplog.replay_time = None
        oplog.replay_ino = None
