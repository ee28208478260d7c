"""The store interface: immutable objects plus small compare-and-swap pointers.

A store knows nothing of encryption or of files: bytes in, bytes out. The
vault layer above it only ever

* ``put``\\ s an object once under a fresh random name and never rewrites it,
* ``get``\\ s whole objects or byte ranges of them,
* ``delete``\\ s objects it no longer references,
* reads and compare-and-swaps a handful of small *pointers* (``header``,
  ``root``): the only things ever overwritten.

All methods are trio-async and may block on I/O. Implementations raise only
subclasses of :class:`megafs.errors.StoreError`, and retry transient failures
themselves: a raised error is final for that call.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import trio

from ..errors import StoreError


@dataclass(frozen=True)
class Pointer:
    """A pointer's content and an opaque version tag for compare-and-swap."""

    data: bytes
    etag: str


class Store(abc.ABC):
    """Abstract store. Object and pointer names are ``[a-z0-9/]`` strings."""

    #: A short human-readable description (URL without credentials).
    url: str

    @abc.abstractmethod
    async def put(self, name: str, data: bytes) -> None:
        """Store an immutable object: complete or absent, never torn; durable
        after the next :meth:`sync` returns."""

    @abc.abstractmethod
    async def get(self, name: str) -> bytes:
        """Return a whole object. Raises ObjectNotFound."""

    @abc.abstractmethod
    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        """Return ``length`` bytes from ``offset`` (fewer only at the object's end)."""

    @abc.abstractmethod
    async def delete(self, name: str) -> None:
        """Delete an object; deleting a missing object is not an error."""

    async def delete_many(self, names: Sequence[str]) -> list[str]:
        """Delete objects, as many per request as the store allows; missing
        ones are not an error. Returns the names that could not be deleted
        (the first error is logged by the caller); never raises for one object.
        The default deletes them one by one, a few at a time."""
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
    def list(self, prefix: str = "") -> AsyncIterator[tuple[str, int]]:
        """Yield (name, size) of every object whose name starts with ``prefix``.

        Pointers are not included.
        """

    @abc.abstractmethod
    async def read_pointer(self, name: str) -> Pointer | None:
        """Return a pointer's content and version tag, or None if it does not exist."""

    @abc.abstractmethod
    async def cas_pointer(self, name: str, data: bytes, expected: str | None) -> str:
        """Replace pointer ``name`` only if its current tag is ``expected``.

        ``expected=None`` means "only if it does not exist yet". Returns the
        new tag; raises PreconditionFailed if the pointer changed meanwhile.
        Durable when this returns.
        """

    async def sync(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Make every object ``put`` so far durable (where ``put`` alone does not).

        Called once per commit, before the root pointer is swapped.
        """

    def set_timeout(self, seconds: float) -> None:  # noqa: B027 - optional hook
        """From now on, let each call wait up to ``seconds`` for an unavailable store.

        A store that retries temporary failures (S3) keeps retrying for that
        long, however many attempts it takes, before it raises. A store whose
        failures are final at once (a local folder) ignores it.
        """

    async def check(self) -> None:
        """Verify the store is reachable and usable; raise a StoreError if not."""
        await self.read_pointer("header")

    async def aclose(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Release connections. Idempotent."""

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
