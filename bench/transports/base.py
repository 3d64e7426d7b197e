"""The transport plug-in interface: what a peer supplies to be benchmarked.

A transport is a :class:`Transport` object in the registry
(:mod:`bench.transports`).  The harness runs its two halves in two separate
processes, and never calls a transport's client library itself:

* in the publisher process, ``transport.sender(env)`` gives a :class:`Sender`;
  the harness calls ``open()`` once, then ``run(pace)`` per trial followed by
  ``flush()``, then ``close()``;
* in the subscriber process, ``transport.receiver(env)`` gives a
  :class:`Receiver`; the harness calls ``run(handle, stop, ready)`` once in the
  main thread.  It must subscribe, call ``ready()``, then decode every message
  into a ``Frame`` and pass it to ``handle`` until ``stop`` is set; it must
  notice ``stop`` within about 0.2 s and close what it opened before
  returning.

``env`` is what :meth:`Transport.services` set up for one run (free ports, a
proxy process), as strings, so it can be handed to the child processes; a
``proxy_pid`` in it has the harness report that process's CPU per frame too.

What the harness guarantees: ``handle`` is only called from the thread (or
the one callback thread) the receiver delivers on; ``flush`` is called after
every ``run``; ``close`` is called even when a trial failed; transports never
see a trial boundary, so they need no state beyond their client objects.
"""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

from bench.pacing import Pace, SendStats, drive
from bench.workload import FrameBuilder

Env = dict[str, str]


class Received(Protocol):
    """What a handler reads of a received frame: a protobuf ``Frame``, or the collector's
    ``CheckedFrame`` in the sensorwire row."""

    @property
    def seq(self) -> int: ...

    @property
    def time_unix_nano(self) -> int: ...


Handler = Callable[[Received], None]


class Sender(Protocol):
    def open(self) -> None: ...

    @property
    def next_seq(self) -> int:
        """The seq the next frame built will carry."""
        ...

    def run(self, pace: Pace, should_stop: Callable[[], bool] | None = None) -> SendStats: ...

    def flush(self, timeout_s: float) -> None:
        """Return once everything sent is on its way (or after ``timeout_s``)."""
        ...

    def close(self) -> None: ...


class Receiver(Protocol):
    def run(self, handle: Handler, stop: threading.Event, ready: Callable[[], None]) -> None: ...

    def details(self) -> dict[str, object]:
        """Counters worth reporting (e.g. a client's own drop counts); may be empty."""
        ...


class SyncSender:
    """Base for senders with a blocking client: subclasses supply ``send(n)``."""

    builder: FrameBuilder

    def __init__(self) -> None:
        self.builder = FrameBuilder()

    @property
    def next_seq(self) -> int:
        return self.builder.next_seq

    def send(self, n: int) -> int:
        """Build and send ``n`` frames; return how many the client accepted."""
        raise NotImplementedError

    def run(self, pace: Pace, should_stop: Callable[[], bool] | None = None) -> SendStats:
        return drive(pace, self.send, should_stop=should_stop)

    def flush(self, timeout_s: float) -> None:
        pass


class Transport:
    """One row of the table.  Subclasses set the class attributes and the two factories."""

    name: str = ""  # the word for --only
    label: str = ""  # the table's row name
    practice: str = ""  # how the client is driven, for the README and the report
    modules: tuple[str, ...] = ()  # client libraries, by import name
    server: tuple[str, int] | None = None  # (host, port) of a server it needs

    def unavailable(self) -> str | None:
        """Why this transport cannot run here (None when it can)."""
        for mod in self.modules:
            if importlib.util.find_spec(mod) is None:
                return f"client library {mod!r} is not installed (pip install -e '.[bench]')"
        if self.server is not None:
            host, port = self.server
            try:
                socket.create_connection((host, port), timeout=1.0).close()
            except OSError as exc:
                return f"no server on {host}:{port} ({exc.strerror or exc})"
        return None

    def versions(self) -> str:
        """Client (and server) versions, for the report."""
        return ""

    @contextlib.contextmanager
    def services(self) -> Iterator[Env]:
        """Set up what one run needs (ports, helper processes); tear it down after."""
        yield {}

    def sender(self, env: Env) -> Sender:
        raise NotImplementedError

    def receiver(self, env: Env) -> Receiver:
        raise NotImplementedError
