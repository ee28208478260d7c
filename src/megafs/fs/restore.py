"""What a writable open brings back before its first commit: this device's
device log series read back into the journal (:func:`restore_logged`), and
the journal's records replayed (:func:`replay_journal`).

Owns: where a replay stops (a record whose staged blocks the store lost
ends it, unless an fsync acknowledged that record: then the open fails),
and keeping a restored series' base as the local state's when it has none.
Which segments are replayed is the journal's (:meth:`Journal.pending`,
given the mark the opening filesystem passes).

May not touch: what a record means (:mod:`.replay` applies each one), the
journal's files (the :class:`~megafs.client.journal.Journal` reads, fills
and sets aside its segments), commits.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..client.journal import Journal
from ..errors import IntegrityError, StagedDataLost
from ..vault.devlog import Series, read_series
from ..vault.root import Root
from ..vault.vault import Vault

log = logging.getLogger(__name__)


async def restore_logged(
    vault: Vault, root: Root, device_id: bytes, journal: Journal
) -> Series | None:
    """Read this device's log series after its mark in ``root`` back into
    ``journal`` (records a crashed machine cut from the local segments, or
    all of them when the device is recovered elsewhere), and keep the
    series' base as the local state's if it has none. A journal of
    another cache folder takes over the journal the mark names if that
    has a series (its own segments set aside first, as they would be
    anyway: :attr:`Journal.borrowed`, and the open then commits again
    under a new journal id). Returns the series (for the next commit to
    delete), None if there is none. Blocks on the store (one GET per
    object, and one that finds nothing)."""
    mine = root.devices.get(device_id)
    if mine is None or mine.journal is None:
        return None
    (jid, mark), gen = mine.journal, mine.generation
    sealed, records, count = await read_series(vault, device_id, jid, mark, gen)
    if not count:
        return None
    if jid != journal.id:
        journal.set_aside("this device last committed with another cache folder")
        journal.adopt_id(jid, borrowed=True)
        log.info("this device's journal continues from its log in the store")
    try:
        restored = journal.fill(records)
    except ValueError as e:
        raise IntegrityError("device log", str(e)) from None
    if restored:
        log.info("restored %d journal records from this device's log in the store", restored)
    if sealed is not None and vault.state.base is None:
        vault.state.keep_base(sealed)
    last = (records[-1][0], records[-1][1]) if records else None
    return Series(device_id, journal.id, mark, gen, next=count, last=last)


async def replay_journal(
    journal: Journal,
    mark_client: bytes | None,
    mark: int,
    covered: int | None,
    apply: Callable[[list[Any]], Awaitable[None]],
    *,
    logged: Series | None,
    set_aside: bool,
) -> int:
    """Apply the records ``journal`` holds after the mark (:meth:`Journal.pending`
    says which) with ``apply``; returns how many. A record whose staged
    blocks the store lacks or cannot authenticate ends the replay: its
    segment and the later ones are set aside, as at a torn record; but if
    ``logged`` (this device's log series) holds that record, an fsync
    acknowledged it, and StagedDataLost is raised instead, as it is when
    ``set_aside`` is False (``megafs adopt``). Blocks on the store."""
    applied = 0
    records = journal.pending(mark_client, mark, covered)
    try:
        for rec in records:
            try:
                await apply(rec)
            except StagedDataLost as e:
                at = journal.replaying
                acknowledged = (
                    logged is not None
                    and logged.last is not None
                    and at is not None
                    and at <= logged.last
                )
                if acknowledged or not set_aside:
                    raise  # the store lost what an fsync acknowledged
                journal.cut_replay(str(e))  # as at a torn record
                break
            applied += 1
    finally:
        records.close()
    return applied
