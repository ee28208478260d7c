"""The history's commands on an unmounted vault: list the kept roots, pin
one, set the retention policy, prune (docs/history.md).

Each opens the vault's filesystem in this process: read-only to list, and
as this machine's device to change something (one commit, then closed). A
vault mounted writable on this machine refuses the latter (VaultBusy): the
commands take the mountpoint then, and go through the mount's
``.snapshots`` folder instead.

May not touch: the store, pyfuse3, the CLI (what is printed is the
caller's).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from ..vault.history import fold
from ..vault.retention import Policy
from ..vault.vault import Vault
from .filesystem import Filesystem
from .keeper import PruneResult
from .views import folder_names


@dataclass(frozen=True)
class Snapshot:
    """One kept root, as ``megafs snapshots`` lists it."""

    folder: str  # its name under .snapshots
    gen: int
    time_ns: int
    device: str
    name: str | None
    files: int
    bytes: int
    #: sealed bytes of content only this root keeps (what dropping it frees;
    #: metadata objects are not counted)
    only: int


async def snapshots(vault: Vault) -> tuple[list[Snapshot], Policy]:
    """Every kept root, oldest first, and the policy. Reads each root's
    lists and its newer neighbour's: one request per kept root, plus the
    history's pages."""
    fs = await Filesystem.load(vault, writable=False)
    entries = await fs.history()
    table = fs.committer.keeper.table
    names = {e.gen: n.decode() for n, e in folder_names(entries).items()}
    devices = {k: d.name for k, d in fs.root.devices.items()}
    out = []
    for i, e in enumerate(entries):
        only = 0
        if i + 1 < len(entries):
            _, freed = fold(await table.lists(e), await table.lists(entries[i + 1]), oldest=i == 0)
            only = sum(freed.values())
        out.append(
            Snapshot(
                names[e.gen],
                e.gen,
                e.time_ns,
                devices.get(e.device, e.device.hex()[:8]),
                e.name,
                e.stats[0],
                e.stats[1],
                only,
            )
        )
    return out, fs.retention


async def usage(vault: Vault) -> tuple[int, int, Policy]:
    """(kept past roots, sealed bytes of content only they keep, policy):
    the content no longer in the newest root that the history keeps. One
    request per kept root."""
    fs = await Filesystem.load(vault, writable=False)
    entries = await fs.history()
    table = fs.committer.keeper.table
    sizes: dict[bytes, int] = {}
    dead: set[bytes] = set()
    for e in entries:
        lists = await table.lists(e)
        sizes.update(lists.born)
        dead |= lists.dead
    return max(len(entries) - 1, 0), sum(sizes.get(o, 0) for o in dead), fs.retention


@asynccontextmanager
async def as_device(vault: Vault) -> AsyncIterator[Filesystem]:
    vault.state.check_no_writer()
    fs = await Filesystem.load(vault)
    try:
        yield fs
    finally:
        await fs.close()


async def pin(vault: Vault, name: str) -> None:
    """Keep the vault's current state under ``name``."""
    async with as_device(vault) as fs:
        await fs.pin(name)


async def set_retention(vault: Vault, policy: Policy) -> None:
    async with as_device(vault) as fs:
        await fs.set_retention(policy)


async def prune(vault: Vault) -> PruneResult:
    """Apply the policy now; what it dropped and freed."""
    async with as_device(vault) as fs:
        return await fs.prune()


__all__ = ["Snapshot", "pin", "prune", "set_retention", "snapshots", "usage"]
