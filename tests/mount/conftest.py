"""Fixtures of the mount tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support.mounting import Drive, mounted_drive


@pytest.fixture
def drive(tmp_path: Path, any_store_url: tuple[str, dict[str, str]]) -> Iterator[Drive]:
    """A fresh vault on every kind of store, mounted at ``drive.mountpoint``;
    unmounted (and the daemon gone) after the test."""
    url, env = any_store_url
    with mounted_drive(url, tmp_path, env) as d:
        yield d


@pytest.fixture
def slow_drive(tmp_path: Path, any_store_url: tuple[str, dict[str, str]]) -> Iterator[Drive]:
    """A mounted vault (both kinds of store) that commits only when asked
    (an fsync) or at unmount, so each commit is a state the test chose."""
    url, env = any_store_url
    d = Drive(url, tmp_path / "d", env)
    try:
        d.init()
        d.mount("--commit-interval", "3600")
        yield d
    finally:
        d.cleanup()
    problems = d.log_problems()
    assert not problems, "the daemon logged problems:\n" + "\n".join(problems)
