"""Device log objects: an fsync made durable in the store with one PUT.

A device's journal records since its last commit's mark are put in the
store as a *series* of log objects, each holding the records the previous
one did not (docs/concurrency.md, "The device log"; docs/format.md). The
owner's next commit covers them and deletes the series; a device that
crashed (or is recovered elsewhere: ``megafs recover``) reads the series
back into its journal before replaying it.

Object ``k`` of the series after mark ``(journal, segment)`` of device
``dev``, recorded in a root by that device's commit of generation ``gen``,
has the id ``HMAC-SHA256(names key, dev || journal || segment || gen ||
k)[:16]``: as random-looking as any other object id, found by whoever holds
the vault key without listing, and never the same for two commits (a
journal may reuse segment numbers after a clean unmount). It is a metadata object of kind
:data:`KIND_LOG` (the id, and so all of the above, is in its associated
data); its payload is ``{"v": 1, "base": sealed root or None, "recs":
[[segment, record number, record], ...]}``, the base (the root the records
apply to) in object 0 only.

Owns: the names, the payload and reading a series back.
May not touch: the journal's files, commits.
"""

from __future__ import annotations

import functools
import logging
import struct
from dataclasses import dataclass

from ..errors import IntegrityError, ObjectNotFound
from ..format import crypto
from .vault import KIND_LOG, META_MAX, Vault, obj_name

log = logging.getLogger(__name__)

_NAMES_LABEL = b"megafs/v1/device-log-names"
VERSION = 1

Record = tuple[int, int, bytes]


@functools.lru_cache(maxsize=8)
def _names_key(meta: bytes, vault_id: bytes) -> bytes:
    return crypto.hkdf(meta, vault_id, _NAMES_LABEL)


def log_id(keys: crypto.Keys, device: bytes, journal: bytes, mark: int, gen: int, k: int) -> bytes:
    """The object id of log object ``k`` of ``device``'s series after ``mark``
    of ``journal``, set by its commit of generation ``gen``."""
    names = _names_key(keys.meta, keys.vault_id)
    tag = crypto.hmac_sha256(names, device + journal + struct.pack(">QQQ", mark, gen, k))
    return tag[: crypto.ID_SIZE]


@dataclass
class Series:
    """One device's log series after one journal mark. ``next`` is the next
    object's number (how many are in the store)."""

    device: bytes
    journal: bytes
    mark: int
    #: the generation of the device's commit that set ``mark``
    gen: int
    next: int = 0
    #: the generation of the root the records apply to (the committer's base)
    base_generation: int = -1
    #: (segment, record number) of its last record, for a series read back
    last: tuple[int, int] | None = None

    def ids(self, keys: crypto.Keys) -> list[bytes]:
        """The ids of the objects put so far (for deletion once committed)."""
        return [
            log_id(keys, self.device, self.journal, self.mark, self.gen, k)
            for k in range(self.next)
        ]

    async def put(self, vault: Vault, records: list[Record], base: bytes | None) -> None:
        """Put the next object (durable before this returns). Blocks on the store."""
        obj = log_id(vault.keys, self.device, self.journal, self.mark, self.gen, self.next)
        payload = {"v": VERSION, "base": base, "recs": [list(r) for r in records]}
        await vault.store.put_durable(obj_name(obj), vault.seal_meta(KIND_LOG, obj, payload))
        self.next += 1


async def read_series(
    vault: Vault, device: bytes, journal: bytes, mark: int, gen: int
) -> tuple[bytes | None, list[Record], int]:
    """The base (sealed root, or None), the records and the number of objects
    of a series, read from object 0 until the first one the store lacks.
    IntegrityError for an object that fails authentication or makes no sense.
    Blocks on the store (one GET per object, and one that finds nothing)."""
    base: bytes | None = None
    records: list[Record] = []
    k = 0
    while True:
        obj = log_id(vault.keys, device, journal, mark, gen, k)
        name = obj_name(obj)
        try:
            data = await vault.store.get(name, max_size=META_MAX)
        except ObjectNotFound:
            return base, records, k
        try:
            raw = vault.open_meta(KIND_LOG, obj, data)
        except IntegrityError:
            # The last object of a series may be a put that a crash cut off
            # (a store that keeps part of an interrupted upload): its fsync
            # never returned. A store that damages it gains nothing it could
            # not have by withholding it; one that damages an earlier object
            # is caught, since a later one exists.
            following = log_id(vault.keys, device, journal, mark, gen, k + 1)
            try:
                await vault.store.get(obj_name(following), max_size=META_MAX)
            except ObjectNotFound:
                log.info(
                    "device log object %s does not authenticate and is the "
                    "last of its series: an upload a crash cut off; ignored",
                    name,
                )
                return base, records, k
            raise
        try:
            if raw["v"] != VERSION:
                raise IntegrityError(name, f"device log version {raw['v']} unknown")
            if k == 0:
                base = raw["base"]
                if base is not None and not isinstance(base, bytes):
                    raise TypeError("base")
            for seg, recno, plain in raw["recs"]:
                if not isinstance(plain, bytes):
                    raise TypeError("record")
                records.append((int(seg), int(recno), plain))
        except (KeyError, TypeError, ValueError) as e:
            raise IntegrityError(name, f"malformed device log object ({e})") from None
        k += 1
