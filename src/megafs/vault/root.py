"""The root pointer's record: :class:`Root`, the writer :class:`Lease`, and
(record version 2, docs/multidevice.md) each device's :class:`Device` record;
the msgpack helpers every decoder of authenticated records uses.

Pure: encoding and decoding only, no I/O, no keys (sealing the root is
:class:`~megafs.vault.vault.Vault`'s). May not touch: the store, the vault,
the filesystem model, anything above.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from ..errors import IntegrityError
from ..format import crypto
from .retention import Policy

ROOT = "root"

#: A device's inode and pack numbers are ``prefix << DEVICE_BITS | counter``;
#: numbers below ``1 << DEVICE_BITS`` are those allocated before record
#: version 2 (prefix 0).
DEVICE_BITS = 40
#: Prefixes stay below this, so inode and pack numbers stay below 2**62 (the
#: bound the inode record codec puts on pack numbers in chunk maps).
MAX_PREFIX = 1 << 22
#: The highest record version this code writes; it refuses to write a newer one.
RECORD_VERSION = 3


def root_digest(sealed: bytes) -> bytes:
    """The digest that names a root: SHA-256 of its sealed pointer bytes."""
    return hashlib.sha256(sealed).digest()


@dataclass
class Lease:
    client_id: bytes
    host: str
    pid: int
    until: float

    def encode(self) -> list[Any]:
        return [self.client_id, self.host, self.pid, self.until]

    @classmethod
    def decode(cls, v: Any) -> Lease:
        return cls(expect_bytes(v[0]), str(v[1]), int(v[2]), float(v[3]))


@dataclass
class Device:
    """One device's record in a root of record version 2 (docs/multidevice.md).

    ``next_ino`` and ``next_pack`` are absolute numbers in the device's own
    range (``prefix << DEVICE_BITS`` on), so no two devices allocate the same
    inode or pack number. ``journal`` is the device's journal mark,
    ``orphans`` the inodes unlinked but still open on the device,
    ``time_ns`` and ``generation`` those of its last commit.
    """

    name: str
    prefix: int
    next_ino: int
    next_pack: int
    journal: tuple[bytes, int] | None = None
    orphans: list[int] = field(default_factory=list)
    time_ns: int = 0
    generation: int = 0

    @classmethod
    def new(cls, name: str, prefix: int) -> Device:
        """A device registering with ``prefix``: its ranges start empty."""
        if not 1 <= prefix < MAX_PREFIX:
            raise ValueError(f"device prefix {prefix} out of range")
        base = prefix << DEVICE_BITS
        return cls(name, prefix, base, base)

    def owns(self, number: int) -> bool:
        """Whether inode or pack ``number`` is in this device's range."""
        return number >> DEVICE_BITS == self.prefix

    def copy(self) -> Device:
        return replace(self, orphans=list(self.orphans))

    def encode(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pfx": self.prefix,
            "ino": self.next_ino,
            "pack": self.next_pack,
            "jrnl": list(self.journal) if self.journal else None,
            "orph": self.orphans,
            "t": self.time_ns,
            "gen": self.generation,
        }

    @classmethod
    def decode(cls, d: Any) -> Device:
        """Raises KeyError, TypeError or ValueError on a malformed record."""
        dev = cls(
            name=_expect_str(d["name"]),
            prefix=_int(d["pfx"]),
            next_ino=_int(d["ino"]),
            next_pack=_int(d["pack"]),
            journal=(expect_bytes(d["jrnl"][0]), _int(d["jrnl"][1])) if d["jrnl"] else None,
            orphans=sorted(_int(x) for x in d["orph"]),
            time_ns=_int(d["t"]),
            generation=_int(d["gen"]),
        )
        if not 1 <= dev.prefix < MAX_PREFIX:
            raise ValueError(f"device prefix {dev.prefix} out of range")
        low, high = dev.prefix << DEVICE_BITS, (dev.prefix + 1) << DEVICE_BITS
        if not (low <= dev.next_ino <= high and low <= dev.next_pack <= high):
            raise ValueError(f"device counters outside the range of prefix {dev.prefix}")
        return dev


#: The lease every root of record version 2 carries under ``lease``, for
#: megafs releases that know only version 1: they read such a vault
#: correctly but must not write it (they would allocate from the frozen
#: version 1 counters and drop the device records), and this lease, held
#: forever by nobody, makes them refuse with VaultBusy.
MULTI_DEVICE_LEASE = Lease(bytes(crypto.ID_SIZE), "a newer megafs (several devices)", 0, math.inf)


@dataclass
class Root:
    """The plaintext of the root pointer.

    Record version 1 has no ``devices``. Version 2 (docs/multidevice.md)
    adds them; its ``next_ino``, ``next_pack``, ``orphans`` and ``journal``
    are those of version 1, frozen at the upgrade, and each device keeps its
    own in its :class:`Device` record. ``lease`` is the writer lease in
    either version (under ``dlease`` in version 2, whose ``lease`` key holds
    :data:`MULTI_DEVICE_LEASE`).
    """

    generation: int
    itab: bytes | None  # object id of the inode-table top index, None = empty
    next_ino: int
    orphans: list[int] = field(default_factory=list)
    lease: Lease | None = None
    stats: list[int] = field(default_factory=lambda: [0, 0])  # [inodes, bytes]
    #: (journal id, journal segment) of the last commit: see megafs.journal
    journal: tuple[bytes, int] | None = None
    #: object id of the pack table's top index (format 2), None = no packs yet
    ptab: bytes | None = None
    #: next pack number to allocate (numbers are never reused)
    next_pack: int = 0
    #: digest (:func:`root_digest`) of the root this one replaced; None in
    #: the first root of a vault and in roots written before it existed
    prev: bytes | None = None
    #: record version 2: device id (the client id) -> its record
    devices: dict[bytes, Device] = field(default_factory=dict)
    #: record version 3: object id of the history table's top index (None:
    #: no history yet), and the retention policy (None: the default)
    hist: bytes | None = None
    retention: Policy | None = None
    #: the newest history entries, not in the history table yet (raw:
    #: :class:`~.history.HistoryTable` reads them)
    hist_recent: list[Any] = field(default_factory=list)
    #: the record version the root was read with (``v``); a writer refuses
    #: one above :data:`RECORD_VERSION` (it would drop what it does not know)
    record: int = field(default=1, compare=False)

    @property
    def version(self) -> int:
        """The record version: 3 once the root keeps history, 2 once a
        device has registered, else 1."""
        if self.hist is not None or self.hist_recent or self.retention is not None:
            return 3
        return 2 if self.devices else 1

    def register(self, client_id: bytes, name: str) -> Device:
        """This client's device record, added (with the next free prefix) if
        it has none; the version 1 orphans and journal mark move into the
        first device's record (they were the one writer's). No I/O."""
        dev = self.devices.get(client_id)
        if dev is not None:
            dev.name = name
            return dev
        prefix = 1 + max((d.prefix for d in self.devices.values()), default=0)
        dev = Device.new(name, prefix)
        if not self.devices:
            dev.orphans, self.orphans = self.orphans, []
            dev.journal, self.journal = self.journal, None
        self.devices[client_id] = dev
        return dev

    def last_mark(self, client_id: bytes) -> tuple[bytes, int] | None:
        """The journal mark that client ``client_id``'s journal replays from:
        version 1's mark; in version 2, the client's own mark if its device
        made this root (its ``generation``), else one with a zero journal id,
        which names no journal, so that nothing is replayed over another
        device's root (docs/multidevice.md)."""
        if not self.devices:
            return self.journal
        mine = self.devices.get(client_id)
        if mine is not None and mine.generation == self.generation:
            return mine.journal
        return (bytes(crypto.ID_SIZE), 0)

    def all_orphans(self) -> list[int]:
        """Every orphan the root lists: version 1's and every device's."""
        out = list(self.orphans)
        for dev in self.devices.values():
            out += dev.orphans
        return out

    def pack_allocated(self, pno: int) -> bool:
        """Whether pack number ``pno`` has been handed out (by the version 1
        counter, or by the device whose range it is in)."""
        prefix = pno >> DEVICE_BITS
        if prefix == 0:
            return 0 <= pno < self.next_pack
        return any(d.prefix == prefix and pno < d.next_pack for d in self.devices.values())

    def packs_made(self) -> int:
        """How many pack numbers have been handed out, by every device."""
        return self.next_pack + sum(
            d.next_pack - (d.prefix << DEVICE_BITS) for d in self.devices.values()
        )

    def copy(self) -> Root:
        """A copy whose lists and device records are its own."""
        return replace(
            self,
            orphans=list(self.orphans),
            stats=list(self.stats),
            hist_recent=list(self.hist_recent),
            devices={k: d.copy() for k, d in self.devices.items()},
        )

    def encode(self) -> bytes:
        rec: dict[str, Any] = {
            "v": self.version,
            "gen": self.generation,
            "itab": self.itab,
            "next": self.next_ino,
            "orph": self.orphans,
            "lease": self.lease.encode() if self.lease else None,
            "stats": self.stats,
            "jrnl": list(self.journal) if self.journal else None,
        }
        if self.ptab is not None or self.next_pack:
            rec["ptab"] = self.ptab
            rec["npack"] = self.next_pack
        if self.prev is not None:
            rec["prev"] = self.prev
        if self.devices:
            rec["lease"] = MULTI_DEVICE_LEASE.encode()
            rec["dlease"] = self.lease.encode() if self.lease else None
            rec["devs"] = {k: self.devices[k].encode() for k in sorted(self.devices)}
        if self.hist is not None:
            rec["hist"] = self.hist
        if self.hist_recent:
            rec["hnew"] = self.hist_recent
        if self.retention is not None:
            rec["ret"] = self.retention.encode()
        packed: bytes = msgpack.packb(rec, use_bin_type=True)
        return packed

    @classmethod
    def decode(cls, data: bytes) -> Root:
        d = unpack(data, ROOT)
        try:
            devs = d.get("devs")
            devices = {expect_bytes(k): Device.decode(v) for k, v in devs.items()} if devs else {}
            lease = d["dlease"] if devices else d["lease"]
            root = cls(
                generation=int(d["gen"]),
                itab=expect_bytes(d["itab"]) if d["itab"] is not None else None,
                next_ino=int(d["next"]),
                orphans=[int(x) for x in d["orph"]],
                lease=Lease.decode(lease) if lease is not None else None,
                stats=[int(x) for x in d["stats"]],
                journal=(expect_bytes(d["jrnl"][0]), int(d["jrnl"][1])) if d.get("jrnl") else None,
                ptab=expect_bytes(d["ptab"]) if d.get("ptab") is not None else None,
                next_pack=int(d.get("npack", 0)),
                prev=_digest_or_none(d.get("prev")),
                devices=devices,
                hist=expect_bytes(d["hist"]) if d.get("hist") is not None else None,
                retention=Policy.decode(d["ret"]) if d.get("ret") is not None else None,
                hist_recent=_list(d.get("hnew", [])),
                record=_int(d["v"]),
            )
        except (KeyError, TypeError, ValueError, IndexError, OverflowError, AttributeError) as e:
            raise IntegrityError(ROOT, f"malformed root record: {e}") from None
        prefixes = [dev.prefix for dev in devices.values()]
        if len(set(prefixes)) != len(prefixes):
            raise IntegrityError(ROOT, "malformed root record: two devices share a prefix")
        return root


def _digest_or_none(value: Any) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, bytes) or len(value) != 32:
        raise ValueError("prev is not a 32-byte digest")
    return value


def expect_bytes(value: Any) -> bytes:
    """``value`` if it is a byte string, else TypeError.

    Decoders of authenticated records use this, never ``bytes(value)``, which
    turns an integer into that many zero bytes (``bytes(2**40)``: a terabyte).
    """
    if not isinstance(value, bytes):
        raise TypeError(f"expected bytes, got {type(value).__name__}")
    return value


def unpack(data: bytes, name: str) -> Any:
    """msgpack-decode authenticated plaintext; malformed input is an IntegrityError."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except Exception as e:  # msgpack raises many types on garbage
        raise IntegrityError(name, f"malformed record: {type(e).__name__}") from None


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    """``value`` if it is an integer (not a bool) from 0 to 2**63 - 1, else
    TypeError or ValueError: what msgpack and time functions can take back."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    if not 0 <= value < 1 << 63:
        raise ValueError(f"integer {value} out of range")
    return value


def _expect_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value
