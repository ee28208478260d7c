"""Several devices mount one vault at once, each a separate ``megafs mount``
process with its own client state and cache (docs/multidevice.md): changes
reach the other mounts through the store within poll plus commit interval,
read with ``cat`` through their own mounts (the kernel's caches invalidated),
and concurrent edits of one file leave both versions."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from ..support.mounting import Drive

#: How long a change may take to show on another device in these tests
#: (commit interval 1 s, poll interval 0.5 s, plus a slow CI machine).
PROPAGATION = 30.0


@contextlib.contextmanager
def devices(
    url: str,
    tmp: Path,
    env: Mapping[str, str],
    n: int,
    *mount_args: str,
    allowed: tuple[str, ...] = (),
) -> Iterator[list[Drive]]:
    """``n`` devices of one new vault, each mounted by its own daemon; none
    may log a warning but merges and those containing one of ``allowed``."""
    drives = [Drive(url, tmp / f"dev{i}", env) for i in range(n)]
    try:
        drives[0].init()
        for i, d in enumerate(drives):
            d.mount(
                "--device-name",
                f"dev{i}",
                "--commit-interval",
                "1",
                "--poll-interval",
                "0.5",
                *mount_args,
            )
        yield drives
    finally:
        for d in drives:
            d.cleanup()
    for d in drives:
        problems = [
            p for p in d.log_problems() if not any(a in p for a in ("merged with", *allowed))
        ]
        assert not problems, "a daemon logged problems:\n" + "\n".join(problems)


def eventually(check: Callable[[], bool], what: str, deadline: float = PROPAGATION) -> float:
    """Wait until ``check()``; return how long it took."""
    start = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - start
        except (OSError, subprocess.CalledProcessError):
            pass
        if time.monotonic() - start > deadline:
            raise AssertionError(f"not within {deadline:.0f} s: {what}")
        time.sleep(0.1)


def cat(path: Path) -> bytes:
    """Read through the kernel as a user would (a separate process)."""
    return subprocess.run(["cat", str(path)], capture_output=True, check=True).stdout


def reads(d: Drive, rel: str, want: bytes) -> Callable[[], bool]:
    """A check: ``cat`` of ``rel`` under ``d``'s mount gives ``want``."""
    return lambda: cat(d.mountpoint / rel) == want


def gone(d: Drive, rel: str) -> Callable[[], bool]:
    return lambda: not (d.mountpoint / rel).exists()


def test_changes_on_one_device_show_on_the_others(
    tmp_path: Path, any_store_url: tuple[str, dict[str, str]]
) -> None:
    url, env = any_store_url
    with devices(url, tmp_path, env, 3) as (a, b, c):
        (a.mountpoint / "from-a.txt").write_bytes(b"written on a")
        (b.mountpoint / "docs").mkdir()
        (b.mountpoint / "docs" / "b.md").write_bytes(b"# b")
        for d in (a, b, c):
            eventually(reads(d, "from-a.txt", b"written on a"), "a's file")
            eventually(reads(d, "docs/b.md", b"# b"), "b's file")
        # c changes a file the others have read (and cached): they see the new content
        (c.mountpoint / "from-a.txt").write_bytes(b"changed on c, longer")
        for d in (a, b):
            eventually(reads(d, "from-a.txt", b"changed on c, longer"), "c's change")
        # a deletes and renames: gone and moved everywhere
        os.rename(a.mountpoint / "docs" / "b.md", a.mountpoint / "b-renamed.md")
        for d in (b, c):
            eventually(gone(d, "docs/b.md"), "the rename")
            eventually(reads(d, "b-renamed.md", b"# b"), "renamed")
        info = a.megafs("info", url)
        assert info.returncode == 0, info.stderr
        assert all(f"dev{i}" in info.stdout for i in range(3)), info.stdout
    fsck = a.megafs("fsck", url)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_one_file_edited_on_two_devices_keeps_both(
    tmp_path: Path, any_store_url: tuple[str, dict[str, str]]
) -> None:
    url, env = any_store_url
    with devices(url, tmp_path, env, 2, "--commit-interval", "3600") as (a, b):
        (a.mountpoint / "report.txt").write_bytes(b"base")
        os.sync()  # fsync through the mount: committed
        fd = os.open(a.mountpoint / "report.txt", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        eventually(reads(b, "report.txt", b"base"), "the base on b")
        # b edits first but does not commit; a edits and fsyncs; b fsyncs (merges)
        b.sh("sh", "-c", f"printf 'b edit' > '{b.mountpoint}/report.txt'")
        for d, text in ((a, b"a edit"), (b, None)):
            if text is not None:
                with open(d.mountpoint / "report.txt", "wb") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
            else:
                fd = os.open(d.mountpoint / "report.txt", os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)

        def both_there(d: Drive) -> bool:
            names = sorted(os.listdir(d.mountpoint))
            copies = [n for n in names if re.fullmatch(r"report \(conflict from dev0 .*\)\.txt", n)]
            return (
                len(names) == 2
                and len(copies) == 1
                and cat(d.mountpoint / "report.txt") == b"b edit"
                and cat(d.mountpoint / copies[0]) == b"a edit"
            )

        for d in (a, b):
            eventually(functools.partial(both_there, d), f"both versions on {d.mountpoint}")


def test_a_device_killed_while_merging_loses_nothing(
    tmp_path: Path, any_store_url: tuple[str, dict[str, str]]
) -> None:
    """Two devices write at once, so that device b's commits merge a's; b's
    daemon is killed (SIGKILL) at a random moment of its fsync, many times,
    and mounted again. Every file whose fsync returned, on either device, is
    on both devices at the end, and fsck is clean: no loss, no torn root,
    and b's journal merges at each remount."""
    import random
    import threading

    url, env = any_store_url
    rnd = random.Random(11)
    args = ("--device-name", "dev1", "--commit-interval", "0.3", "--poll-interval", "0.3")
    acked: dict[str, bytes] = {}
    # A kill between a commit's root swap and the save of its local state
    # leaves a journal whose base this device cannot know: the records after
    # that commit (none acknowledged) are set aside, with a warning.
    kept = ("unuploaded journal segment(s) were kept in",)
    with devices(
        url, tmp_path, env, 2, "--commit-interval", "0.3", "--poll-interval", "0.3", allowed=kept
    ) as (a, b):
        for trial in range(6):

            def save(d: Drive, name: str, data: bytes) -> None:
                try:
                    with open(d.mountpoint / name, "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                except OSError:
                    return  # killed under it: not acknowledged
                acked[name] = data

            t = threading.Thread(target=save, args=(b, f"b{trial}", os.urandom(300_000)))
            t.start()
            save(a, f"a{trial}", os.urandom(5_000 + trial))
            time.sleep(rnd.uniform(0.0, 0.4))
            b.kill_daemon()
            t.join()
            b.lazy_unmount()
            b.mount(*args)
            save(b, f"after{trial}", b"written after the remount")
        for d in (a, b):
            for name, data in sorted(acked.items()):
                eventually(reads(d, name, data), f"{name} on {d.mountpoint}")
    fsck = a.megafs("fsck", url)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_three_mounts_at_random(tmp_path: Path, any_store_url: tuple[str, dict[str, str]]) -> None:
    """Three mounts of one vault run random operations at once in one shared
    folder (create, overwrite, delete, rename, make folders; each write
    fsynced), then stop. After the last poll every mount shows the same tree,
    fsck is clean, and every fsynced content that no device later replaced
    or deleted (each device reads a file before it replaces or deletes it)
    is in the tree, under its name or as a conflict copy."""
    import random
    import threading

    url, env = any_store_url
    acked: set[bytes] = set()
    superseded: set[bytes] = set()
    lock = threading.Lock()

    def tree(d: Drive) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for root, _, files in os.walk(d.mountpoint / "shared"):
            for f in files:
                p = Path(root) / f
                out[str(p.relative_to(d.mountpoint))] = p.read_bytes()
        return out

    def worker(d: Drive, seed: int) -> None:
        rnd = random.Random(seed)
        base = d.mountpoint / "shared"
        for i in range(30):
            token = f"<{seed}:{i}>".encode() * rnd.randrange(1, 3000)
            try:
                folders = [base] + [p for p in base.iterdir() if p.is_dir()]
                files = [p for f in folders for p in f.iterdir() if p.is_file()]
                op = rnd.choice(
                    ["new", "new", "overwrite", "overwrite", "delete", "rename", "mkdir"]
                )
                if op == "new" or (op in ("overwrite", "delete", "rename") and not files):
                    target = rnd.choice(folders) / f"f{seed}-{i}"
                elif op == "mkdir":
                    (base / f"d{rnd.randrange(3)}").mkdir(exist_ok=True)
                    continue
                else:
                    target = rnd.choice(files)
                    old = target.read_bytes()
                    with lock:
                        superseded.add(old)
                    if op == "delete":
                        target.unlink()
                        continue
                    if op == "rename":
                        dest = rnd.choice(folders) / f"r{rnd.randrange(4)}"
                        if dest.exists():
                            with lock:
                                superseded.add(dest.read_bytes())
                        os.rename(target, dest)
                        continue
                with open(target, "wb") as f:
                    f.write(token)
                    f.flush()
                    os.fsync(f.fileno())
                with lock:
                    acked.add(token)
            except OSError:
                continue  # another device got there first: fine

    with devices(url, tmp_path, env, 3) as drives:
        (drives[0].mountpoint / "shared").mkdir()
        for d in drives:
            eventually(functools.partial(Path.is_dir, d.mountpoint / "shared"), "shared folder")
        threads = [
            threading.Thread(target=worker, args=(d, seed)) for seed, d in enumerate(drives)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        final: list[dict[str, bytes]] = []

        def converged() -> bool:
            final[:] = [tree(d) for d in drives]
            return final[0] == final[1] == final[2]

        eventually(converged, "the three mounts showing one tree", deadline=120)
        contents = set(final[0].values())
        missing = (acked - superseded) - contents
        assert not missing, f"{len(missing)} fsynced contents lost"
        # the run did what it is for: many fsyncs, and commits that merged
        assert len(acked) >= 20, len(acked)
        assert sum(d.log_text().count("merged with ") for d in drives) >= 3
        print(f"{len(acked)} fsynced, {len(acked - superseded)} kept to the end")
    fsck = drives[0].megafs("fsck", url)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_history_and_trash_of_two_devices(
    tmp_path: Path, any_store_url: tuple[str, dict[str, str]]
) -> None:
    """Each device's commits are kept past states that both list; what
    either deleted is in both devices' trash and comes back on either."""
    url, env = any_store_url
    with devices(url, tmp_path, env, 2) as (a, b):
        (a.mountpoint / "a.txt").write_bytes(b"from a")
        (b.mountpoint / "b.txt").write_bytes(b"from b")
        for d in (a, b):
            eventually(reads(d, "a.txt", b"from a"), "a's file")
            eventually(reads(d, "b.txt", b"from b"), "b's file")
        (a.mountpoint / "a.txt").unlink()
        (b.mountpoint / "b.txt").unlink()
        for d in (a, b):
            eventually(gone(d, "a.txt"), "a's deletion")
            eventually(gone(d, "b.txt"), "b's deletion")

        def trash(d: Drive) -> dict[str, str]:
            proc = d.megafs("trash", "list", str(d.mountpoint), "--json")
            assert proc.returncode == 0, proc.stderr
            items = [json.loads(line) for line in proc.stdout.splitlines()]
            return {str(i["path"]): str(i["device"]) for i in items}

        both = {"a.txt": "dev0", "b.txt": "dev1"}
        for d in (a, b):
            eventually(functools.partial(lambda d: trash(d) == both, d), "the trash")
        proc = b.megafs("trash", "restore", str(b.mountpoint / "a.txt"))
        assert proc.returncode == 0, proc.stderr
        eventually(reads(a, "a.txt", b"from a"), "a's file restored on b, seen on a")
        listed = a.megafs("snapshots", url).stdout
        assert "dev0" in listed and "dev1" in listed
    fsck = a.megafs("fsck", url)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_a_lost_laptop_is_adopted_from_its_log(
    tmp_path: Path, any_store_url: tuple[str, dict[str, str]]
) -> None:
    """A laptop fsyncs a file and is lost before the commit that would fold
    its device log (daemon killed, local state and cache folder gone):
    ``megafs adopt`` on another machine commits it, and the desktop's mount
    shows it."""
    url, env = any_store_url
    laptop, desktop = Drive(url, tmp_path / "laptop", env), Drive(url, tmp_path / "desk", env)
    try:
        laptop.init()
        desktop.mount("--device-name", "desktop", "--poll-interval", "0.5")
        laptop.mount("--device-name", "laptop", "--commit-interval", "3600")
        data = os.urandom(50_000)
        with open(laptop.mountpoint / "thesis.tex", "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        laptop.kill_daemon()  # within the second before the folding commit
        laptop.lazy_unmount()
        for gone in (laptop.state_dir, laptop.cache_dir):
            subprocess.run(["rm", "-rf", str(gone)], check=True)
        assert not (desktop.mountpoint / "thesis.tex").exists()
        early = desktop.megafs("adopt", url, "laptop")
        assert early.returncode == 10 and "may still be running" in early.stderr
        proc = desktop.megafs("adopt", url, "laptop", "--force")
        assert proc.returncode == 0, proc.stderr
        assert "from 1 log object committed" in proc.stdout
        eventually(lambda: cat(desktop.mountpoint / "thesis.tex") == data, "the laptop's file")
        again = desktop.megafs("adopt", url, "laptop", "--force")
        assert "nothing to adopt" in again.stdout
    finally:
        laptop.cleanup()
        desktop.cleanup()
