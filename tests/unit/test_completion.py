"""``megafs completion bash|zsh``: the scripts load in a real bash and zsh and
complete the commands and the options that ``--help`` lists."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from megafs.cli import COMMANDS

from ..support.helpers import run_megafs

BASH_COMPLETE = """
source "$1"
complete -p megafs
shift
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
_shtab_megafs megafs "${COMP_WORDS[-1]}" "${COMP_WORDS[-2]}"
printf '%s\\n' "${COMPREPLY[@]}"
"""


def script(shell: str, tmp: Path) -> Path:
    proc = run_megafs("completion", shell, env=os.environ)
    assert proc.returncode == 0, proc.stderr
    path = tmp / f"megafs.{shell}"
    path.write_text(proc.stdout)
    return path


def bash_complete(path: Path, *words: str) -> list[str]:
    proc = subprocess.run(
        ["bash", "-c", BASH_COMPLETE, "bash", str(path), "megafs", *words],
        capture_output=True, text=True, timeout=60, check=True,
    )
    registered, *offered = proc.stdout.splitlines()
    assert registered == "complete -o bashdefault -F _shtab_megafs megafs"
    return offered


def test_bash_completes_commands_and_options(tmp_path: Path) -> None:
    path = script("bash", tmp_path)
    assert bash_complete(path, "mo") == ["mount"]
    assert set(bash_complete(path, "")) >= set(COMMANDS)
    assert bash_complete(path, "mount", "--ca") == ["--cache-dir", "--cache-size"]
    assert bash_complete(path, "mount", "--device") == ["--device-name"]
    assert bash_complete(path, "fsck", "--re") == ["--repair"]


def test_zsh_loads_and_completes_commands_and_options(tmp_path: Path) -> None:
    assert shutil.which("zsh"), "zsh missing: bash scripts/setup installs it"
    path = script("zsh", tmp_path)
    # compinit registers the function for megafs; _describe (what zsh calls to
    # offer the commands) is stood in for, to print what it is offered
    check = """
autoload -Uz compinit && compinit -u -D
eval "$(cat "$1")"
print -r -- "registered: $_comps[megafs]"
_describe() { print -l -- ${(P)2}; }
_shtab_megafs_commands
print -l -- $_shtab_megafs_mount_options
"""
    proc = subprocess.run(
        ["zsh", "-f", "-c", check, "zsh", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    lines = proc.stdout.splitlines()
    assert lines[0] == "registered: _shtab_megafs"
    offered = {line.split(":", 1)[0] for line in lines[1:] if ":" in line and "[" not in line}
    assert offered >= set(COMMANDS)
    assert any("--cache-dir" in line for line in lines)
    assert any("--device-name" in line for line in lines)
