"""Trees to share and compare (tests of share links)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: path -> (content, permission bits, mtime in whole seconds); folders: content None
Tree = dict[str, tuple[bytes | None, int, int]]


def set_tree(top: Path) -> Tree:
    """Make a folder to share under ``top``: a file of several chunks with a
    hole, a small (packed) one, an inline one, an empty one, a nested and an
    empty folder, odd modes and old times. Returns what :func:`tree_of`
    should find in a copy of it."""
    big = bytearray(os.urandom(3 * 1024 * 1024 + 12345))
    big[1024 * 1024 : 2 * 1024 * 1024] = bytes(1024 * 1024)  # a hole's worth of zeros
    files: dict[str, tuple[bytes, int]] = {
        "big.bin": (bytes(big), 0o640),
        "sub/packed.txt": (os.urandom(40_000), 0o600),
        "sub/deeper/inline.txt": (b"small enough to live in its record\n", 0o644),
        "empty": (b"", 0o444),
    }
    tree: Tree = {}
    (top / "sub" / "deeper").mkdir(parents=True)
    (top / "nothing here").mkdir()
    when = 1_700_000_000
    for rel, (data, mode) in files.items():
        p = top / rel
        p.write_bytes(data)
        os.chmod(p, mode)
        os.utime(p, (when, when))
        tree[rel] = (data, mode, when)
    for rel in ("sub/deeper", "sub", "nothing here"):
        os.chmod(top / rel, 0o750)
        os.utime(top / rel, (when + 1, when + 1))
        tree[rel] = (None, 0o750, when + 1)
    return tree


def tree_of(top: Path) -> Tree:
    """The tree under ``top`` as :func:`set_tree` describes one."""
    out: Tree = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(top))
            data = None if stat.S_ISDIR(st.st_mode) else p.read_bytes()
            out[rel] = (data, stat.S_IMODE(st.st_mode), int(st.st_mtime))
    return out
