"""The collector's receive loop: SUB socket -> decode and check -> sink queues.

One thread owns the SUB socket.  It drains the socket in batches (``recv``
with ``NOBLOCK`` until empty), decodes and checks each message, and hands the
batch to every sink's bounded queue.  Nothing on this path waits for a sink.
Bad messages are counted by reason and logged, rate-limited; they never stop
the loop.

On SIGHUP (:meth:`Collector.reload`) the subscription prefixes, ``[limits]``
and ``summary_s`` apply at once, and every sink with a ``reload(config)``
method gets the new configuration in its own thread, in order with the frames;
endpoints, ``[storage]`` and ``[metrics]`` need a restart.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
import time

import msgspec
import zmq

from sensorwire import zmqutil
from sensorwire.collector.config import CollectorConfig
from sensorwire.collector.sinks import Item, Sink, SinkRunner
from sensorwire.lifecycle import StopSignal
from sensorwire.logs import RateLimited
from sensorwire.proto import wire
from sensorwire.service import NO_SERVICE, Rate, Service

log = logging.getLogger(__name__)
_bad = RateLimited(log, period_s=10.0)

DRAIN_MAX = 5000  # messages taken per wake-up before handing a batch on


def make_sinks(config: CollectorConfig) -> list[Sink]:
    sinks: list[Sink] = []
    if config.storage.kind == "sqlite":
        from sensorwire.collector.sinks.sqlite import SqliteSink

        sinks.append(SqliteSink(config.storage.path))
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
        self.bytes_received = 0
        self._sub: zmq.Socket[bytes] | None = None
        self._rate = Rate()

    def subscribe_filters(self) -> list[bytes]:
        prefixes = self.config.subscribe.prefixes or [""]
        out: list[bytes] = []
        for p in prefixes:
            for f in wire.subscriptions(p):
                if f not in out:
                    out.append(f)
        return out

    def run(self, stop: StopSignal, ready: Callable[[], None] | None = None,
            service: Service | None = None) -> None:
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
            self._sub = sub
            self._loop(stop, sub, service or NO_SERVICE)
        finally:
            sub.close()
            ctx.term()
            for r in self.runners:
                r.close()
            self._summary(final=True)

    def _loop(self, stop: StopSignal, sub: zmq.Socket[bytes], svc: Service) -> None:
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(stop.fd, zmq.POLLIN)
        next_summary = time.monotonic() + self.config.summary_s
        while not stop.is_set():
            timeout = max(0.0, next_summary - time.monotonic()) * 1000
            events = dict(poller.poll(svc.timeout_ms(timeout)))
            svc.tick()
            if sub in events:
                self.drain(sub)
            if time.monotonic() >= next_summary:
                self._summary()
                next_summary = time.monotonic() + self.config.summary_s

    def drain(self, sub: zmq.Socket[bytes]) -> int:
        """Take what is waiting on ``sub`` (up to DRAIN_MAX), check it, queue it."""
        batch: list[Item] = []
        now = time.time_ns()
        decode = self.decoder.decode
        limit = self.config.limits.max_message_bytes
        recv = sub.recv
        n = 0
        nbytes = 0
        for n in range(1, DRAIN_MAX + 1):  # noqa: B007
            try:
                msg = recv(zmq.NOBLOCK)
            except zmq.Again:
                n -= 1
                break
            nbytes += len(msg)
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
        self.bytes_received += nbytes
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


    # -- reload and status (sensorwire.service) -----------------------------------------------
    def reload(self, config: CollectorConfig) -> None:
        """Apply a new configuration where it can be applied while running.

        Prefixes, ``[limits]`` and ``summary_s`` apply at once; sinks with a
        ``reload(config)`` method get it in their own thread.  What needs a
        restart is kept as it is, with a warning.
        """
        old = self.config
        fixed: dict[str, object] = {}
        sub_fixed = {k: getattr(old.subscribe, k) for k in ("connect", "bind", "rcvhwm")
                     if getattr(config.subscribe, k) != getattr(old.subscribe, k)}
        if sub_fixed:
            fixed["subscribe"] = msgspec.structs.replace(config.subscribe, **sub_fixed)
        for key in ("storage", "metrics"):
            if getattr(config, key) != getattr(old, key):
                fixed[key] = getattr(old, key)
        if fixed:
            log.warning("reload: %s changed but take effect only after a restart",
                        ", ".join([f"subscribe.{k}" for k in sub_fixed]
                                  + [k for k in fixed if k != "subscribe"]))
            config = msgspec.structs.replace(config, **fixed)
        before = self.subscribe_filters()
        self.config = config
        after = self.subscribe_filters()
        if before != after:
            self._resubscribe(before, after)
            log.info("reload: filters now %s", [f.decode("ascii", "replace") for f in after])
        if config.limits != old.limits:
            self.decoder = wire.Decoder(max_samples=config.limits.max_samples_per_frame)
        for r in self.runners:
            r.offer_reload(config)

    def _resubscribe(self, before: list[bytes], after: list[bytes]) -> None:
        """Change the socket's subscriptions from ``before`` to ``after``."""
        if self._sub is None:
            return
        for f in before:
            if f not in after:
                self._sub.setsockopt(zmq.UNSUBSCRIBE, f)
        for f in after:
            if f not in before:
                self._sub.setsockopt(zmq.SUBSCRIBE, f)

    def status(self) -> str:
        """The one-line STATUS= for systemd."""
        parts = [f"receiving {self._rate.per_s(self.received):.1f} frames/s"]
        online = [s.devices_online() for s in self.sinks if hasattr(s, "devices_online")]
        if online:
            parts.append(f"{online[0]} devices online")
        stored = ", ".join(f"{r.sink.name} {r.written} written, {r.dropped} dropped"
                           for r in self.runners if r.sink.name != "metrics")
        return "; ".join(parts + ([stored] if stored else []))
