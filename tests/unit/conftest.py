"""Fixtures of the kernel-free tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from megafs.fs.filesystem import Filesystem
from megafs.stores import LocalStore

from ..support.helpers import new_vault


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    """A fresh, checked local-folder store, closed after the test."""
    s = LocalStore(str(tmp_path / "store"), create=True)
    await s.check()
    yield s
    await s.aclose()


@pytest.fixture
async def fs(store: LocalStore) -> Filesystem:
    """A writable filesystem on a new vault (small chunks) in ``store``."""
    return await Filesystem.load(await new_vault(store))
