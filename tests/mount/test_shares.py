"""Share links end to end, on real mounts of both stores: ``megafs share``
through the mount's daemon, ``megafs get`` over HTTP (presigned SeaweedFS
URLs, or a static web server publishing the local folder), ``shares`` and
``unshare``; every failure one line with its exit code and no output file."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from megafs.cli.exit_codes import Exit

from ..support.mounting import Drive, one_error_line
from ..support.share_trees import set_tree, tree_of
from ..support.shares import static_server

pytestmark = pytest.mark.fuse


@pytest.fixture
def web(drive: Drive, tmp_path: Path) -> Iterator[list[str]]:
    """Extra ``megafs share`` arguments that make a link reachable: none on
    S3 (presigned URLs); on a local folder, ``--base-url`` of a static web
    server (Python's http.server) publishing the store folder."""
    if drive.url.startswith("s3://"):
        yield []
        return
    Path(drive.url).mkdir(parents=True, exist_ok=True)
    with static_server(Path(drive.url), tmp_path / "http.log") as base:
        yield ["--base-url", base]


def _share(drive: Drive, path: Path, *args: str) -> str:
    proc = drive.megafs("share", str(path), *args)
    assert proc.returncode == 0, proc.stderr
    link = proc.stdout.strip()
    assert "#" in link and "\n" not in link
    return link


def _get(
    drive: Drive, link: str, dest: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return drive.megafs("get", link, str(dest), env=env)


def test_share_a_file_and_a_folder_then_edit_revoke(
    drive: Drive, web: list[str], tmp_path: Path
) -> None:
    """A shared file and folder download byte for byte with modes and
    times; later edits, deletions and a prune change nothing in the link;
    ``shares`` lists them; ``unshare`` revokes: ``get`` then fails with one
    line and exit code 16, and writes nothing."""
    top = drive.mountpoint / "docs"
    files = set_tree(top)
    link_dir = _share(drive, top, *web)
    big = top / "big.bin"
    link_file = _share(drive, big, *web)

    # later changes, committed, and the history pruned now: the shares hold
    big.write_bytes(b"changed")
    (top / "sub" / "packed.txt").unlink()
    drive.sh("sync")
    proc = drive.megafs("prune", str(drive.mountpoint))
    assert proc.returncode == 0, proc.stderr

    out = tmp_path / "got"
    out.mkdir()
    proc = _get(drive, link_dir, out)
    assert proc.returncode == 0, proc.stderr
    assert tree_of(out / "docs") == files
    proc = _get(drive, link_file, out / "one.bin")
    assert proc.returncode == 0, proc.stderr
    assert (out / "one.bin").read_bytes() == files["big.bin"][0]
    assert (out / "one.bin").stat().st_mode & 0o777 == files["big.bin"][1]

    listed = drive.megafs("shares", str(drive.mountpoint))
    assert listed.returncode == 0, listed.stderr
    paths = [line.split()[-1] for line in listed.stdout.splitlines()[1:]]
    assert sorted(paths) == ["/docs", "/docs/big.bin"]
    share_id = link_file.split("/")[-1].split(".html")[0]
    proc = drive.megafs("unshare", str(drive.mountpoint), share_id[:12])
    assert proc.returncode == 0, proc.stderr
    assert "/docs/big.bin" not in drive.megafs("shares", str(drive.mountpoint)).stdout

    proc = _get(drive, link_file, tmp_path / "after.bin")
    assert proc.returncode == Exit.LINK_GONE, proc.stderr
    assert "revoked" in one_error_line(proc)
    assert not list(tmp_path.glob("after.bin*"))
    proc = _get(drive, link_dir, tmp_path / "still")  # the other share is unaffected
    assert proc.returncode == 0, proc.stderr


def test_password_wrong_key_expiry_and_tampering(
    drive: Drive, web: list[str], tmp_path: Path
) -> None:
    """Each failure is one line with its own exit code, and leaves no file."""
    f = drive.mountpoint / "secret.bin"
    f.write_bytes(os.urandom(600_000))
    want = f.read_bytes()
    pw = tmp_path / "pw"
    pw.write_text("correct horse\n")
    link = _share(drive, f, "--password", "--password-file", str(pw), *web)
    out = tmp_path / "out.bin"

    proc = _get(drive, link, out)  # no password: no prompt possible without a terminal
    assert proc.returncode == Exit.PASSPHRASE, proc.stderr
    one_error_line(proc)
    proc = _get(drive, link, out, env={"MEGAFS_LINK_PASSWORD": "wrong"})
    assert proc.returncode == Exit.WRONG_SECRET, proc.stderr
    assert "wrong password" in one_error_line(proc)
    proc = _get(drive, link, out, env={"MEGAFS_LINK_PASSWORD": "correct horse"})
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == want
    out.unlink()

    plain = _share(drive, f, *web)
    url, key = plain.split("#")
    other = key[:-2] + ("AA" if key[-2:] != "AA" else "BA")
    proc = _get(drive, f"{url}#{other}", out)
    assert proc.returncode == Exit.WRONG_SECRET, proc.stderr
    assert "wrong link key" in one_error_line(proc)
    proc = _get(drive, f"{link.split('#')[0]}#{key}", out)  # a key of another share
    assert proc.returncode == Exit.WRONG_SECRET or proc.returncode == Exit.PASSPHRASE
    assert not out.exists()

    short = _share(drive, f, "--expires", "2s", *web)
    time.sleep(3)
    proc = _get(drive, short, out)
    assert proc.returncode == Exit.LINK_GONE, proc.stderr
    assert "expired" in one_error_line(proc)
    assert not list(tmp_path.glob("out.bin*"))


def test_share_shares_and_unshare_on_an_unmounted_store(
    drive: Drive, web: list[str], tmp_path: Path
) -> None:
    """``megafs share STORE PATH`` opens the vault itself (a writable mount
    of it on this machine is refused: the daemon is the device)."""
    (drive.mountpoint / "a.txt").write_bytes(b"shared without a mount\n" * 1000)
    proc = drive.megafs("share", drive.url, "/a.txt", *web)
    assert proc.returncode == Exit.BUSY, proc.stderr
    one_error_line(proc)
    drive.umount()
    proc = drive.megafs("share", drive.url, "/a.txt", *web)
    assert proc.returncode == 0, proc.stderr
    link = proc.stdout.strip()
    proc = _get(drive, link, tmp_path / "a.txt")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "a.txt").read_bytes() == b"shared without a mount\n" * 1000
    listed = drive.megafs("shares", drive.url)
    assert listed.returncode == 0 and "/a.txt" in listed.stdout, listed.stderr
    share_id = listed.stdout.splitlines()[1].split()[0]
    proc = drive.megafs("unshare", drive.url, share_id)
    assert proc.returncode == 0, proc.stderr
    proc = _get(drive, link, tmp_path / "again.txt")
    assert proc.returncode == Exit.LINK_GONE, proc.stderr
    proc = drive.megafs("share", drive.url, "/missing", *web)
    assert proc.returncode == Exit.USAGE, proc.stderr
    assert "/missing: No such file or directory" in one_error_line(proc)
    drive.mount()


def test_a_malformed_request_is_answered_and_the_mount_goes_on(drive: Drive) -> None:
    """The daemon's socket answers a request with missing or mistyped fields
    with an error; it never ends the mount."""
    from unittest import mock

    from megafs.mount.runtime import ask, pid_path, socket_path

    with mock.patch.dict(os.environ, {"XDG_RUNTIME_DIR": str(drive.runtime_dir)}):
        sock = socket_path(pid_path(str(drive.mountpoint)))
    for request in (
        {"op": "share"},
        {"op": "share", "path": "/x", "expires": "1d"},
        {"op": "share", "path": 5},
        {"op": "unshare"},
        {"op": "nonsense"},
    ):
        answer = ask(sock, request)
        assert answer.get("kind") == "UsageError", (request, answer)
    (drive.mountpoint / "still").write_text("mounted")
    assert (drive.mountpoint / "still").read_text() == "mounted"
    assert ask(sock, {"op": "status"})["mountpoint"]
