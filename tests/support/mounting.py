"""Mount megafs for real, in subprocesses, for the FUSE integration tests.

A :class:`Drive` is one store URL plus everything a ``megafs`` subprocess
needs to reach it without meeting any other test: its own client state
(``MEGAFS_STATE_DIR``), runtime folder (``XDG_RUNTIME_DIR``: the daemon's pid
and log files), ``HOME`` and cache folders. ``megafs mount`` itself waits
until the folder is usable; :meth:`Drive.mount` also checks the kernel
agrees, within :data:`MOUNT_DEADLINE`.

:meth:`Drive.cleanup` must run in every teardown: it unmounts whatever is
left, politely first (``megafs umount``), then lazily (``fusermount3 -u -z``),
and finally kills the daemon by the pid it recorded, so a failing test never
leaves a mount or a process behind. It prints the daemon's log, which pytest
shows only for failed tests.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

from megafs.mount import log_path

from .helpers import COMMAND_TIMEOUT, KDF_ARGS, PASS, run_megafs

#: How long ``megafs mount`` may take to come up (S3 retries included).
MOUNT_DEADLINE = 60.0
#: How long ``megafs umount`` may take: it uploads everything still dirty.
UMOUNT_DEADLINE = 300.0
#: How long a signalled daemon may take to disappear.
EXIT_DEADLINE = 30.0

#: Daemon log lines that do not fail a test (anything at WARNING or above does).
ALLOWED_LOG = ("applied ", "journal record ")


def _unescape_mount_field(text: str) -> str:
    """Undo the octal escapes of /proc/mounts (space, tab, newline, backslash)."""
    out = []
    i = 0
    while i < len(text):
        code = text[i + 1 : i + 4]
        if text[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def mounts_of(path: Path | str) -> list[str]:
    """The /proc/mounts lines whose mountpoint is ``path`` (live or dead)."""
    target = os.path.abspath(path)
    with open("/proc/mounts") as f:
        return [
            line.strip()
            for line in f
            if len(parts := line.split()) > 1 and _unescape_mount_field(parts[1]) == target
        ]


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting to be reaped counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def wait_gone(pid: int, deadline: float = EXIT_DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not process_gone(pid):
        if time.monotonic() > end:
            raise AssertionError(f"process {pid} still running after {deadline:.0f} s")
        time.sleep(0.02)


def _is_megafs_daemon(pid: int, mountpoint: Path) -> bool:
    """Guard against a recycled pid: only ever signal our own daemon."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return any(b"megafs" in a for a in argv) and any(
        a and os.path.abspath(a.decode(errors="replace")) == str(mountpoint) for a in argv
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """Assert stderr is exactly one ``megafs:`` line (no traceback); return it."""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("megafs: "), proc.stderr
    return lines[0]


def marker_forms(marker: bytes) -> list[bytes]:
    """``marker`` and its hex and base64 spellings (at every byte alignment)."""
    forms = [marker, marker.hex().encode(), marker.hex().upper().encode()]
    for shift in range(3):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            text = enc(b"\0" * shift + marker)
            forms.append(text[4 if shift else 0 : 4 * ((shift + len(marker)) // 3)])
    return forms


@dataclass
class Drive:
    """A vault in ``url`` and a mountpoint for it, driven through the CLI."""

    url: str
    tmp: Path
    store_env: Mapping[str, str] = field(default_factory=dict)
    passphrase: str = PASS
    mountpoint: Path = field(init=False)
    cache_dir: Path = field(init=False)
    #: Every daemon pid seen, so that cleanup can kill any left over.
    pids: set[int] = field(default_factory=set)
    #: Daemon log lines containing one of these do not count as problems.
    allowed_log: list[str] = field(default_factory=lambda: list(ALLOWED_LOG))

    def __post_init__(self) -> None:
        self.mountpoint = self.tmp / "mnt"
        self.cache_dir = self.tmp / "cache"
        for d in (self.mountpoint, self.state_dir, self.runtime_dir, self.home):
            d.mkdir(parents=True, exist_ok=True)

    # --- where things are ---------------------------------------------------

    @property
    def state_dir(self) -> Path:
        return self.tmp / "state"

    @property
    def runtime_dir(self) -> Path:
        return self.tmp / "run"

    @property
    def home(self) -> Path:
        return self.tmp / "home"

    @property
    def log_file(self) -> Path:
        """The daemon's log, where ``megafs.mount.log_path`` puts it for our runtime dir."""
        with mock.patch.dict(os.environ, {"XDG_RUNTIME_DIR": str(self.runtime_dir)}):
            return Path(log_path(str(self.mountpoint)))

    @property
    def pid_file(self) -> Path:
        return self.log_file.with_suffix(".pid")

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MEGAFS_", "XDG_"))}
        env.update(self.store_env)
        env.update(
            MEGAFS_STATE_DIR=str(self.state_dir),
            MEGAFS_PASSPHRASE=self.passphrase,
            XDG_RUNTIME_DIR=str(self.runtime_dir),
            XDG_CACHE_HOME=str(self.home / ".cache"),
            XDG_STATE_HOME=str(self.home / ".local" / "state"),
            HOME=str(self.home),
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL=os.devnull,
            LC_ALL="C",
        )
        env.update(extra or {})
        return env

    # --- running things -----------------------------------------------------

    def megafs(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        timeout: float = COMMAND_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        return run_megafs(*args, env=self.env(env), timeout=timeout)

    def sh(
        self, *argv: str | Path, cwd: Path | None = None, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a tool; fail the test with its output if it exits non-zero."""
        proc = subprocess.run(
            [str(a) for a in argv],
            cwd=cwd,
            env=self.env(),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        assert proc.returncode == 0, (
            f"{' '.join(map(str, argv))} exited {proc.returncode}\n"
            f"stdout: {proc.stdout.decode(errors='replace')[-4000:]}\n"
            f"stderr: {proc.stderr.decode(errors='replace')[-4000:]}"
        )
        return proc

    def init(self, *args: str) -> None:
        proc = self.megafs("init", self.url, *KDF_ARGS, *args)
        assert proc.returncode == 0, proc.stderr

    # --- mounting -------------------------------------------------------------

    def try_mount(
        self, *args: str, cache_dir: Path | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``megafs mount`` and return its result, whatever it is."""
        proc = self.megafs(
            "mount",
            self.url,
            str(self.mountpoint),
            "--cache-dir",
            str(cache_dir or self.cache_dir),
            *args,
            env=env,
            timeout=MOUNT_DEADLINE,
        )
        pid = self.pid()
        if pid:
            self.pids.add(pid)
        return proc

    def mount(self, *args: str, cache_dir: Path | None = None) -> None:
        """Mount; the folder is usable when this returns."""
        proc = self.try_mount(*args, cache_dir=cache_dir)
        assert proc.returncode == 0, f"mount failed ({proc.returncode}): {proc.stderr}"
        assert proc.stderr == "", proc.stderr
        end = time.monotonic() + MOUNT_DEADLINE
        while not os.path.ismount(self.mountpoint):
            assert time.monotonic() < end, f"{self.mountpoint} not mounted after mount returned"
            time.sleep(0.05)
        assert len(mounts_of(self.mountpoint)) == 1, mounts_of(self.mountpoint)
        assert self.pid(), "the daemon wrote no pid file"

    def umount(self) -> None:
        """Unmount cleanly: returns once the daemon committed and exited."""
        pid = self.pid()
        proc = self.megafs("umount", str(self.mountpoint), timeout=UMOUNT_DEADLINE)
        assert proc.returncode == 0, f"umount failed ({proc.returncode}): {proc.stderr}"
        assert not mounts_of(self.mountpoint), mounts_of(self.mountpoint)
        if pid:
            assert process_gone(pid), f"daemon {pid} still running after umount"

    def remount(self, *args: str, cache_dir: Path | None = None) -> None:
        self.umount()
        self.mount(*args, cache_dir=cache_dir)

    def pid(self) -> int | None:
        """The daemon's pid from its pid file (None if there is none)."""
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def kill_daemon(self) -> int:
        """SIGKILL the daemon (no commit, no unmount); return its pid once it is gone."""
        pid = self.pid()
        assert pid, "no pid file"
        assert _is_megafs_daemon(pid, self.mountpoint), f"pid {pid} is not our daemon"
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid)
        return pid

    def lazy_unmount(self) -> None:
        subprocess.run(
            ["fusermount3", "-u", "-z", str(self.mountpoint)],
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )

    # --- logs ---------------------------------------------------------------

    def log_text(self) -> str:
        """The daemon log; every mount of this mountpoint appends to the same file."""
        try:
            return self.log_file.read_text(errors="replace")
        except OSError as e:
            return f"(no log file: {e})\n"

    def log_problems(self) -> list[str]:
        """Daemon log lines at WARNING or above (or tracebacks) not in :attr:`allowed_log`."""
        out = []
        for line in self.log_text().splitlines():
            words = line.split(maxsplit=4)
            level = words[2] if len(words) > 2 else ""
            bad = level in ("WARNING", "ERROR", "CRITICAL") or line.startswith("Traceback")
            if bad and not any(a in line for a in self.allowed_log):
                out.append(line)
        return out

    # --- teardown -------------------------------------------------------------

    def cleanup(self) -> None:
        """Leave nothing mounted and no daemon running, whatever state we are in."""
        pid = self.pid()
        if pid:
            self.pids.add(pid)
        if mounts_of(self.mountpoint):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.megafs("umount", str(self.mountpoint), timeout=UMOUNT_DEADLINE)
        if mounts_of(self.mountpoint):
            self.lazy_unmount()
        for p in sorted(self.pids):
            if not process_gone(p) and _is_megafs_daemon(p, self.mountpoint):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
                with contextlib.suppress(AssertionError):
                    wait_gone(p)
        print(f"--- daemon log ({self.log_file}) ---")
        print(self.log_text())
        assert not mounts_of(self.mountpoint), f"still mounted: {mounts_of(self.mountpoint)}"


@contextlib.contextmanager
def mounted_drive(
    url: str, tmp: Path, store_env: Mapping[str, str], init_args: tuple[str, ...] = ()
) -> Iterator[Drive]:
    """An initialized vault (``megafs init`` with ``init_args``), mounted; always
    unmounted on the way out.

    Fails the test if the daemon logged anything at WARNING or above.
    """
    drive = Drive(url, tmp, store_env)
    try:
        drive.init(*init_args)
        drive.mount()
        yield drive
    finally:
        drive.cleanup()
    problems = drive.log_problems()
    assert not problems, "the daemon logged problems:\n" + "\n".join(problems)


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


# --- sample trees and comparing them -----------------------------------------------

#: A date in the past with a nanosecond part, in touch(1) syntax.
PAST = "2001-02-03 04:05:06.123456789"
_PAST_NS = 981_173_106_123_456_789


def _write(path: Path, data: bytes, mode: int) -> None:
    path.write_bytes(data)
    os.chmod(path, mode)


def make_tree(root: Path, *, seed: int = 1) -> None:
    """A tree with most of what a real one holds, all timestamps in the past.

    Subfolders (one read-only, one sticky), empty and small and multi-chunk
    files, files right at the inline-size limit, modes 0600/0640/0644/0755/
    0444, a file owned by another user, relative/absolute/dangling symlinks
    and a symlink to a folder, a triple hard link across folders, user.*
    xattrs on files and folders (empty, binary and 3000-byte values),
    non-ASCII names. Every entry gets its own mtime (with nanoseconds).
    """
    import random

    rnd = random.Random(seed)
    root.mkdir()
    sub = root / "sub"
    deeper = sub / "deeper"
    deeper.mkdir(parents=True)
    (sub / "empty dir").mkdir()
    ro = root / "read-only dir"
    ro.mkdir()
    sticky = root / "sticky"
    sticky.mkdir()

    _write(root / "empty", b"", 0o644)
    _write(root / "small.txt", b"hello\n", 0o600)
    _write(root / "inline-2048", rnd.randbytes(2048), 0o644)
    _write(root / "inline-2049", rnd.randbytes(2049), 0o644)
    _write(root / "body-8193", rnd.randbytes(8193), 0o640)
    _write(root / "exec.sh", b"#!/bin/sh\necho hi\n", 0o755)
    _write(root / "readonly", b"do not touch\n", 0o444)
    _write(root / "big.bin", rnd.randbytes((1 << 20) * 2 + 12345), 0o644)
    _write(root / "zeros", bytes(300_000), 0o644)
    _write(root / "naïve ✓ name with spaces", b"unicode\n", 0o644)
    _write(deeper / "leaf", rnd.randbytes(70_000), 0o640)
    _write(ro / "inside", b"inside a read-only folder\n", 0o644)
    _write(sticky / "shared", b"sticky\n", 0o666)
    _write(root / "owned", b"someone else's\n", 0o644)
    os.chown(root / "owned", 1234, 5678)

    _write(root / "hard1", b"one inode, three names\n", 0o644)
    os.link(root / "hard1", sub / "hard2")
    os.link(root / "hard1", deeper / "hard3")

    os.symlink("small.txt", root / "link-rel")
    os.symlink("/etc/hostname", root / "link-abs")
    os.symlink("does/not/exist", root / "dangling")
    os.symlink("../small.txt", sub / "link-up")
    os.symlink("sub", root / "dirlink")

    os.setxattr(root / "small.txt", "user.comment", b"a comment")
    os.setxattr(root / "small.txt", "user.empty", b"")
    os.setxattr(root / "big.bin", "user.binary", bytes(range(256)))
    os.setxattr(root / "big.bin", "user.large", rnd.randbytes(3000))
    os.setxattr(sub, "user.folder", b"on a folder")
    os.setxattr(root / "hard1", "user.shared", b"seen through every link")

    os.chmod(sub, 0o700)
    os.chmod(deeper, 0o755)
    os.chmod(sticky, 0o1777)
    os.chmod(root, 0o755)

    # Timestamps last: creating entries changes their folder's mtime.
    for i, path in enumerate([*walk(root), root]):
        mtime = _PAST_NS + i * 1_000_000_007
        os.utime(path, ns=(mtime + 500, mtime), follow_symlinks=False)
    subprocess.run(["touch", "-h", "-d", PAST, str(root / "link-rel")], check=True)
    subprocess.run(["touch", "-d", PAST, str(root / "small.txt")], check=True)
    os.chmod(ro, 0o555)
    os.utime(ro, ns=(_PAST_NS, _PAST_NS - 17))


@dataclass(frozen=True)
class Entry:
    """What must survive a copy, for one entry of a tree."""

    mode: int
    uid: int
    gid: int
    size: int | None  # None for folders, whose size is filesystem-specific
    mtime_ns: int
    nlink: int
    target: str | None
    xattrs: tuple[tuple[str, bytes], ...]
    content: str | None  # sha256 of a regular file


def snapshot(root: Path) -> tuple[dict[str, Entry], list[list[str]]]:
    """Every entry of ``root`` (itself as "."), and the groups of hard-linked names."""
    entries: dict[str, Entry] = {}
    inodes: dict[int, list[str]] = {}
    for path in [root, *walk(root)]:
        rel = str(path.relative_to(root))
        st = os.lstat(path)
        is_dir = stat_is_dir(st.st_mode)
        is_link = stat_is_link(st.st_mode)
        # security.* labels belong to the host's policy, not to the file.
        names = sorted(os.listxattr(path, follow_symlinks=False))
        xattrs = tuple(
            (n, os.getxattr(path, n, follow_symlinks=False))
            for n in names
            if not n.startswith("security.")
        )
        entries[rel] = Entry(
            mode=st.st_mode,
            uid=st.st_uid,
            gid=st.st_gid,
            size=None if is_dir else st.st_size,
            mtime_ns=st.st_mtime_ns,
            nlink=st.st_nlink,
            target=os.readlink(path) if is_link else None,
            xattrs=xattrs,
            content=sha256_file(path) if not (is_dir or is_link) else None,
        )
        if not is_dir and st.st_nlink > 1:
            inodes.setdefault(st.st_ino, []).append(rel)
    return entries, sorted(sorted(g) for g in inodes.values())


def walk(root: Path) -> list[Path]:
    """Everything below ``root``, sorted; symlinks to folders are not followed."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        out += [Path(dirpath, n) for n in dirnames + filenames]
    return sorted(out)


def stat_is_dir(mode: int) -> bool:
    return mode & 0o170000 == 0o040000


def stat_is_link(mode: int) -> bool:
    return mode & 0o170000 == 0o120000


def _show(entry: Entry, field_name: str) -> str:
    value = getattr(entry, field_name)
    text = oct(value) if field_name == "mode" else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def assert_same_tree(expected: Path, actual: Path) -> None:
    """Same names, types, modes, owners, sizes, mtimes (ns), link counts, hard-link
    groups, symlink targets, xattrs and contents."""
    want, want_links = snapshot(expected)
    got, got_links = snapshot(actual)
    assert sorted(got) == sorted(want), "different names"
    diffs = [
        f"{name}: {f}: want {_show(want[name], f)}, got {_show(got[name], f)}"
        for name in sorted(want)
        for f in Entry.__dataclass_fields__
        if getattr(got[name], f) != getattr(want[name], f)
    ]
    assert not diffs, "entries differ:\n" + "\n".join(diffs)
    assert got_links == want_links
