"""The filesystem model, called directly (no kernel), on a local store."""

from __future__ import annotations

import errno
import os
import random
import stat
from pathlib import Path

import pytest

from megafs.errors import FsError
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.fs.namespace import RENAME_EXCHANGE, RENAME_NOREPLACE
from megafs.stores import LocalStore, Store
from megafs.stores.base import MAX_OBJECT_SIZE
from megafs.vault.content import Content
from megafs.vault.vault import Vault

from ..support.helpers import PASS, SMALL, forget_history, new_vault, reopen


async def mkfile(fs: Filesystem, parent: int, name: bytes, data: bytes = b"") -> int:
    attr = await fs.create(parent, name, 0o644, 0, 0)
    if data:
        await fs.write(attr.ino, 0, data)
    return attr.ino


async def test_create_write_read_roundtrip(fs: Filesystem, store: Store) -> None:
    ino = await mkfile(fs, ROOT_INO, b"hello.txt", b"hello world")
    assert await fs.read(ino, 0, 100) == b"hello world"
    assert await fs.read(ino, 6, 3) == b"wor"
    await fs.close()
    fs2 = await reopen(store)
    attr = await fs2.lookup(ROOT_INO, b"hello.txt")
    assert attr.size == 11
    assert stat.S_ISREG(attr.mode)
    assert await fs2.read(attr.ino, 0, 100) == b"hello world"


@pytest.mark.parametrize("size", [0, 1, 2048, 2049, 4095, 4096, 65535, 65536, 65537, 300_000])
async def test_sizes_across_boundaries(fs: Filesystem, store: Store, size: int) -> None:
    data = os.urandom(size)
    ino = await mkfile(fs, ROOT_INO, b"f", data)
    assert await fs.read(ino, 0, size + 10) == data
    await fs.close()
    fs2 = await reopen(store)
    ino2 = (await fs2.lookup(ROOT_INO, b"f")).ino
    assert (await fs2.getattr(ino2)).size == size
    assert await fs2.read(ino2, 0, size + 10) == data
    # random ranges
    rng = random.Random(size)
    for _ in range(20):
        off = rng.randrange(0, size + 1)
        n = rng.randrange(0, 70_000)
        assert await fs2.read(ino2, off, n) == data[off : off + n]


async def test_random_writes_match_reference(fs: Filesystem, store: Store) -> None:
    rng = random.Random(7)
    ref = bytearray()
    ino = await mkfile(fs, ROOT_INO, b"r")
    for step in range(200):
        op = rng.random()
        if op < 0.7:
            off = rng.randrange(0, 400_000)
            data = rng.randbytes(rng.randrange(1, 30_000))
            await fs.write(ino, off, data)
            if len(ref) < off:
                ref.extend(bytes(off - len(ref)))
            ref[off : off + len(data)] = data
        elif op < 0.85:
            new = rng.randrange(0, 450_000)
            await fs.truncate(ino, new)
            if new < len(ref):
                del ref[new:]
            else:
                ref.extend(bytes(new - len(ref)))
        else:
            await fs.commit()
        if step % 25 == 0:
            assert await fs.read(ino, 0, 10**6) == bytes(ref)
    assert await fs.read(ino, 0, 10**6) == bytes(ref)
    await fs.close()
    fs2 = await reopen(store)
    assert await fs2.read(ino, 0, 10**6) == bytes(ref)


async def test_sparse_file(fs: Filesystem, store: Store) -> None:
    ino = await mkfile(fs, ROOT_INO, b"sparse")
    tib = 1 << 40
    await fs.write(ino, tib - 5, b"tail!")
    assert (await fs.getattr(ino)).size == tib
    assert await fs.read(ino, 12345, 10) == bytes(10)
    assert await fs.read(ino, tib - 10, 100) == bytes(5) + b"tail!"
    await fs.close()
    fs2 = await reopen(store)
    assert await fs2.read(ino, tib - 5, 5) == b"tail!"
    objects = [n async for n in store.list()]
    assert sum(size for _, size in objects) < 1 << 20


async def test_truncate_then_extend_reads_zeros(fs: Filesystem) -> None:
    ino = await mkfile(fs, ROOT_INO, b"t", b"x" * 100_000)
    await fs.commit()
    await fs.truncate(ino, 50)
    await fs.truncate(ino, 100_000)
    assert await fs.read(ino, 0, 100_000) == b"x" * 50 + bytes(99_950)


async def test_directories_and_readdir(fs: Filesystem, store: Store) -> None:
    d = (await fs.mkdir(ROOT_INO, b"dir", 0o755, 0, 0)).ino
    names = [f"f{i:03}".encode() for i in range(600)]
    for n in names:
        await mkfile(fs, d, n)
    seen: list[bytes] = []
    after = 0
    while True:
        batch = await fs.readdir(d, after)
        if not batch:
            break
        seen += [n for n, _, _ in batch]
        after = batch[-1][2]
    assert sorted(seen) == names
    # stable offsets: removing entries during a listing does not skip others
    first = await fs.readdir(d, 0)
    cookie = first[100][2]
    for n in names[:50]:
        await fs.unlink(d, n)
    rest: list[bytes] = []
    after = cookie
    while batch := await fs.readdir(d, after):
        rest += [n for n, _, _ in batch]
        after = batch[-1][2]
    assert rest == names[101:]
    with pytest.raises(FsError) as e:
        await fs.rmdir(ROOT_INO, b"dir")
    assert e.value.errno == errno.ENOTEMPTY
    assert (await fs.getattr(ROOT_INO)).nlink == 3
    await fs.close()
    fs2 = await reopen(store)
    d2 = (await fs2.lookup(ROOT_INO, b"dir")).ino
    assert len(await fs2.readdir(d2, 0)) == 256


async def test_rename_variants(fs: Filesystem) -> None:
    a = (await fs.mkdir(ROOT_INO, b"a", 0o755, 0, 0)).ino
    b = (await fs.mkdir(ROOT_INO, b"b", 0o755, 0, 0)).ino
    x = await mkfile(fs, a, b"x", b"X")
    y = await mkfile(fs, b, b"y", b"Y")
    await fs.rename(a, b"x", b, b"y")  # replace across directories
    assert (await fs.lookup(b, b"y")).ino == x
    with pytest.raises(FsError):
        await fs.lookup(a, b"x")
    with pytest.raises(FsError):
        await fs.getattr(y)  # replaced and not referenced: purged
    z = await mkfile(fs, a, b"z", b"Z")
    with pytest.raises(FsError) as e:
        await fs.rename(a, b"z", b, b"y", RENAME_NOREPLACE)
    assert e.value.errno == errno.EEXIST
    await fs.rename(a, b"z", b, b"y", RENAME_EXCHANGE)
    assert (await fs.lookup(b, b"y")).ino == z
    assert (await fs.lookup(a, b"z")).ino == x
    # directory into its own subtree
    sub = (await fs.mkdir(a, b"sub", 0o755, 0, 0)).ino
    with pytest.raises(FsError) as e:
        await fs.rename(ROOT_INO, b"a", sub, b"a2")
    assert e.value.errno == errno.EINVAL
    # directory over non-empty directory
    await mkfile(fs, b, b"keep")
    with pytest.raises(FsError) as e:
        await fs.rename(a, b"sub", ROOT_INO, b"b")
    assert e.value.errno == errno.ENOTEMPTY
    # move directory: parent link counts follow
    await fs.rename(a, b"sub", b, b"sub")
    assert (await fs.getattr(a)).nlink == 2
    assert (await fs.getattr(b)).nlink == 3
    assert (await fs.lookup(sub, b"..")).ino == b


async def test_hard_links_symlinks_xattrs(fs: Filesystem, store: Store) -> None:
    f = await mkfile(fs, ROOT_INO, b"f", b"data")
    await fs.link(f, ROOT_INO, b"g")
    assert (await fs.getattr(f)).nlink == 2
    await fs.write(f, 0, b"DA")
    assert await fs.read((await fs.lookup(ROOT_INO, b"g")).ino, 0, 10) == b"DAta"
    s = await fs.symlink(ROOT_INO, b"s", b"../target/\xff", 0, 0)
    assert await fs.readlink(s.ino) == b"../target/\xff"
    await fs.setxattr(f, b"user.k", b"v" * 1000)
    with pytest.raises(FsError) as e:
        await fs.setxattr(f, b"user.k", b"v", 1)
    assert e.value.errno == errno.EEXIST
    await fs.unlink(ROOT_INO, b"f")
    await fs.close()
    fs2 = await reopen(store)
    g = (await fs2.lookup(ROOT_INO, b"g")).ino
    assert g == f
    assert (await fs2.getattr(g)).nlink == 1
    assert await fs2.getxattr(g, b"user.k") == b"v" * 1000
    assert await fs2.listxattr(g) == [b"user.k"]
    await fs2.removexattr(g, b"user.k")
    with pytest.raises(FsError) as e:
        await fs2.getxattr(g, b"user.k")
    assert e.value.errno == errno.ENODATA
    s2 = await fs2.lookup(ROOT_INO, b"s")
    assert await fs2.readlink(s2.ino) == b"../target/\xff"


async def test_unlinked_open_file_stays_usable(fs: Filesystem, store: Store) -> None:
    await forget_history(fs)  # what the orphan held goes with it
    f = await mkfile(fs, ROOT_INO, b"f", b"abc" * 30000)
    await fs.commit()
    await fs.open(f)
    await fs.unlink(ROOT_INO, b"f")
    await fs.write(f, 0, b"XYZ")
    await fs.commit()
    assert (await fs.read(f, 0, 6)) == b"XYZabc"
    # crash while open-unlinked: the orphan is collected on the next open
    fs2 = await reopen(store)
    with pytest.raises(FsError):
        await fs2.getattr(f)
    assert fs2.root.orphans == []
    await fs2.close()
    before = {n async for n, _ in store.list()}
    # every object left is referenced: chunks of the purged file are gone
    # (the tree's few, and the history's page, two index nodes and lists)
    assert len(before) <= 8


async def test_name_limits(fs: Filesystem) -> None:
    await mkfile(fs, ROOT_INO, b"n" * 255)
    with pytest.raises(FsError) as e:
        await mkfile(fs, ROOT_INO, b"n" * 256)
    assert e.value.errno == errno.ENAMETOOLONG
    await mkfile(fs, ROOT_INO, b"\xff\xfe non-utf8")
    assert (await fs.lookup(ROOT_INO, b"\xff\xfe non-utf8")).size == 0


async def test_a_second_writer_opens_and_merges(fs: Filesystem, store: Store) -> None:
    """No writer lease with several devices: a second device opens writable
    while the first is open, both write, and each sees both files."""
    other = await Vault.unlock(store, PASS)
    other.state.client_id = os.urandom(16)  # pretend to be another machine
    fs2 = await Filesystem.load(other)
    one = await fs.create(ROOT_INO, b"one", 0o644, 0, 0)
    await fs.write(one.ino, 0, b"from the first")
    two = await fs2.create(ROOT_INO, b"two", 0o644, 0, 0)
    await fs2.write(two.ino, 0, b"from the second")
    await fs.commit()
    await fs2.commit()  # loses the swap: merges
    assert fs2.committer.merges >= 1
    assert await fs.refresh()
    for f in (fs, fs2):
        assert await f.read((await f.lookup(ROOT_INO, b"one")).ino, 0, 99) == b"from the first"
        assert await f.read((await f.lookup(ROOT_INO, b"two")).ino, 0, 99) == b"from the second"
    ro = await Filesystem.load(other, writable=False)
    assert (await ro.getattr(ROOT_INO)).ino == ROOT_INO
    await fs.close()
    await fs2.close()


class CountingStore(LocalStore):
    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.gets = 0
        self.bytes = 0

    async def get(self, name: str, max_size: int = MAX_OBJECT_SIZE) -> bytes:
        self.gets += 1
        data = await super().get(name, max_size)
        self.bytes += len(data)
        return data

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        self.gets += 1
        data = await super().get_range(name, offset, length)
        self.bytes += len(data)
        return data


async def test_lazy_open_and_ranged_reads(tmp_path: Path) -> None:
    path = str(tmp_path / "lazy")
    store = LocalStore(path, create=True)
    from megafs.format.crypto import Layout

    vault = await new_vault(store, Layout())  # production geometry: 1 MiB / 64 KiB
    fs = await Filesystem.load(vault)
    d = (await fs.mkdir(ROOT_INO, b"many", 0o755, 0, 0)).ino
    for i in range(3000):
        await mkfile(fs, d, f"{i}".encode(), b"small")
    big = await mkfile(fs, ROOT_INO, b"big", os.urandom(4 << 20))
    await fs.close()

    counting = CountingStore(path)
    vault2 = await Vault.unlock(counting, PASS)
    fs2 = await Filesystem.load(vault2, writable=False)
    opened = counting.gets
    assert opened <= 2  # top index (root pointer and header are pointers)
    await fs2.getattr(big)
    counting.gets = counting.bytes = 0
    await fs2.read(big, 3_000_000, 4096)
    assert counting.gets == 1
    assert counting.bytes <= 2 * (65536 + 28)


async def test_empty_small_file_grown_far(fs: Filesystem, store: Store) -> None:
    ino = await mkfile(fs, ROOT_INO, b"e")
    await fs.commit()  # stored inline, empty
    await fs.write(ino, 5 << 20, b"end")
    await fs.truncate(ino, 3)  # leaves an empty chunk 0 buffer
    await fs.write(ino, 1 << 20, b"x")
    await fs.close()
    fs2 = await reopen(store)
    assert await fs2.read(ino, 0, 10) == bytes(10)
    assert await fs2.read(ino, 1 << 20, 10) == b"x"


async def test_clean_pages_are_evicted_and_load_again(fs: Filesystem, store: Store) -> None:
    """Memory stays bounded however many inodes are walked: clean inode pages
    beyond the limit are forgotten and read back from the store when needed."""
    fs.table.max_pages = 4
    dirs = []
    for d in range(3):
        ino = (await fs.mkdir(ROOT_INO, b"d%d" % d, 0o755, 0, 0)).ino
        dirs.append(ino)
        for i in range(700):  # 2100 inodes: 9 pages
            await fs.create(ino, b"f%04d" % i, 0o644, 0, 0)
    f = await mkfile(fs, dirs[0], b"data", b"kept while evicted" * 100)
    assert fs.evict() == 0, "nothing is evicted while changes are uncommitted"
    await fs.commit()
    assert len(fs.table.page_members) > 4
    assert fs.evict() > 0
    assert len(fs.table.page_members) <= 4
    # Everything is still there, and walking it keeps memory bounded.
    for d in dirs:
        after, names = 0, 0
        while batch := await fs.readdir(d, after):
            names += len(batch)
            after = batch[-1][2]
            fs.evict()
            assert len(fs.table.page_members) <= 4 + 2
        assert names == 700 + (1 if d == dirs[0] else 0)
    assert await fs.read(f, 0, 20) == b"kept while evictedke"
    # An open file's page stays; changes after an eviction are kept.
    await fs.open(f)
    await fs.write(f, 0, b"changed")
    await fs.commit()
    for d in dirs[1:]:
        await fs.lookup(d, b"f0000")
        await fs.lookup(d, b"f0699")
    fs.evict()
    assert f in fs.table.inodes
    await fs.release(f)
    await fs.setattr(dirs[2], mode=0o700)
    await fs.close()
    fs2 = await reopen(store)
    assert await fs2.read(f, 0, 10) == b"changedile"
    assert stat.S_IMODE((await fs2.getattr(dirs[2])).mode) == 0o700
    await fs2.close()


async def test_a_committed_file_reads_with_no_filesystem(fs: Filesystem, store: Store) -> None:
    """:meth:`Content.read_file` reads a committed file from its chunk map, key,
    id and size alone (what a share link's reader has): the same bytes as the
    filesystem, holes and short chunks as zeros, packed chunks too."""
    rng = random.Random(11)
    chunk = SMALL.chunk_size
    big = await mkfile(fs, ROOT_INO, b"big")
    ref = bytearray(3 * chunk + 1234)
    for off in (0, chunk - 100, 2 * chunk + 7, 3 * chunk):  # chunk 1's tail and more: holes
        data = rng.randbytes(min(500, len(ref) - off))
        await fs.write(big, off, data)
        ref[off : off + len(data)] = data
    await fs.truncate(big, len(ref))  # the file ends past its last chunk's bytes
    small_data = rng.randbytes(10_000)
    small = await mkfile(fs, ROOT_INO, b"small", small_data)
    await fs.close()
    fs2 = await reopen(store, writable=False)
    nodes = {ino: await fs2.table.get(ino) for ino in (big, small)}
    assert any(r.packed for r in nodes[small].chunks.values())  # a packed chunk is read too
    content = Content(await Vault.unlock(store, PASS), None)  # no filesystem from here on
    for ino, want in ((big, bytes(ref)), (small, small_data)):
        node = nodes[ino]
        assert node.file_key is not None and node.small is None
        spans = [(0, len(want) + 10), (chunk - 3, 10), (len(want) - 1, 5), (len(want), 1)]
        spans += [(rng.randrange(len(want)), rng.randrange(1, 2 * chunk)) for _ in range(20)]
        for off, n in spans:
            got = await content.read_file(
                node.chunks, node.file_key, node.file_id, node.size, off, n
            )
            assert got == want[off : off + n] == await fs2.read(ino, off, n), (ino, off, n)


async def test_a_file_key_is_unwrapped_on_first_use_and_a_bad_one_is_an_integrity_error(
    fs: Filesystem, store: Store
) -> None:
    """Listing a folder touches no content key; a key that fails authentication
    fails where it is used, as IntegrityError naming the leaf object."""
    from megafs.errors import IntegrityError

    ino = await mkfile(fs, ROOT_INO, b"f")
    await fs.close()
    fs2 = await reopen(store)
    codec = fs2.table.codec
    assert [name for name, _, _ in await fs2.readdir(ROOT_INO, 0)] == [b"f"]
    node = await fs2.table.get(ino)
    assert node.has_key and node._key_opener is not None  # not unwrapped yet
    await fs2.write(ino, 0, b"data")
    assert await fs2.read(ino, 0, 10) == b"data"
    assert node.file_key is not None and node._key_opener is None
    # A record whose wrapped key was altered decodes, and fails at first use.
    wrapped = bytearray(node.wrapped_key or b"")
    wrapped[-1] ^= 1
    bad = type(node)(ino, node.mode, node.uid, node.gid, file_id=node.file_id)
    bad.key_from(bytes(wrapped), codec, "leaf-object-name")
    assert bad.has_key
    with pytest.raises(IntegrityError, match="leaf-object-name"):
        _ = bad.file_key
    await fs2.close()
