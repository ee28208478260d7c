"""Shared fixtures: a private state folder, a real SeaweedFS S3 server, and
fresh stores of every kind.

The tests are laid out by what they need:

- ``unit/``: no FUSE kernel: the formats and frozen vectors, the filesystem
  model, the journal, packs, fsck, crash and fuzz runs of the model, and the
  FUSE adapter driven without a kernel (``test_operations.py``); tests over
  ``any_store`` also run against SeaweedFS;
- ``store/``: the stores and what a hostile or lying store can do, on a local
  folder and on SeaweedFS;
- ``mount/``: real FUSE mounts through the ``megafs`` command: the CLI, the
  mount lifecycle, crashes, faults and tampering under a running mount;
- ``support/``: helpers shared by all of them (no tests): the one way to run
  ``megafs`` (``run_megafs``), mounted drives, the SeaweedFS server, the
  fault proxy and the crash workers;
- ``vectors/``: the frozen vectors and vaults of every format.

The fast tier (no crash, soak or long fuzz runs; a few minutes) is
``python3 -m pytest -m "not slow"``; ``python3 -m pytest tests/unit`` needs no
kernel. CI runs everything.

``_state_dir`` points ``MEGAFS_STATE_DIR`` at ``tmp_path/state`` for every
test, so no test writes to the user's state folder. A test that needs another
folder (a second client, a reader) sets the variable again itself.

``seaweedfs`` starts one ``weed mini`` for the whole session, bound to
127.0.0.1 on free ports, with one S3 identity and one bucket. A missing
``weed`` binary or a server that does not come up fails loudly: S3 tests are
never skipped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from megafs.stores import LocalStore, Store
from megafs.stores.s3 import S3Store

from .support.helpers import running_seaweedfs, unique_prefix
from .support.seaweed import AWS_VARS, SeaweedFS


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's local state folder (``MEGAFS_STATE_DIR``); not created here."""
    path = tmp_path / "state"
    monkeypatch.setenv("MEGAFS_STATE_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One ``weed mini`` (master, volume, filer, S3, admin) for the whole session.

    Started by tests/support/seaweed.py: every listener on a free port of 127.0.0.1,
    credentials from an ``-s3.config`` identities file, so the server rejects
    any other key (checked before the first test). Its whole process group is
    terminated in teardown; its log is kept in the temp dir and its tail is
    shown if startup fails.
    """
    with running_seaweedfs(tmp_path_factory.mktemp("seaweedfs"), "megafs-test", "megafs") as s:
        yield s


@pytest.fixture
def s3_env(seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point this process's AWS credential chain at the test server; return the vars.

    The returned dict is meant for ``env={**os.environ, **s3_env}`` of CLI
    subprocesses.
    """
    for var in AWS_VARS:
        monkeypatch.delenv(var, raising=False)
    env = dict(seaweedfs.env)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@dataclass(frozen=True)
class _StoreSpec:
    kind: str
    root: Path | None = None
    server: SeaweedFS | None = None


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def _store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> _StoreSpec:
    # Resolved here, synchronously, so local-only runs never start weed.
    if request.param == "s3":
        request.getfixturevalue("s3_env")
        return _StoreSpec("s3", server=request.getfixturevalue("seaweedfs"))
    return _StoreSpec("local", root=tmp_path / "store")


@pytest.fixture
async def any_store(_store_spec: _StoreSpec) -> AsyncIterator[Store]:
    """A fresh, empty, checked store: a local folder, or a new prefix in the test bucket."""
    store: Store
    if _store_spec.server is not None:
        store = S3Store(
            _store_spec.server.bucket, unique_prefix(), endpoint=_store_spec.server.endpoint
        )
    else:
        assert _store_spec.root is not None
        store = LocalStore(str(_store_spec.root), create=True)
    try:
        await store.check()
        yield store
    finally:
        await store.aclose()


@pytest.fixture
def any_store_url(_store_spec: _StoreSpec) -> tuple[str, dict[str, str]]:
    """``(url, env)`` of a fresh store, for CLI subprocesses (``env`` extends os.environ).

    The local folder does not exist yet; the S3 prefix is empty.
    """
    if _store_spec.server is not None:
        server = _store_spec.server
        return f"s3://{server.bucket}/{unique_prefix()}", dict(server.env)
    assert _store_spec.root is not None
    return str(_store_spec.root), {}
