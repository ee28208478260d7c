"""A wheel built from this checkout installs into a fresh virtual
environment and its ``megafs`` script runs: one version number (the
package's) everywhere, the license and the typed marker shipped."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import megafs

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str | Path, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, check=False, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_a_built_wheel_installs_and_runs(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    # as `python -m build` does: the build backend in an isolated environment
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, ROOT)
    [wheel] = dist.glob("megafs-*.whl")
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
