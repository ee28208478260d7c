"""A lying store cannot roll back acknowledged data (security review, defect 1).

The store below answers "precondition failed" to a root write but keeps the
bytes it was sent, accepts the next attempt, and later serves the kept
root. Before format 3's fix the next attempt reused the refused attempt's
generation, so the kept root (same generation) was accepted on the next
open and fsynced data vanished without an error. Now generations are never
reused, the local state remembers the digest of the newest root and of
refused writes, and every root names the digest of its predecessor.

Both stores, the real local folder and the real SeaweedFS, sit under the
lying wrapper; the roots it serves are byte for byte what megafs sent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from megafs.errors import CommitConflict, PreconditionFailed, RollbackError, StoreError
from megafs.format.crypto import Layout
from megafs.fs import committer
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.stores import Pointer, Store
from megafs.stores.base import MAX_POINTER_SIZE, ForwardingStore
from megafs.vault.root import root_digest
from megafs.vault.vault import Vault

from ..support.helpers import FAST_KDF, PASS

SMALL = Layout(chunk_size=16384, block_size=4096)

#: Fewer merge retries here, so that refusing every one of them is quick.
RETRIES = 2


@pytest.fixture(autouse=True)
def _few_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(committer, "MERGE_RETRIES", RETRIES)


class LyingStore(ForwardingStore):
    """Passes everything to ``inner``, except that once :meth:`refuse_next_root`
    is called it answers the next root write with a failure while keeping its
    bytes, and after :meth:`serve_kept` serves those bytes as the root
    (without telling ``inner``)."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self._refuse: str | None = None
        self._times = 0
        self.kept: bytes | None = None
        self.all_kept: list[bytes] = []
        self._serve = False

    def refuse_next_root(self, how: str = "refused", times: int = 1) -> None:
        """The next ``times`` root writes fail: "refused" answers
        PreconditionFailed, "no answer" a StoreError (a dropped connection);
        either way the bytes are kept."""
        self._refuse, self._times = how, times

    def serve_kept(self) -> None:
        assert self.kept is not None
        self._serve = True

    async def read_pointer(self, name: str, max_size: int = MAX_POINTER_SIZE) -> Pointer | None:
        if name == "root" and self._serve:
            assert self.kept is not None
            current = await self.inner.read_pointer(name, max_size)
            assert current is not None
            return Pointer(self.kept, current.etag)
        return await self.inner.read_pointer(name, max_size)

    async def cas_pointer(self, name: str, data: bytes, expected: str | None) -> str:
        if name == "root" and self._refuse:
            how = self._refuse
            self._times -= 1
            if self._times <= 0:
                self._refuse = None
            self.kept = data
            self.all_kept.append(data)
            if how == "refused":
                raise PreconditionFailed("root changed concurrently (a lie)")
            raise StoreError("connection dropped (a lie: the bytes were kept)")
        return await self.inner.cas_pointer(name, data, expected)


async def _write(fs: Filesystem, name: bytes, data: bytes) -> None:
    try:
        ino = (await fs.lookup(ROOT_INO, name)).ino
        await fs.truncate(ino, 0)
    except Exception:
        ino = (await fs.create(ROOT_INO, name, 0o644, 0, 0)).ino
    await fs.write(ino, 0, data)


async def _read(fs: Filesystem, name: bytes) -> bytes:
    attr = await fs.lookup(ROOT_INO, name)
    return await fs.read(attr.ino, 0, attr.size)


async def _vault_with_doc(any_store: Store) -> tuple[LyingStore, Vault, Filesystem]:
    """A lying store over ``any_store``, a new vault on it, and a mounted-like
    filesystem whose "doc" holds an fsynced "version 1"."""
    store = LyingStore(any_store)
    vault, _ = await Vault.init(store, PASS, FAST_KDF, SMALL)
    fs = await Filesystem.load(vault)
    await _write(fs, b"doc", b"version 1")
    await fs.fsync()
    return store, vault, fs


async def test_a_kept_refused_root_is_never_accepted(any_store: Store) -> None:
    store, vault, fs = await _vault_with_doc(any_store)
    # The store refuses the commit of version 2, but keeps its root.
    store.refuse_next_root()
    await _write(fs, b"doc", b"version 2")
    # A refused swap is a lost race to the committer: it reads the root
    # again (unchanged here), merges nothing, and swaps again.
    await fs.fsync()
    assert fs.committer.merges == 1
    # The next commit is accepted: the user is told version 3 and a new file are fsynced.
    await _write(fs, b"doc", b"version 3")
    await _write(fs, b"new", b"a new fsynced file")
    await fs.fsync()
    assert store.kept is not None
    refused = vault.open_root(store.kept)
    assert refused.generation < fs.root.generation, "a generation was reused"
    await fs.close()
    # Later the store serves the root it kept: an error, never the old tree.
    store.serve_kept()
    with pytest.raises(RollbackError):
        await _open(store)
    # Without the lie, everything acknowledged is there.
    store._serve = False
    fs2 = await _open(store)
    assert await _read(fs2, b"doc") == b"version 3"
    assert await _read(fs2, b"new") == b"a new fsynced file"


async def _open(store: Store) -> Filesystem:
    return await Filesystem.load(await Vault.unlock(store, PASS), writable=False)


async def test_a_refused_root_served_next_is_refused(any_store: Store) -> None:
    """Even before any later commit: the store refused a write, then serves it."""
    store, _, fs = await _vault_with_doc(any_store)
    # every swap of this commit refused: it gives up after its retries
    store.refuse_next_root(times=RETRIES + 1)
    await _write(fs, b"doc", b"version 2")
    with pytest.raises(CommitConflict):
        await fs.fsync()
    store.serve_kept()
    with pytest.raises(RollbackError, match="refused"):
        await _open(store)


async def test_same_generation_other_root_and_forks_are_refused(
    any_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two histories from one base (a store that shows each client its own fork):
    a client refuses a root of its newest generation with another digest, and
    a root one generation newer that does not name its newest as predecessor."""
    vault, _ = await Vault.init(any_store, PASS, FAST_KDF, SMALL)
    fs = await Filesystem.load(vault)
    await _write(fs, b"doc", b"base")
    await fs.close()
    base = await any_store.read_pointer("root")
    assert base is not None
    # Client A commits on top of the base (roots only: nothing of the base's
    # tree is collected, so both forks stay readable).
    monkeypatch.setenv("MEGAFS_STATE_DIR", str(tmp_path / "state-a"))
    fs_a = await Filesystem.load(await Vault.unlock(any_store, PASS))
    await fs_a.close()
    ptr_a = await any_store.read_pointer("root")
    assert ptr_a is not None
    gen_a = fs_a.vault.open_root(ptr_a.data).generation
    # The store rolls back to the base and lets client B build its own fork.
    cur = await any_store.read_pointer("root")
    assert cur is not None
    await any_store.cas_pointer("root", base.data, cur.etag)
    monkeypatch.setenv("MEGAFS_STATE_DIR", str(tmp_path / "state-b"))
    vault_b = await Vault.unlock(any_store, PASS)
    fs_b = await Filesystem.load(vault_b)  # one commit: the lease and replay
    ptr_b = await any_store.read_pointer("root")
    assert ptr_b is not None
    fs_b.renew_lease()
    await fs_b.commit()
    ptr_b2 = await any_store.read_pointer("root")
    assert ptr_b2 is not None
    await fs_b.close()
    ptr_b3 = await any_store.read_pointer("root")
    assert ptr_b3 is not None
    # Client A is shown B's roots: whichever has A's generation, or the one after it.
    monkeypatch.setenv("MEGAFS_STATE_DIR", str(tmp_path / "state-a"))
    forks = {
        vault_b.open_root(p.data).generation: p.data for p in (ptr_b, ptr_b2, ptr_b3)
    }
    assert gen_a in forks and gen_a + 1 in forks
    for gen in (gen_a, gen_a + 1):
        assert root_digest(forks[gen]) != root_digest(ptr_a.data)
        cur = await any_store.read_pointer("root")
        assert cur is not None
        await any_store.cas_pointer("root", forks[gen], cur.etag)
        with pytest.raises(RollbackError, match=r"forked|different root"):
            await _open(any_store)
    # A's own root still opens for A.
    cur = await any_store.read_pointer("root")
    assert cur is not None
    await any_store.cas_pointer("root", ptr_a.data, cur.etag)
    assert await _read(await _open(any_store), b"doc") == b"base"


@pytest.mark.parametrize(("how", "attempts", "serve"), [("refused", 6, 3), ("no answer", 6, -1)])
async def test_kept_attempts_stay_older_than_what_follows_a_restart(
    any_store: Store, how: str, attempts: int, serve: int
) -> None:
    """Many failed background commits, all kept by the store; the daemon dies;
    the next one fsyncs new data; then the store serves one of the kept roots
    (one newer than the new commits would be if they started where the
    store's root was, and, for refused writes, one old enough to have left
    the list of refused digests). Failed attempts are remembered across the
    restart, so the new commits are newer than every kept one."""
    store, vault, fs = await _vault_with_doc(any_store)
    for i in range(attempts):
        # a refused swap is retried (a lost race, merged): refuse them all
        store.refuse_next_root(how, times=RETRIES + 1 if how == "refused" else 1)
        await _write(fs, b"doc", b"version 2.%d" % i)
        with pytest.raises((CommitConflict, StoreError)):
            await fs.commit()
    del fs, vault  # the daemon is gone, without a word
    fs2 = await Filesystem.load(await Vault.unlock(store, PASS))
    assert await _read(fs2, b"doc") == b"version 1"
    await _write(fs2, b"doc", b"version 3")
    await _write(fs2, b"new", b"fsynced after the restart")
    await fs2.fsync()
    newest = fs2.root.generation
    await fs2.close()
    kept = store.all_kept[serve]
    probe = await Vault.unlock(store, PASS)
    assert probe.open_root(kept).generation < newest
    store.kept = kept
    store.serve_kept()
    with pytest.raises(RollbackError):
        await _open(store)
    store._serve = False
    fs3 = await _open(store)
    assert await _read(fs3, b"doc") == b"version 3"
    assert await _read(fs3, b"new") == b"fsynced after the restart"
