"""The collector's receive loop: XSUB socket -> decode, check, account -> sink queues.

One thread owns the socket.  It drains it in batches (``recv`` with
``NOBLOCK`` until empty), decodes and checks each message, runs loss
accounting (:mod:`sensorwire.collector.tracking`: duplicates are dropped
here), and hands the batch to every sink's bounded queue.  Nothing on this
path waits for a sink.  Bad messages are counted by reason and logged,
rate-limited; they never stop the loop.

The socket is an XSUB rather than a SUB so that gap-repair requests can
travel upstream to the agents on the same connection.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
import time

import zmq

from sensorwire import zmqutil
from sensorwire.collector.config import CollectorConfig
from sensorwire.collector.events import Counts, Event
from sensorwire.collector.sinks import Item, Sink, SinkRunner
from sensorwire.collector.tracking import Tracker
from sensorwire.lifecycle import StopSignal
from sensorwire.logs import RateLimited
from sensorwire.proto import wire

log = logging.getLogger(__name__)
_bad = RateLimited(log, period_s=10.0)

DRAIN_MAX = 5000  # messages taken per wake-up before handing a batch on
TICK_S = 0.5      # presence, repair requests and counters are looked at this often


def make_sinks(config: CollectorConfig) -> list[Sink]:
    sinks: list[Sink] = []
    if config.storage.kind == "sqlite":
        from sensorwire.collector.sinks.sqlite import SqliteSink

        sinks.append(SqliteSink(config.storage.path))
    elif config.storage.kind == "postgres":
        from sensorwire.collector.sinks.postgres import PostgresSink

        sinks.append(PostgresSink(config.storage))
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
        self.sock: zmq.Socket[bytes] | None = None
        self.tracker = Tracker(
            self.subscribe_filters(), emit=self._emit, send_request=self._send_request,
            offline_after_s=config.presence.offline_after_s, repair=config.repair.enabled,
            repair_delay_s=config.repair.delay_s, repair_attempts=config.repair.attempts,
        )
        self._counts_sent: dict[str, tuple[int, int]] = {}

    def subscribe_filters(self) -> list[bytes]:
        prefixes = self.config.subscribe.prefixes or [""]
        out: list[bytes] = []
        for p in prefixes:
            for f in wire.subscriptions(p):
                if f not in out:
                    out.append(f)
        return out

    def _emit(self, ev: Event) -> None:
        for r in self.runners:
            r.offer_event(ev)

    def _send_request(self, msg: bytes) -> None:
        if self.sock is not None:
            try:
                self.sock.send(msg, zmq.NOBLOCK)
            except zmq.Again:
                log.warning("repair request not sent: the upstream queue is full")

    def _resume(self) -> None:
        since = time.time_ns() - int(self.config.repair.resume_s * 1e9)
        for sink in self.sinks:
            resume = getattr(sink, "resume", None)
            if resume is not None:
                self.tracker.resume(resume(since))
                return

    def run(self, stop: StopSignal, ready: Callable[[], None] | None = None) -> None:
        for r in self.runners:
            r.start()
        self._resume()
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sub = ctx.socket(zmq.XSUB)
        self.sock = sub
        try:
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVHWM, self.config.subscribe.rcvhwm)
            # libzmq drops the connection of a peer that sends more than this; the
            # precise limit is checked below, where a violation is counted.
            sub.setsockopt(zmq.MAXMSGSIZE, max(1 << 20, 4 * self.config.limits.max_message_bytes))
            for f in self.subscribe_filters():
                sub.send(b"\x01" + f)  # XSUB subscribes by message; resent on every reconnect
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
            self.sock = None
            sub.close()
            ctx.term()
            self._flush_counts()
            for r in self.runners:
                r.close()
            self._summary(final=True)

    def _loop(self, stop: StopSignal, sub: zmq.Socket[bytes]) -> None:
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(stop.fd, zmq.POLLIN)
        summary_s = self.config.summary_s
        next_summary = time.monotonic() + summary_s
        next_tick = time.monotonic() + TICK_S
        while not stop.is_set():
            timeout = max(0.0, min(next_summary, next_tick) - time.monotonic()) * 1000
            events = dict(poller.poll(timeout))
            if sub in events:
                self.drain(sub)
            now = time.monotonic()
            if now >= next_tick:
                self.tracker.tick(now, time.time_ns())
                self._flush_counts()
                next_tick = now + TICK_S
            if now >= next_summary:
                self._summary()
                next_summary = now + summary_s

    def _flush_counts(self) -> None:
        """Hand duplicate and out-of-order counts that changed to the sinks."""
        for dev in self.tracker.devices.values():
            if not dev.changed:
                continue
            dev.changed = False
            before = self._counts_sent.get(dev.device, (0, 0))
            now = (dev.duplicates, dev.out_of_order)
            if now != before:
                self._counts_sent[dev.device] = now
                self._emit(Counts(dev.site, dev.device, now[0] - before[0], now[1] - before[1]))

    def drain(self, sub: zmq.Socket[bytes]) -> int:
        """Take what is waiting on ``sub`` (up to DRAIN_MAX), check it, queue it."""
        batch: list[Item] = []
        now = time.time_ns()
        mono = time.monotonic()
        decode = self.decoder.decode
        on_frame = self.tracker.on_frame
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
                frame = decode(msg)
            except wire.WireError as exc:
                self._reject(exc.reason, exc.detail)
                continue
            if on_frame(frame, mono, now):
                batch.append((frame, now))
        self.received += n
        if batch:
            self.accepted += len(batch)
            for r in self.runners:
                for frame, _ in r.offer(batch):
                    self.tracker.forget(frame, mono)
        return n

    def _reject(self, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        _bad.warning(reason, "rejected a message (%s): %s; %d rejected for this reason so far",
                     reason, detail, self.rejected[reason])

    def _summary(self, final: bool = False) -> None:
        stored = ", ".join(f"{r.sink.name}: {r.written} written, {r.dropped} dropped, queue {r.depth}"
                           for r in self.runners)
        rejected = sum(self.rejected.values())
        t = self.tracker.totals()
        log.info("collector%s: %d messages received, %d accepted, %d rejected %s; devices %d (%d "
                 "online), gaps %d, duplicates %d, out of order %d, lost %d, repair requests %d; %s",
                 " stopping" if final else "", self.received, self.accepted, rejected,
                 dict(self.rejected) if rejected else "", t["devices"], t["online"], t["gaps"],
                 t["duplicates"], t["out_of_order"], t["lost"], self.tracker.requests_sent,
                 stored or "no sinks")
