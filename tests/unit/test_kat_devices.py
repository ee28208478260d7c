"""Known answers for root record version 2 (several devices,
docs/multidevice.md and docs/format.md section 6): a frozen sealed root
(``tests/vectors/root-v2.json``) and a frozen vault (``tests/vectors/
vault-root-v2/``: the format 3 frozen vault, upgraded by one device and
written by a second), both written once by ``tests/vectors/
generate_root_v2.py`` and read by every later megafs."""

from __future__ import annotations

import json
import math
import os
import shutil
import unicodedata
from pathlib import Path
from typing import Any

import msgpack
import pytest

from megafs.format import crypto, header
from megafs.format.crypto import Keys
from megafs.fs import fsck
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.stores import LocalStore
from megafs.vault.root import DEVICE_BITS, Device, Lease, Root
from megafs.vault.vault import Vault

from .test_kat import (
    FROZEN_PASSPHRASE,
    FROZEN_RECOVERY_V3,
    FROZEN_TREE_V2,
    MASTER,
    PREV_ROOT,
    PTAB_OBJ,
    TOP_OBJ,
    V3_VAULT,
    VAULT_ID,
    _pattern,
    _seq,
    _xnonce,
    check_doc_reader,
    check_tree,
    kat_header,
    write_frozen,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
R2_JSON = VECTORS / "root-v2.json"
R2_VAULT = VECTORS / "vault-root-v2"

DEV_A = _seq(0x40, 16)
DEV_B = _seq(0x50, 16)
JOURNAL_A = _seq(0x60, 16)
ROOT_NONCE = _xnonce(40)
KAT_ROOT_R2 = Root(
    generation=12,
    itab=TOP_OBJ,
    next_ino=304,
    stats=[6, 9100],
    ptab=PTAB_OBJ,
    next_pack=1,
    prev=PREV_ROOT,
    lease=Lease(DEV_A, "laptop", 4242, 1_700_000_300.5),
    devices={
        DEV_A: Device(
            "laptop",
            1,
            (1 << DEVICE_BITS) + 7,
            (1 << DEVICE_BITS) + 2,
            journal=(JOURNAL_A, 9),
            orphans=[(1 << DEVICE_BITS) + 3],
            time_ns=1_700_000_000_123_456_789,
            generation=12,
        ),
        DEV_B: Device(
            "desktop \u00e9",
            2,
            2 << DEVICE_BITS,
            (2 << DEVICE_BITS) + 1,
            time_ns=1_699_999_000_000_000_000,
            generation=10,
        ),
    },
)

#: What the two devices of the frozen vault added to the format 3 tree.
R2_DEVICES = ("frozen device a", "frozen device b")
R2_FILES = {
    b"from-a.txt": _pattern(3000, 5, 2),  # packed
    b"from-b.bin": _pattern(20000, 11, 7),  # three chunks of 8 KiB
}


def compute_vectors_root_v2(tmp: Path) -> dict[str, Any]:
    """Everything in root-v2.json, computed with the current code."""
    keys = Keys(MASTER, VAULT_ID, 3)
    plain = KAT_ROOT_R2.encode()
    return {
        "inputs": {"nonce": ROOT_NONCE.hex()},
        "root": {
            "plaintext": plain.hex(),
            "sealed": crypto.seal_committed(
                keys.root, plain, crypto.root_aad(VAULT_ID), ROOT_NONCE
            ).hex(),
        },
    }


async def build_vault_root_v2(vault_path: Path, tmp: Path) -> None:
    """The frozen format 3 vault, upgraded by device a and then written by
    device b (each with its own local state), each adding one file."""
    shutil.copytree(V3_VAULT, vault_path)
    store = LocalStore(str(vault_path))
    for name, (fname, data) in zip(R2_DEVICES, R2_FILES.items(), strict=True):
        os.environ["MEGAFS_STATE_DIR"] = str(tmp / name)
        fs = await Filesystem.load(await Vault.unlock(store, FROZEN_PASSPHRASE), device_name=name)
        ino = (await fs.create(ROOT_INO, fname, 0o640, 1000, 1000)).ino
        await fs.write(ino, 0, data)
        await fs.close()


def write_frozen_root_v2() -> int:
    """Write root-v2.json and vault-root-v2/ once; refuse to overwrite them."""
    return write_frozen(R2_JSON, R2_VAULT, compute_vectors_root_v2, [], build_vault_root_v2)


@pytest.fixture(scope="module")
def frozen_r2() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(R2_JSON.read_text())
    return data


def test_writer_reproduces_root_v2_vector(frozen_r2: dict[str, Any], tmp_path: Path) -> None:
    assert compute_vectors_root_v2(tmp_path) == frozen_r2


def test_root_v2_vector_opens_as_documented(frozen_r2: dict[str, Any], tmp_path: Path) -> None:
    keys = Keys(MASTER, VAULT_ID, 3)
    vault = Vault(LocalStore(str(tmp_path / "unused")), kat_header(version=3), keys)
    root = vault.open_root(bytes.fromhex(frozen_r2["root"]["sealed"]))
    assert root == KAT_ROOT_R2 and root.version == 2
    # the record as docs/format.md section 6 describes it, read with msgpack alone
    raw = msgpack.unpackb(bytes.fromhex(frozen_r2["root"]["plaintext"]), raw=False)
    assert raw["v"] == 2 and raw["next"] == 304 and raw["orph"] == [] and raw["jrnl"] is None
    assert raw["lease"] == [bytes(16), "a newer megafs (several devices)", 0, math.inf]
    assert raw["dlease"] == [DEV_A, "laptop", 4242, 1_700_000_300.5]
    assert list(raw["devs"]) == [DEV_A, DEV_B]  # sorted by device id
    assert raw["devs"][DEV_A] == {
        "name": "laptop",
        "pfx": 1,
        "ino": (1 << 40) + 7,
        "pack": (1 << 40) + 2,
        "jrnl": [JOURNAL_A, 9],
        "orph": [(1 << 40) + 3],
        "t": 1_700_000_000_123_456_789,
        "gen": 12,
    }


async def test_frozen_root_v2_vault_opens_and_matches(tmp_path: Path) -> None:
    copy = tmp_path / "vault"
    shutil.copytree(R2_VAULT, copy)
    store = LocalStore(str(copy))
    vault = await Vault.unlock(store, unicodedata.normalize("NFD", FROZEN_PASSPHRASE))
    rvault = await Vault.unlock_recovery(store, header.parse_recovery_key(FROZEN_RECOVERY_V3))
    assert rvault.keys.master == vault.keys.master and vault.header.version == 3
    fs = await Filesystem.load(vault, writable=False)
    assert fs.root.version == 2
    assert sorted((d.prefix, d.name) for d in fs.root.devices.values()) == list(
        enumerate(R2_DEVICES, 1)
    )
    assert fs.root.next_ino == 300_006  # the version 1 counter, frozen at the upgrade
    for prefix, (name, data) in enumerate(R2_FILES.items(), 1):
        attr = await fs.lookup(ROOT_INO, name)
        assert attr.ino >> DEVICE_BITS == prefix and (attr.mode & 0o777) == 0o640
        assert await fs.read(attr.ino, 0, len(data) + 10) == data
    await check_tree(fs, FROZEN_TREE_V2, extra=frozenset(R2_FILES))  # the rest as it was
    check_doc_reader(copy, FROZEN_PASSPHRASE, FROZEN_TREE_V2, extra=frozenset(R2_FILES))
    report = await fsck.check(vault)
    assert report.clean, (report.problems, report.missing, report.orphans)


async def test_frozen_root_v2_vault_takes_a_third_device(tmp_path: Path) -> None:
    copy = tmp_path / "vault"
    shutil.copytree(R2_VAULT, copy)
    store = LocalStore(str(copy))
    fs = await Filesystem.load(await Vault.unlock(store, FROZEN_PASSPHRASE), device_name="third")
    ino = (await fs.create(ROOT_INO, b"third", 0o644, 0, 0)).ino
    assert ino >> DEVICE_BITS == 3
    await fs.write(ino, 0, b"from the third device")
    await fs.close()
    check_doc_reader(
        copy, FROZEN_PASSPHRASE, FROZEN_TREE_V2, extra=frozenset({*R2_FILES, b"third"})
    )
    fs = await Filesystem.load(await Vault.unlock(store, FROZEN_PASSPHRASE), writable=False)
    await check_tree(fs, FROZEN_TREE_V2, extra=frozenset({*R2_FILES, b"third"}))
