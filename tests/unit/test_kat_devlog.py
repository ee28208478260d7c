"""Known answers for device log objects, version 1 (docs/format.md §14): a
frozen names key, object ids and sealed object (``tests/vectors/
devlog-v1.json``) and a frozen vault holding a lost device's unfolded log
series (``tests/vectors/vault-devlog-v1/``: the record version 3 frozen
vault, on which a device fsynced twice and died before its next commit),
both written once by ``tests/vectors/generate_devlog_v1.py`` and read by
every later megafs."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import msgpack

from megafs.client.journal import Journal
from megafs.format import crypto
from megafs.format.crypto import Keys
from megafs.fs import fsck
from megafs.fs.adopt import adopt_device
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.stores import LocalStore
from megafs.vault.devlog import log_id, read_series
from megafs.vault.vault import KIND_LOG, Vault

from .test_kat import FROZEN_PASSPHRASE, MASTER, VAULT_ID, _pattern, _seq, _xnonce, write_frozen
from .test_kat_devices import DEV_A
from .test_kat_history import R3_VAULT

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
DL_JSON = VECTORS / "devlog-v1.json"
DL_VAULT = VECTORS / "vault-devlog-v1"

JOURNAL = _seq(0x60, 16)
MARK = 4
GEN = 17
RECORDS = [(5, 0, b"\x93\xa2cr\x01\x02"), (5, 1, b"\x93\xa2wr\x03\x04")]
BASE = _seq(0x90, 40)  # (any sealed root: its bytes are opaque here)
LOST = "lost laptop"
LOST_DATA = _pattern(30000, 5, 2)
LOST_MORE = b" and a later fsync"


def compute_vectors_devlog_v1(tmp: Path) -> dict[str, Any]:
    """Everything in devlog-v1.json, computed with the current code."""
    keys = Keys(MASTER, VAULT_ID, 3)
    names = crypto.hkdf(keys.meta, VAULT_ID, b"megafs/v1/device-log-names")
    ids = [log_id(keys, DEV_A, JOURNAL, MARK, GEN, k) for k in (0, 1)]
    plain = msgpack.packb(
        {"v": 1, "base": BASE, "recs": [list(r) for r in RECORDS]}, use_bin_type=True
    )
    return {
        "inputs": {
            "device": DEV_A.hex(),
            "journal": JOURNAL.hex(),
            "mark": MARK,
            "generation": GEN,
            "nonce": _xnonce(51).hex(),
        },
        "names_key": names.hex(),
        "ids": [i.hex() for i in ids],
        "object0": {
            "plaintext": plain.hex(),
            "sealed": crypto.seal_committed(
                keys.meta, plain, crypto.meta_aad(VAULT_ID, KIND_LOG, ids[0]), _xnonce(51)
            ).hex(),
        },
    }


async def build_vault_devlog_v1(vault_path: Path, tmp: Path) -> None:
    """The record version 3 frozen vault; a device writes a file, fsyncs,
    appends, fsyncs again (two log objects), and dies before committing."""
    shutil.copytree(R3_VAULT, vault_path)
    store = LocalStore(str(vault_path))
    os.environ["MEGAFS_STATE_DIR"] = str(tmp / "lost state")
    vault = await Vault.unlock(store, FROZEN_PASSPHRASE)
    fs = await Filesystem.load(
        vault, journal=Journal(str(tmp / "lost"), vault.keys), device_name=LOST
    )
    ino = (await fs.create(ROOT_INO, b"unfolded", 0o600, 1000, 1000)).ino
    await fs.write(ino, 0, LOST_DATA)
    await fs.fsync(ino)
    await fs.write(ino, len(LOST_DATA), LOST_MORE)
    await fs.fsync(ino)
    assert fs.committer.log_puts == 2
    assert fs.journal is not None
    fs.journal.close()  # and nothing else: the device is gone


def write_frozen_devlog_v1() -> int:
    """Write devlog-v1.json and vault-devlog-v1/ once; refuse to overwrite them."""
    return write_frozen(DL_JSON, DL_VAULT, compute_vectors_devlog_v1, [], build_vault_devlog_v1)


def test_writer_reproduces_devlog_v1_vector(tmp_path: Path) -> None:
    frozen = json.loads(DL_JSON.read_text())
    assert compute_vectors_devlog_v1(tmp_path) == frozen


def test_devlog_v1_vector_opens_as_documented() -> None:
    """From the documents alone: the names key, the ids, the payload."""
    frozen = json.loads(DL_JSON.read_text())
    meta = crypto.hkdf(MASTER, VAULT_ID, b"megafs v1 metadata objects (AES-256-GCM)")
    names = crypto.hkdf(meta, VAULT_ID, b"megafs/v1/device-log-names")
    assert names.hex() == frozen["names_key"]
    for k, want in enumerate(frozen["ids"]):
        tag = crypto.hmac_sha256(names, DEV_A + JOURNAL + struct.pack(">QQQ", MARK, GEN, k))
        assert tag[:16].hex() == want
    obj = bytes.fromhex(frozen["ids"][0])
    aad = b"megafs/v1/meta\x00" + VAULT_ID + bytes([KIND_LOG]) + obj
    assert crypto.meta_aad(VAULT_ID, KIND_LOG, obj) == aad
    plain = crypto.open_committed(meta, bytes.fromhex(frozen["object0"]["sealed"]), aad)
    assert msgpack.unpackb(plain, raw=False) == {
        "v": 1,
        "base": BASE,
        "recs": [list(r) for r in RECORDS],
    }


async def test_frozen_devlog_vault_is_adopted(tmp_path: Path) -> None:
    copy = tmp_path / "vault"
    shutil.copytree(DL_VAULT, copy)
    store = LocalStore(str(copy))
    vault = await Vault.unlock(store, FROZEN_PASSPHRASE)
    root = await vault.read_root()
    [(dev_id, dev)] = [(i, d) for i, d in root.devices.items() if d.name == LOST]
    assert dev.journal is not None
    assert (await read_series(vault, dev_id, *dev.journal, dev.generation))[2] == 2
    done = await adopt_device(vault, LOST, force=True)
    assert done.log_objects == 2
    fs = await Filesystem.load(await Vault.unlock(store, FROZEN_PASSPHRASE), writable=False)
    attr = await fs.lookup(ROOT_INO, b"unfolded")
    assert await fs.read(attr.ino, 0, attr.size) == LOST_DATA + LOST_MORE
    report = await fsck.check(await Vault.unlock(store, FROZEN_PASSPHRASE))
    assert report.clean, (report.problems, report.missing, report.orphans)
