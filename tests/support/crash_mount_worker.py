"""A write-heavy workload for crash tests through the mount, and its exact model.

    python -m tests.support.crash_mount_worker FOLDER LOG SEED

:class:`Workload` turns a seed into an endless, deterministic sequence of
system calls (*steps*) on files under one folder: creating files, appending,
overwriting ranges, truncating, rewriting whole files, renaming (including the
write-a-temporary-file, fsync, rename-over-the-target pattern), unlinking,
making folders, and ``fsync`` of files and folders. It keeps the expected
content of every file after each step, so a checker that replays the same
seed knows exactly what the tree held after step *n*.

Run as a program (in a child process, FOLDER inside a megafs mount), it
performs the steps one by one and after each one that returned appends a
line to LOG, a file *outside* the mount: ``N`` for step N, and for a step
that fsynced, ``N fsync PATH SHA256`` (the file's content hash at that
moment; PATH ``.`` for a folder fsync, which commits everything) followed by
an ``fsync`` of LOG itself. On the first failure (the daemon was killed: the
kernel answers ENOTCONN) it writes ``N error ERRNO OP PATH [DST]`` (and
``unmounted`` if the folder is gone by then) and exits 0. The first line,
``start SEED``, names the seed, so that a failure found by a soak can be
replayed.

No write is longer than :data:`MAX_WRITE`; the kernel may still cut a write
into several FUSE requests, so a write that was in flight when the daemon
died may be applied in part (a prefix, never anything else).
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
from dataclasses import dataclass

#: The longest single write(2). The kernel sends at most max_write (128 KiB
#: to 1 MiB) per FUSE request, so longer writes are split.
MAX_WRITE = 256 * 1024
#: Files are created with up to this many bytes.
MAX_CREATE = 1536 * 1024
SUBDIRS = ("a", "b", "c/deeper")


@dataclass(frozen=True)
class Step:
    """One system call. ``path`` and ``dst`` are relative to the workload folder."""

    n: int
    op: str  # mkdir create open write fsync close rename unlink truncate syncdir
    path: str
    dst: str = ""
    flags: int = 0
    offset: int = -1  # -1: append (the descriptor has O_APPEND)
    length: int = 0
    seed: str = ""

    def data(self) -> bytes:
        return random.Random(self.seed).randbytes(self.length) if self.length else b""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def apply_write(content: bytes, offset: int, data: bytes) -> bytes:
    """``content`` after pwrite(``data``, ``offset``) (-1: append)."""
    if offset < 0:
        return content + data
    buf = bytearray(content)
    if offset > len(buf):
        buf.extend(bytes(offset - len(buf)))
    buf[offset : offset + len(data)] = data
    return bytes(buf)


class Workload:
    """The steps of one seed, and the tree they leave behind.

    :meth:`next` returns the next step and applies it to :attr:`files`
    (path -> content) and :attr:`dirs`, which then hold the state *after*
    that step.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.files: dict[str, bytes] = {}
        self.dirs: set[str] = set()
        self.n = 0
        self._queue: list[Step] = []
        self._made = 0
        for d in SUBDIRS:
            parts = d.split("/")
            for i in range(1, len(parts) + 1):
                self._push("mkdir", "/".join(parts[:i]))

    # --- building steps ----------------------------------------------------

    def _push(
        self,
        op: str,
        path: str,
        *,
        dst: str = "",
        flags: int = 0,
        offset: int = -1,
        length: int = 0,
    ) -> None:
        self._queue.append(Step(-1, op, path, dst, flags, offset, length))

    def _write(self, path: str, offset: int, length: int) -> None:
        self._push("write", path, offset=offset, length=length)

    def _maybe_fsync(self, path: str, p: float = 0.5) -> None:
        if self.rng.random() < p:
            self._push("fsync", path)

    def _new_name(self) -> str:
        self._made += 1
        folder = self.rng.choice(("", *SUBDIRS))
        return f"{folder}/f{self._made}".lstrip("/")

    def _size(self) -> int:
        """Mostly small files (inline and one chunk), some of several chunks."""
        r = self.rng.random()
        if r < 0.3:
            return self.rng.randrange(0, 2049)
        if r < 0.8:
            return self.rng.randrange(2049, 200_000)
        return self.rng.randrange(200_000, MAX_CREATE)

    def _fill(self, path: str, size: int, start: int = 0) -> None:
        """Write the file from ``start`` to ``size``: a quarter of the time
        in writes of random lengths, else in writes of one size, a multiple
        of the block size (as cp and dd write; on a local folder those are
        staged into chunk objects, not journalled with their data)."""
        pos = start
        aligned = self.rng.choice((0, 64 * 1024, 128 * 1024, MAX_WRITE))
        while pos < size:
            n = min(size - pos, aligned or self.rng.randrange(1, MAX_WRITE + 1))
            self._write(path, pos, n)
            pos += n

    def _plan(self) -> None:
        """Queue the steps of one more high-level operation."""
        rng = self.rng
        existing = sorted(self.files)
        r = rng.random()
        if r < 0.25 or len(existing) < 3:  # a new file
            path = self._new_name()
            self._push("create", path)
            self._fill(path, self._size())
            self._maybe_fsync(path)
            self._push("close", path)
        elif r < 0.45:  # appends
            path = rng.choice(existing)
            self._push("open", path, flags=os.O_WRONLY | os.O_APPEND)
            for _ in range(rng.randrange(1, 4)):
                self._write(path, -1, rng.randrange(1, 100_000))
            self._maybe_fsync(path)
            self._push("close", path)
        elif r < 0.6:  # overwrite a range, maybe past the end
            path = rng.choice(existing)
            size = len(self.files[path])
            self._push("open", path, flags=os.O_WRONLY)
            for _ in range(rng.randrange(1, 3)):
                self._write(path, rng.randrange(0, size + 5000), rng.randrange(1, MAX_WRITE))
            self._maybe_fsync(path)
            self._push("close", path)
        elif r < 0.65:  # rewrite from scratch
            path = rng.choice(existing)
            self._push("open", path, flags=os.O_WRONLY | os.O_TRUNC)
            self._fill(path, self._size())
            self._maybe_fsync(path)
            self._push("close", path)
        elif r < 0.8:  # write a new version aside, fsync, rename it over the file
            target = rng.choice(existing)
            tmp = target + ".tmp"
            self._push("create", tmp)
            self._fill(tmp, self._size())
            self._push("fsync", tmp)
            self._push("close", tmp)
            self._push("rename", tmp, dst=target)
            if rng.random() < 0.3:
                self._push("syncdir", ".")
        elif r < 0.88:  # move to another folder or name
            path = rng.choice(existing)
            self._push("rename", path, dst=self._new_name())
        elif r < 0.93:
            path = rng.choice(existing)
            self._push("truncate", path, length=rng.randrange(0, len(self.files[path]) + 70_000))
        elif r < 0.97 and len(existing) > 12:
            self._push("unlink", rng.choice(existing))
        else:
            self._push("syncdir", ".")

    # --- the model ---------------------------------------------------------

    def next(self) -> Step:
        while not self._queue:
            self._plan()
        s = self._queue.pop(0)
        n = self.n
        self.n += 1
        if s.op == "write":
            s = Step(n, s.op, s.path, offset=s.offset, length=s.length, seed=f"{self.seed}/{n}")
        else:
            s = Step(n, s.op, s.path, dst=s.dst, flags=s.flags, length=s.length)
        self.apply(s)
        return s

    def apply(self, s: Step) -> None:
        if s.op == "mkdir":
            self.dirs.add(s.path)
        elif s.op == "create" or (s.op == "open" and s.flags & os.O_TRUNC):
            self.files[s.path] = b""
        elif s.op == "write":
            self.files[s.path] = apply_write(self.files[s.path], s.offset, s.data())
        elif s.op == "truncate":
            self.files[s.path] = self.files[s.path][: s.length].ljust(s.length, b"\0")
        elif s.op == "rename":
            self.files[s.dst] = self.files.pop(s.path)
        elif s.op == "unlink":
            del self.files[s.path]

    def snapshot(self) -> dict[str, str]:
        """path -> "dir", or the sha256 of the file's content."""
        out = {d: "dir" for d in self.dirs}
        out.update({p: sha(c) for p, c in self.files.items()})
        return out


# --- the child process -------------------------------------------------------------


def run(folder: str, log_path: str, seed: int) -> None:
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def note(line: str, durable: bool = False) -> None:
        os.write(log, line.encode() + b"\n")
        if durable:
            os.fsync(log)

    w = Workload(seed)
    fds: dict[str, int] = {}
    note(f"start {seed}", durable=True)  # the seed: a failure can be replayed
    while True:
        s = w.next()
        p = os.path.join(folder, s.path)
        try:
            if s.op == "mkdir":
                os.mkdir(p)
            elif s.op == "create":
                fds[s.path] = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            elif s.op == "open":
                fds[s.path] = os.open(p, s.flags)
            elif s.op == "write":
                data = s.data()
                if s.offset < 0:
                    done = os.write(fds[s.path], data)
                else:
                    done = os.pwrite(fds[s.path], data, s.offset)
                if done != len(data):
                    note(f"{s.n} short {done}", durable=True)
                    return
            elif s.op == "fsync":
                os.fsync(fds[s.path])
            elif s.op == "close":
                os.close(fds.pop(s.path))
            elif s.op == "rename":
                os.rename(p, os.path.join(folder, s.dst))
            elif s.op == "unlink":
                os.unlink(p)
            elif s.op == "truncate":
                os.truncate(p, s.length)
            elif s.op == "syncdir":
                dfd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as e:
            # After the kill the test unmounts lazily: a path then resolves in
            # the empty mountpoint folder, and fails with ENOENT instead of
            # ENOTCONN. Say so, so the checker can tell that from a real ENOENT.
            gone = "" if os.path.isdir(folder) else " unmounted"
            note(f"{s.n} error {e.errno} {s.op} {s.path} {s.dst}".rstrip() + gone, durable=True)
            return
        if s.op == "fsync":
            note(f"{s.n} fsync {s.path} {sha(w.files[s.path])}", durable=True)
        elif s.op == "syncdir":
            note(f"{s.n} fsync . -", durable=True)
        else:
            note(str(s.n))


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], int(sys.argv[3]))
