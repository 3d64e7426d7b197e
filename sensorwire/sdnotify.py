"""The systemd notify protocol: one datagram to ``$NOTIFY_SOCKET``.

No-op when the variable is unset (not started by systemd).  Also used by
``sensorwire demo`` and the tests to learn when a process is ready.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``); False when there is nobody to tell."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), addr)
    except OSError:
        return False
    return True


class NotifyListener:
    """The receiving end, for a parent process that starts sensorwire roles."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(path)
        self.messages: list[str] = []

    def wait_for(self, needle: str, timeout_s: float,
                 alive: Callable[[], bool] | None = None) -> bool:
        """Wait until a received datagram holds ``needle``; keeps every message seen.

        Gives up early when ``alive`` (checked every 0.2 s) says the sender is gone.
        """

        deadline = time.monotonic() + timeout_s
        if any(needle in m for m in self.messages):
            return True
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if alive is not None and not alive():
                return False
            self.sock.settimeout(min(left, 0.2) if alive is not None else left)
            try:
                data = self.sock.recv(4096).decode(errors="replace")
            except TimeoutError:
                continue
            self.messages.append(data)
            if needle in data:
                return True

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
