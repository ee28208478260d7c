"""Telling systemd how a mount is doing (``Type=notify`` services).

systemd passes the address of its notification socket in ``NOTIFY_SOCKET``
(a path, or an abstract address starting with ``@``); a service sends it
datagrams of ``KEY=VALUE`` lines (sd_notify(3)). megafs sends ``READY=1``
once the folder is mounted and usable, and ``STOPPING=1`` when it begins to
unmount (flush, commit, exit). The protocol is one datagram send, which is
why this is not a dependency: the libraries for it (systemd's own Python
bindings) need a C build against libsystemd.

Without ``NOTIFY_SOCKET`` (not under systemd) every call does nothing. A
failed send is logged and otherwise ignored: notifying never stops a mount.
The variable is taken out of the environment when it is read, so that no
child process (``fusermount3``) notifies in the service's name.

May not touch: the vault, the model, FUSE; imports nothing of megafs.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

ENV = "NOTIFY_SOCKET"


class SystemdNotifier:
    """The notification socket systemd gave this process, if any."""

    def __init__(self, address: str | None) -> None:
        self.address = address

    @classmethod
    def from_environment(cls) -> SystemdNotifier:
        """The socket named by ``NOTIFY_SOCKET``, which is taken out of the
        environment so that no child process notifies in our name."""
        return cls(os.environ.pop(ENV, None) or None)

    def notify(self, state: str) -> None:
        """Send ``state`` (e.g. ``"READY=1"``), if systemd listens. Does not block."""
        if self.address is None:
            return
        address = self.address
        target = "\0" + address[1:] if address.startswith("@") else address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(target)
                s.sendall(state.encode())
        except OSError as e:
            log.warning("could not notify systemd (%s): %s", state, e)
