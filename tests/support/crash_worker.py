"""Child process of ``test_crash``: commit numbered files in a loop until killed.

    python -m tests.support.crash_worker STORE START SIZE KEEP

Opens the local-store vault at STORE writable (taking over the lease of an
earlier, killed worker of the same client), prints ``ready``, then for
i = START, START+1, ...: creates ``f<i>`` holding :func:`content` (i, SIZE),
overwrites ``counter`` with :func:`counter_content` (i), unlinks ``f<i-KEEP>``
when KEEP > 0, commits, and prints ``i``. Whatever it printed was committed.
"""

from __future__ import annotations

import hashlib
import sys

import trio

from megafs.errors import FsError
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.stores import LocalStore
from megafs.vault.vault import Vault

from .helpers import PASS

COUNTER_SIZE = 5000


def content(i: int, size: int) -> bytes:
    """The bytes of file ``f<i>``: a different length and pattern for every i.

    Lengths cycle through ``size``, ``size`` + 1000 and ``size`` + 2000 (plus a
    few bytes), so with a small ``size`` some files are inline and some chunked.
    """
    return hashlib.shake_256(b"megafs crash %d" % i).digest(size + (i % 3) * 1000 + i % 7)


def counter_content(i: int) -> bytes:
    return hashlib.shake_256(b"counter %d" % i).digest(COUNTER_SIZE)


def name(i: int) -> bytes:
    return b"f%06d" % i


async def main(store_path: str, start: int, size: int, keep: int) -> None:
    vault = await Vault.unlock(LocalStore(store_path), PASS)
    fs = await Filesystem.load(vault)
    print("ready", flush=True)
    try:
        ctr = (await fs.lookup(ROOT_INO, b"counter")).ino
    except FsError:
        ctr = (await fs.create(ROOT_INO, b"counter", 0o644, 0, 0)).ino
    i = start
    while True:
        ino = (await fs.create(ROOT_INO, name(i), 0o644, 0, 0)).ino
        await fs.write(ino, 0, content(i, size))
        await fs.write(ctr, 0, counter_content(i))
        if keep and i >= keep:
            await fs.unlink(ROOT_INO, name(i - keep))
        await fs.commit()
        print(i, flush=True)
        i += 1


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
