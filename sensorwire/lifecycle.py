"""Process lifecycle: SIGTERM/SIGINT set a stop flag and wake the main loop.

:class:`StopSignal` installs handlers that set a flag and write to a
self-pipe registered with :func:`signal.set_wakeup_fd`; the pipe's read end
can sit in a ``zmq.Poller`` beside the sockets, so a loop that blocks in
``poll`` wakes at once, with no timer and no busy waiting.

The flags are plain attributes (:class:`Flag`), not :class:`threading.Event`:
a handler runs between two bytecodes of the main thread, possibly inside an
``Event.set()`` of a handler before it (two SIGTERMs close together, as GNU
``timeout`` or an impatient Ctrl-C send), and taking that event's lock again
would deadlock the process.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from types import FrameType
from typing import Any


class Flag:
    """A flag that a signal handler may set at any moment: no lock (an assignment is atomic).
    Threads that need to wait poll :attr:`StopSignal.fd` instead."""

    __slots__ = ("_on",)

    def __init__(self) -> None:
        self._on = False

    def set(self) -> None:
        self._on = True

    def clear(self) -> None:
        self._on = False

    def is_set(self) -> bool:
        return self._on


class StopSignal:
    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.event = Flag()
        self.hup = Flag()
        self._signals = signals
        self._old: dict[int, Any] = {}
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)
        self._old_wakeup = -1
        self._on_stop: list[Callable[[], None]] = []

    @property
    def fd(self) -> int:
        """A file descriptor that becomes readable when a signal arrives."""
        return self._rsock.fileno()

    def drain(self) -> None:
        try:
            while self._rsock.recv(512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.hup.set()
        else:
            first = not self.event.is_set()
            self.event.set()
            if first:
                for fn in self._on_stop:
                    fn()

    def on_stop(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` (in the main thread) when the first SIGTERM/SIGINT arrives."""
        self._on_stop.append(fn)

    def install(self, with_hup: bool = False) -> StopSignal:
        sigs = self._signals + ((signal.SIGHUP,) if with_hup else ())
        for sig in sigs:
            self._old[sig] = signal.signal(sig, self._handle)
        self._old_wakeup = signal.set_wakeup_fd(self._wsock.fileno(), warn_on_full_buffer=False)
        return self

    def set(self) -> None:
        """Ask for a stop from any thread."""
        self.event.set()
        try:
            self._wsock.send(b"\0")
        except OSError:
            pass

    def request_reload(self) -> None:
        """Ask for a reload, as SIGHUP does, from any thread."""
        self.hup.set()
        try:
            self._wsock.send(b"\0")
        except OSError:
            pass

    def is_set(self) -> bool:
        return self.event.is_set()

    def close(self) -> None:
        if self._old:
            signal.set_wakeup_fd(self._old_wakeup)
            for sig, old in self._old.items():
                signal.signal(sig, old)
            self._old.clear()
        for s in (self._rsock, self._wsock):
            try:
                s.close()
            except OSError:
                pass

    def __enter__(self) -> StopSignal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

