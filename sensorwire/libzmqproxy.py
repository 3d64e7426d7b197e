"""The proxy's data path in C: libzmq's ``zmq_proxy_steerable`` in a thread.

Used by :mod:`sensorwire.proxy` when neither the last-value cache nor CURVE
identity checks are on (the default configuration), because then no Python
code needs to see a frame: libzmq moves every message in both directions,
about half the CPU per frame of the Python loop.

- :class:`Forwarder` runs ``zmq.proxy_steerable(frontend, backend,
  control=...)`` in a thread of its own (pyzmq releases the GIL there) and
  steers it over an ``inproc://`` PAIR: ``STATISTICS`` returns libzmq's eight
  counters (:class:`Statistics`), ``TERMINATE`` stops it.  The sockets are
  made and bound by the proxy's main thread and handed over when the thread
  starts (a full memory barrier, which is all libzmq asks); they are closed
  there again after the thread has ended, and never while it runs.  A proxy
  thread kept busy (a flood of subscriptions) answers ``STATISTICS`` late:
  :meth:`Forwarder.statistics` then returns None and asks again only once
  the answer has come, so answers never queue up.  One that does not stop on
  ``TERMINATE`` within ``JOIN_S`` raises :class:`Stuck`: its sockets cannot be
  closed safely and ``zmq_ctx_term`` would wait for them forever.
- :class:`Upstream` is the proxy's own peer on its frontend, in the main
  thread's poller: an XPUB connected over ``inproc://``, as an agent is. It
  sees what collectors send upstream (subscriptions, counted and, as far as
  MAX_SUBSCRIPTIONS goes, held: see below; pings, answered
  with ``$ack/<nonce>``, which libzmq then forwards to the backend like an
  agent's message, and which the frame and byte counters leave out, as the
  Python loop does).  It never sees a data frame.

Subscriptions are not bounded here: libzmq stores every distinct one a
collector sends, in the backend's trie, the frontend's (to send them again to
an agent that reconnects) and the Upstream's, and forwards them to every
agent.  The Upstream mirrors them (what the backend forwards is each prefix's
first subscription and its last unsubscription) up to MAX_SUBSCRIPTIONS or
MAX_SUBSCRIPTION_BYTES, the agents' own budget (:mod:`sensorwire.agent.publisher`),
and past it logs an ERROR (at most once a minute) that says what to do; the
count is in the summary line.

What changes against the Python loop:

- a ping also travels on to the agents connected at that moment, which
  answer too (the proxy's answer comes first, the subscriber ignores the
  rest).  Their answers are messages from agents, so they are in the frames
  forwarded; a subscriber started after the agents adds one per agent;
- the proxy no longer drops multi-part messages or frames with too many
  samples itself: the collector rejects and counts both (decode errors
  ``multipart`` and ``too_many_samples``), and ``sensorwire tail`` skips
  them.  ``ZMQ_MAXMSGSIZE`` still bounds the size on both sockets
  (``[limits] max_message_bytes`` from agents, ``max_upstream_bytes`` from
  collectors).
"""

from __future__ import annotations

import itertools
import logging
import struct
import threading
import time
from dataclasses import dataclass

import zmq

from sensorwire.proto import wire

log = logging.getLogger(__name__)

JOIN_S = 5.0  # the proxy thread returns on TERMINATE once it is done with its current burst
STATS_WAIT_S = 0.5  # how long statistics() waits for an answer before saying "not yet"
_ids = itertools.count(1)
ACK_MAX_BYTES = len(wire.ACK) + 64  # an answer to a ping: $ack/ + the ping's nonce (<= 64)
MAX_LIVE = 10_000  # ping-answer subscriptions tracked at once (one or two per subscriber)
# distinct subscriptions collectors may hold: the agents' budget, past which each agent drops its
# connection to the proxy (sensorwire.agent.publisher), so the proxy forwards no more than it
MAX_SUBSCRIPTIONS = 10_000
MAX_SUBSCRIPTION_BYTES = 256 * 1024
# ZMQ_SNDHWM of the frontend (XSUB): what it sends each agent (subscriptions, unsubscriptions,
# repair requests) that the agent has not yet taken in.  libzmq drops what does not fit, without a
# word (so would a lost unsubscription keep an agent sending frames nobody takes, instead of
# spooling them); an agent that connects is sent every subscription in force at once, at most
# MAX_SUBSCRIPTIONS within the budget, so the queue holds that twice over.  It fills only for an
# agent that stops reading while subscriptions keep changing: at most a few MB for that agent.
UPSTREAM_QUEUE = 2 * MAX_SUBSCRIPTIONS
OVER_BUDGET_LOG_S = 60.0


@dataclass(frozen=True)
class Statistics:
    """libzmq's proxy counters (4.3.5: messages count each part of a multi-part one)."""

    frontend_in: int = 0          # messages from agents
    frontend_in_bytes: int = 0
    frontend_out: int = 0         # messages to agents (subscriptions, repair requests, pings)
    frontend_out_bytes: int = 0
    backend_in: int = 0           # messages from collectors
    backend_in_bytes: int = 0
    backend_out: int = 0          # messages to collectors
    backend_out_bytes: int = 0

    @classmethod
    def from_parts(cls, parts: list[bytes]) -> Statistics:
        if len(parts) != 8 or any(len(p) != 8 for p in parts):
            raise ValueError(f"STATISTICS: expected 8 parts of 8 bytes, got {parts!r}")
        return cls(*(struct.unpack("=Q", p)[0] for p in parts))


def endpoint() -> str:
    """A fresh ``inproc://`` endpoint for one proxy's frontend in this process."""
    return f"inproc://sensorwire-proxy-{next(_ids)}-frontend"


class Stuck(RuntimeError):
    """The proxy thread did not stop: its sockets must stay open and the context unterminated."""


class Forwarder:
    """``zmq.proxy_steerable`` between two bound sockets; construct, :meth:`start`, :meth:`close`."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], front: zmq.Socket[bytes],
                 back: zmq.Socket[bytes]) -> None:
        self._ctx = ctx
        self._front = front
        self._back = back
        self._control: zmq.Socket[bytes] | None = None   # ours
        self._steered: zmq.Socket[bytes] | None = None   # the proxy thread's
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self._asked = False  # a STATISTICS sent and not answered yet

    def start(self) -> None:
        endpoint = f"inproc://sensorwire-proxy-control-{next(_ids)}"
        self._steered = self._ctx.socket(zmq.PAIR)
        self._control = self._ctx.socket(zmq.PAIR)
        for s in (self._steered, self._control):
            s.setsockopt(zmq.LINGER, 0)
        self._steered.bind(endpoint)
        self._control.connect(endpoint)
        self._thread = threading.Thread(target=self._run, name="sensorwire-proxy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            zmq.proxy_steerable(self._front, self._back, None, self._steered)
        except BaseException as exc:  # noqa: BLE001 - reported by check() in the main thread
            self.error = exc

    def check(self) -> None:
        """Raise if the proxy thread has ended on its own (it only ends on TERMINATE)."""
        if self._thread is not None and not self._thread.is_alive():
            raise RuntimeError(f"the libzmq proxy thread stopped: {self.error!r}")

    def statistics(self) -> Statistics | None:
        """libzmq's counters, or None when the proxy thread has not answered within
        ``STATS_WAIT_S`` (it is busy: the answer is read at a later call, none is asked twice)."""
        control = self._control
        assert control is not None
        if not self._asked:
            control.send(b"STATISTICS")
            self._asked = True
        if not control.poll(int(STATS_WAIT_S * 1000)):
            self.check()
            return None
        self._asked = False
        return Statistics.from_parts(control.recv_multipart())

    def close(self) -> None:
        """Stop the proxy thread and close the control sockets (not the two it forwarded).

        Raises :class:`Stuck` if the thread has not stopped within ``JOIN_S``; the control
        sockets are then left open too (the thread may still use its own)."""
        thread = self._thread
        if thread is not None and self._control is not None and thread.is_alive():
            self._control.send(b"TERMINATE")
            thread.join(JOIN_S)
            if thread.is_alive():
                raise Stuck(f"the libzmq proxy thread did not stop within {JOIN_S} s of TERMINATE")
        self._thread = None
        try:
            if self._control is not None:
                self._control.close()
        finally:
            if self._steered is not None:
                self._steered.close()
            self._control = self._steered = None


class Upstream:
    """The proxy's own agent-side peer: answers pings, counts subscriptions; see the module doc."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], frontend: str) -> None:
        self._ctx = ctx
        self._frontend = frontend
        self.sock: zmq.Socket[bytes] | None = None
        self.subscriptions = 0       # subscription messages passed on to the agents
        self.acks = 0                # our answers that reach the frontend (so: forwarded)
        self.ack_bytes = 0
        # the subscriptions in force upstream that an answer ($ack/ + at most 64 bytes) can
        # match, at most MAX_LIVE: the others never decide whether an answer is forwarded
        self._live: set[bytes] = set()
        self.untracked = 0           # such subscriptions not kept: MAX_LIVE reached
        # the distinct subscriptions in force upstream, as far as the budget goes
        self.held: set[bytes] = set()
        self.held_bytes = 0
        self.over_budget = 0         # subscriptions that came with the budget full (not held)
        self._over_log_at = 0.0

    def open(self) -> None:
        sock = self.sock = self._ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.XPUB_VERBOSER, 1)  # every (un)subscription the backend passed on
        sock.connect(self._frontend)

    def answer(self, batch: int = 1000) -> None:
        """Answer the pings and count the subscriptions waiting on our socket (at most
        ``batch``: a flood of subscriptions must not keep the main thread from its other work)."""
        sock = self.sock
        assert sock is not None
        for _ in range(batch):
            try:
                msg = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            kind = msg[:1]
            if kind == b"\x01":
                self.subscriptions += 1
                self._hold(msg[1:])
                self._track(msg[1:])
            elif kind == b"\x00":
                self._live.discard(msg[1:])
                if msg[1:] in self.held:
                    self.held.remove(msg[1:])
                    self.held_bytes -= len(msg) - 1
            elif kind == wire.PING:
                self._ack(sock, wire.ACK + msg[1:65])

    def _hold(self, prefix: bytes) -> None:
        if prefix in self.held:
            return
        if len(self.held) < MAX_SUBSCRIPTIONS and self.held_bytes + len(prefix) <= MAX_SUBSCRIPTION_BYTES:
            self.held.add(prefix)
            self.held_bytes += len(prefix)
            return
        self.over_budget += 1
        now = time.monotonic()
        if now >= self._over_log_at:
            self._over_log_at = now + OVER_BUDGET_LOG_S
            log.error("proxy: collectors hold more than %d distinct subscriptions or %d KiB of "
                      "them (%d past it so far). libzmq keeps each one here (three times, about a "
                      "hundred bytes per subscribed byte) and forwards it to every agent, which "
                      "drops its connection past the same budget; without CURVE anyone who "
                      "reaches the backend can subscribe: set [security] authorized_collectors",
                      MAX_SUBSCRIPTIONS, MAX_SUBSCRIPTION_BYTES // 1024, self.over_budget)

    def _track(self, prefix: bytes) -> None:
        if len(prefix) > ACK_MAX_BYTES or not (prefix.startswith(wire.ACK)
                                               or wire.ACK.startswith(prefix)):
            return
        if len(self._live) >= MAX_LIVE and prefix not in self._live:
            self.untracked += 1
            if self.untracked == 1 or self.untracked % 10_000 == 0:
                log.warning("proxy: %d subscriptions to ping answers in force: %d more not "
                            "tracked (their answers are counted as not forwarded)", MAX_LIVE,
                            self.untracked)
            return
        self._live.add(prefix)

    def _ack(self, sock: zmq.Socket[bytes], ack: bytes) -> None:
        sock.send(ack)
        if any(ack.startswith(s) for s in self._live):  # else our XPUB dropped it, as libzmq's would
            self.acks += 1
            self.ack_bytes += len(ack)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
