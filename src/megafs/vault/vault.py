"""An unlocked vault: header, keys, root pointer, sealed metadata objects.

This layer sits on a :class:`~megafs.stores.Store` and below the filesystem
model. It owns

* creating a vault (``init``), unlocking it, changing its passphrase;
* sealing and opening metadata objects and chunk objects (names are random
  128-bit ids in hex; nothing about the kind of object is visible);
* the root pointer: reading it with rollback detection against the last
  root this client has seen or committed (its generation and digest, kept
  under the local state folder), and committing a new root by
  compare-and-swap; generations are never reused, and each root names the
  digest of the root it replaces (``prev``);
* the writer lease carried inside the root, which refuses a second writer.

Every method that talks to the store is async and may block on the network.
Argon2id runs in a worker thread. AES-GCM does not: it runs at about 11 GB/s
here (a 1 MiB chunk in 0.1 ms) and holds the GIL while it does, so a worker
thread would add a thread hand-off to every seal and buy no parallelism
(docs/performance.md).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgpack
import trio

from ..errors import (
    CommitConflict,
    CorruptHeader,
    IntegrityError,
    LocalStateError,
    NotAVault,
    ObjectNotFound,
    PreconditionFailed,
    RollbackError,
    VaultBusy,
    VaultExists,
)
from ..format import crypto, header
from ..format.crypto import KdfParams, Keys, Layout
from ..stores import Store
from ..stores.base import MAX_OBJECT_SIZE, MAX_POINTER_SIZE, Refused
from .root import ROOT, Lease, Root, root_digest, unpack

T = TypeVar("T")

HEADER = "header"

#: Metadata object kinds (bound into each object's AAD, never visible).
KIND_INDEX = 1
KIND_LEAF = 2
KIND_BODY = 3
KIND_PACKS = 4  # a leaf page of the pack table (format 2)
KIND_HIST = 5  # a leaf page of the history table (root record version 3)
KIND_HLIST = 6  # a history entry's born and dead lists
KIND_LOG = 7  # a device log object (docs/concurrency.md, "The device log")

#: The largest root pointer and metadata object read from a store; larger
#: ones are refused (IntegrityError) before more than this is read. A root is
#: a few hundred bytes plus 9 per orphan; the largest metadata object is the
#: body of a huge folder (about 40 bytes per entry with 20-byte names).
ROOT_MAX = MAX_POINTER_SIZE
META_MAX = MAX_OBJECT_SIZE
#: Digests of refused root writes remembered (a store that kept one and
#: serves it later is lying).
REFUSED_KEPT = 16

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
    """Client-side memory of one vault: protects against rollback.

    ``generation`` and ``digest`` are those of the newest root this client
    has seen or committed; ``attempted`` is the highest generation of a root
    write that failed (refused, or an error with no answer), so that a
    restarted client never reuses it; ``refused`` holds the digests of the
    last root writes the store refused (compare-and-swap failed). Saved
    (fsynced) whenever the newest root changes or a write fails.
    """

    path: str
    generation: int = 0
    client_id: bytes = field(default_factory=crypto.new_id)
    digest: bytes | None = None
    refused: list[bytes] = field(default_factory=list)
    attempted: int = 0
    #: The sealed root this client's filesystem state is built on (the last
    #: one it committed, or merged with): a journal left by a crash is
    #: replayed onto it and then merged with the newest root.
    base: bytes | None = None

    @classmethod
    def load(cls, vault_id: bytes) -> LocalState:
        path = os.path.join(state_dir(), vault_id.hex() + ".json")
        try:
            with open(path) as f:
                d = json.load(f)
            digest = d.get("digest")
            return cls(
                path,
                int(d["generation"]),
                bytes.fromhex(d["client_id"]),
                bytes.fromhex(digest) if digest is not None else None,
                [bytes.fromhex(x) for x in d.get("refused", [])],
                int(d.get("attempted", 0)),
                bytes.fromhex(d["base"]) if d.get("base") else None,
            )
        except FileNotFoundError:
            st = cls(path)
            st.save()
            return st
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise LocalStateError(
                f"local state of this vault ({path}) is damaged: {e}; move it aside to start "
                "afresh (this client then forgets the newest root it saw)"
            ) from None

    @property
    def lock_path(self) -> str:
        return self.path.removesuffix(".json") + ".lock"

    def hold_writer(self) -> int:
        """Lock this vault's client state for this process's life (a writable
        mount), so that a command that would write the vault as the same
        device meanwhile (:meth:`check_no_writer`) refuses. Returns the
        locked descriptor (closed with the process). Raises VaultBusy."""
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise VaultBusy(
                "this vault is already mounted writable on this machine; unmount it first"
            ) from None
        return fd

    def check_no_writer(self) -> None:
        """VaultBusy if a mount on this machine writes the vault as this
        device (:meth:`hold_writer`)."""
        os.close(self.hold_writer())

    def save(self) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        tmp = f"{self.path}.tmp.{os.getpid()}"
        rec: dict[str, Any] = {"generation": self.generation, "client_id": self.client_id.hex()}
        if self.digest is not None:
            rec["digest"] = self.digest.hex()
        if self.refused:
            rec["refused"] = [x.hex() for x in self.refused]
        if self.attempted > self.generation:
            rec["attempted"] = self.attempted
        if self.base is not None:
            rec["base"] = self.base.hex()
        with open(tmp, "w") as f:
            json.dump(rec, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def saw(self, generation: int, digest: bytes | None = None) -> None:
        """Remember root ``generation`` (with ``digest``) if it is the newest."""
        if generation > self.generation or (
            generation == self.generation and digest is not None and self.digest is None
        ):
            self.generation = generation
            self.digest = digest
            self.save()

    def keep_base(self, sealed: bytes) -> None:
        """Remember ``sealed`` (a root) as the base of this client's state."""
        if sealed != self.base:
            self.base = sealed
            self.save()

    def committed(self, generation: int, digest: bytes, sealed: bytes) -> None:
        """This client's commit of root ``generation`` (``digest``, ``sealed``)
        is in: it is the newest root seen and the base, saved at once (one
        write and fsync, where :meth:`saw` then :meth:`keep_base` make two)."""
        if generation > self.generation:
            self.generation, self.digest = generation, digest
        self.base = sealed
        self.save()

    def failed(self, generation: int, refused: bytes | None = None) -> None:
        """Remember a root write of ``generation`` that failed, and, if the
        store refused it, its digest ``refused``."""
        self.attempted = max(self.attempted, generation)
        if refused is not None:
            self.refused = [*self.refused, refused][-REFUSED_KEPT:]
        self.save()


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
        self._root_digest: bytes | None = None  # of the root the next commit replaces
        self._root_sealed: bytes | None = None  # the root last read or committed
        self._attempted = 0  # highest generation a commit has tried
        # the last root write that got no answer: (generation, digest, sealed)
        self._unanswered: tuple[int, bytes, bytes] | None = None
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
        sealed = vault.seal_root(root)
        vault._root_etag = await store.cas_pointer(ROOT, sealed, None)
        vault._root_digest = root_digest(sealed)
        vault.state.saw(1, vault._root_digest)
        return vault, recovery

    @staticmethod
    async def _read_header(store: Store) -> bytes:
        await store.check()
        try:
            ptr = await store.read_pointer(HEADER, max_size=header.MAX_HEADER_LEN)
        except IntegrityError:
            raise CorruptHeader("vault header is larger than any megafs header") from None
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

    async def replace_passphrase(self, passphrase: str, kdf: KdfParams | None = None) -> None:
        """Replace the passphrase slot, unless the store's header is no longer
        ``self.header`` (the one this vault was unlocked with).

        For a vault unlocked in an earlier trio run (``megafs passwd`` asks for
        the new passphrase in between): a header changed since is refused with
        CommitConflict rather than overwritten. The header read for that check
        is the one the compare-and-swap replaces.
        """
        ptr = await self.store.read_pointer(HEADER, max_size=header.MAX_HEADER_LEN)
        if ptr is None:
            raise NotAVault(f"no megafs vault at {self.store.url}")
        if header.parse(ptr.data)[0] != self.header:
            raise CommitConflict("the vault header changed while unlocking; try again")
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
        return crypto.seal_for(
            self.keys, self.keys.root, root.encode(), crypto.root_aad(self.vault_id)
        )

    def open_root(self, data: bytes) -> Root:
        try:
            plain = crypto.open_for(self.keys, self.keys.root, data, crypto.root_aad(self.vault_id))
        except crypto.AuthFailed:
            raise IntegrityError(ROOT, "root pointer failed authentication") from None
        return Root.decode(plain)

    def seal_meta(self, kind: int, obj_id: bytes, payload: Any) -> bytes:
        plain: bytes = msgpack.packb(payload, use_bin_type=True)
        return crypto.seal_for(
            self.keys, self.keys.meta, plain, crypto.meta_aad(self.vault_id, kind, obj_id)
        )

    def open_meta(self, kind: int, obj_id: bytes, data: bytes) -> Any:
        name = obj_name(obj_id)
        try:
            plain = crypto.open_for(
                self.keys, self.keys.meta, data, crypto.meta_aad(self.vault_id, kind, obj_id)
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
            data = await self.store.get(name, max_size=META_MAX)
        except ObjectNotFound:
            # Referenced by authenticated metadata, so the store lost or withheld it.
            raise IntegrityError(name, "object is missing from the store") from None
        return self.open_meta(kind, obj_id, data)

    def list_objects(
        self, *, refused: list[Refused] | None = None, ages: dict[str, float] | None = None
    ) -> AsyncIterator[tuple[str, int]]:
        """(name, size) of every object the store holds (for fsck); entries
        that are not objects go to ``refused``, times to ``ages`` (see
        :meth:`Store.list`)."""
        return self.store.list(refused=refused, ages=ages)

    async def delete_object(self, name: str) -> None:
        """Delete one object by name (fsck's repair of what nothing references)."""
        await self.store.delete(name)

    # --- root pointer -----------------------------------------------------

    async def read_root(self) -> Root:
        """Fetch and authenticate the root; refuse a rollback.

        Refused (RollbackError): a root older than the last one this client
        saw or committed; one of the same generation with another digest;
        one exactly one generation newer whose ``prev`` is not that root (a
        fork: generations only grow along the chain, so a descendant one
        generation newer is a direct child); one whose write the store had
        refused. Generations may skip (a refused attempt uses one up).
        """
        ptr = await self.store.read_pointer(ROOT, max_size=ROOT_MAX)
        if ptr is None:
            raise IntegrityError(ROOT, "root pointer is missing")
        root = self.open_root(ptr.data)
        digest = root_digest(ptr.data)
        st = self.state
        if root.generation < st.generation:
            raise RollbackError(ROOT, st.generation, root.generation)
        if root.generation == st.generation and st.digest not in (None, digest):
            raise RollbackError(
                ROOT,
                st.generation,
                root.generation,
                f"store served a different root of generation {root.generation} than the "
                "one already seen (rollback or forked history)",
            )
        if (
            root.generation == st.generation + 1
            and st.digest is not None
            and root.prev is not None
            and root.prev != st.digest
        ):
            raise RollbackError(
                ROOT,
                st.generation,
                root.generation,
                f"store served a root of generation {root.generation} that does not follow "
                f"the generation {st.generation} already seen (forked history)",
            )
        if digest in st.refused:
            raise RollbackError(
                ROOT,
                st.generation,
                root.generation,
                "store served a root whose write it had refused (a lying store)",
            )
        st.saw(root.generation, digest)
        self._root_etag = ptr.etag
        self._root_digest = digest
        self._root_sealed = ptr.data
        return root

    async def root_changed(self) -> bool:
        """Whether the root pointer in the store is not the one last read or
        committed here. One read of the pointer (its version tag decides)."""
        if self._root_etag is None:
            return True
        ptr = await self.store.read_pointer(ROOT, max_size=ROOT_MAX)
        return ptr is None or ptr.etag != self._root_etag

    def keep_base(self) -> None:
        """The root last read or committed is the base of this client's
        state from now on (:attr:`LocalState.base`)."""
        if self._root_sealed is not None:
            self.state.keep_base(self._root_sealed)

    def next_generation(self) -> int:
        """The generation of the next commit attempt: above every root seen,
        committed or attempted (failed attempts are remembered across
        restarts: :meth:`LocalState.failed`), so no two roots this client
        makes share one. (A crash in the middle of a root write leaves that
        one attempt unrecorded; the next client may reuse its generation,
        and :meth:`read_root` refuses whichever of the two it did not see.)"""
        st = self.state
        self._attempted = max(self._attempted, st.generation, st.attempted) + 1
        return self._attempted

    async def commit_root(self, root: Root) -> None:
        """Make every object stored so far durable, then compare-and-swap the
        root. Raises CommitConflict if it moved meanwhile.

        ``root.generation`` must come from :meth:`next_generation`; ``prev``
        is set here to the digest of the root being replaced. A refused swap
        is remembered (:meth:`LocalState.failed`): a store that keeps
        the refused bytes and serves them later is caught by :meth:`read_root`.
        """
        if self._root_etag is None:
            raise CommitConflict("root was never read")
        self._unanswered = None
        await self.store.sync()  # every object the new root names is durable first
        if root.generation <= self.state.generation:
            raise ValueError("root generation not from next_generation()")
        root.prev = self._root_digest
        sealed = self.seal_root(root)
        digest = root_digest(sealed)
        try:
            self._root_etag = await self.store.cas_pointer(ROOT, sealed, self._root_etag)
        except PreconditionFailed:
            self.state.failed(root.generation, refused=digest)
            raise CommitConflict(
                "the vault was changed by another client; this client's changes were not committed"
            ) from None
        except BaseException:  # no answer, or an error: the write may or may not be in
            self._unanswered = (root.generation, digest, sealed)
            self.state.failed(root.generation)
            raise
        self._root_digest = digest
        self._root_sealed = sealed
        try:
            self.state.committed(root.generation, digest, sealed)
        except BaseException:
            # The root is in; only remembering it here failed (a full disk):
            # the next commit finds it in the store (attempt_landed).
            self._unanswered = (root.generation, digest, sealed)
            raise

    async def attempt_landed(self) -> bool:
        """Whether the last root write that got no answer (an error after it
        was sent, or a cancellation) is in the store: the pointer holds it,
        or a root that holds this client's device record as that write made
        it (its generation is this client's alone: other devices' roots
        built on it). If so, it is the root this client last committed from
        now on, as if the answer had come. One read of the pointer; False if
        no write is in doubt. Raises store errors (the doubt then stays).
        """
        if self._unanswered is None:
            return False
        generation, digest, sealed = self._unanswered
        ptr = await self.store.read_pointer(ROOT, max_size=ROOT_MAX)
        if ptr is None:
            self._unanswered = None
            return False
        if root_digest(ptr.data) == digest:
            self._root_etag = ptr.etag
        else:
            mine = self.open_root(ptr.data).devices.get(self.state.client_id)
            if mine is None or mine.generation != generation:
                self._unanswered = None
                return False
            # built upon already: the old tag makes the next swap fail and merge
        self._root_digest = digest
        self._root_sealed = sealed
        self.state.committed(generation, digest, sealed)  # (if it fails, the doubt stays)
        self._unanswered = None
        return True

    async def delete_page(self, share_id: bytes) -> None:
        """Delete the page of share ``share_id`` from the store's share area
        (docs/sharing.md); nothing happens if it is gone already."""
        await self.store.delete_page(share_id.hex())

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
