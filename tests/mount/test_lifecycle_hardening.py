"""The mount lifecycle against a hostile local machine: the runtime folder,
secrets in the environment, and cache folders shared by two vaults.

The runtime folder (pid, daemon identity, status and log files) must be a
folder of this user's that no one else can write, and ``megafs`` refuses any
other with one line and exit code 15 before a file is touched; a symlink
planted where one of its files goes is never written through. ``megafs
umount`` signals a pid only once it is proven to be this mount's daemon. No
secret variable reaches the daemon's environment or an ``--extpass`` child.
A cache folder belongs to the first vault that used it: another vault is
refused it (15) and its unreplayed journal survives.

Everything runs the real ``megafs`` command in subprocesses on local-folder
stores (none of this depends on the store); the tests that mount use
:class:`tests.support.mounting.Drive`, whose teardown always unmounts. The test of the
``/tmp`` fallback runs megafs in a private mount namespace whose ``/tmp`` is
a folder of the test, so the machine's real ``/tmp/megafs-<uid>`` is never
touched.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import megafs
from megafs import cli, errors
from megafs.stores import LocalStore
from megafs.vault.vault import Vault

from ..support.helpers import FAST_KDF, PASS, run_megafs
from ..support.mounting import (
    Drive,
    mounts_of,
    one_error_line,
    process_gone,
    wait_gone,
)

pytestmark = pytest.mark.fuse

#: Exit code of an unsafe runtime folder or another vault's cache folder.
LOCAL_FOLDER = 15
#: Plays the other local user (nobody).
OTHER_UID = 65534
BASHRC = "# the user's shell startup file: must never be written by megafs\n"


def runtime_file(folder: Path, mountpoint: Path | str, suffix: str) -> Path:
    """Where megafs keeps file ``suffix`` (``.pid``, ``.log``, ...) of ``mountpoint``."""
    key = hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:24]
    return folder / f"{key}{suffix}"


def listing(folder: Path) -> dict[str, str]:
    """Each entry of ``folder`` and what it is (a symlink's target), to compare."""
    return {
        p.name: f"-> {os.readlink(p)}" if p.is_symlink() else oct(p.lstat().st_mode)
        for p in folder.iterdir()
    }


@pytest.fixture
def drive(tmp_path: Path) -> Iterator[Drive]:
    """A not yet initialized vault in a local folder; always unmounted afterwards."""
    d = Drive(str(tmp_path / "store"), tmp_path / "drive")
    try:
        yield d
    finally:
        d.cleanup()


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A stand-in for a file of the user that an attacker wants overwritten."""
    path = tmp_path / "home-of-victim" / ".bashrc"
    path.parent.mkdir()
    path.write_text(BASHRC)
    return path


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is not a megafs daemon, to put its pid in a pid file."""
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


# --- the runtime folder ---------------------------------------------------------------------


def _make_base_foreign(base: Path, inner: Path) -> None:
    os.chown(base, OTHER_UID, OTHER_UID)


def _make_base_open(base: Path, inner: Path) -> None:
    os.chmod(base, 0o777)


def _make_inner_foreign(base: Path, inner: Path) -> None:
    os.chown(inner, OTHER_UID, OTHER_UID)


def _make_inner_open(base: Path, inner: Path) -> None:
    os.chmod(inner, 0o755)


def _make_inner_a_symlink(base: Path, inner: Path) -> None:
    elsewhere = base.parent / "elsewhere"
    inner.rename(elsewhere)
    inner.symlink_to(elsewhere)


UNSAFE = {
    "base owned by another user": _make_base_foreign,
    "base writable by others": _make_base_open,
    "megafs folder owned by another user": _make_inner_foreign,
    "megafs folder readable by others": _make_inner_open,
    "megafs folder is a symlink": _make_inner_a_symlink,
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_runtime_folder_is_refused(
    drive: Drive, tmp_path: Path, victim: Path, case: str
) -> None:
    """Whoever could write the runtime folder could point the pid or log file
    at any file of the user's: such a folder is refused with one line, before
    anything is written in it or through it."""
    drive.init()
    base = tmp_path / "run"
    inner = base / "megafs"
    inner.mkdir(parents=True, mode=0o700)
    os.chmod(base, 0o700)
    for suffix in (".pid", ".daemon", ".log", ".pid.status"):
        os.symlink(victim, runtime_file(inner, drive.mountpoint, suffix))
    UNSAFE[case](base, inner)
    before = listing(inner)

    proc = drive.megafs(
        "mount",
        drive.url,
        str(drive.mountpoint),
        "--cache-dir",
        str(drive.cache_dir),
        env={"XDG_RUNTIME_DIR": str(base)},
    )
    assert proc.returncode == LOCAL_FOLDER, proc.stderr
    assert "unsafe runtime folder" in one_error_line(proc)
    assert victim.read_text() == BASHRC
    assert listing(inner) == before
    assert not mounts_of(drive.mountpoint)


def test_symlinked_pid_and_status_files_are_replaced_not_followed(
    drive: Drive, victim: Path
) -> None:
    """Files in the runtime folder are written to a new file and renamed into
    place: a symlink standing there is replaced, its target left alone."""
    drive.init()
    folder = drive.pid_file.parent
    planted = [drive.pid_file, folder / (drive.pid_file.name + ".status")]
    planted.append(drive.pid_file.with_suffix(".daemon"))
    for path in planted:
        path.symlink_to(victim)
    drive.mount()
    assert victim.read_text() == BASHRC
    assert not drive.pid_file.is_symlink()
    assert stat.S_IMODE(drive.pid_file.stat().st_mode) == 0o600
    drive.umount()
    assert victim.read_text() == BASHRC
    status = planted[1]
    assert not status.is_symlink() and status.read_text() == "0"


def test_symlinked_log_file_is_refused(drive: Drive, victim: Path) -> None:
    drive.init()
    drive.log_file.symlink_to(victim)
    proc = drive.try_mount()
    assert proc.returncode == LOCAL_FOLDER, proc.stderr
    assert "symlink" in one_error_line(proc)
    assert victim.read_text() == BASHRC
    assert not mounts_of(drive.mountpoint)


def test_fallback_runtime_folder_under_tmp(tmp_path: Path) -> None:
    """Without XDG_RUNTIME_DIR the runtime folder is ``/tmp/megafs-<uid>/megafs``.

    megafs runs in a mount namespace of its own whose ``/tmp`` is the folder
    ``fake`` of this test. A missing folder is made 0700 at both levels; one
    another user made first (with links to the user's files planted in it) is
    refused with one line, and the files stay untouched.
    """
    fake = tmp_path / "tmp"
    (fake / "mnt").mkdir(parents=True)
    (fake / "home").mkdir()
    os.chmod(fake, 0o1777)
    victim = fake / "home" / ".bashrc"
    victim.write_text(BASHRC)
    base = fake / f"megafs-{os.getuid()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEGAFS_", "XDG_"))}
    env.update(MEGAFS_PASSPHRASE=PASS, MEGAFS_STATE_DIR="/tmp/state", HOME="/tmp/home")

    # The real /tmp stays reachable as /tmp/realtmp: the code under test may
    # itself live under /tmp (a CI clone), and must still import.
    src = Path(megafs.__file__).resolve().parents[1]
    if src.is_relative_to("/tmp"):
        env["PYTHONPATH"] = str(Path("/tmp/realtmp") / src.relative_to("/tmp"))
    (fake / "realtmp").mkdir()

    def megafs_with_private_tmp(*args: str) -> subprocess.CompletedProcess[str]:
        private_tmp = ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
        bind = 'mount --bind /tmp "$0/realtmp" && mount --rbind "$0" /tmp && exec "$@"'
        return run_megafs(*args, env=env, wrap=[*private_tmp, bind, str(fake)])

    proc = megafs_with_private_tmp("umount", "/tmp/mnt")
    assert proc.returncode == 14 and "not mounted" in one_error_line(proc), proc.stderr
    for folder in (base, base / "megafs"):
        st = folder.lstat()
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
        assert stat.S_IMODE(st.st_mode) == 0o700, folder

    shutil.rmtree(base)
    (base / "megafs").mkdir(parents=True)
    for suffix in (".pid", ".log"):
        os.symlink("/tmp/home/.bashrc", runtime_file(base / "megafs", "/tmp/mnt", suffix))
    for folder in (base, base / "megafs"):
        os.chmod(folder, 0o777)
        os.chown(folder, OTHER_UID, OTHER_UID)
    proc = megafs_with_private_tmp("mount", "/tmp/store", "/tmp/mnt")
    assert proc.returncode == LOCAL_FOLDER, proc.stderr
    assert f"unsafe runtime folder /tmp/megafs-{os.getuid()}" in one_error_line(proc)
    assert victim.read_text() == BASHRC


def _identity(pid: int) -> str:
    """What the daemon records of itself: pid, start time (field 22 of stat), boot id."""
    start = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19].decode()
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return f"{pid} {start} {boot}"


@pytest.mark.parametrize("record", ["none", "of the process"])
def test_umount_does_not_signal_a_process_that_is_not_the_daemon(
    drive: Drive, sleeper: subprocess.Popen[bytes], record: str
) -> None:
    """A pid file naming another process (a stale one whose pid was reused)
    gets nobody signalled, even with an identity record that matches that
    process: it does not run megafs."""
    drive.pid_file.write_text(str(sleeper.pid))
    if record != "none":
        drive.pid_file.with_suffix(".daemon").write_text(_identity(sleeper.pid))
    proc = drive.megafs("umount", str(drive.mountpoint))
    assert proc.returncode == 14 and "not mounted" in one_error_line(proc)
    assert sleeper.poll() is None, "megafs umount signalled a process that is not its daemon"


def test_umount_with_a_foreign_pid_in_the_pid_file_still_unmounts(
    drive: Drive, sleeper: subprocess.Popen[bytes]
) -> None:
    drive.init()
    drive.mount()
    daemon = drive.pid()
    assert daemon
    (drive.mountpoint / "kept").write_bytes(b"committed by the daemon on its way out\n")
    drive.pid_file.write_text(str(sleeper.pid))
    proc = drive.megafs("umount", str(drive.mountpoint))
    assert proc.returncode == 0, proc.stderr
    assert not mounts_of(drive.mountpoint)
    assert sleeper.poll() is None, "megafs umount signalled a process that is not its daemon"
    wait_gone(daemon)  # unmounted by fusermount3, the daemon commits and exits
    drive.mount()
    assert (drive.mountpoint / "kept").read_bytes() == b"committed by the daemon on its way out\n"
    drive.umount()


def test_exit_code_of_an_unsafe_local_folder_is_its_own() -> None:
    assert cli.exit_code(errors.LocalFolderError("x")) == LOCAL_FOLDER
    others = {code for cls, code in cli.EXIT_CODES.items() if cls is not errors.LocalFolderError}
    assert LOCAL_FOLDER not in others


# --- secrets in the environment --------------------------------------------------------------

SECRETS = {
    "MEGAFS_PASSPHRASE": PASS,
    "MEGAFS_NEW_PASSPHRASE": "a new passphrase nobody may see",
    "MEGAFS_RECOVERY_KEY": "a recovery key nobody may see",
}


def _assert_no_secret(environ: bytes) -> None:
    for name, value in SECRETS.items():
        assert name.encode() not in environ, name
        assert value.encode() not in environ, name


def test_the_daemon_environment_holds_no_secret(drive: Drive) -> None:
    """Neither the daemon's environment (as ``/proc/<pid>/environ`` shows it,
    and as fusermount3 and other children would inherit it) holds a secret."""
    drive.init()
    proc = drive.try_mount(env=SECRETS)
    assert proc.returncode == 0, proc.stderr
    pid = drive.pid()
    assert pid
    _assert_no_secret(Path(f"/proc/{pid}/environ").read_bytes())
    drive.umount()


def test_extpass_command_does_not_inherit_the_passphrase(drive: Drive, tmp_path: Path) -> None:
    drive.init()
    seen = tmp_path / "extpass-environment"
    script = f"env > {shlex.quote(str(seen))}; printf '%s\\n' {shlex.quote(PASS)}"
    proc = drive.try_mount("--extpass", shlex.join(["sh", "-c", script]), env=SECRETS)
    assert proc.returncode == 0, proc.stderr
    assert "MEGAFS_STATE_DIR=" in seen.read_text()  # it ran, with the rest of the environment
    _assert_no_secret(seen.read_bytes())
    pid = drive.pid()
    assert pid
    _assert_no_secret(Path(f"/proc/{pid}/environ").read_bytes())
    drive.umount()


# --- a cache folder shared by two vaults ----------------------------------------------------


@pytest.mark.parametrize("folder", ["current", "made before owner records"])
def test_a_cache_folder_of_another_vault_is_refused(tmp_path: Path, folder: str) -> None:
    """Vault A is killed with changes only in its journal; vault B is then
    mounted with the same ``--cache-dir``. B must be refused (its commits
    would delete A's segments); A's segments must survive and replay.

    ``made before owner records``: the folder as older megafs left it (no owner
    record, the journal id alone in the id file) is recognised as A's by its
    journal, refused to B, and adopted by A.
    """
    shared = tmp_path / "shared-cache"
    a = Drive(str(tmp_path / "store-a"), tmp_path / "a")
    b = Drive(str(tmp_path / "store-b"), tmp_path / "b")
    try:
        a.init()
        b.init()
        a.mount("--commit-interval", "3600", cache_dir=shared)
        (a.mountpoint / "only-in-the-journal").write_bytes(b"not committed yet\n")
        a.kill_daemon()
        a.lazy_unmount()
        journal = shared / "journal"
        if folder != "current":  # what older megafs left: no owner, the journal id alone
            (shared / "owner").unlink(missing_ok=True)
            (journal / "id").write_bytes((journal / "id").read_bytes()[-16:])
        segments = {p.name: p.read_bytes() for p in journal.iterdir()}
        assert any(n.endswith(".log") and data for n, data in segments.items()), segments

        proc = b.try_mount(cache_dir=shared)
        assert proc.returncode == LOCAL_FOLDER, proc.stderr
        assert f"cache folder {shared}" in one_error_line(proc)
        assert not mounts_of(b.mountpoint)
        pid = b.pid()
        assert pid is None or process_gone(pid)
        assert {p.name: p.read_bytes() for p in journal.iterdir()} == segments

        a.mount(cache_dir=shared)
        assert (a.mountpoint / "only-in-the-journal").read_bytes() == b"not committed yet\n"
        assert (shared / "owner").is_file()
        assert stat.S_IMODE((shared / "owner").stat().st_mode) == 0o600
        assert len((journal / "id").read_bytes()) == 32  # vault id, journal id
        a.umount()
        assert b.try_mount(cache_dir=shared).returncode == LOCAL_FOLDER
    finally:
        a.cleanup()
        b.cleanup()


def test_owner_record_is_bound_to_its_vault(tmp_path: Path) -> None:
    """The owner record names the vault and carries a tag under its cache key:
    one that names another vault is refused, and so is one edited to name this
    vault (a record copied from another folder), while the real one passes."""
    from megafs.client.journal import OWNER_FILE, claim_cache_dir

    async def two_vaults() -> tuple[Vault, Vault]:
        out = []
        for name in ("a", "b"):
            store = LocalStore(str(tmp_path / name), create=True)
            out.append((await Vault.init(store, PASS, FAST_KDF))[0])
            await store.aclose()
        return out[0], out[1]

    a, b = trio.run(two_vaults)
    cache = tmp_path / "cache"
    claim_cache_dir(str(cache), a.keys)
    record = (cache / OWNER_FILE).read_bytes()
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    with pytest.raises(errors.LocalFolderError, match="belongs to vault " + a.vault_id.hex()):
        claim_cache_dir(str(cache), b.keys)
    (cache / OWNER_FILE).write_bytes(record.replace(a.vault_id, b.vault_id))
    with pytest.raises(errors.LocalFolderError, match="does not authenticate"):
        claim_cache_dir(str(cache), b.keys)
    (cache / OWNER_FILE).write_bytes(record)
    claim_cache_dir(str(cache), a.keys)
    assert (cache / OWNER_FILE).read_bytes() == record
