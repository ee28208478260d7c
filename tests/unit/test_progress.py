"""The progress helper: nothing at all on a pipe or a file; on a terminal
(a pseudo-terminal here) a bar with the counts, erased at the end."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from megafs.cli import history_commands
from megafs.cli import progress as progress_module
from megafs.cli.progress import progress, wanted


def read_all(fd: int) -> bytes:
    out = b""
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the other end is closed
            break
        if not chunk:
            break
        out += chunk
    return out


def test_quiet_on_a_pipe_and_a_file(tmp_path: Path) -> None:
    r, w = os.pipe()
    with os.fdopen(w, "w") as pipe, open(tmp_path / "log", "w") as file:
        for stream in (pipe, file, io.StringIO()):
            assert not wanted(stream)
            with progress(3, unit="B", desc="uploading", stream=stream) as bar:
                assert not bar.shown
                bar.update(1)
                bar.set(2)
                bar.set_total(4)
                bar.stage("checking", 10)
                bar.note("2 left")
    with os.fdopen(r, "rb") as f:
        assert f.read() == b""
    assert (tmp_path / "log").read_text() == ""


@pytest.mark.parametrize("term", ["xterm", "dumb"])
def test_counts_on_a_terminal(term: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", term)
    monkeypatch.setattr(progress_module, "REDRAW", 0)  # draw every change
    master, slave = pty.openpty()
    try:
        with os.fdopen(os.dup(slave), "w") as tty:
            assert wanted(tty) == (term != "dumb")
            with progress(5, desc="objects", stream=tty) as bar:
                assert bar.shown == (term != "dumb")
                for _ in range(5):
                    bar.update()
                bar.note("all read")
                bar.set(5)
                tty.flush()
                during = read_all(master)
                bar.stage("removing", 2)
                bar.update(2)
            with progress(unit="B", desc="uploading", stream=tty) as bar:
                bar.set(3 << 20)
                bar.set_total(4 << 20)
                bar.set(4 << 20)
            with progress(3, stream=tty, enabled=False) as bar:
                assert not bar.shown
            tty.flush()
            after = read_all(master)
    finally:
        os.close(slave)
        os.close(master)
    if term == "dumb":
        assert during == after == b""
        return
    text = during.decode()
    assert "objects" in text and "5/5" in text, text
    text = after.decode()
    assert "removing" in text and "2/2" in text, text
    assert "uploading" in text and "3.15M/4.19M" in text, text


def test_erased_at_the_end_under_script(tmp_path: Path) -> None:
    """Run by a real terminal program (script(1)): the bar shows while the
    block runs and the line is cleared once it ends."""
    prog = textwrap.dedent(
        """
        import sys, time
        from megafs.cli.progress import progress
        with progress(4 << 20, unit="B", desc="uploading") as bar:
            bar.update(1 << 20)
            time.sleep(0.3)  # a redraw is due
            bar.update(3 << 20)
        print("done", file=sys.stderr)
        """
    )
    proc = subprocess.run(
        ["script", "-qec", f"{sys.executable} -c '{prog}'", "/dev/null"],
        capture_output=True,
        env={**os.environ, "TERM": "xterm"},
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=True,
    )
    out = proc.stdout.decode()
    assert "uploading" in out and "4.19M/4.19M" in out, out
    # the bar's line is blanked, and the cursor back at its start, before "done"
    before, _, rest = out.rpartition("done")
    last_bar = before.rindex("4.19M/4.19M")
    assert re.search(r"\r {20,}\r$", before[last_bar:]), repr(before[last_bar:])
    assert rest.strip() == ""


def test_a_long_restore_shows_its_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``megafs restore`` (and ``trash restore``) copy with cp -a; one still
    copying after SHOW_AFTER seconds (here at once) shows the bytes copied
    against the source's size; quiet, or on a pipe, it shows nothing."""
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    for i in range(8):
        (source / "sub" / f"f{i}").write_bytes(os.urandom(1 << 20))
    monkeypatch.setattr(history_commands, "SHOW_AFTER", 0)
    assert history_commands.tree_bytes(source) == 8 << 20
    master, slave = pty.openpty()
    try:
        with os.fdopen(os.dup(slave), "w") as tty:
            monkeypatch.setattr(sys, "stderr", tty)
            history_commands.copy_back(source, tmp_path / "quiet", quiet=True)
            tty.flush()
            assert read_all(master) == b""
            history_commands.copy_back(source, tmp_path / "shown")
            tty.flush()
            shown = read_all(master).decode()
    finally:
        os.close(slave)
        os.close(master)
    assert "restoring:" in shown and "/8.39M" in shown, shown
    for copy in ("quiet", "shown"):
        assert history_commands.tree_bytes(tmp_path / copy) == 8 << 20
