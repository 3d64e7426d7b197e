"""The collector's receive loop: SUB socket -> decode and check -> sink queues.

One thread owns the SUB socket.  It drains the socket in batches (``recv``
with ``NOBLOCK`` until empty), decodes and checks each message, and hands the
batch to every sink's bounded queue.  Nothing on this path waits for a sink.
Bad messages are counted by reason and logged, rate-limited; they never stop
the loop.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
import time

import zmq

from sensorwire import zmqutil
from sensorwire.collector.config import CollectorConfig
from sensorwire.collector.sinks import Item, Sink, SinkRunner
from sensorwire.lifecycle import StopSignal
from sensorwire.logs import RateLimited
from sensorwire.proto import wire

log = logging.getLogger(__name__)
_bad = RateLimited(log, period_s=10.0)

DRAIN_MAX = 5000  # messages taken per wake-up before handing a batch on


def make_sinks(config: CollectorConfig) -> list[Sink]:
    sinks: list[Sink] = []
    if config.storage.kind == "sqlite":
        from sensorwire.collector.sinks.sqlite import SqliteSink

        sinks.append(SqliteSink(config.storage.path))
    if config.alerts:
        from sensorwire.collector.alerting.sink import AlertSink

        db = config.storage.path if config.storage.kind == "sqlite" else None
        sinks.append(AlertSink(config.alerts, config.notifiers, db))
    return sinks


class Collector:
    def __init__(self, config: CollectorConfig, sinks: list[Sink] | None = None) -> None:
        self.config = config
        self.sinks = make_sinks(config) if sinks is None else sinks
        s = config.storage
        self.runners = [
            SinkRunner(sink, queue_max=s.queue_max, batch_max=s.batch_max,
                       flush_interval_s=s.flush_interval_s)
            for sink in self.sinks
        ]
        self.decoder = wire.Decoder(max_samples=config.limits.max_samples_per_frame)
        self.received = 0
        self.accepted = 0
        self.rejected: collections.Counter[str] = collections.Counter()

    def subscribe_filters(self) -> list[bytes]:
        prefixes = self.config.subscribe.prefixes or [""]
        out: list[bytes] = []
        for p in prefixes:
            for f in wire.subscriptions(p):
                if f not in out:
                    out.append(f)
        return out

    def run(self, stop: StopSignal, ready: Callable[[], None] | None = None) -> None:
        for r in self.runners:
            r.start()
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        try:
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVHWM, self.config.subscribe.rcvhwm)
            # libzmq drops the connection of a peer that sends more than this; the
            # precise limit is checked below, where a violation is counted.
            sub.setsockopt(zmq.MAXMSGSIZE, max(1 << 20, 4 * self.config.limits.max_message_bytes))
            for f in self.subscribe_filters():
                sub.setsockopt(zmq.SUBSCRIBE, f)
            for ep in self.config.subscribe.bind:
                zmqutil.bind(sub, ep)
            for ep in self.config.subscribe.connect:
                zmqutil.connect(sub, ep)
            log.info("collector up: %s, filters %s, sinks %s",
                     ", ".join(self.config.subscribe.connect + self.config.subscribe.bind),
                     [f.decode("ascii", "replace") for f in self.subscribe_filters()],
                     [s.name for s in self.sinks])
            if ready is not None:
                ready()
            self._loop(stop, sub)
        finally:
            sub.close()
            ctx.term()
            for r in self.runners:
                r.close()
            self._summary(final=True)

    def _loop(self, stop: StopSignal, sub: zmq.Socket[bytes]) -> None:
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(stop.fd, zmq.POLLIN)
        summary_s = self.config.summary_s
        next_summary = time.monotonic() + summary_s
        while not stop.is_set():
            timeout = max(0.0, next_summary - time.monotonic()) * 1000
            events = dict(poller.poll(timeout))
            if sub in events:
                self.drain(sub)
            if time.monotonic() >= next_summary:
                self._summary()
                next_summary = time.monotonic() + summary_s

    def drain(self, sub: zmq.Socket[bytes]) -> int:
        """Take what is waiting on ``sub`` (up to DRAIN_MAX), check it, queue it."""
        batch: list[Item] = []
        now = time.time_ns()
        decode = self.decoder.decode
        limit = self.config.limits.max_message_bytes
        recv = sub.recv
        n = 0
        for n in range(1, DRAIN_MAX + 1):  # noqa: B007
            try:
                msg = recv(zmq.NOBLOCK)
            except zmq.Again:
                n -= 1
                break
            if sub.rcvmore:
                parts = 1
                while sub.rcvmore:
                    recv()
                    parts += 1
                self._reject("multipart", f"a message of {parts} parts (sensorwire sends one part)")
                continue
            if len(msg) > limit:
                self._reject("oversized", f"{len(msg)} bytes, the limit is {limit} ([limits] max_message_bytes)")
                continue
            try:
                batch.append((decode(msg), now))
            except wire.WireError as exc:
                self._reject(exc.reason, exc.detail)
        self.received += n
        if batch:
            self.accepted += len(batch)
            for r in self.runners:
                r.offer(batch)
        return n

    def _reject(self, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        _bad.warning(reason, "rejected a message (%s): %s; %d rejected for this reason so far",
                     reason, detail, self.rejected[reason])

    def _summary(self, final: bool = False) -> None:
        stored = ", ".join(f"{r.sink.name}: {r.written} written, {r.dropped} dropped, queue {r.depth}"
                           for r in self.runners)
        rejected = sum(self.rejected.values())
        log.info("collector%s: %d messages received, %d accepted, %d rejected %s; %s",
                 " stopping" if final else "", self.received, self.accepted, rejected,
                 dict(self.rejected) if rejected else "", stored or "no sinks")
