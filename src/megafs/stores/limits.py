"""Bandwidth and concurrency limits, and a traffic meter, for any store (``--upload-limit``,
``--download-limit``, ``--transfers``), for metered or shared links.

:class:`LimitedStore` wraps a store: at most ``transfers`` object transfers
(puts, gets, ranged gets) run at once, and object bytes sent and received
each stay under a rate in bytes per second, measured by a token bucket
with one second of burst. A transfer larger than the bucket goes at once
and makes the following ones wait until the rate is paid back, so the
average over any few seconds holds. Pointers, listings and deletions are
small and pass unlimited (a commit's root swap never waits behind a bulk
upload's budget).

Owns: the limiters. May not touch: what the inner store does with the
bytes.

Concurrency: trio; the buckets are fair (first come, first served).
"""

from __future__ import annotations

import contextlib
import time

import trio

from .base import MAX_OBJECT_SIZE, ForwardingStore, Store


class Bucket:
    """A token bucket of ``rate`` bytes per second, one second deep."""

    def __init__(self, rate: int) -> None:
        if rate <= 0:
            raise ValueError("a rate is a positive number of bytes per second")
        self.rate = rate
        self._level = float(rate)
        self._at: float | None = None
        self._lock = trio.Lock()

    async def take(self, n: int) -> None:
        """Spend ``n`` bytes; waits while the bucket is in debt (callers in
        order of arrival)."""
        async with self._lock:
            now = trio.current_time()
            if self._at is not None:
                self._level = min(float(self.rate), self._level + (now - self._at) * self.rate)
            self._at = now
            if self._level < 0:
                await trio.sleep(-self._level / self.rate)
                self._at = trio.current_time()
                self._level = 0.0
            self._level -= n


class LimitedStore(ForwardingStore):
    """``inner`` with at most ``transfers`` object transfers at once and object
    bytes up and down each under a rate (None: no limit)."""

    def __init__(
        self,
        inner: Store,
        *,
        upload: int | None = None,
        download: int | None = None,
        transfers: int | None = None,
    ) -> None:
        super().__init__(inner)
        self.up = Bucket(upload) if upload else None
        self.down = Bucket(download) if download else None
        self.slots = trio.CapacityLimiter(transfers) if transfers else None

    def _slot(self) -> contextlib.AbstractAsyncContextManager[object]:
        """One of the ``transfers`` slots, or nothing when there is no such limit."""
        return self.slots if self.slots is not None else contextlib.nullcontext()

    async def put(self, name: str, data: bytes) -> None:
        if self.up is not None:
            await self.up.take(len(data))
        async with self._slot():
            await self.inner.put(name, data)

    async def put_durable(self, name: str, data: bytes) -> None:
        if self.up is not None:
            await self.up.take(len(data))
        async with self._slot():
            await self.inner.put_durable(name, data)

    def can_stage(self) -> bool:
        """Not under an upload rate: a staged write would pass it by."""
        return self.up is None and self.inner.can_stage()

    async def get(self, name: str, max_size: int = MAX_OBJECT_SIZE) -> bytes:
        async with self._slot():
            data = await self.inner.get(name, max_size)
        if self.down is not None:
            await self.down.take(len(data))
        return data

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        async with self._slot():
            data = await self.inner.get_range(name, offset, length)
        if self.down is not None:
            await self.down.take(len(data))
        return data


class Meter(ForwardingStore):
    """Counts the object bytes ``inner`` sends and receives (``megafs
    status``): totals, and rates over the last :data:`WINDOW` seconds."""

    WINDOW = 10.0

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.uploaded = 0
        self.downloaded = 0
        self._recent: list[tuple[float, int, int]] = []  # (time, up, down)

    def _note(self, up: int, down: int) -> None:
        now = time.monotonic()
        self.uploaded += up
        self.downloaded += down
        self._recent.append((now, up, down))
        while self._recent and self._recent[0][0] < now - self.WINDOW:
            self._recent.pop(0)

    def traffic(self) -> dict[str, float]:
        now = time.monotonic()
        recent = [(u, d) for t, u, d in self._recent if t >= now - self.WINDOW]
        return {
            "upload_bps": round(sum(u for u, _ in recent) / self.WINDOW),
            "download_bps": round(sum(d for _, d in recent) / self.WINDOW),
            "uploaded": self.uploaded,
            "downloaded": self.downloaded,
        }

    async def put(self, name: str, data: bytes) -> None:
        await self.inner.put(name, data)
        self._note(len(data), 0)

    async def put_durable(self, name: str, data: bytes) -> None:
        await self.inner.put_durable(name, data)
        self._note(len(data), 0)

    def stage(self, name: str, offset: int, data: bytes) -> None:
        self.inner.stage(name, offset, data)
        self._note(len(data), 0)

    async def get(self, name: str, max_size: int = MAX_OBJECT_SIZE) -> bytes:
        data = await self.inner.get(name, max_size)
        self._note(0, len(data))
        return data

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        data = await self.inner.get_range(name, offset, length)
        self._note(0, len(data))
        return data


__all__ = ["Bucket", "LimitedStore", "Meter"]
