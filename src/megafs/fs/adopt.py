"""Adopting a lost device: what it made durable with its device log but
never committed is replayed and committed by another machine.

A device's fsync puts its journal's records in the store (its log series,
:mod:`megafs.vault.devlog`); its next commit folds them into the root. If
the device is lost in between (a stolen laptop, a dead disk), ``megafs
adopt`` runs its journal here: in a temporary client state and cache folder
that carry the lost device's id and journal id, it reads the series back,
replays it onto the root the series names as its base, merges with the
newest root and commits as that device, then commits once more under a
fresh journal id, so that the lost device's own journal, should it come
back, is set aside rather than replayed a second time. A lost device that
does come back finds its record moved on: its commits stop with a rollback
error and its fsyncs fail (docs/concurrency.md).

Owns: choosing the device, the temporary state.
May not touch: the store directly, the mount.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass

from ..client.journal import Journal
from ..errors import IntegrityError, UsageError, VaultBusy
from ..format import crypto
from ..vault.devlog import read_series
from ..vault.vault import LocalState, Vault
from .filesystem import Filesystem

#: A device that committed more recently than this may still be running.
QUIET_SECONDS = 600.0


@dataclass(frozen=True)
class Adopted:
    device: str
    log_objects: int
    records: int


async def adopt_device(vault: Vault, which: str, *, force: bool = False) -> Adopted:
    """Commit the log series of device ``which`` (its name, or a prefix of
    its id in hex). UsageError if no single device matches or it is this
    client; VaultBusy if it committed within :data:`QUIET_SECONDS` (unless
    ``force``). Changes ``vault.state`` to a temporary one: use the vault for
    nothing else afterwards. Blocks on the store."""
    root = await vault.read_root()
    found = [
        (dev_id, dev)
        for dev_id, dev in root.devices.items()
        if dev.name == which or (len(which) >= 4 and dev_id.hex().startswith(which.lower()))
    ]
    if len(found) != 1:
        names = ", ".join(sorted(d.name for d in root.devices.values())) or "none"
        raise UsageError(
            f"{'no' if not found else 'more than one'} device of this vault is {which!r} "
            f"(devices: {names}; give a name, or the start of an id from megafs info)"
        )
    dev_id, dev = found[0]
    if dev_id == vault.state.client_id:
        raise UsageError(f"{dev.name} is this machine's device: mount the vault instead")
    if dev.journal is None:
        return Adopted(dev.name, 0, 0)
    jid, mark = dev.journal
    _, records, count = await read_series(vault, dev_id, jid, mark, dev.generation)
    if not count:
        return Adopted(dev.name, 0, 0)
    quiet = time.time() - dev.time_ns / 1e9
    if quiet < QUIET_SECONDS and not force:
        raise VaultBusy(
            f"{dev.name} committed {quiet:.0f} s ago and may still be running; adopt a device "
            f"only once it is gone (after {QUIET_SECONDS / 60:.0f} minutes, or with --force)"
        )
    with tempfile.TemporaryDirectory(prefix="megafs-adopt-") as tmp:
        vault.state = LocalState(os.path.join(tmp, "state.json"), client_id=dev_id)
        journal = Journal(os.path.join(tmp, "cache"), vault.keys)
        journal.adopt_id(jid)
        fs = await Filesystem.load(vault, journal=journal, device_name=dev.name, set_aside=False)
        if fs.replayed != len(records):
            raise IntegrityError(
                "device log", f"replayed {fs.replayed} of the {len(records)} logged records"
            )
        journal.adopt_id(crypto.new_id())
        fs.committer.renew_lease()  # a commit with the new journal's mark
        await fs.close()
    return Adopted(dev.name, count, len(records))
