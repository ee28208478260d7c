"""An unlocked vault: header, keys, root pointer, sealed metadata objects.

This layer sits on a :class:`~megafs.stores.Store` and below the filesystem
model. It owns

* creating a vault (``init``), unlocking it, changing its passphrase;
* sealing and opening metadata objects and chunk objects (names are random
  128-bit ids in hex; nothing about the kind of object is visible);
* the root pointer: reading it with rollback detection against the highest
  generation this client has seen (kept under the local state folder), and
  committing a new root by compare-and-swap;
* the writer lease carried inside the root, which refuses a second writer.

Every method that talks to the store is async and may block on the network.
Argon2id runs in a worker thread. AES-GCM does not: it runs at about 11 GB/s
here (a 1 MiB chunk in 0.1 ms) and holds the GIL while it does, so a worker
thread would add a thread hand-off to every seal and buy no parallelism
(docs/performance.md).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgpack
import trio

from . import crypto, header
from .crypto import KdfParams, Keys, Layout
from .errors import (
    CommitConflict,
    CorruptHeader,
    IntegrityError,
    NotAVault,
    ObjectNotFound,
    PreconditionFailed,
    RollbackError,
    VaultBusy,
    VaultExists,
)
from .stores import Store

T = TypeVar("T")

HEADER = "header"
ROOT = "root"

#: Metadata object kinds (bound into each object's AAD, never visible).
KIND_INDEX = 1
KIND_LEAF = 2
KIND_BODY = 3
KIND_PACKS = 4  # a leaf page of the pack table (format 2)

#: How long a writer lease lasts without renewal.
LEASE_SECONDS = 300.0

CPU_LIMITER = trio.CapacityLimiter(max(2, os.cpu_count() or 2))


async def in_thread(fn: Callable[[], T]) -> T:
    """Run CPU-heavy ``fn`` that releases the GIL (Argon2id) in a worker
    thread behind the CPU limiter."""
    return await trio.to_thread.run_sync(fn, limiter=CPU_LIMITER)


def obj_name(obj_id: bytes) -> str:
    return obj_id.hex()


def state_dir() -> str:
    """Where per-vault client state lives (highest seen generation, client id)."""
    env = os.environ.get("MEGAFS_STATE_DIR")
    if env:
        return env
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "megafs")


@dataclass
class LocalState:
    """Client-side memory of one vault: protects against rollback."""

    path: str
    generation: int = 0
    client_id: bytes = field(default_factory=crypto.new_id)

    @classmethod
    def load(cls, vault_id: bytes) -> LocalState:
        path = os.path.join(state_dir(), vault_id.hex() + ".json")
        try:
            with open(path) as f:
                d = json.load(f)
            return cls(path, int(d["generation"]), bytes.fromhex(d["client_id"]))
        except FileNotFoundError:
            st = cls(path)
            st.save()
            return st
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptHeader(f"local vault state {path} is corrupt: {e}") from None

    def save(self) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        tmp = f"{self.path}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"generation": self.generation, "client_id": self.client_id.hex()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def saw(self, generation: int) -> None:
        if generation > self.generation:
            self.generation = generation
            self.save()


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
class Root:
    """The plaintext of the root pointer."""

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

    def encode(self) -> bytes:
        rec: dict[str, Any] = {
            "v": 1,
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
        packed: bytes = msgpack.packb(rec, use_bin_type=True)
        return packed

    @classmethod
    def decode(cls, data: bytes) -> Root:
        d = unpack(data, ROOT)
        try:
            return cls(
                generation=int(d["gen"]),
                itab=expect_bytes(d["itab"]) if d["itab"] is not None else None,
                next_ino=int(d["next"]),
                orphans=[int(x) for x in d["orph"]],
                lease=Lease.decode(d["lease"]) if d["lease"] is not None else None,
                stats=[int(x) for x in d["stats"]],
                journal=(expect_bytes(d["jrnl"][0]), int(d["jrnl"][1])) if d.get("jrnl") else None,
                ptab=expect_bytes(d["ptab"]) if d.get("ptab") is not None else None,
                next_pack=int(d.get("npack", 0)),
            )
        except (KeyError, TypeError, ValueError, IndexError, OverflowError) as e:
            raise IntegrityError(ROOT, f"malformed root record: {e}") from None


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


class Vault:
    """An unlocked vault on a store. Not safe to share between trio runs."""

    def __init__(self, store: Store, hdr: header.Header, keys: Keys) -> None:
        self.store = store
        self.header = hdr
        self.keys = keys
        self.layout: Layout = hdr.layout
        self.vault_id = hdr.vault_id
        self.state = LocalState.load(hdr.vault_id)
        self._root_etag: str | None = None
        self.read_only = True

    # --- creation and unlocking ------------------------------------------

    @staticmethod
    async def init(
        store: Store,
        passphrase: str,
        kdf: KdfParams | None = None,
        layout: Layout | None = None,
    ) -> tuple[Vault, bytes]:
        """Create a new vault on an empty store. Returns (vault, recovery key).

        Raises VaultExists if the store already has a header.
        """
        await store.check()
        if await store.read_pointer(HEADER) is not None:
            raise VaultExists(f"a vault already exists at {store.url}")
        hdr, keys, recovery = await in_thread(lambda: header.create(passphrase, kdf, layout))
        try:
            await store.cas_pointer(HEADER, hdr.encode(keys), None)
        except PreconditionFailed:
            raise VaultExists(f"a vault already exists at {store.url}") from None
        vault = Vault(store, hdr, keys)
        root = Root(generation=1, itab=None, next_ino=2)
        vault._root_etag = await store.cas_pointer(ROOT, vault.seal_root(root), None)
        vault.state.saw(1)
        return vault, recovery

    @staticmethod
    async def _read_header(store: Store) -> bytes:
        await store.check()
        ptr = await store.read_pointer(HEADER)
        if ptr is None:
            raise NotAVault(f"no megafs vault at {store.url}")
        header.parse(ptr.data)  # NotAVault / UnsupportedVersion / CorruptHeader first
        return ptr.data

    @staticmethod
    async def unlock(store: Store, passphrase: str) -> Vault:
        """Unlock with the passphrase. Raises WrongPassphrase, NotAVault, ..."""
        data = await Vault._read_header(store)
        hdr, keys = await in_thread(lambda: header.unlock(data, passphrase))
        return Vault(store, hdr, keys)

    @staticmethod
    async def unlock_recovery(store: Store, recovery_key: bytes) -> Vault:
        data = await Vault._read_header(store)
        hdr, keys = await in_thread(lambda: header.unlock_recovery(data, recovery_key))
        return Vault(store, hdr, keys)

    async def set_passphrase(self, passphrase: str, kdf: KdfParams | None = None) -> None:
        """Replace the passphrase slot (compare-and-swap on the header)."""
        ptr = await self.store.read_pointer(HEADER)
        if ptr is None:
            raise NotAVault(f"no megafs vault at {self.store.url}")
        new = await in_thread(
            lambda: header.with_new_passphrase(self.header, self.keys, passphrase, kdf)
        )
        try:
            await self.store.cas_pointer(HEADER, new.encode(self.keys), ptr.etag)
        except PreconditionFailed:
            raise CommitConflict("the vault header changed concurrently; try again") from None
        self.header = new

    # --- sealed objects ---------------------------------------------------

    def seal_root(self, root: Root) -> bytes:
        return crypto.seal(self.keys.root, root.encode(), crypto.root_aad(self.vault_id))

    def open_root(self, data: bytes) -> Root:
        try:
            plain = crypto.open_sealed(self.keys.root, data, crypto.root_aad(self.vault_id))
        except crypto.AuthFailed:
            raise IntegrityError(ROOT, "root pointer failed authentication") from None
        return Root.decode(plain)

    def seal_meta(self, kind: int, obj_id: bytes, payload: Any) -> bytes:
        plain: bytes = msgpack.packb(payload, use_bin_type=True)
        return crypto.seal(self.keys.meta, plain, crypto.meta_aad(self.vault_id, kind, obj_id))

    def open_meta(self, kind: int, obj_id: bytes, data: bytes) -> Any:
        name = obj_name(obj_id)
        try:
            plain = crypto.open_sealed(
                self.keys.meta, data, crypto.meta_aad(self.vault_id, kind, obj_id)
            )
        except crypto.AuthFailed:
            raise IntegrityError(name) from None
        return unpack(plain, name)

    async def put_meta(self, kind: int, obj_id: bytes, payload: Any) -> None:
        data = self.seal_meta(kind, obj_id, payload)
        await self.store.put(obj_name(obj_id), data)

    async def get_meta(self, kind: int, obj_id: bytes) -> Any:
        name = obj_name(obj_id)
        try:
            data = await self.store.get(name)
        except ObjectNotFound:
            # Referenced by authenticated metadata, so the store lost or withheld it.
            raise IntegrityError(name, "object is missing from the store") from None
        return self.open_meta(kind, obj_id, data)

    # --- root pointer -----------------------------------------------------

    async def read_root(self) -> Root:
        """Fetch and authenticate the root; refuse a rollback."""
        ptr = await self.store.read_pointer(ROOT)
        if ptr is None:
            raise IntegrityError(ROOT, "root pointer is missing")
        root = self.open_root(ptr.data)
        if root.generation < self.state.generation:
            raise RollbackError(ROOT, self.state.generation, root.generation)
        self.state.saw(root.generation)
        self._root_etag = ptr.etag
        return root

    async def commit_root(self, root: Root) -> None:
        """Compare-and-swap the root. Raises CommitConflict if it moved meanwhile."""
        if self._root_etag is None:
            raise CommitConflict("root was never read")
        try:
            self._root_etag = await self.store.cas_pointer(
                ROOT, self.seal_root(root), self._root_etag
            )
        except PreconditionFailed:
            raise CommitConflict(
                "the vault was changed by another client; this client's changes were not "
                "committed"
            ) from None
        self.state.saw(root.generation)

    def my_lease(self) -> Lease:
        return Lease(
            self.state.client_id, socket.gethostname(), os.getpid(), time.time() + LEASE_SECONDS
        )

    def check_lease(self, root: Root, *, force: bool = False) -> None:
        """Raise VaultBusy if another live writer holds the vault."""
        lease = root.lease
        if lease is None or force:
            return
        if lease.client_id == self.state.client_id:
            if lease.pid == os.getpid() or not pid_alive(lease.pid):
                return
        elif lease.until < time.time():
            return
        raise VaultBusy(
            f"vault is open for writing by {lease.host} (pid {lease.pid}); "
            "unmount it there first (a stale lease expires after "
            f"{int(LEASE_SECONDS)} s)"
        )


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs on this machine.

    A zombie has exited even though its pid stays taken until its parent
    reaps it (a container's init may do so late, or never): it counts as gone.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")
