"""The store interface: immutable objects plus small compare-and-swap pointers.

A store knows nothing of encryption or of files: bytes in, bytes out. The
vault layer above it only ever

* ``put``\\ s an object once under a fresh random name and never rewrites it,
* ``get``\\ s whole objects or byte ranges of them,
* ``delete``\\ s objects it no longer references,
* reads and compare-and-swaps a handful of small *pointers* (``header``,
  ``root``): the only things ever overwritten.

All methods are trio-async and may block on I/O. Implementations raise
subclasses of :class:`megafs.errors.StoreError`, and retry transient failures
themselves: a raised error is final for that call. What the store hands back
is not trusted (a hostile server, a folder anyone can write to), so a few
rules hold for every implementation:

* **Names.** Only object names of the exact shape :data:`OBJECT_NAME` (32
  lowercase hex characters, as :func:`megafs.vault.vault.obj_name` makes them) and
  the pointer names in :data:`POINTER_NAMES` are accepted; any other name is
  the caller's bug and raises ``ValueError`` before any I/O.
* **Bounded reads.** Every read has a maximum size and never reads more than
  that plus one byte: :meth:`Store.get` and :meth:`Store.read_pointer` take
  ``max_size`` (at most :data:`MAX_OBJECT_SIZE` and :data:`MAX_POINTER_SIZE`),
  and a larger object or pointer raises :class:`megafs.errors.IntegrityError`;
  :meth:`Store.get_range` never returns or buffers more than its ``length``.
  Something behind a name that cannot be a stored object (a symbolic link, a
  FIFO, a device) is an ``IntegrityError`` as well.
* **Validated listings.** :meth:`Store.list` yields only entries of the exact
  object-name shape in their proper place; everything else is *refused*: not
  yielded (so never deleted as garbage), and reported as a :class:`Refused`.

May not touch: the format (keys, crypto, the header), the vault, or any layer
above; of megafs it imports only :mod:`megafs.errors`.
"""

from __future__ import annotations

import abc
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import trio

from ..errors import StoreError, UsageError

#: The shape of every object name: 16 random bytes as lowercase hex.
OBJECT_NAME = re.compile(r"[0-9a-f]{32}")

#: The only pointer names (``megafs.vault.vault.HEADER`` and ``ROOT``).
POINTER_NAMES = frozenset({"header", "root"})

#: The absolute ceilings on what one read from a store may return (callers
#: pass tighter limits where they know one). No pointer is ever read past
#: 1 MiB (a header or a root is a few hundred bytes): the ceiling of
#: :meth:`Store.read_pointer`'s ``max_size``.
MAX_POINTER_SIZE = 1 << 20

#: The largest share page a store reads back (a manifest of about 100 000 chunks).
MAX_PAGE_SIZE = 64 << 20

#: The shape of a share id: 16 random bytes as lowercase hex.
SHARE_NAME = OBJECT_NAME


def check_share_name(share: str) -> None:
    if not SHARE_NAME.fullmatch(share):
        raise ValueError(f"not a share id: {share!r}")


#: The ceiling of :meth:`Store.get`'s ``max_size``, and the largest object
#: :meth:`Store.put` accepts: 256 MiB (chunks and packs are a few MiB at most).
MAX_OBJECT_SIZE = 256 << 20


def is_object_name(name: str) -> bool:
    """Whether ``name`` has the exact shape of an object name."""
    return OBJECT_NAME.fullmatch(name) is not None


def check_object_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a well-formed object name."""
    if not is_object_name(name):
        raise ValueError(f"not an object name (32 lowercase hex characters): {name!r}")


def check_pointer_name(name: str) -> None:
    """Raise ValueError unless ``name`` is one of :data:`POINTER_NAMES`."""
    if name not in POINTER_NAMES:
        raise ValueError(f"not a pointer name ({', '.join(sorted(POINTER_NAMES))}): {name!r}")


@dataclass(frozen=True)
class Refused:
    """An entry a listing found but would not yield.

    ``entry`` is where it is, relative to the store (``objects/Th`` in a
    folder, ``o/junk`` under an S3 prefix); ``reason`` says what is wrong with
    it (a symbolic link, not a regular file, not an object name, ...). A
    refused entry is never followed, read or deleted by the store.
    """

    entry: str
    reason: str

    def __str__(self) -> str:
        """Printable whatever the store named it: control characters and
        the like are escaped (``\\x1b``), so a name cannot drive a terminal."""
        return f"{printable(self.entry)}: {self.reason}"


def printable(text: str) -> str:
    """``text`` with every character that is not printable escaped (``\\x1b``,
    ``\\u2028``): safe to show on a terminal or in a log line."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


@dataclass(frozen=True)
class Pointer:
    """A pointer's content and an opaque version tag for compare-and-swap."""

    data: bytes
    etag: str


class Store(abc.ABC):
    """Abstract store. Names are checked as the module docstring says."""

    #: A short human-readable description (URL without credentials).
    url: str

    @abc.abstractmethod
    async def put(self, name: str, data: bytes) -> None:
        """Store an immutable object: complete or absent, never torn (unlike
        one built by :meth:`stage`); durable after the next :meth:`sync`
        returns. ``data`` may be at most :data:`MAX_OBJECT_SIZE` bytes
        (ValueError otherwise)."""

    @abc.abstractmethod
    async def get(self, name: str, max_size: int = MAX_OBJECT_SIZE) -> bytes:
        """Return a whole object. Raises ObjectNotFound.

        An object larger than ``max_size`` bytes (lowered to
        :data:`MAX_OBJECT_SIZE` if above it) raises IntegrityError, having
        read at most ``max_size + 1`` bytes of it.
        """

    @abc.abstractmethod
    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        """Return ``length`` bytes from ``offset`` (fewer only at the object's end).

        Never returns, nor holds in memory, more than ``length`` bytes of the
        answer, whatever the store sends.
        """

    @abc.abstractmethod
    async def delete(self, name: str) -> None:
        """Delete an object; deleting a missing object is not an error."""

    async def delete_many(self, names: Sequence[str]) -> list[str]:
        """Delete objects, as many per request as the store allows; missing
        ones are not an error. Returns the names that could not be deleted
        (the first error is logged by the caller); never raises for one object.
        The default deletes them one by one, a few at a time."""
        for name in names:
            check_object_name(name)
        failed: list[str] = []
        limiter = trio.CapacityLimiter(16)

        async def one(name: str) -> None:
            async with limiter:
                try:
                    await self.delete(name)
                except StoreError:
                    failed.append(name)

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(one, name)
        return failed

    @abc.abstractmethod
    def list(
        self,
        prefix: str = "",
        *,
        refused: list[Refused] | None = None,
        ages: dict[str, float] | None = None,
    ) -> AsyncIterator[tuple[str, int]]:
        """Yield (name, size) of every object whose name starts with ``prefix``.

        Pointers are not included, nor are a writer's temporary files. Only
        entries that are genuinely objects are yielded: an object name of the
        exact shape, in its proper place (a local store: a regular file, not
        a symbolic link, in the fan-out folder its name belongs to). Every
        other entry (under ``prefix``) is *refused*: appended to ``refused``
        as the listing goes (complete once the iteration has ended) or, when
        ``refused`` is None, counted in one logged warning. A refused entry is
        never followed, opened or deleted.

        ``ages``, if given, gets each yielded object's last-modified time
        (seconds since the epoch): fsck leaves young unreferenced objects
        alone, since another device may be about to commit them.
        """

    @abc.abstractmethod
    async def read_pointer(self, name: str, max_size: int = MAX_POINTER_SIZE) -> Pointer | None:
        """Return a pointer's content and version tag, or None if it does not exist.

        A pointer larger than ``max_size`` bytes (lowered to
        :data:`MAX_POINTER_SIZE` if above it) raises IntegrityError, having
        read at most ``max_size + 1`` bytes of it.
        """

    @abc.abstractmethod
    async def cas_pointer(self, name: str, data: bytes, expected: str | None) -> str:
        """Replace pointer ``name`` only if its current tag is ``expected``.

        ``expected=None`` means "only if it does not exist yet". Returns the
        new tag; raises PreconditionFailed if the pointer changed meanwhile.
        Durable when this returns. ``data`` may be at most
        :data:`MAX_POINTER_SIZE` bytes (ValueError otherwise).
        """

    async def put_durable(self, name: str, data: bytes) -> None:
        """``put`` one object and make it durable before returning (a device
        log object: docs/concurrency.md): :meth:`put`, then
        :meth:`make_durable`."""
        await self.put(name, data)
        await self.make_durable(name)

    async def make_durable(self, name: str) -> None:
        """Make object ``name``, already put, durable. The default is
        :meth:`sync` (which does nothing where ``put`` is durable by itself)."""
        await self.sync()

    async def sync(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Make every object put (or staged: :meth:`stage`) so far durable
        (where ``put`` alone does not).

        Called once per commit, before the root pointer is swapped, and
        before a device log object that may name staged blocks is put.
        """

    def can_stage(self) -> bool:
        """Whether :meth:`stage` works here: objects written in place, piece
        by piece (a local folder; never S3, whose objects are put whole)."""
        return False

    def stage(self, name: str, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` of object ``name``, made if missing,
        in place: until it is whole the object exists with only some of its
        bytes. Durable at the next :meth:`sync`, like a put. Synchronous (a
        write to the page cache, in the caller's thread); raises StoreError,
        as this default does: a store that cannot stage refuses, and the
        caller journals the data instead."""
        raise StoreError(f"{self.url} cannot write an object in place ({name})")

    def unstage(self, name: str) -> None:  # noqa: B027 - optional hook
        """Nothing more will be staged into ``name``: let go of what writing
        it kept open. No I/O wait."""

    def set_timeout(self, seconds: float) -> None:  # noqa: B027 - optional hook
        """From now on, let each call wait up to ``seconds`` for an unavailable store.

        A store that retries temporary failures (S3) keeps retrying for that
        long, however many attempts it takes, before it raises. A store whose
        failures are final at once (a local folder) ignores it.
        """

    async def check(self) -> None:
        """Verify the store is reachable and usable; raise a StoreError if not."""
        await self.read_pointer("header")

    def forget_cached(self, name: str) -> bool:
        """Object ``name`` failed to authenticate: drop anything kept of it
        (an open file), so that the next read sees what the store holds
        then (a store that heals heals the mount). Returns whether anything
        was kept (then the failed read may be tried once more). No I/O wait."""
        return False

    # --- the share area (docs/sharing.md) -------------------------------------
    # One page per share, outside the objects (listings never see it): the
    # only things besides pointers a store ever overwrites or deletes by name.

    async def put_page(self, share: str, data: bytes) -> None:
        """Write the page of share ``share`` (32 hex digits), readable by a web browser."""
        raise UsageError(f"{self.url} cannot hold share links")

    async def get_page(self, share: str) -> bytes | None:
        """The page of ``share`` (at most :data:`MAX_PAGE_SIZE` bytes), None if absent."""
        raise UsageError(f"{self.url} cannot hold share links")

    async def delete_page(self, share: str) -> None:
        """Delete the page of ``share``; nothing happens if it is absent."""
        raise UsageError(f"{self.url} cannot hold share links")

    async def check_share_urls(self, *, base_url: str | None, expires_in: int) -> None:
        """Raise UsageError, before anything is written, if :meth:`share_urls`
        would refuse (no ``base_url`` where one is needed, a lifetime
        presigned URLs cannot have)."""
        raise UsageError(f"{self.url} cannot hold share links")

    async def share_urls(
        self, share: str, objects: Sequence[str], *, base_url: str | None, expires_in: int
    ) -> tuple[str, Sequence[str]]:
        """(URL of the page of ``share``, URLs of ``objects``) as a browser
        fetches them: under ``base_url`` (where a web server publishes the
        store; object URLs are then relative to the page's), or presigned
        for ``expires_in`` seconds where the store can sign."""
        raise UsageError(f"{self.url} cannot hold share links")

    async def aclose(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Release connections. Idempotent."""

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class ForwardingStore(Store):
    """A store that passes every call to ``inner``: the base of stores that
    change one thing about another (limits; the tests' hostile or watching
    stores), which override only what they change."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url

    async def put(self, name: str, data: bytes) -> None:
        await self.inner.put(name, data)

    async def get(self, name: str, max_size: int = MAX_OBJECT_SIZE) -> bytes:
        return await self.inner.get(name, max_size)

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        return await self.inner.get_range(name, offset, length)

    async def delete(self, name: str) -> None:
        await self.inner.delete(name)

    async def delete_many(self, names: Sequence[str]) -> list[str]:
        return await self.inner.delete_many(names)

    async def list(
        self,
        prefix: str = "",
        *,
        refused: list[Refused] | None = None,
        ages: dict[str, float] | None = None,
    ) -> AsyncIterator[tuple[str, int]]:
        async for item in self.inner.list(prefix, refused=refused, ages=ages):
            yield item

    async def read_pointer(self, name: str, max_size: int = MAX_POINTER_SIZE) -> Pointer | None:
        return await self.inner.read_pointer(name, max_size)

    async def cas_pointer(self, name: str, data: bytes, expected: str | None) -> str:
        return await self.inner.cas_pointer(name, data, expected)

    async def sync(self) -> None:
        await self.inner.sync()

    async def make_durable(self, name: str) -> None:
        await self.inner.make_durable(name)

    # put_durable: the base class's (this wrapper's put, then the inner
    # store's make_durable), so that a wrapper overriding put sees every
    # object; the daemon's own wrappers forward it whole.

    def can_stage(self) -> bool:
        return self.inner.can_stage()

    def stage(self, name: str, offset: int, data: bytes) -> None:
        self.inner.stage(name, offset, data)

    def unstage(self, name: str) -> None:
        self.inner.unstage(name)

    def set_timeout(self, seconds: float) -> None:
        self.inner.set_timeout(seconds)

    async def check(self) -> None:
        await self.inner.check()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def forget_cached(self, name: str) -> bool:
        return self.inner.forget_cached(name)

    async def put_page(self, share: str, data: bytes) -> None:
        await self.inner.put_page(share, data)

    async def get_page(self, share: str) -> bytes | None:
        return await self.inner.get_page(share)

    async def delete_page(self, share: str) -> None:
        await self.inner.delete_page(share)

    async def check_share_urls(self, *, base_url: str | None, expires_in: int) -> None:
        await self.inner.check_share_urls(base_url=base_url, expires_in=expires_in)

    async def share_urls(
        self, share: str, objects: Sequence[str], *, base_url: str | None, expires_in: int
    ) -> tuple[str, Sequence[str]]:
        return await self.inner.share_urls(share, objects, base_url=base_url, expires_in=expires_in)
