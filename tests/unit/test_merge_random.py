"""Three devices run random operation sequences on one vault, committing and
catching up at random moments; then every device commits and catches up.
After that every device shows the same tree, fsck finds no problem, no file
holds bytes nobody wrote, and every write that was the last change to its
file and was committed by its device is in the tree (under its name or as a
conflict copy). Many seeds; ``bench/merge_soak.py`` runs hundreds."""

from __future__ import annotations

import errno
import os
import random
import stat
from pathlib import Path

import pytest

from megafs.errors import FsError
from megafs.fs import fsck
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.stores import LocalStore
from megafs.vault.vault import Vault

from ..support.helpers import PASS, new_vault

SEEDS = range(int(os.environ.get("MERGE_SEEDS", "40")))
OPS = 80


async def walk(fs: Filesystem) -> dict[bytes, tuple[str, bytes]]:
    """path -> (kind, content) of the whole tree as ``fs`` shows it."""
    out: dict[bytes, tuple[str, bytes]] = {}

    async def go(ino: int, prefix: bytes) -> None:
        after = 0
        while batch := await fs.readdir(ino, after):
            for name, attr, cookie in batch:
                after = cookie
                path = prefix + name
                if stat.S_ISDIR(attr.mode):
                    out[path] = ("d", b"")
                    await go(attr.ino, path + b"/")
                else:
                    data = await fs.read(attr.ino, 0, 1 << 30)
                    xs = b",".join(sorted(await fs.listxattr(attr.ino)))
                    out[path] = ("f", data + b"|" + xs)

    await go(ROOT_INO, b"")
    return out


class Device:
    def __init__(self, name: str, fs: Filesystem, rnd: random.Random) -> None:
        self.name = name
        self.fs = fs
        self.rnd = rnd

    async def entries(self) -> list[tuple[int, bytes, int, bool]]:
        """(parent, name, ino, is_dir) of everything this device shows."""
        out: list[tuple[int, bytes, int, bool]] = []
        todo = [ROOT_INO]
        while todo:
            d = todo.pop()
            after = 0
            while batch := await self.fs.readdir(d, after):
                for name, attr, cookie in batch:
                    after = cookie
                    isdir = stat.S_ISDIR(attr.mode)
                    out.append((d, name, attr.ino, isdir))
                    if isdir:
                        todo.append(attr.ino)
        return out


async def run_seed(tmp: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rnd = random.Random(seed)
    store = LocalStore(str(tmp / f"store{seed}"), create=True)
    await store.check()
    await new_vault(store)
    devs: list[Device] = []
    for dname in ("a", "b", "c"):
        monkeypatch.setenv("MEGAFS_STATE_DIR", str(tmp / f"state{seed}-{dname}"))
        vault = await Vault.unlock(store, PASS)
        devs.append(Device(dname, await Filesystem.load(vault, device_name=dname), rnd))
    written: set[bytes] = {b""}
    #: ino -> (device, content) of its last change if that was a write; None otherwise
    last: dict[int, tuple[str, bytes] | None] = {}
    #: writes whose device has committed since: (ino, content)
    committed: set[tuple[int, bytes]] = set()
    pending: dict[str, list[tuple[int, bytes]]] = {d.name: [] for d in devs}
    counter = 0

    for _ in range(OPS):
        dev = rnd.choice(devs)
        fs = dev.fs
        ents = await dev.entries()
        files = [e for e in ents if not e[3]]
        dirs = [ROOT_INO] + [e[2] for e in ents if e[3]]
        op = rnd.choice(
            ["create", "create", "write", "write", "append", "truncate", "rename",
             "unlink", "mkdir", "rmdir", "link", "setxattr", "commit", "commit",
             "refresh", "refresh"]
        )  # fmt: skip
        counter += 1
        token = f"<{dev.name}{counter}>".encode()
        trace = os.environ.get("MERGE_TRACE")
        try:
            if op == "create":
                fname = b"f%d" % rnd.randrange(6)
                ino = (await fs.create(rnd.choice(dirs), fname, 0o644, 0, 0)).ino
                await fs.write(ino, 0, token)
                content = await fs.read(ino, 0, 1 << 20)
            elif op in ("write", "append", "truncate") and files:
                _, _, ino, _ = rnd.choice(files)
                size = (await fs.getattr(ino)).size
                before = await fs.read(ino, 0, 1 << 20)
                if op == "write":
                    await fs.write(ino, rnd.randrange(size + 1), token * rnd.randrange(1, 400))
                elif op == "append":
                    await fs.write(ino, size, token)
                else:
                    await fs.truncate(ino, rnd.randrange(size + 1))
                content = await fs.read(ino, 0, 1 << 20)
                if content == before:
                    continue  # no change: not a write the merge must keep
                for other, change in last.items():
                    if change is not None and change[1] == before:
                        # this version was edited on: here, or as a conflict
                        # copy another device made of it
                        last[other] = None
            elif op == "rename" and ents:
                parent, name, ino, _ = rnd.choice(ents)
                to, new = rnd.choice(dirs), b"r%d" % rnd.randrange(6)
                try:
                    over: int | None = (await fs.lookup(to, new)).ino
                except FsError:
                    over = None
                await fs.rename(parent, name, to, new)
                if over is not None and over != ino:
                    last[over] = None  # replaced: a deletion
                if trace:
                    print(dev.name, op, counter, parent, name, ino, "->", to, new)
                continue
            elif op == "unlink" and files:
                parent, name, ino, _ = rnd.choice(files)
                gone = await fs.read(ino, 0, 1 << 20)
                await fs.unlink(parent, name)
                for other, change in last.items():
                    if change is not None and change[1] == gone:
                        last[other] = None  # that version deleted (maybe as a copy)
                if trace:
                    print(dev.name, op, counter, parent, name, ino)
                last[ino] = None
                continue
            elif op == "mkdir":
                made = await fs.mkdir(rnd.choice(dirs), b"d%d" % rnd.randrange(4), 0o755, 0, 0)
                if trace:
                    print(dev.name, op, counter, made.ino)
                continue
            elif op == "rmdir" and len(dirs) > 1:
                sub = [e for e in ents if e[3]]
                parent, name, ino, _ = rnd.choice(sub)
                await fs.rmdir(parent, name)
                if trace:
                    print(dev.name, op, counter, parent, name, ino)
                continue
            elif op == "link" and files:
                _, _, ino, _ = rnd.choice(files)
                to, new = rnd.choice(dirs), b"l%d" % rnd.randrange(4)
                await fs.link(ino, to, new)
                if trace:
                    print(dev.name, op, counter, ino, "->", to, new)
                continue
            elif op == "setxattr" and files:
                _, _, ino, _ = rnd.choice(files)
                await fs.setxattr(ino, b"user." + token, b"1")
                continue
            elif op == "commit":
                if trace:
                    print(dev.name, op, counter)
                await fs.commit()
                committed.update(pending[dev.name])
                pending[dev.name].clear()
                continue
            elif op == "refresh":
                if trace:
                    print(dev.name, op, counter)
                await fs.refresh()
                continue
            else:
                continue
        except FsError as e:
            assert e.errno in (
                errno.EEXIST, errno.ENOENT, errno.ENOTEMPTY, errno.EINVAL, errno.EISDIR,
                errno.ENOTDIR, errno.EPERM,
            ), e  # fmt: skip
            continue
        if trace:
            print(dev.name, op, counter, "ino", ino, content[:40])
        written.add(content)
        last[ino] = (dev.name, content)
        pending[dev.name].append((ino, content))

    for dev in devs:
        await dev.fs.commit()
        committed.update(pending[dev.name])
    for dev in devs:
        await dev.fs.refresh()
    trees = [await walk(d.fs) for d in devs]
    assert trees[0] == trees[1] == trees[2], f"seed {seed}: devices differ"
    contents = {v[1].split(b"|")[0] for v in trees[0].values() if v[0] == "f"}
    # nothing invented: every file holds what some device wrote at some point
    invented = contents - written
    assert not invented, f"seed {seed}: contents nobody wrote: {sorted(invented)[:3]}"
    # nothing lost: a committed write that stayed its file's last change is there
    for ino, change in last.items():
        if change is not None and (ino, change[1]) in committed:
            lost = f"seed {seed}: lost {change[0]} {change[1][:60]!r} of {ino}"
            assert change[1] in contents, lost
    monkeypatch.setenv("MEGAFS_STATE_DIR", str(tmp / f"state{seed}-reader"))
    reader = await Filesystem.load(await Vault.unlock(store, PASS), writable=False)
    assert await walk(reader) == trees[0]
    report = await fsck.check(reader.vault)
    assert not report.problems and not report.missing, (seed, report.problems, report.missing)
    for d in devs:
        await d.fs.close()
    os.environ.pop("MEGAFS_STATE_DIR", None)


@pytest.mark.parametrize("seed", SEEDS)
async def test_three_devices_at_random(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    await run_seed(tmp_path, seed, monkeypatch)
