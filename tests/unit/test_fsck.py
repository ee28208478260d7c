"""megafs fsck: verification, garbage listing and repair."""

from __future__ import annotations

import os
import pty
import re
import subprocess
from pathlib import Path

import trio

from megafs.fs.filesystem import Filesystem
from megafs.fs.fsck import check
from megafs.fs.inode import ROOT_INO
from megafs.stores import LocalStore
from megafs.vault.vault import Vault, obj_name

from ..support.helpers import MEGAFS, PASS, new_vault, run_megafs


async def build(tmp_path: Path) -> tuple[LocalStore, bytes]:
    store = LocalStore(str(tmp_path / "store"), create=True)
    vault = await new_vault(store)
    fs = await Filesystem.load(vault)
    d = await fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0)
    for i in range(300):  # a body big enough to be its own object
        await fs.create(d.ino, f"file-with-a-long-name-{i:04}".encode(), 0o644, 0, 0)
    f = await fs.create(ROOT_INO, b"big", 0o644, 0, 0)
    await fs.write(f.ino, 0, os.urandom(200_000))
    await fs.link(f.ino, d.ino, b"hard")
    await fs.close()
    node = fs.table.inodes[f.ino]
    return store, node.chunks[1].obj


async def test_clean_vault_is_clean(tmp_path: Path) -> None:
    store, _ = await build(tmp_path)
    report = await check(await Vault.unlock(store, PASS))
    assert report.clean, report
    assert report.inodes == 1 + 1 + 300 + 1
    assert report.bytes == 200_000


async def test_garbage_is_listed_and_repaired(tmp_path: Path) -> None:
    store, _ = await build(tmp_path)
    await store.put("00" * 16, b"left by an interrupted commit")
    report = await check(await Vault.unlock(store, PASS))
    assert report.orphans == ["00" * 16]
    assert not report.problems and not report.missing
    report = await check(await Vault.unlock(store, PASS), repair=True)
    assert report.removed == 1
    assert (await check(await Vault.unlock(store, PASS))).clean


async def test_damage_is_reported(tmp_path: Path) -> None:
    store, chunk = await build(tmp_path)
    path = Path(store.root) / "objects" / obj_name(chunk)[:2] / obj_name(chunk)
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    report = await check(await Vault.unlock(store, PASS))
    assert any(obj_name(chunk) in p for p in report.problems)
    path.unlink()
    report = await check(await Vault.unlock(store, PASS))
    assert any(obj_name(chunk) in m for m in report.missing)


async def test_fsck_command(tmp_path: Path) -> None:
    store, chunk = await build(tmp_path)
    await trio.to_thread.run_sync(run_fsck_command, store, chunk)


def run_fsck_command(store: LocalStore, chunk: bytes) -> None:
    env = {**os.environ, "MEGAFS_PASSPHRASE": PASS}
    res = run_megafs("fsck", store.root, env=env)
    assert res.returncode == 0, res.stderr
    assert "clean" in res.stdout
    path = Path(store.root) / "objects" / obj_name(chunk)[:2] / obj_name(chunk)
    path.unlink()
    res = run_megafs("fsck", store.root, env=env)
    assert res.returncode == 6
    assert obj_name(chunk) in res.stdout
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("megafs: ")


async def test_fsck_shows_progress_on_a_terminal_only(tmp_path: Path) -> None:
    store, _ = await build(tmp_path)
    await trio.to_thread.run_sync(run_fsck_on_a_terminal, store)


def run_fsck_on_a_terminal(store: LocalStore) -> None:
    env = {**os.environ, "MEGAFS_PASSPHRASE": PASS}
    cmd = [*MEGAFS, "fsck", store.root]
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave
        )
        os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert b"clean" in out
    text = shown.decode()
    # A bar per stage (megafs.cli.progress), redrawn in place, with its counts.
    assert "\r" in text and "pages:" in text and "objects:" in text, text
    assert re.search(r"objects: .*\| \d+/\d+ ", text), text
    # Not on a pipe: no bar.
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert res.returncode == 0 and res.stderr == "" and "clean" in res.stdout
