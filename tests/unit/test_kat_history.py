"""Known answers for root record version 3 (history, docs/history.md): a
frozen sealed root, history page and lists object (``tests/vectors/
root-v3.json``) and a frozen vault (``tests/vectors/vault-root-v3/``: the
record version 2 frozen vault, written on by a device that pinned a state
and then changed it), both written once by ``tests/vectors/
generate_root_v3.py`` and read by every later megafs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import msgpack
import pytest

from megafs.format import crypto
from megafs.format.crypto import Keys
from megafs.fs import fsck
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.stores import LocalStore
from megafs.vault.history import Entry, Lists
from megafs.vault.retention import Policy
from megafs.vault.vault import KIND_HIST, KIND_HLIST, Vault

from .test_kat import (
    FROZEN_PASSPHRASE,
    FROZEN_TREE_V2,
    MASTER,
    VAULT_ID,
    DocReader,
    _pattern,
    _seq,
    _xnonce,
    check_tree,
    kat_header,
    write_frozen,
)
from .test_kat_devices import DEV_A, KAT_ROOT_R2, R2_FILES, R2_VAULT

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
R3_JSON = VECTORS / "root-v3.json"
R3_VAULT = VECTORS / "vault-root-v3"

HIST_TOP = _seq(0xA0, 16)
HIST_PAGE = _seq(0xB0, 16)
LISTS = _seq(0xD0, 16)
KAT_ROOT_R3 = KAT_ROOT_R2.copy()
KAT_ROOT_R3.hist = HIST_TOP
KAT_ROOT_R3.retention = Policy(every=7200, tiers=((86400, 7), (604800, 4)))
KAT_ENTRY = Entry(
    gen=12,
    time_ns=1_700_000_000_123_456_789,
    device=DEV_A,
    itab=_seq(0xC8, 16),
    stats=(6, 9100),
    lists=LISTS,
    name="before upgrade",
)
KAT_LISTS = Lists({_seq(0x10, 16): 8248, _seq(0x20, 16): 0}, {_seq(0x30, 16)})

#: What the frozen vault's history holds: the pinned state, then the change.
R3_PIN = "frozen pin"
R3_BEFORE = _pattern(5000, 3, 1)
R3_AFTER = _pattern(70000, 9, 4)


def compute_vectors_root_v3(tmp: Path) -> dict[str, Any]:
    """Everything in root-v3.json, computed with the current code."""
    keys = Keys(MASTER, VAULT_ID, 3)
    plain = KAT_ROOT_R3.encode()
    page = msgpack.packb({KAT_ENTRY.gen: KAT_ENTRY.encode()}, use_bin_type=True)
    lists = msgpack.packb(KAT_LISTS.encode(), use_bin_type=True)
    return {
        "inputs": {"nonces": [_xnonce(i).hex() for i in (41, 42, 43)]},
        "root": {
            "plaintext": plain.hex(),
            "sealed": crypto.seal_committed(
                keys.root, plain, crypto.root_aad(VAULT_ID), _xnonce(41)
            ).hex(),
        },
        "history_page": {
            "id": HIST_PAGE.hex(),
            "plaintext": page.hex(),
            "sealed": crypto.seal_committed(
                keys.meta, page, crypto.meta_aad(VAULT_ID, KIND_HIST, HIST_PAGE), _xnonce(42)
            ).hex(),
        },
        "lists": {
            "id": LISTS.hex(),
            "plaintext": lists.hex(),
            "sealed": crypto.seal_committed(
                keys.meta, lists, crypto.meta_aad(VAULT_ID, KIND_HLIST, LISTS), _xnonce(43)
            ).hex(),
        },
    }


async def build_vault_root_v3(vault_path: Path, tmp: Path) -> None:
    """The record version 2 frozen vault; one device writes a file, pins
    that state, then rewrites the file."""
    shutil.copytree(R2_VAULT, vault_path)
    store = LocalStore(str(vault_path))
    os.environ["MEGAFS_STATE_DIR"] = str(tmp / "history device")
    fs = await Filesystem.load(
        await Vault.unlock(store, FROZEN_PASSPHRASE), device_name="history device"
    )
    ino = (await fs.create(ROOT_INO, b"doc", 0o600, 1000, 1000)).ino
    await fs.write(ino, 0, R3_BEFORE)
    await fs.pin(R3_PIN)
    await fs.truncate(ino, 0)
    await fs.write(ino, 0, R3_AFTER)
    await fs.close()


def write_frozen_root_v3() -> int:
    """Write root-v3.json and vault-root-v3/ once; refuse to overwrite them."""
    return write_frozen(R3_JSON, R3_VAULT, compute_vectors_root_v3, [], build_vault_root_v3)


@pytest.fixture(scope="module")
def frozen_r3() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(R3_JSON.read_text())
    return data


def test_writer_reproduces_root_v3_vector(frozen_r3: dict[str, Any], tmp_path: Path) -> None:
    assert compute_vectors_root_v3(tmp_path) == frozen_r3


def test_root_v3_vectors_open_as_documented(frozen_r3: dict[str, Any], tmp_path: Path) -> None:
    keys = Keys(MASTER, VAULT_ID, 3)
    vault = Vault(LocalStore(str(tmp_path / "unused")), kat_header(version=3), keys)
    root = vault.open_root(bytes.fromhex(frozen_r3["root"]["sealed"]))
    assert root == KAT_ROOT_R3 and root.version == 3
    raw = msgpack.unpackb(bytes.fromhex(frozen_r3["root"]["plaintext"]), raw=False)
    assert raw["v"] == 3 and raw["hist"] == HIST_TOP
    assert raw["ret"] == [7200, [[86400, 7], [604800, 4]]]
    page = vault.open_meta(KIND_HIST, HIST_PAGE, bytes.fromhex(frozen_r3["history_page"]["sealed"]))
    assert page == {
        12: {
            "t": 1_700_000_000_123_456_789,
            "d": DEV_A,
            "i": _seq(0xC8, 16),
            "s": [6, 9100],
            "l": LISTS,
            "n": "before upgrade",
        }
    }
    assert Entry.decode(12, page[12]) == KAT_ENTRY
    lists = vault.open_meta(KIND_HLIST, LISTS, bytes.fromhex(frozen_r3["lists"]["sealed"]))
    assert lists == {"b": [[_seq(0x10, 16), 8248], [_seq(0x20, 16), 0]], "d": [_seq(0x30, 16)]}
    assert Lists.decode(lists, "lists") == KAT_LISTS


async def test_frozen_root_v3_vault_opens_with_its_history(tmp_path: Path) -> None:
    copy = tmp_path / "vault"
    shutil.copytree(R3_VAULT, copy)
    vault = await Vault.unlock(LocalStore(str(copy)), FROZEN_PASSPHRASE)
    fs = await Filesystem.load(vault, writable=False)
    assert fs.root.version == 3
    assert await fs.read((await fs.lookup(ROOT_INO, b"doc")).ino, 0, 1 << 20) == R3_AFTER
    await check_tree(fs, FROZEN_TREE_V2, extra=frozenset({*R2_FILES, b"doc"}))
    history = await fs.history()
    [pinned] = [e for e in history if e.name == R3_PIN]
    past = await fs.past(pinned)
    assert await past.read((await past.lookup(ROOT_INO, b"doc")).ino, 0, 1 << 20) == R3_BEFORE
    # the same through the reader written from the documents alone
    reader = DocReader(copy, FROZEN_PASSPHRASE)
    doc_history = reader.history()
    assert sorted(doc_history) == [e.gen for e in history]
    entry, _lists = doc_history[pinned.gen]
    assert entry["n"] == R3_PIN
    assert reader.tree(entry["i"])[b"doc"].content == R3_BEFORE
    assert reader.tree()[b"doc"].content == R3_AFTER
    report = await fsck.check(vault)
    assert report.clean, (report.problems, report.missing, report.orphans)


async def test_frozen_root_v3_vault_keeps_its_pin_when_written(tmp_path: Path) -> None:
    copy = tmp_path / "vault"
    shutil.copytree(R3_VAULT, copy)
    store = LocalStore(str(copy))
    fs = await Filesystem.load(await Vault.unlock(store, FROZEN_PASSPHRASE), device_name="later")
    await fs.set_retention(Policy(every=0, tiers=()))  # keep the newest and pins only
    names = [e.name for e in await fs.history()]
    assert names == [R3_PIN, None]
    past = await fs.past((await fs.history())[0])
    assert await past.read((await past.lookup(ROOT_INO, b"doc")).ino, 0, 1 << 20) == R3_BEFORE
    await fs.close()
    report = await fsck.check(await Vault.unlock(store, FROZEN_PASSPHRASE))
    assert report.clean, (report.problems, report.missing, report.orphans)
