"""The systemd notify protocol: one datagram to ``$NOTIFY_SOCKET``.

No-op when the variable is unset (not started by systemd).  Also used by
``sensorwire demo`` and the tests to learn when a process is ready.

Sending never blocks for long: the roles notify from their main loops
(``WATCHDOG=1``, ``STATUS=``), and a socket nobody reads holds only a few
datagrams (``net.unix.max_dgram_qlen``, 10 by default) before a blocking
send would wait for ever.  A ``WATCHDOG=1`` or ``STATUS=`` that cannot be
sent at once is dropped (the next one follows soon); a change of state
(``READY=1``, ``RELOADING=1``, ``STOPPING=1``) is tried again for up to
``STATE_RETRY_S``, as systemd waits for it.  What is not sent is counted
(:func:`unsent`) and logged at DEBUG.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

_unsent = 0
STATE_RETRY_S = 2.0  # a full socket is tried again this long for READY=1, RELOADING=1, STOPPING=1
_STATES = ("READY=1", "RELOADING=1", "STOPPING=1")


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) without blocking; False when it was not sent
    (nobody to tell, or the receiver is not reading)."""
    global _unsent
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    deadline = time.monotonic() + (STATE_RETRY_S if any(k in state for k in _STATES) else 0.0)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            while True:
                try:
                    s.sendto(state.encode(), socket.MSG_DONTWAIT, addr)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.01)  # the receiver is behind: a state change is worth a wait
    except OSError as exc:
        _unsent += 1
        log.debug("could not notify %s (%d so far): %r: %s", addr.lstrip("\0"), _unsent,
                  state.split("\n", 1)[0], exc)
        return False
    return True


def unsent() -> int:
    """How many notifications this process could not send (with ``NOTIFY_SOCKET`` set)."""
    return _unsent


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
