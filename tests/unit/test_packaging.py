"""A wheel built from this checkout installs into a fresh virtual
environment, and with ``pipx install``, and its ``megafs`` script runs (the
venv's mounts, writes, unmounts and remounts a vault): one
version number (the package's) everywhere, the license and the typed marker
shipped."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import megafs

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str | Path, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, check=False, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this checkout, built once for the module's tests."""
    dist = tmp_path_factory.mktemp("dist")
    # as `python -m build` does: the build backend in an isolated environment
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, ROOT)
    [built] = dist.glob("megafs-*.whl")
    return built


def test_a_built_wheel_installs_and_runs(tmp_path: Path, wheel: Path) -> None:
    assert wheel.name.startswith(f"megafs-{megafs.__version__}-py3-none-any")
    names = zipfile.ZipFile(wheel).namelist()
    assert "megafs/py.typed" in names
    assert any(
        n.endswith(".dist-info/licenses/LICENSE") or n.endswith("/LICENSE") for n in names
    ), names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    meta = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith(".dist-info/METADATA")))
        .decode()
    )
    assert f"Version: {megafs.__version__}" in meta and "Classifier: " in meta
    # a fresh environment that sees the dependencies installed here, not this checkout
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--system-site-packages", venv)
    run(venv / "bin" / "pip", "install", "--no-deps", "--no-index", "--force-reinstall", wheel)
    out = run(venv / "bin" / "megafs", "--version", cwd=tmp_path)
    assert out.strip() == f"megafs {megafs.__version__}"
    where = run(
        venv / "bin" / "python", "-c", "import megafs; print(megafs.__file__)", cwd=tmp_path
    )
    assert str(venv) in where, where
    _mounts_writes_and_remounts(venv / "bin" / "megafs", tmp_path)


def _mounts_writes_and_remounts(megafs_bin: Path, tmp: Path) -> None:
    """The installed ``megafs`` makes a vault in a local folder, mounts it,
    writes a file, unmounts, mounts again and reads the file back (the
    package's own files, the share page included, are all it has)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MEGAFS_", "XDG_", "PYTHON"))
    }
    env.update(
        MEGAFS_PASSPHRASE="wheel test",
        MEGAFS_STATE_DIR=str(tmp / "state"),
        XDG_RUNTIME_DIR=str(tmp / "run"),
        XDG_CACHE_HOME=str(tmp / "cache"),
    )
    (tmp / "run").mkdir(mode=0o700)
    store, mnt = tmp / "store", tmp / "mnt"
    mnt.mkdir()

    def megafs_run(*args: str | Path) -> None:
        proc = subprocess.run(
            [str(megafs_bin), *map(str, args)],
            env=env,
            cwd=tmp,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert proc.returncode == 0, f"megafs {args}: {proc.stderr[-3000:]}"

    megafs_run("init", store, "--kdf-memory", "8192", "--kdf-iterations", "1")
    megafs_run("mount", store, mnt)
    try:
        (mnt / "hello.txt").write_text("from the wheel\n")
    finally:
        megafs_run("umount", mnt)
    assert not (mnt / "hello.txt").exists()
    megafs_run("mount", store, mnt)
    try:
        assert (mnt / "hello.txt").read_text() == "from the wheel\n"
    finally:
        megafs_run("umount", mnt)


def test_pipx_installs_the_wheel(tmp_path: Path, wheel: Path) -> None:
    """``pipx install`` of the wheel: an environment of its own under
    PIPX_HOME and a ``megafs`` command in PIPX_BIN_DIR that runs from it.
    The dependencies come from this Python's packages (as in the test
    above), so that the test needs no download but pipx's own pip."""
    home, bin_dir = tmp_path / "pipx", tmp_path / "bin"
    env = {
        **os.environ,
        "PIPX_HOME": str(home),
        "PIPX_BIN_DIR": str(bin_dir),
        "PIPX_MAN_DIR": str(tmp_path / "man"),
    }
    pipx = [sys.executable, "-m", "pipx", "install", "--system-site-packages"]
    proc = subprocess.run(
        [*pipx, "--pip-args=--no-deps", str(wheel)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    megafs_bin = bin_dir / "megafs"
    assert os.path.realpath(megafs_bin).startswith(str(home / "venvs" / "megafs")), megafs_bin
    out = run(megafs_bin, "--version", cwd=tmp_path)
    assert out.strip() == f"megafs {megafs.__version__}"
    python = home / "venvs" / "megafs" / "bin" / "python"
    where = run(python, "-c", "import megafs; print(megafs.__file__)", cwd=tmp_path)
    assert str(home) in where, where
