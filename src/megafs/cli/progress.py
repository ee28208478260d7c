"""Progress where people wait: one helper for every command, drawn by tqdm.

:func:`progress` is a context manager yielding a :class:`Progress`. The bar
is drawn on standard error only when that is a terminal (:func:`wanted`): on
a pipe or a file, so also in CI and under systemd, nothing is printed and
every call returns at once. The bar is erased when the block ends, so what a
command prints afterwards looks the same with and without it.

tqdm limits how often it redraws (at most every 0.1 s) and starts no thread
here (its monitor thread is off), so the calls are cheap enough for a loop
and safe from trio code: drawing is one short write to the terminal.

Owns: how progress looks and when it is shown. May not touch: anything the
commands measure; they hand over numbers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm import tqdm

#: Shortest time between two redraws, in seconds.
REDRAW = 0.1
#: The columns and lines assumed of a terminal that tells none.
FALLBACK_SIZE = (80, 24)


class _Bar(tqdm):  # type: ignore[type-arg]
    monitor_interval = 0  # no monitor thread


def wanted(stream: TextIO | None = None) -> bool:
    """Whether progress is drawn on ``stream`` (default: standard error):
    it is a terminal, and ``TERM`` is not ``dumb``."""
    stream = sys.stderr if stream is None else stream
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a real stream
        return False
    return tty and os.environ.get("TERM") != "dumb"


def _size(stream: TextIO) -> tuple[int, int]:
    """The terminal's columns and lines; 0 for what it does not tell (a
    pseudo-terminal nobody sized, as under script(1), tells neither)."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return 0, 0
    return size.columns, size.lines


def size_text(n: int) -> str:
    """``n`` bytes as the bar shows them (``1.54MB``), for notes beside it."""
    return str(tqdm.format_sizeof(n, "B", 1000))


class Progress:
    """One bar: a count (bytes with ``unit="B"``, shown as KiB, MiB, ...)
    towards a total, which may be unknown (None) or change; a description
    in front and a short note behind. When not shown, every method does
    nothing."""

    def __init__(self, bar: tqdm | None) -> None:  # type: ignore[type-arg]
        self._bar = bar

    @property
    def shown(self) -> bool:
        """Whether anything is drawn."""
        return self._bar is not None

    def update(self, n: int = 1) -> None:
        """Add ``n`` to the count."""
        if self._bar is not None:
            self._bar.update(n)

    def set(self, n: int) -> None:
        """Make the count ``n``."""
        if self._bar is not None and n != self._bar.n:
            self._bar.update(n - self._bar.n)

    def set_total(self, total: int | None) -> None:
        """Make the total ``total`` (None: unknown)."""
        if self._bar is not None and total != self._bar.total:
            self._bar.total = total
            self._bar.refresh()

    def stage(self, desc: str, total: int | None) -> None:
        """Start a new stage of the work: the count back to 0, a new
        description and total."""
        if self._bar is not None:
            self._bar.reset(total)
            self._bar.set_description_str(desc, refresh=False)
            self._bar.refresh()

    def note(self, text: str) -> None:
        """Show ``text`` behind the bar (replacing the last note)."""
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)


@contextmanager
def progress(
    total: int | None = None,
    *,
    unit: str = "",
    desc: str = "",
    enabled: bool = True,
    stream: TextIO | None = None,
) -> Iterator[Progress]:
    """A bar on ``stream`` (default: standard error) for the block, erased at its end.

    Drawn only if ``enabled`` (commands pass ``not args.quiet``) and
    :func:`wanted`. ``unit="B"`` counts bytes (shown as kB, MB, GB: powers
    of 1000, as :func:`size_text`); any other unit is a plain count
    (``"objects"``, ``"files"``).
    """
    stream = sys.stderr if stream is None else stream
    if not (enabled and wanted(stream)):
        yield Progress(None)
        return
    bytes_ = unit == "B"
    width, height = _size(stream)
    bar = _Bar(
        total=total,
        desc=desc,
        unit=unit if bytes_ else f" {unit}" if unit else "",
        unit_scale=bytes_,
        unit_divisor=1000,
        file=stream,
        leave=False,
        # (tqdm draws nothing on a terminal that says it has no lines)
        ncols=width or FALLBACK_SIZE[0],
        nrows=height or FALLBACK_SIZE[1],
        dynamic_ncols=bool(width and height),  # follows a resized window
        mininterval=REDRAW,
        smoothing=0.1,
    )
    try:
        yield Progress(bar)
    finally:
        bar.close()


__all__ = ["Progress", "progress", "size_text", "wanted"]
