"""The collector's receive loop: XSUB socket -> decode, check, account -> sink queues.

One thread owns the socket.  It drains it in batches (``recv`` with
``NOBLOCK`` until empty), decodes and checks each message, runs loss
accounting (:mod:`sensorwire.collector.tracking`: duplicates are dropped
here), and hands the batch to every sink's bounded queue.  Nothing on this
path waits for a sink.  Bad messages are counted by reason and logged,
rate-limited; they never stop the loop.  A message of several parts is rejected
as ``multipart`` when its first part is not a frame (the usual mistake: topic
and payload sent as two parts); otherwise each part is judged as a message of
its own.  ZeroMQ's "more" flag costs more to read than a decode, so it is read
only for messages that are not frames.

The socket is an XSUB rather than a SUB so that gap-repair requests can
travel upstream to the agents on the same connection.

On SIGHUP (:meth:`Collector.reload`) the subscription prefixes, ``max_lag_s``,
``[limits]`` and ``summary_s`` apply at once, and every sink with a
``reload(config)`` method gets the new configuration in its own thread, in
order with the frames; endpoints, ``[storage]``, ``[metrics]``, ``[security]``,
``[presence]``, ``[repair]`` and ``[time]`` need a restart (a WARNING names them).

Sinks run in threads of their own, which the main loop's watchdog pings do not
cover by themselves.  So the loop looks at them every tick: a sink whose
current call (a write, say) has been running for longer than ``[storage]
stalled_after_s`` is *stalled*: logged at ERROR with its name and how long,
shown in ``STATUS=``, and while it lasts the watchdog withholds its pings
(:meth:`sensorwire.watchdog.Watchdog.watching`), so systemd restarts the
collector rather than let it drop every frame from then on.  A sink that fails
and is retried, or that holds frames while its database is down, returns from
each call and is not stalled.

With ``[security] mode = "curve"`` and agents connecting to a bound
endpoint, each message's sender is checked against the device its key is
registered for (:class:`sensorwire.security.Identity`); without that, the
receive path is the plain, copying ``recv``.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import time
from collections.abc import Callable

import msgspec
import zmq

from sensorwire import gcpolicy, zmqutil
from sensorwire.collector.config import CollectorConfig
from sensorwire.collector.events import Event
from sensorwire.collector.intake import Intake
from sensorwire.collector.ratelimit import DeviceRateLimit
from sensorwire.collector.sinks import Item, Sink, SinkRunner, count_samples
from sensorwire.collector.tracking import DeviceTableFull, Tracker
from sensorwire.lag import LagWatch
from sensorwire.lifecycle import StopSignal
from sensorwire.logs import RateLimited
from sensorwire.proto import wire
from sensorwire.security import AGENTS, Identity, Refused, Security
from sensorwire.service import NO_SERVICE, Rate, Service

log = logging.getLogger(__name__)
_bad = RateLimited(log, period_s=10.0)

DRAIN_MAX = 5000  # messages taken per wake-up before handing a batch on
TICK_S = 0.5      # presence, repair requests and counters are looked at this often
STORAGE_SINKS = ("sqlite", "postgres")
LIVE_FLUSH_S = 0.2  # the longest a frame waits before alerting and metrics see it
STALL_LOG_S = 30.0  # a stalled sink is logged this often while it lasts
NO_ANSWER_S = 5.0   # no answer to the ping upstream this long after start: said once
NOTHING_S = 15.0    # nothing received this long after the subscriptions went live: said once


def make_sinks(config: CollectorConfig) -> list[Sink]:
    sinks: list[Sink] = []
    if config.storage.kind == "sqlite":
        from sensorwire.collector.sinks.sqlite import SqliteSink

        sinks.append(SqliteSink(config.storage.path, config.storage.retention_days))
    elif config.storage.kind == "postgres":
        from sensorwire.collector.sinks.postgres import PostgresSink

        sinks.append(PostgresSink(config.storage))
    if config.alerts:
        from sensorwire.collector.alerting.sink import AlertSink

        db = config.storage.path if config.storage.kind == "sqlite" else None
        sinks.append(AlertSink(config.alerts, config.notifiers, db, storage_kind=config.storage.kind))
    return sinks


class Collector:
    def __init__(self, config: CollectorConfig, sinks: list[Sink] | None = None) -> None:
        self.config = config
        self.sinks = make_sinks(config) if sinks is None else sinks
        s = config.storage
        # storage writes big batches (fewer, larger transactions); alerting and metrics see
        # frames within LIVE_FLUSH_S whatever the storage settings
        self.runners = [
            SinkRunner(sink, queue_max=s.queue_max, batch_max=s.batch_max,
                       flush_interval_s=s.flush_interval_s if sink.name in STORAGE_SINKS
                       else min(s.flush_interval_s, LIVE_FLUSH_S))
            for sink in self.sinks
        ]
        self.decoder = Intake(max_samples=config.limits.max_samples_per_frame)
        self.received = 0
        self.accepted = 0
        self.rejected: collections.Counter[str] = collections.Counter()
        self.sock: zmq.Socket[bytes] | None = None
        self.tracker = Tracker(
            self.subscribe_filters(), emit=self._emit, send_request=self._send_request,
            offline_after_s=config.presence.offline_after_s, repair=config.repair.enabled,
            repair_delay_s=config.repair.delay_s, repair_attempts=config.repair.attempts,
            max_skew_s=config.time.max_skew_s, max_devices=config.limits.max_devices,
        )
        self.cached_ignored = 0
        self._nonce = os.urandom(8).hex().encode()
        self._started = time.monotonic()
        self._live_at: float | None = None
        self._stall_logged: float | None = None  # when a stalled sink was last logged
        self._silence_told = 0  # 1: no answer from upstream was logged; 2: nothing received was
        self._next_ping = 0.0
        self.bytes_received = 0
        self._rate = Rate()
        self.security = Security(config.security, "collector", monitor=True)
        self.identity: Identity | None = None  # set in run() when agents connect with CURVE
        self.rate_limit: DeviceRateLimit | None = None
        self._set_rate_limit(config.limits.max_frames_per_s_per_device)
        self.lag = LagWatch(config.subscribe.max_lag_s, "the collector", "[subscribe] max_lag_s")

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

    def run(self, stop: StopSignal, ready: Callable[[], None] | None = None,
            service: Service | None = None,
            context: zmq.Context[zmq.Socket[bytes]] | None = None) -> None:
        """Receive until ``stop`` is set.  ``context``: a ZeroMQ context of the caller's to make
        the socket in (one an ``inproc://`` endpoint in ``[subscribe]`` lives in); the collector
        leaves it open.  By default it makes its own."""
        for r in self.runners:
            r.start()
        self._resume()
        gcpolicy.settle()
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context() if context is None else context
        sub = ctx.socket(zmq.XSUB)
        self.sock = sub
        try:
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVHWM, self.config.subscribe.rcvhwm)
            # what goes upstream waits here: subscriptions, pings, and repair requests, one a
            # device a round at most; libzmq's 1,000 dropped the rest of a round unseen (after a
            # proxy restart every device of a fleet asks at once)
            sub.setsockopt(zmq.SNDHWM, self.config.limits.max_devices + 1000)
            # libzmq drops the connection of a peer that sends more than this; the
            # precise limit is checked below, where a violation is counted.
            sub.setsockopt(zmq.MAXMSGSIZE, max(1 << 20, 4 * self.config.limits.max_message_bytes))
            for f in self.subscribe_filters():
                sub.send(b"\x01" + f)  # XSUB subscribes by message; resent on every reconnect
            sub.send(b"\x01" + wire.ACK + self._nonce)
            self.security.open(ctx)
            for ep in self.config.subscribe.bind:
                self.security.bind(sub, ep, "subscribe", domain=AGENTS)
            for ep in self.config.subscribe.connect:
                self.security.connect(sub, ep, "subscribe")
            # frames from the servers it connected to carry no User-Id: they were checked there
            self.identity = self.security.identity(AGENTS, trust_anonymous=True)
            st = self.config.storage
            log.info("collector up: %s, filters %s, sinks %s%s",
                     ", ".join(self.config.subscribe.connect + self.config.subscribe.bind),
                     [f.decode("ascii", "replace") for f in self.subscribe_filters()],
                     [s.name for s in self.sinks],
                     f"; storing into {os.path.abspath(st.path)}" if st.kind == "sqlite" else "")
            if ready is not None:
                ready()
            svc = service or NO_SERVICE
            with svc.watchdog.watching(self.sink_stall):  # the sinks' threads are covered too
                self._loop(stop, sub, svc)
        finally:
            self.sock = None
            sub.close()
            self.security.close()
            if context is None:
                ctx.term()
            self.tracker.flush_counts()
            for r in self.runners:
                r.close()
            self._summary(final=True)

    def _loop(self, stop: StopSignal, sub: zmq.Socket[bytes], svc: Service) -> None:
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(stop.fd, zmq.POLLIN)
        summary_s = self.config.summary_s
        next_summary = time.monotonic() + summary_s
        next_tick = time.monotonic() + TICK_S
        while not stop.is_set():
            timeout = max(0.0, min(next_summary, next_tick) - time.monotonic()) * 1000
            events = dict(poller.poll(svc.timeout_ms(timeout)))
            svc.tick()
            if sub in events:
                self.drain(sub)
            now = time.monotonic()
            if self._live_at is None and now >= self._next_ping:
                # "are my subscriptions live?" - answered by the proxy (or a bound agent)
                sub.send(wire.PING + self._nonce)
                self._next_ping = now + 1.0
            if now >= next_tick:
                self.lag.check(time.time_ns(), now)
                self.tracker.tick(now, time.time_ns())
                if self.rate_limit is not None:
                    self.rate_limit.roll(now)  # report devices over budget even when all is quiet
                self.tracker.flush_counts()
                self._watch_sinks(now, svc)
                self._watch_silence(now)
                next_tick = now + TICK_S
            if now >= next_summary:
                self._summary()
                next_summary = now + self.config.summary_s

    def sink_stall(self) -> str | None:
        """What is stuck among the sinks (see the module's docstring), or None."""
        now, limit = time.monotonic(), self.config.storage.stalled_after_s
        stuck = [f"{why} (more than [storage] stalled_after_s = {limit:g} s); {r.depth} frames "
                 f"queued, {r.dropped_total} dropped" for r in self.runners
                 if (why := r.stalled(now, limit)) is not None]
        return "; ".join(stuck) or None

    def _watch_sinks(self, now: float, svc: Service) -> None:
        stall = self.sink_stall()
        if stall is None:
            if self._stall_logged is not None:
                log.info("sinks: none is stalled any more")
                self._stall_logged = None
        elif self._stall_logged is None or now - self._stall_logged >= STALL_LOG_S:
            self._stall_logged = now
            log.error("%s; %s", stall, "the systemd watchdog is no longer pinged, so systemd "
                      "restarts the collector" if svc.watchdog.enabled else
                      "there is no systemd watchdog to restart it: restart the collector")

    def drain(self, sub: zmq.Socket[bytes]) -> int:
        """Take what is waiting on ``sub`` (up to DRAIN_MAX), check it, queue it."""
        batch: list[Item] = []
        now = time.time_ns()
        mono = time.monotonic()
        decode = self.decoder.decode
        on_frame = self.tracker.on_frame
        limit = self.config.limits.max_message_bytes
        identity = self.identity
        recv = sub.recv if identity is None else functools.partial(identity.recv, sub)
        rate_limit = self.rate_limit
        if rate_limit is not None:
            rate_limit.roll(mono)
        n = 0
        nbytes = acks = 0
        for n in range(1, DRAIN_MAX + 1):  # noqa: B007
            try:
                msg = recv(zmq.NOBLOCK)
            except zmq.Again:
                n -= 1
                break
            except Refused as exc:
                self._reject(exc.reason, exc.detail)
                continue
            nbytes += len(msg)
            if len(msg) > limit:
                self._reject("oversized",
                             f"{len(msg)} bytes, the limit is {limit} ([limits] max_message_bytes)")
                continue
            if rate_limit is not None and not rate_limit.admit(msg):
                self.rejected["rate_limited"] += 1  # logged per device, once a second
                continue
            try:
                frame = decode(msg)
            except wire.WireError as exc:
                if sub.rcvmore:  # looked at only here: a getsockopt costs more than a decode
                    self._reject_parts(sub)
                elif msg.startswith(wire.ACK):
                    self._ack(msg)
                    acks += 1  # an answer to our own ping: not a message anybody sent us
                    nbytes -= len(msg)
                else:
                    self._reject(exc.reason, exc.detail)
                continue
            except Exception as exc:  # noqa: BLE001 - a decoding bug: one message, not the process
                self._reject("decode", f"{len(msg)} bytes the decoder failed on ({exc!r}); "
                             "please report it")
                continue
            if frame.flags & wire.FLAG_CACHED:
                self.cached_ignored += 1  # a proxy's last value: stored when it first passed
                continue
            try:
                fresh = on_frame(frame, mono, now)
            except DeviceTableFull as exc:  # only ever raised for a device not followed yet
                self._reject("too_many_devices", str(exc))
                continue
            if fresh:
                batch.append((frame, now))
                if not frame.seq:  # a heartbeat: its time is never old by design (sensorwire.lag)
                    hb = frame.heartbeat
                    if hb is not None:
                        self.lag.saw(frame.time_unix_nano, hb.clock_synced)
        self.received += n - acks
        self.bytes_received += nbytes
        if batch:
            self.accepted += len(batch)
            samples = count_samples(batch)
            for r in self.runners:
                for frame, _ in r.offer(batch, samples):
                    self.tracker.forget(frame, mono)
        return n

    def _reject_parts(self, sub: zmq.Socket[bytes]) -> None:
        """The rest of a multipart message whose first part was not a frame: one rejection."""
        parts = zmqutil.skip_parts(sub)
        self._reject("multipart", f"a message of {parts} parts (sensorwire sends one part)")

    def _ack(self, msg: bytes) -> None:
        if msg[len(wire.ACK):] == self._nonce and self._live_at is None:
            self._live_at = time.monotonic()
            log.info("subscriptions are live upstream, %.2f s after start: every frame from now "
                     "on is received or accounted for", self._live_at - self._started)

    def _watch_silence(self, now: float) -> None:
        """Say once when nothing answers upstream (no proxy there, or its frontend), and once when
        subscriptions are live but nothing arrives (no agent publishes under the prefixes)."""
        sub = self.config.subscribe
        if self._live_at is None:
            if not self._silence_told and now - self._started >= NO_ANSWER_S:
                self._silence_told = 1
                if sub.connect:
                    log.warning("no answer from upstream %s within %g s: is a proxy running there, "
                                "and is that its backend (collectors connect to the proxy's backend, "
                                "agents to its frontend)? Still trying; `subscriptions are live "
                                "upstream` says when it answers", ", ".join(sub.connect), NO_ANSWER_S)
                else:
                    log.warning("no agent has connected to %s within %g s (agents' [publish] "
                                "connect must name it); still waiting", ", ".join(sub.bind),
                                NO_ANSWER_S)
        elif self._silence_told < 2 and self.received == 0 and now - self._live_at >= NOTHING_S:
            self._silence_told = 2
            hint = (f" (`sensorwire tail --connect {sub.connect[0]}` shows whatever arrives)"
                    if sub.connect else "")
            log.warning("nothing received in %g s since subscriptions went live, filters %s: no "
                        "agent publishes under them, or none is connected (agents connect to the "
                        "proxy's frontend); check [subscribe] prefixes against the agents' site and "
                        "device_id%s", NOTHING_S,
                        [f.decode("ascii", "replace") for f in self.subscribe_filters()], hint)

    def _reject(self, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        _bad.warning(reason, "rejected a message (%s): %s; %d rejected for this reason so far",
                     reason, detail, self.rejected[reason])

    def _summary(self, final: bool = False) -> None:
        stored = ", ".join(f"{r.sink.name}: {r.written} written, {r.dropped_total} dropped, "
                           f"queue {r.depth}" + (f", held {r.held}" if r.held else "")
                           for r in self.runners)
        rejected = sum(self.rejected.values())
        t = self.tracker.totals()
        connections = self.security.summary()
        alerting = self._alerting_summary()
        lag = "unknown" if self.lag.lag_s is None else f"{self.lag.lag_s:.1f} s"
        if self.lag.fell_behind:
            lag += f" (fell behind {self.lag.fell_behind} times)"
        cached = (f", {self.cached_ignored} copies from a proxy's cache ignored"
                  if self.cached_ignored else "")
        log.info("collector%s: %d messages received, %d accepted%s, %d rejected%s; lag %s; devices "
                 "%d (%d online%s), gaps %d, duplicates %d, out of order %d, lost %d, repair "
                 "requests %d; %s%s%s", " stopping" if final else "", self.received, self.accepted,
                 cached, rejected, f" {dict(self.rejected)}" if rejected else "", lag, t["devices"],
                 t["online"],
                 f", {t['evicted']} evicted to stay within max_devices" if t["evicted"] else "",
                 t["gaps"],
                 t["duplicates"], t["out_of_order"], t["lost"], self.tracker.requests_sent,
                 stored or "no sinks", f"; {alerting}" if alerting else "",
                 f"; connections: {connections}" if connections else "")

    def _alerting_summary(self) -> str:
        """Alert rules at their max_instances, in the summary line only when it happened."""
        for sink in self.sinks:
            limited = getattr(sink, "limited", None)
            if limited is not None:
                evicted, refused = limited()
                if evicted or refused:
                    return (f"alerting: {evicted} series forgotten and {refused} not watched "
                            "to stay within the rules' max_instances")
        return ""

    # -- reload and status (sensorwire.service) -----------------------------------------------
    def reload(self, config: CollectorConfig) -> None:
        """Apply a new configuration where it can be applied while running.

        Prefixes, ``max_lag_s``, ``[limits]`` and ``summary_s`` apply at once (and the
        allow-lists' folders are read again); sinks with a ``reload(config)`` method (alert
        rules, ...) get it in their own thread.  What needs a restart (endpoints,
        ``[storage]``, ``[metrics]``, ``[security]``, ``[presence]``, ``[repair]``, ``[time]``)
        is kept as it is, with a warning naming it.
        """
        old = self.config
        fixed: dict[str, object] = {}
        sub_fixed = {k: getattr(old.subscribe, k) for k in ("connect", "bind", "rcvhwm")
                     if getattr(config.subscribe, k) != getattr(old.subscribe, k)}
        if sub_fixed:
            fixed["subscribe"] = msgspec.structs.replace(config.subscribe, **sub_fixed)
        for key in ("storage", "metrics", "security", "presence", "repair", "time"):
            if getattr(config, key) != getattr(old, key):
                fixed[key] = getattr(old, key)
        if fixed:
            log.warning("reload: %s changed but take effect only after a restart",
                        ", ".join([f"subscribe.{k}" for k in sub_fixed]
                                  + [k for k in fixed if k != "subscribe"]))
            config = msgspec.structs.replace(config, **fixed)
        before = self.subscribe_filters()
        self.config = config
        self.lag.max_lag_s = config.subscribe.max_lag_s
        after = self.subscribe_filters()
        if before != after:
            self._resubscribe(before, after)
            log.info("reload: filters now %s", [f.decode("ascii", "replace") for f in after])
        if config.limits != old.limits:
            self.decoder = Intake(max_samples=config.limits.max_samples_per_frame)
            self.tracker.set_max_devices(config.limits.max_devices)
            self._set_rate_limit(config.limits.max_frames_per_s_per_device)
        if config.alerts and not any(s.name == "alerting" for s in self.sinks):
            log.warning("reload: [[alerts]] were added; alerting starts only after a restart")
        self.security.reload()
        for r in self.runners:
            r.offer_reload(config)

    def _set_rate_limit(self, per_s: int) -> None:
        """``[limits] max_frames_per_s_per_device`` now ``per_s`` (0: no limit)."""
        if not per_s:
            self.rate_limit = None
        elif self.rate_limit is None:
            self.rate_limit = DeviceRateLimit(per_s)
        elif self.rate_limit.per_s != per_s:
            self.rate_limit.set_rate(per_s)  # a device flooding now stays held, with no new burst

    def _resubscribe(self, before: list[bytes], after: list[bytes]) -> None:
        """Change the socket's subscriptions from ``before`` to ``after``."""
        self.tracker.set_filters(after)
        if self.sock is None:
            return
        for f in before:
            if f not in after:
                self.sock.send(b"\x00" + f)  # XSUB: (un)subscribe by message
        for f in after:
            if f not in before:
                self.sock.send(b"\x01" + f)

    def status(self) -> str:
        """The one-line STATUS= for systemd."""
        parts = [f"receiving {self._rate.per_s(self.received):.1f} frames/s"]
        t = self.tracker.totals()
        parts.append(f"{t['online']} of {t['devices']} devices online, {t['gaps']} frames missing")
        stored = ", ".join(f"{r.sink.name} {r.written} written, {r.dropped_total} dropped"
                           + (f", {r.held} held" if r.held else "")
                           for r in self.runners if r.sink.name != "metrics")
        stall = self.sink_stall()
        behind = self.lag.status()
        return "; ".join(parts + ([behind] if behind else []) + ([stored] if stored else [])
                         + ([stall] if stall else []))
