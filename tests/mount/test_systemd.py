"""Running under systemd: a ``Type=notify`` service gets ``READY=1`` only once
the folder is usable and ``STOPPING=1`` when unmounting begins; the
passphrase can come from a systemd credential (``LoadCredential=``)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from ..support.helpers import MEGAFS, PASS, run_megafs
from ..support.mounting import MOUNT_DEADLINE, UMOUNT_DEADLINE, Drive

pytestmark = pytest.mark.fuse


def test_notify_socket_and_credential(
    tmp_path: Path, any_store_url: tuple[str, dict[str, str]]
) -> None:
    url, store_env = any_store_url
    drive = Drive(url, tmp_path / "drive", store_env)
    drive.init()
    listen = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listen.bind(str(tmp_path / "notify"))
    listen.settimeout(MOUNT_DEADLINE)
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "megafs-passphrase").write_text(PASS + "\n")
    env = drive.env(
        {"NOTIFY_SOCKET": str(tmp_path / "notify"), "CREDENTIALS_DIRECTORY": str(creds)}
    )
    del env["MEGAFS_PASSPHRASE"]  # the credential is the only source
    daemon = subprocess.Popen(
        [*MEGAFS, "mount", "-f", url, str(drive.mountpoint)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert listen.recv(256) == b"READY=1"
        # ready means usable: the folder is mounted and works at this moment
        assert os.path.ismount(drive.mountpoint)
        (drive.mountpoint / "note").write_text("written once READY=1 came")
        assert os.listdir(drive.mountpoint) == ["note"]
        umount = run_megafs("umount", drive.mountpoint, env=drive.env())
        assert umount.returncode == 0, umount.stderr
        listen.settimeout(UMOUNT_DEADLINE)
        assert listen.recv(256) == b"STOPPING=1"
        _, err = daemon.communicate(timeout=UMOUNT_DEADLINE)
        assert daemon.returncode == 0, err
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        drive.cleanup()
        listen.close()
    drive.mount()  # what was written under systemd is in the vault
    try:
        assert (drive.mountpoint / "note").read_text() == "written once READY=1 came"
    finally:
        drive.cleanup()


def test_without_notify_socket_nothing_is_sent(tmp_path: Path) -> None:
    """Outside systemd the notifier is silent, and it takes NOTIFY_SOCKET out of
    the environment so that no child process notifies in the service's name."""
    from megafs.mount.notify import SystemdNotifier

    listen = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listen.bind(str(tmp_path / "n"))
    listen.settimeout(5)
    os.environ["NOTIFY_SOCKET"] = str(tmp_path / "n")
    try:
        notifier = SystemdNotifier.from_environment()
        assert "NOTIFY_SOCKET" not in os.environ
        notifier.notify("READY=1")
        assert listen.recv(64) == b"READY=1"
        SystemdNotifier.from_environment().notify("READY=1")  # nothing to send to now
        listen.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listen.recv(64)
    finally:
        os.environ.pop("NOTIFY_SOCKET", None)
        listen.close()
