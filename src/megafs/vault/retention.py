"""Retention: which past roots a vault keeps (docs/history.md).

The policy is stored in the root (sealed), so every device applies the same
one. Pure: no I/O, no imports from the rest of megafs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    """Seconds in ``"90s"``, ``"15m"``, ``"1h"``, ``"2d"``, ``"1w"`` (or a bare
    number of seconds); ValueError otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text.lower())
    if m is None:
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 15m, 1h, 2d, 1w)")
    return int(m.group(1)) * _UNITS[m.group(2) or "s"]


def duration_text(seconds: int) -> str:
    for unit in "wdhm":
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


class Dated(Protocol):
    """What the policy reads of a kept root."""

    @property
    def gen(self) -> int: ...
    @property
    def time_ns(self) -> int: ...
    @property
    def name(self) -> str | None: ...


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 40:
        raise ValueError(f"not a count: {value!r}")
    return value


@dataclass(frozen=True)
class Policy:
    """Which past roots to keep.

    Every root newer than ``every`` seconds; then, for each tier
    ``(width, count)``, the newest root of each of the last ``count``
    periods of ``width`` seconds (periods aligned on the Unix epoch, UTC).
    The newest root (the live tree) and pinned roots are always kept.
    """

    every: int = 3600
    tiers: tuple[tuple[int, int], ...] = ((3600, 48), (86400, 30), (604800, 26))

    def keep(self, entries: Iterable[Dated], now_ns: int) -> set[int]:
        """The generations of ``entries`` to keep at ``now_ns``. Pure."""
        ordered = sorted(entries, key=lambda e: e.gen)
        if not ordered:
            return set()
        kept = {ordered[-1].gen}
        now = now_ns / 1e9
        for e in ordered:
            t = e.time_ns / 1e9
            if e.name is not None or now - t < self.every:
                kept.add(e.gen)
        for width, count in self.tiers:
            newest: dict[int, Dated] = {}
            current = int(now // width)
            for e in ordered:
                period = int(e.time_ns / 1e9 // width)
                if current - period < count:
                    newest[period] = e  # ordered by generation: the last one wins
            kept |= {e.gen for e in newest.values()}
        return kept

    def horizon(self) -> int:
        """How far back the policy keeps anything (seconds): deleted items
        stay restorable this long (docs/history.md, the trash)."""
        return max([self.every, *(w * c for w, c in self.tiers)])

    def encode(self) -> list[Any]:
        return [self.every, [list(t) for t in self.tiers]]

    @classmethod
    def decode(cls, raw: Any) -> Policy:
        every, tiers = raw
        out = cls(_count(every), tuple((_count(w), _count(c)) for w, c in tiers))
        if any(w == 0 for w, _ in out.tiers):
            raise ValueError("a retention period of 0 seconds")
        return out

    def spec(self) -> str:
        """The policy as :meth:`parse` reads it: ``every=1h 1h:48 1d:30 1w:26``."""
        parts = [f"every={duration_text(self.every)}"]
        parts += [f"{duration_text(w)}:{c}" for w, c in self.tiers]
        return " ".join(parts)

    @classmethod
    def parse(cls, text: str) -> Policy:
        """Read :meth:`spec`'s form; ValueError names what is wrong."""
        every = cls().every
        tiers: list[tuple[int, int]] = []
        for word in text.split():
            if word.startswith("every="):
                every = parse_duration(word[6:])
                continue
            width, sep, count = word.partition(":")
            if not sep or not count.isdigit():
                raise ValueError(f"not a retention period: {word!r} (e.g. 1d:30)")
            w = parse_duration(width)
            if w == 0:
                raise ValueError(f"a retention period of 0 seconds: {word!r}")
            tiers.append((w, int(count)))
        return cls(every, tuple(tiers))

    def text(self) -> str:
        parts = [f"every root for {duration_text(self.every)}"]
        parts += [f"{c} x {duration_text(w)}" for w, c in self.tiers]
        return ", ".join(parts)


__all__ = ["Dated", "Policy", "duration_text", "parse_duration"]
