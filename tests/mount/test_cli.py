"""The ``megafs`` command line, run for real in subprocesses.

Every test uses a cheap Argon2id (``KDF_ARGS``) and its own client-state folder
(``MEGAFS_STATE_DIR``), passes secrets through the environment, files or
``--extpass``, and gives the child a stdin that is not a terminal, so nothing
can ever wait on a prompt. The interactive tests drive ``getpass`` through a
pseudo-terminal that they make the child's controlling terminal.

Header tampering (the header is ``<store>/pointers/header``), and what each
kind shows as: the passphrase slot's AEAD covers the slot and the fixed part
(version, vault id, geometry), so a flipped byte there can only look like a
wrong passphrase (3); a flipped byte elsewhere (recovery slot, MAC) is caught
by the header MAC after the slot opened: corrupt header (6).
"""

from __future__ import annotations

import fcntl
import os
import select
import shlex
import socket
import subprocess
import sys
import sysconfig
import termios
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from megafs import cli, errors
from megafs.format import header
from megafs.format.header import FIXED_LEN, SLOT_LEN_V3, format_recovery_key, parse_recovery_key
from megafs.mount import MountConfig
from megafs.stores import LocalStore
from megafs.vault.vault import Vault

from ..support.helpers import KDF_ARGS, MEGAFS, PASS, run_megafs, unique_prefix
from ..support.seaweed import SeaweedFS

NEW_PASS = "tr0ub4dor&3 and then some"
TIMEOUT = 60.0

# Byte offsets in the header (the passphrase slot comes first, then recovery).
_SLOT0 = FIXED_LEN + 1
_SLOT1 = _SLOT0 + SLOT_LEN_V3  # new vaults are format 3
_SLOT_SEALED = 29  # kind 1 | memory 4 | iterations 4 | lanes 4 | salt 16


@dataclass
class Cli:
    """Runs ``python -m megafs`` with a clean environment for one test."""

    state_dir: Path
    base_env: Mapping[str, str]

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEGAFS_")}
        env.update(self.base_env)
        env["MEGAFS_STATE_DIR"] = str(self.state_dir)
        env.update(extra or {})
        return env

    def __call__(
        self, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_megafs(*args, env=self.env(env), timeout=TIMEOUT)


@dataclass
class Vaulted:
    """A store URL with an initialized vault and its recovery key."""

    url: str
    recovery_key: str


def pw(secret: str = PASS) -> dict[str, str]:
    return {"MEGAFS_PASSPHRASE": secret}


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """Assert stderr is exactly one ``megafs:`` line (no traceback); return it."""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("megafs: "), proc.stderr
    return lines[0]


def init_vault(run: Cli, url: str) -> Vaulted:
    proc = run("init", url, *KDF_ARGS, env=pw())
    assert proc.returncode == 0, proc.stderr
    key = proc.stdout.strip()
    parse_recovery_key(key)  # well-formed
    assert "ONLY" in proc.stderr and "recover" in proc.stderr
    return Vaulted(url, key)


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture
def run(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "state", {})


@pytest.fixture
def any_run(tmp_path: Path, any_store_url: tuple[str, dict[str, str]]) -> tuple[Cli, str]:
    """A runner and an empty store: a local folder, or a fresh prefix on SeaweedFS."""
    url, env = any_store_url
    return Cli(tmp_path / "state", env), url


@pytest.fixture
def local(tmp_path: Path, run: Cli) -> Vaulted:
    return init_vault(run, str(tmp_path / "store"))


def header_path(v: Vaulted) -> Path:
    return Path(v.url) / "pointers" / "header"


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# --- basics -----------------------------------------------------------------------------


def test_version_and_console_script(run: Cli) -> None:
    proc = run("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("megafs ")
    # scripts/setup installs megafs with pip, which puts the console script here.
    script = Path(sysconfig.get_path("scripts")) / "megafs"
    assert script.exists(), f"the megafs console script is not installed ({script})"
    proc2 = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert proc2.returncode == 0
    assert proc2.stdout == proc.stdout


def test_no_command_is_usage_error(run: Cli) -> None:
    assert run().returncode == 2


def test_init_then_info(any_run: tuple[Cli, str]) -> None:
    run, url = any_run
    init_vault(run, url)
    proc = run("info", url, env=pw())
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    info = dict(line.split(":", 1) for line in proc.stdout.splitlines())
    info = {k: v.strip() for k, v in info.items()}
    assert info["format version"] == str(header.VERSION)
    assert len(info["vault id"]) == 32
    assert info["chunk size"].startswith("1048576 bytes")
    assert info["block size"].startswith("65536 bytes")
    assert "memory 8192 KiB, iterations 1" in info["passphrase KDF"]
    assert info["root generation"] == "1"
    assert info["files"] == "0"
    assert info["bytes"].startswith("0 ")
    assert info["writer lease"] == "none"
    assert info["small chunks"] == "packed, 0 packs made so far"


def test_init_creates_missing_folder_and_honours_chunk_size(tmp_path: Path, run: Cli) -> None:
    url = f"file://{tmp_path}/a/b/c"
    proc = run("init", url, *KDF_ARGS, "--chunk-size", "256K", env=pw())
    assert proc.returncode == 0, proc.stderr
    proc = run("info", url, env=pw())
    assert "chunk size:      262144 bytes (256 KiB)" in proc.stdout
    assert "block size:      65536 bytes (64 KiB)" in proc.stdout


def test_init_honours_block_size(tmp_path: Path, run: Cli) -> None:
    url = f"file://{tmp_path}/store"
    proc = run("init", url, *KDF_ARGS, "--block-size", "4K", "--chunk-size", "8M", env=pw())
    assert proc.returncode == 0, proc.stderr
    proc = run("info", url, env=pw())
    assert "chunk size:      8388608 bytes (8 MiB)" in proc.stdout
    assert "block size:      4096 bytes (4 KiB)" in proc.stdout


@pytest.mark.parametrize(
    "opts",
    [
        ["--kdf-memory", "16", "--kdf-iterations", "1"],  # below 8 KiB per lane
        ["--kdf-memory", "0"],
        ["--kdf-iterations", "1000"],
        ["--chunk-size", "1000"],
        ["--chunk-size", "100000"],  # not a multiple of the block size
        ["--chunk-size", "lots"],
        ["--chunk-size", "0"],
        ["--block-size", "2K"],  # below the smallest block
        ["--block-size", "2M"],  # larger than the chunk
        ["--block-size", "48K"],  # the chunk is not a multiple of it
    ],
)
def test_init_bad_options_are_usage_errors(tmp_path: Path, run: Cli, opts: list[str]) -> None:
    proc = run("init", str(tmp_path / "store"), *opts, env=pw())
    assert proc.returncode == 2, proc.stderr
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    ("text", "size"), [("1.5G", 3 << 29), ("512MiB", 1 << 29), ("256k", 1 << 18), ("0", 0)]
)
def test_cache_size_option_has_the_grammar_of_the_mount_option(text: str, size: int) -> None:
    """``--cache-size`` and ``-o cache_size=`` read sizes with one parser."""
    args = cli.build_parser().parse_args(["mount", "STORE", "MNT", "--cache-size", text])
    assert args.cache_size == size
    cfg = MountConfig("STORE", "/MNT")
    cfg.apply_options(f"cache_size={text}")
    assert cfg.cache_size == size


def test_bad_store_url_is_usage_error(run: Cli) -> None:
    proc = run("info", "ftp://example.com/x", env=pw())
    assert proc.returncode == 2
    assert "unsupported store URL" in one_error_line(proc)


def test_init_twice_exits_11(local: Vaulted, run: Cli) -> None:
    proc = run("init", local.url, *KDF_ARGS, env=pw())
    assert proc.returncode == 11
    assert "already exists" in one_error_line(proc)


def test_global_options_before_and_after_command(local: Vaulted, run: Cli) -> None:
    assert run("-q", "info", local.url, env=pw()).returncode == 0
    assert run("info", "-q", local.url, env=pw()).returncode == 0
    assert run("--endpoint", "http://unused", "info", local.url, env=pw()).returncode == 0


# --- wrong secrets, passwd, recover -------------------------------------------------------


def test_wrong_passphrase_exits_3(any_run: tuple[Cli, str]) -> None:
    run, url = any_run
    init_vault(run, url)
    proc = run("info", url, env=pw("not it"))
    assert proc.returncode == 3
    assert one_error_line(proc) == "megafs: wrong passphrase"
    assert proc.stdout == ""


def test_passwd_changes_passphrase(any_run: tuple[Cli, str]) -> None:
    run, url = any_run
    init_vault(run, url)
    proc = run("passwd", url, env={**pw(), "MEGAFS_NEW_PASSPHRASE": NEW_PASS})
    assert proc.returncode == 0, proc.stderr
    assert run("info", url, env=pw()).returncode == 3
    assert run("info", url, env=pw(NEW_PASS)).returncode == 0


def test_passwd_wrong_current_passphrase(local: Vaulted, run: Cli) -> None:
    proc = run("passwd", local.url, env={**pw("nope"), "MEGAFS_NEW_PASSPHRASE": NEW_PASS})
    assert proc.returncode == 3
    assert run("info", local.url, env=pw()).returncode == 0


def test_passwd_new_passfile_and_kdf_options(local: Vaulted, run: Cli, tmp_path: Path) -> None:
    newfile = tmp_path / "new"
    newfile.write_text(NEW_PASS + "\n")
    proc = run(
        "passwd", local.url, "--new-passfile", str(newfile), "--kdf-memory", "4096", env=pw()
    )
    assert proc.returncode == 0, proc.stderr
    info = run("info", local.url, env=pw(NEW_PASS))
    assert "memory 4096 KiB, iterations 1" in info.stdout  # iterations kept


def test_passwd_without_new_passphrase_source(local: Vaulted, run: Cli) -> None:
    proc = run("passwd", local.url, env=pw())
    assert proc.returncode == 12
    assert "MEGAFS_NEW_PASSPHRASE" in one_error_line(proc)
    assert run("info", local.url, env=pw()).returncode == 0


def test_recover_sets_new_passphrase(any_run: tuple[Cli, str]) -> None:
    run, url = any_run
    v = init_vault(run, url)
    proc = run(
        "recover",
        url,
        env={"MEGAFS_RECOVERY_KEY": v.recovery_key, "MEGAFS_NEW_PASSPHRASE": NEW_PASS},
    )
    assert proc.returncode == 0, proc.stderr
    assert run("info", url, env=pw()).returncode == 3
    assert run("info", url, env=pw(NEW_PASS)).returncode == 0


def test_recover_from_key_file_written_by_init(tmp_path: Path, run: Cli) -> None:
    """``megafs init STORE > key`` gives a file that ``--recovery-key-file`` reads."""
    v = init_vault(run, str(tmp_path / "store"))
    keyfile = tmp_path / "key.txt"
    keyfile.write_text(v.recovery_key + "\n")
    for secret in (NEW_PASS, "third"):  # the recovery key stays valid
        proc = run(
            "recover",
            v.url,
            "--recovery-key-file",
            str(keyfile),
            env={"MEGAFS_NEW_PASSPHRASE": secret},
        )
        assert proc.returncode == 0, proc.stderr
        assert run("info", v.url, env=pw(secret)).returncode == 0


def test_recover_accepts_sloppy_key(local: Vaulted, run: Cli) -> None:
    sloppy = local.recovery_key.lower().replace("-", " ")
    proc = run(
        "recover", local.url, env={"MEGAFS_RECOVERY_KEY": sloppy, "MEGAFS_NEW_PASSPHRASE": "x"}
    )
    assert proc.returncode == 0, proc.stderr


def test_recover_mistyped_key(local: Vaulted, run: Cli) -> None:
    key = local.recovery_key
    typo = key[:5] + ("A" if key[5] != "A" else "B") + key[6:]
    proc = run(
        "recover", local.url, env={"MEGAFS_RECOVERY_KEY": typo, "MEGAFS_NEW_PASSPHRASE": "x"}
    )
    assert proc.returncode == 3
    line = one_error_line(proc)
    assert "invalid recovery key" in line and "typo" in line
    short = run(
        "recover", local.url, env={"MEGAFS_RECOVERY_KEY": key[:20], "MEGAFS_NEW_PASSPHRASE": "x"}
    )
    assert short.returncode == 3
    assert "wrong length" in one_error_line(short)


def test_recover_with_another_vaults_key(local: Vaulted, run: Cli) -> None:
    other = format_recovery_key(os.urandom(32))
    proc = run(
        "recover", local.url, env={"MEGAFS_RECOVERY_KEY": other, "MEGAFS_NEW_PASSPHRASE": "x"}
    )
    assert proc.returncode == 3
    assert one_error_line(proc) == "megafs: wrong recovery key"
    assert run("info", local.url, env=pw()).returncode == 0


# --- passphrase sources ----------------------------------------------------------------------


def test_passfile_first_line_only(local: Vaulted, run: Cli, tmp_path: Path) -> None:
    f = tmp_path / "pass"
    f.write_text(PASS + "\r\nsecond line\n")
    proc = run("info", local.url, "--passfile", str(f), env=pw("env loses"))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("content", [None, "", "\nsecret"])
def test_bad_passfile_exits_12(
    local: Vaulted, run: Cli, tmp_path: Path, content: str | None
) -> None:
    f = tmp_path / "pass"
    if content is not None:
        f.write_text(content)
    proc = run("info", local.url, "--passfile", str(f), env=pw())
    assert proc.returncode == 12
    assert str(f) in one_error_line(proc)


def test_extpass(local: Vaulted, run: Cli) -> None:
    cmd = shlex.join([sys.executable, "-c", f"print({PASS!r}); print('ignored')"])
    proc = run("info", local.url, "--extpass", cmd, env=pw("env loses"))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "cmd",
    [
        "false",
        shlex.join([sys.executable, "-c", "pass"]),  # prints nothing
        "/nonexistent/askpass --flag",
        "'unbalanced",
    ],
)
def test_failing_extpass_exits_12(local: Vaulted, run: Cli, cmd: str) -> None:
    proc = run("info", local.url, "--extpass", cmd)
    assert proc.returncode == 12
    assert cmd in one_error_line(proc)


def test_empty_env_passphrase_exits_12(local: Vaulted, run: Cli) -> None:
    proc = run("info", local.url, env=pw(""))
    assert proc.returncode == 12
    assert "MEGAFS_PASSPHRASE" in one_error_line(proc)


def test_no_passphrase_without_tty_does_not_hang(local: Vaulted, run: Cli) -> None:
    start = time.monotonic()
    proc = run("info", local.url)
    assert time.monotonic() - start < 20
    assert proc.returncode == 12
    line = one_error_line(proc)
    assert "not a terminal" in line and "--passfile" in line


# --- store and header failures ----------------------------------------------------------------


def test_info_on_empty_folder_is_not_a_vault(tmp_path: Path, run: Cli) -> None:
    (tmp_path / "empty").mkdir()
    proc = run("info", str(tmp_path / "empty"), env=pw())
    assert proc.returncode == 4
    assert "no megafs vault" in one_error_line(proc)


def test_info_on_missing_folder(tmp_path: Path, run: Cli) -> None:
    proc = run("info", str(tmp_path / "missing"), env=pw())
    assert proc.returncode == 9
    assert "does not exist" in one_error_line(proc)
    assert not (tmp_path / "missing").exists()


def test_newer_format_version_exits_5(local: Vaulted, run: Cli) -> None:
    path = header_path(local)
    data = bytearray(path.read_bytes())
    data[8:10] = (header.VERSION + 1).to_bytes(2, "big")
    path.write_bytes(bytes(data))
    proc = run("info", local.url, env=pw())
    assert proc.returncode == 5
    assert "newer" in one_error_line(proc)


@pytest.mark.parametrize(
    ("offset", "code"),
    [
        pytest.param(0, 4, id="magic"),
        # The slot's commitment matches (right passphrase), its tag over the
        # vault id does not: tampering, not a wrong passphrase (format 3).
        pytest.param(12, 6, id="vault-id"),
        pytest.param(_SLOT0 + 13, 3, id="passphrase-slot-salt"),
        pytest.param(_SLOT0 + _SLOT_SEALED + 20, 3, id="passphrase-slot-commitment"),
        pytest.param(_SLOT0 + _SLOT_SEALED + 60, 6, id="passphrase-slot-wrapped-key"),
        pytest.param(_SLOT1 + _SLOT_SEALED + 20, 6, id="recovery-slot"),
        pytest.param(-1, 6, id="mac"),
    ],
)
def test_tampered_header(local: Vaulted, run: Cli, offset: int, code: int) -> None:
    flip(header_path(local), offset)
    proc = run("info", local.url, env=pw())
    assert proc.returncode == code
    one_error_line(proc)


def test_truncated_header_exits_6(local: Vaulted, run: Cli) -> None:
    path = header_path(local)
    path.write_bytes(path.read_bytes()[:-5])
    proc = run("info", local.url, env=pw())
    assert proc.returncode == 6
    assert "wrong length" in one_error_line(proc)


def test_tampered_root_exits_6(local: Vaulted, run: Cli) -> None:
    flip(Path(local.url) / "pointers" / "root", 20)
    proc = run("info", local.url, env=pw())
    assert proc.returncode == 6
    assert "root" in one_error_line(proc)


async def test_info_shows_lease_and_stats(
    local: Vaulted, run: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEGAFS_STATE_DIR", str(run.state_dir))
    store = LocalStore(local.url)
    try:
        vault = await Vault.unlock(store, PASS)
        root = await vault.read_root()
        root.generation += 1
        root.lease = vault.my_lease()
        root.stats = [3, 5 * 1024 * 1024]
        await vault.commit_root(root)
    finally:
        await store.aclose()
    proc = await trio.to_thread.run_sync(lambda: run("info", local.url, env=pw()))
    assert proc.returncode == 0, proc.stderr
    assert "root generation: 2" in proc.stdout
    assert "files:           3" in proc.stdout
    assert "bytes:           5242880 (5 MiB)" in proc.stdout
    assert f"(pid {os.getpid()}) until " in proc.stdout


async def test_new_passphrase_is_refused_if_the_header_changed_after_unlocking(
    local: Vaulted, run: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """passwd's second half (:meth:`Vault.replace_passphrase`) never overwrites a
    header that changed since its first half unlocked it."""
    monkeypatch.setenv("MEGAFS_STATE_DIR", str(run.state_dir))
    store = LocalStore(local.url)
    try:
        unlocked = await Vault.unlock(store, PASS)
        stale = Vault(store, unlocked.header, unlocked.keys)
        await unlocked.replace_passphrase(NEW_PASS)  # another passwd got there first
        with pytest.raises(errors.CommitConflict, match="changed while unlocking"):
            await stale.replace_passphrase("a third passphrase")
        fresh = await Vault.unlock(store, NEW_PASS)  # NEW_PASS still opens it
        await fresh.replace_passphrase(PASS)
        await Vault.unlock(store, PASS)
    finally:
        await store.aclose()


# --- S3 failures ------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.s3
def test_s3_unreachable_exits_7(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    run = Cli(tmp_path / "state", seaweedfs.env)
    url = f"s3://{seaweedfs.bucket}/{unique_prefix()}"
    dead = f"http://127.0.0.1:{_closed_port()}"
    via_env = run("info", url, env={**pw(), "MEGAFS_S3_ENDPOINT": dead})
    assert via_env.returncode == 7, via_env.stderr
    assert "unreachable" in one_error_line(via_env)
    via_option = run("--endpoint", dead, "init", url, *KDF_ARGS, env=pw())  # beats the env var
    assert via_option.returncode == 7, via_option.stderr
    one_error_line(via_option)


@pytest.mark.s3
@pytest.mark.parametrize("var", ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"])
def test_s3_wrong_credentials_exit_8(tmp_path: Path, seaweedfs: SeaweedFS, var: str) -> None:
    run = Cli(tmp_path / "state", seaweedfs.env)
    url = f"s3://{seaweedfs.bucket}/{unique_prefix()}"
    init_vault(run, url)
    proc = run("info", url, env={**pw(), var: seaweedfs.env[var] + "x"})
    assert proc.returncode == 8, proc.stderr
    one_error_line(proc)


@pytest.mark.s3
def test_s3_missing_bucket_exits_9(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    run = Cli(tmp_path / "state", seaweedfs.env)
    proc = run("info", "s3://no-such-bucket-megafs/x", env=pw())
    assert proc.returncode == 9, proc.stderr
    assert "does not exist" in one_error_line(proc)


# --- interactive prompts through a pseudo-terminal ------------------------------------------------


def run_in_pty(
    run: Cli, args: list[str], answers: list[str], env: Mapping[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run megafs with a pty as stdin and controlling terminal; type ``answers``.

    Each answer is typed after the next prompt (a line ending in ': ')
    appears: getpass flushes pending input when it turns echo off, so typing
    ahead would be lost. Returns the process and everything shown on the tty.
    """
    master, slave = os.openpty()

    def take_terminal() -> None:  # runs in the child, after setsid
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [*MEGAFS, *args],
        env=run.env(env),
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=take_terminal,
    )
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + TIMEOUT
    try:
        for n, answer in enumerate(answers, 1):
            while shown.count(b": ") < n:
                left = deadline - time.monotonic()
                assert left > 0, f"no prompt {n}; tty showed {shown!r}"
                ready, _, _ = select.select([master], [], [], left)
                if not ready:
                    continue
                try:
                    chunk = os.read(master, 1024)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                assert chunk, f"child exited before prompt {n}; tty showed {shown!r}"
                shown += chunk
            os.write(master, answer.encode() + b"\n")
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done, shown.decode(errors="replace")


def test_interactive_init_and_info(tmp_path: Path, run: Cli) -> None:
    url = str(tmp_path / "store")
    proc, shown = run_in_pty(run, ["init", url, *KDF_ARGS], [PASS, PASS])
    assert proc.returncode == 0, proc.stderr
    assert "New passphrase: " in shown and "Repeat passphrase: " in shown
    assert PASS not in shown  # no echo
    parse_recovery_key(proc.stdout.strip())
    info, shown = run_in_pty(run, ["info", url], [PASS])
    assert info.returncode == 0, info.stderr
    assert "Passphrase: " in shown
    assert f"format version:  {header.VERSION}" in info.stdout


def test_interactive_init_mismatch_exits_12(tmp_path: Path, run: Cli) -> None:
    url = tmp_path / "store"
    proc, _ = run_in_pty(run, ["init", str(url), *KDF_ARGS], [PASS, PASS + "x"])
    assert proc.returncode == 12
    assert one_error_line(proc) == "megafs: the passphrases do not match"
    assert not (url / "pointers" / "header").exists()


def test_interactive_passwd(local: Vaulted, run: Cli) -> None:
    proc, shown = run_in_pty(run, ["passwd", local.url], [PASS, NEW_PASS, NEW_PASS])
    assert proc.returncode == 0, proc.stderr
    assert "Current passphrase: " in shown and "Repeat new passphrase: " in shown
    assert run("info", local.url, env=pw(NEW_PASS)).returncode == 0


def test_interactive_passwd_wrong_current_fails_before_new_prompt(local: Vaulted, run: Cli) -> None:
    proc, shown = run_in_pty(run, ["passwd", local.url], ["wrong"])
    assert proc.returncode == 3
    assert "New passphrase" not in shown


def test_interactive_recover(local: Vaulted, run: Cli) -> None:
    proc, shown = run_in_pty(run, ["recover", local.url], [local.recovery_key, NEW_PASS, NEW_PASS])
    assert proc.returncode == 0, proc.stderr
    assert "Recovery key: " in shown and local.recovery_key not in shown
    assert run("info", local.url, env=pw(NEW_PASS)).returncode == 0


# --- the exit-code table itself (in process) ----------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.UsageError("x"), 2),
        (errors.WrongPassphrase("x"), 3),
        (errors.NotAVault("x"), 4),
        (errors.UnsupportedVersion("x"), 5),
        (errors.CorruptHeader("x"), 6),
        (errors.IntegrityError("obj"), 6),
        (errors.RollbackError("root", 5, 3), 6),
        (errors.StoreUnreachable("x"), 7),
        (errors.StoreAuthError("x"), 8),
        (errors.NoSuchBucket("x"), 9),
        (errors.VaultBusy("x"), 10),
        (errors.CommitConflict("x"), 10),
        (errors.VaultExists("x"), 11),
        (errors.PassphraseError("x"), 12),
        (errors.StoreFull("x"), 13),
        (errors.StoreReadOnly("x"), 13),
        (errors.ObjectNotFound("x"), 13),
        (errors.StoreError("x"), 13),
        (errors.MegafsError("x"), 1),
        (RuntimeError("x"), 1),
        (KeyboardInterrupt(), 130),
        (ExceptionGroup("g", [errors.StoreUnreachable("x")]), 7),
        (BaseExceptionGroup("g", [errors.NotAVault("x"), KeyboardInterrupt()]), 130),
        (ExceptionGroup("g", [errors.NotAVault("x"), ValueError("bug")]), 1),
    ],
)
def test_exit_code_table(exc: BaseException, code: int) -> None:
    assert cli.exit_code(exc) == code


def test_report_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.report(errors.StoreError("multi\nline   message"), debug=False) == 13
    assert capsys.readouterr().err == "megafs: multi line message\n"
    assert cli.report(RuntimeError("boom"), debug=False) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "internal error: RuntimeError: boom" in err and "--debug" in err
    try:
        raise RuntimeError("boom")
    except RuntimeError as e:
        assert cli.report(e, debug=True) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("megafs: internal error: RuntimeError: boom\n")
