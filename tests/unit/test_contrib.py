"""contrib/: the systemd units pass ``systemd-analyze verify`` (which also
checks that the command they run exists) and run megafs the way a
``Type=notify`` service must: in the foreground, the passphrase from a
credential or a file, never from the unit itself."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
UNITS = {"megafs@.service": [], "megafs-user@.service": ["--user"]}


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_verifies(unit: str, tmp_path: Path) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze missing: bash scripts/setup"
    instance = tmp_path / unit.replace("@", "@demo")
    shutil.copy(CONTRIB / "systemd" / unit, instance)
    (tmp_path / "run").mkdir(mode=0o700)
    proc = subprocess.run(
        ["systemd-analyze", "verify", *UNITS[unit], str(instance)],
        env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "run")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    text = instance.read_text()
    assert "Type=notify" in text and "NotifyAccess=main" in text
    assert " mount -f " in text and "ExecStop=/usr/local/bin/megafs umount" in text
    assert "MEGAFS_PASSPHRASE" not in text
    assert "LoadCredential=megafs-passphrase:" in text or "--passfile" in text


def test_a_broken_unit_fails_verification(tmp_path: Path) -> None:
    """The control: verify does catch a unit whose command does not exist."""
    broken = tmp_path / "megafs@demo.service"
    text = (CONTRIB / "systemd" / "megafs@.service").read_text()
    broken.write_text(text.replace("/usr/local/bin/megafs", "/nonexistent/megafs"))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0 and "/nonexistent/megafs" in proc.stderr
