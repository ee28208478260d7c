"""Shared helpers for tests (fixtures live in conftest.py)."""

from __future__ import annotations

from megafs.crypto import KdfParams, Layout
from megafs.model import Filesystem
from megafs.stores import Store
from megafs.vault import Vault

FAST_KDF = KdfParams(memory_kib=8192, iterations=1, lanes=1)
PASS = "correct horse battery staple"
#: Small geometry so tests cross chunk and block boundaries with little data.
SMALL = Layout(chunk_size=64 * 1024, block_size=4096)


async def new_vault(store: Store, layout: Layout | None = SMALL) -> Vault:
    vault, _ = await Vault.init(store, PASS, FAST_KDF, layout)
    return vault


async def reopen(store: Store, *, writable: bool = True) -> Filesystem:
    vault = await Vault.unlock(store, PASS)
    return await Filesystem.load(vault, writable=writable)
