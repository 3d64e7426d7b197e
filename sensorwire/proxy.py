"""The XSUB/XPUB proxy where agents and collectors meet.

Agents connect to the XSUB *frontend*, collectors to the XPUB *backend*.
Frames flow frontend -> backend; subscriptions and gap-repair requests flow
backend -> frontend, so filtering happens at the agents.  The proxy counts
frames and bytes passed and logs a one-line summary every minute.

Where frames are moved:

- **in libzmq** (C), when neither the last-value cache nor CURVE identity
  checks are on (the default): :mod:`sensorwire.libzmqproxy`, about half the
  CPU per frame.  The counters come from libzmq's ``STATISTICS``, read once a
  second (and at each status and summary); a proxy thread too busy to answer
  keeps the last values (a WARNING after 5 s), and one that does not stop on
  SIGTERM ends the process with exit code 1 and an ERROR.  Only ``ZMQ_MAXMSGSIZE`` is
  checked here; multi-part messages and frames with too many samples reach
  the collectors, which reject and count them (``multipart``,
  ``too_many_samples``);
- **in Python** otherwise (:meth:`Proxy._loop`), because both need to see
  every frame; :mod:`sensorwire.proxyfilter` drops and counts multi-part
  messages and frames with too many samples here.

Two more things happen here:

- a *ping* from a subscriber (``0x03`` + nonce, sent after its subscriptions)
  is answered on the backend with ``$ack/<nonce>``: the subscriber then knows
  its subscriptions are live here, even with no agent up (``sensorwire tail``
  says so).  In libzmq the ping also travels on to the agents connected at
  that moment, which answer too; the subscriber takes the first answer.  We
  answer ourselves rather than leave it to the agents because an answer
  should not depend on an agent being up: a collector started before its
  agents, or a ``tail`` on a quiet system, would otherwise never learn that
  it listens;
- with ``last_value_cache = true`` the proxy keeps the last frame of every
  topic and, when a subscription arrives, sends the frames of the topics it
  matches at once (the ZeroMQ guide's last-value cache; the backend is an XPUB
  with ``XPUB_VERBOSE`` so every subscription is seen).  Those frames carry
  flag 8 (``from a last-value cache``) so collectors do not count or store
  them twice; ``sensorwire tail`` shows them.  What bounds the cache and its
  replays is in :mod:`sensorwire.lastvalue`.

On SIGHUP it re-reads its file: ``log_level`` and ``summary_s`` apply at once;
``frontend`` and ``backend`` need a restart.

Both sockets are CURVE servers with ``[security] mode = "curve"``; what the
proxy checks in each frame from agents is in :mod:`sensorwire.proxyfilter`.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import zmq

from sensorwire import configload, libzmqproxy, security, zmqutil
from sensorwire.configload import Config
from sensorwire.lastvalue import LastValueCache
from sensorwire.lifecycle import StopSignal
from sensorwire.logs import RateLimited
from sensorwire.metrics import MetricsConfig
from sensorwire.proto import wire
from sensorwire.proxyfilter import FrontendFilter
from sensorwire.security import AGENTS, COLLECTORS, ProxySecurity, Security
from sensorwire.service import NO_SERVICE, Rate, Service

log = logging.getLogger(__name__)
_limited = RateLimited(log, period_s=30.0)

BATCH = 1000  # messages moved per socket per wake-up, so neither direction starves
SUBSCRIPTION_MAX_BYTES = 1 + wire.MAX_TOPIC_BYTES  # in Python: a longer one matches nothing
UPSTREAM_KINDS = (b"\x00", b"\x01", wire.REPAIR, wire.PING)
STATS_S = 1.0  # in C, the counters (metrics, status) are read from libzmq this often
INT64_MAX = 2**63 - 1  # ZMQ_MAXMSGSIZE is an int64_t: a bigger number cannot be set


# what a reload (SIGHUP) applies while running; every other key needs a restart
LIVE_KEYS = ("summary_s", "log_level")


class ProxyLimits(Config):
    # a bigger message disconnects the agent that sent it (ZMQ_MAXMSGSIZE on the frontend)
    max_message_bytes: Annotated[int, msgspec.Meta(gt=0, le=INT64_MAX)] = 65536
    max_samples_per_frame: Annotated[int, msgspec.Meta(gt=0)] = 1024
    # ZMQ_MAXMSGSIZE on the backend, whose peers send only subscriptions, pings and repair
    # requests: the longest sensorwire sends is a repair request of 256 ranges
    # (collector/tracking.py), 8,515 bytes with the largest numbers; subscriptions and pings
    # are under 200.  A peer sending more is disconnected before libzmq stores its
    # subscription (each subscribed byte costs about a hundred in the tries of the proxy and
    # of every agent: 200 subscriptions of 64 KiB took a proxy to 1.6 GB)
    max_upstream_bytes: Annotated[int, msgspec.Meta(ge=1024, le=INT64_MAX)] = 16 * 1024


class ProxyConfig(Config):
    frontend: str
    backend: str
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    summary_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    # frames queued per collector (and read ahead from agents) before ZeroMQ drops; the
    # collector sees a dropped frame as a gap and asks the agent for it again
    hwm: Annotated[int, msgspec.Meta(ge=0, le=2_147_483_647)] = 100_000  # libzmq: an int
    last_value_cache: bool = False
    last_value_topics: Annotated[int, msgspec.Meta(gt=0)] = 100_000
    last_value_bytes: Annotated[int, msgspec.Meta(gt=0)] = 64 * 2**20  # of cached messages
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    security: ProxySecurity = msgspec.field(default_factory=ProxySecurity)
    limits: ProxyLimits = msgspec.field(default_factory=ProxyLimits)

    def __post_init__(self) -> None:
        for key in ("frontend", "backend"):
            endpoint = getattr(self, key)
            if not endpoint.startswith(("tcp://", "ipc://")):
                raise ValueError(f"{key}: {endpoint!r} is not a tcp:// or ipc:// endpoint (like "
                                 "tcp://*:5556 or ipc:///run/sensorwire/agents.sock): agents "
                                 "and collectors of other processes must reach it")
            problem = zmqutil.endpoint_problem(endpoint)
            if problem:
                raise ValueError(f"{key}: {problem}")
        if _same_address(self.frontend, self.backend):
            raise ValueError(f"backend: {self.backend!r} is the frontend's address too: agents "
                             "and collectors need one each")
        security.check(self.security, binds=True, connects=False)


def _same_address(a: str, b: str) -> bool:
    """Two endpoints that cannot both be bound: equal, or one TCP port with a wildcard host
    (``tcp://host:*`` twice is two ports libzmq chooses)."""
    if not (a.startswith("tcp://") and b.startswith("tcp://")):
        return a == b
    (ha, _, pa), (hb, _, pb) = a[6:].rpartition(":"), b[6:].rpartition(":")
    wild = ("*", "0.0.0.0", "[::]", "::")
    return pa == pb and pa != "*" and (ha == hb or ha in wild or hb in wild)


def _bound(sock: zmq.Socket[bytes]) -> str:
    """Where ``sock`` listens: the port libzmq chose for ``tcp://host:*``, not the ``*``."""
    last = sock.getsockopt(zmq.LAST_ENDPOINT)
    return last.decode() if isinstance(last, bytes) else str(last)


def _refuse_served_ipc(endpoint: str) -> None:
    """An ``ipc://`` path another live process serves is refused (libzmq would unlink it and
    take it over silently); a stale file left by a process that is gone is left to libzmq."""
    if not endpoint.startswith("ipc://"):
        return
    path = endpoint[6:]
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        return  # no such file, refused (stale), or not a socket: bind() says what it finds
    finally:
        probe.close()
    raise zmqutil.EndpointError(f"cannot bind {endpoint}: address already in use (another "
                                "process serves it: stop it or choose another path)")


def load(path: str | Path) -> ProxyConfig:
    return configload.load(path, ProxyConfig)


class Proxy:
    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.frames = 0
        self.bytes = 0
        self.subscriptions = 0
        # messages from collectors not passed on to agents (in Python only), by reason
        self.upstream_dropped: collections.Counter[str] = collections.Counter()
        # distinct subscriptions forwarded to the agents (in Python: at most the agents' budget)
        self._forwarded: set[bytes] = set()
        self._forwarded_bytes = 0
        self._upstream_view: libzmqproxy.Upstream | None = None  # in C: what it saw
        self.in_libzmq = False  # forwarding in C (set in run(), see sensorwire.libzmqproxy)
        self._rate = Rate()
        self._stats_at = time.monotonic()  # when libzmq last answered STATISTICS
        self.security = Security(config.security, "proxy", monitor=True)
        self.cache = (LastValueCache(config.last_value_topics, config.last_value_bytes,
                                     config.limits.max_samples_per_frame)
                      if config.last_value_cache else None)
        self.filter = FrontendFilter(config.limits.max_samples_per_frame, None, cache=self.cache)

    def run(self, stop: StopSignal, ready: Callable[[], None] | None = None,
            service: Service | None = None) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        front = ctx.socket(zmq.XSUB)
        back = ctx.socket(zmq.XPUB)
        sec = self.security
        try:
            for s in (front, back):
                s.setsockopt(zmq.LINGER, 0)
            front.setsockopt(zmq.MAXMSGSIZE, self.config.limits.max_message_bytes)
            back.setsockopt(zmq.MAXMSGSIZE, self.config.limits.max_upstream_bytes)
            # a collector that falls behind for a moment gets a queue, not gaps to repair
            front.setsockopt(zmq.RCVHWM, self.config.hwm)
            back.setsockopt(zmq.SNDHWM, self.config.hwm)
            # libzmq's 1,000 would drop (un)subscriptions to an agent in a burst, unseen
            front.setsockopt(zmq.SNDHWM, libzmqproxy.UPSTREAM_QUEUE)
            if self.cache is not None:
                back.setsockopt(zmq.XPUB_VERBOSE, 1)
            sec.open(ctx)
            self.filter.identity = sec.identity(AGENTS)
            self.in_libzmq = self.cache is None and self.filter.identity is None
            for endpoint in (self.config.frontend, self.config.backend):
                _refuse_served_ipc(endpoint)
            sec.bind(front, self.config.frontend, "frontend", domain=AGENTS)
            sec.bind(back, self.config.backend, "backend", domain=COLLECTORS)
            log.info("proxy up: agents -> %s, collectors <- %s%s%s; forwarding in %s",
                     _bound(front), _bound(back), " (CURVE)" if sec.curve else "",
                     ", last-value cache on" if self.cache is not None else "",
                     "libzmq" if self.in_libzmq else "Python")
            svc = service or NO_SERVICE
            if self.in_libzmq:
                self._run_libzmq(ctx, front, back, stop, ready, svc)
            else:
                if ready is not None:
                    ready()
                self._loop(stop, front, back, svc)
            log.info("proxy stopping: %d frames, %d bytes forwarded%s", self.frames, self.bytes,
                     self._drops())
        finally:  # each in its own try: one failing must not leave the others open
            try:
                front.close()
            finally:
                try:
                    back.close()
                finally:
                    try:
                        sec.close()
                    finally:
                        ctx.term()

    def _drops(self) -> str:
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(self.filter.dropped.items()))
        upstream = ", ".join(f"{k} {v}" for k, v in sorted(self.upstream_dropped.items()))
        guard = self.security.summary()
        c = self.cache
        cache = (f"; last-value cache: {len(c)} topics, {c.bytes} bytes, {c.evicted} evicted, "
                 f"{c.refused} refused, {c.replays} replays ({c.sent} frames), "
                 f"{c.replays_skipped} skipped" if c is not None else "")
        up = self._upstream_view
        if up is not None:
            subs = (f"; subscriptions: {len(up.held)} held ({up.held_bytes} bytes)"
                    + (f", {up.over_budget} past the budget" if up.over_budget else ""))
        else:
            subs = f"; subscriptions: {len(self._forwarded)} held ({self._forwarded_bytes} bytes)"
        return "".join([f"; dropped: {dropped}" if dropped else "", subs, cache,
                        f"; dropped from collectors: {upstream}" if upstream else "",
                        f"; connections: {guard}" if guard else ""])

    def _summary(self, last_frames: int) -> None:
        rate = (self.frames - last_frames) / self.config.summary_s
        log.info("proxy: %.1f frames/s, %d frames and %d bytes forwarded in all%s",
                 rate, self.frames, self.bytes, self._drops())

    # -- in Python: the last-value cache or CURVE identities are on ----------------------------
    def _loop(self, stop: StopSignal, front: zmq.Socket[bytes], back: zmq.Socket[bytes],
              svc: Service) -> None:
        poller = zmq.Poller()
        poller.register(front, zmq.POLLIN)
        poller.register(back, zmq.POLLIN)
        poller.register(stop.fd, zmq.POLLIN)
        next_summary = time.monotonic() + self.config.summary_s
        last_frames = 0
        while not stop.is_set():
            timeout = max(0.0, next_summary - time.monotonic()) * 1000
            events = dict(poller.poll(svc.timeout_ms(timeout)))
            svc.tick()
            if front in events:
                n, nbytes = self.filter.pump(front, back, BATCH)
                self.frames += n
                self.bytes += nbytes
            if back in events:
                self._upstream(back, front)
            now = time.monotonic()
            if now >= next_summary:
                self._summary(last_frames)
                last_frames = self.frames
                next_summary = now + self.config.summary_s

    # -- in C: neither is on (sensorwire.libzmqproxy) ------------------------------------------
    def _run_libzmq(self, ctx: zmq.Context[zmq.Socket[bytes]], front: zmq.Socket[bytes],
                    back: zmq.Socket[bytes], stop: StopSignal,
                    ready: Callable[[], None] | None, svc: Service) -> None:
        inproc = libzmqproxy.endpoint()
        front.bind(inproc)
        upstream = self._upstream_view = libzmqproxy.Upstream(ctx, inproc)
        forwarder = libzmqproxy.Forwarder(ctx, front, back)
        try:
            upstream.open()
            forwarder.start()
            if ready is not None:
                ready()
            self._steer(stop, forwarder, upstream, svc)
            self._count(forwarder, upstream)
        finally:
            try:
                forwarder.close()
            except libzmqproxy.Stuck as exc:
                _abandon(str(exc))
            finally:
                upstream.close()

    def _steer(self, stop: StopSignal, forwarder: libzmqproxy.Forwarder,
               upstream: libzmqproxy.Upstream, svc: Service) -> None:
        """Answer pings, keep the counters fresh (every STATS_S), tell systemd, log summaries."""
        pings = upstream.sock
        assert pings is not None
        poller = zmq.Poller()
        poller.register(pings, zmq.POLLIN)
        poller.register(stop.fd, zmq.POLLIN)
        next_summary = time.monotonic() + self.config.summary_s
        last_frames = 0
        while not stop.is_set():
            timeout = min(STATS_S, max(0.0, next_summary - time.monotonic())) * 1000
            events = dict(poller.poll(svc.timeout_ms(timeout)))
            if pings in events:
                upstream.answer()
            self._count(forwarder, upstream)  # before tick(), which may ask status()
            svc.tick()
            now = time.monotonic()
            if now >= next_summary:
                self._summary(last_frames)
                last_frames = self.frames
                next_summary = now + self.config.summary_s

    def _count(self, forwarder: libzmqproxy.Forwarder, upstream: libzmqproxy.Upstream) -> None:
        """The counters from libzmq's, less the ping answers (as in Python); never decreasing.

        A busy proxy thread (a flood of subscriptions) may answer late: the counters then keep
        their last values, and a WARNING (rate-limited) says so; forwarding goes on."""
        forwarder.check()
        stats = forwarder.statistics()
        now = time.monotonic()
        if stats is None:
            if now - self._stats_at < libzmqproxy.JOIN_S:
                return
            _limited.warning("stats", "proxy: the libzmq proxy thread has not answered "
                             "STATISTICS for %.1f s (busy, e.g. with a flood of subscriptions); "
                             "the counters keep their last values", now - self._stats_at)
            return
        self._stats_at = now
        self.frames = max(self.frames, stats.frontend_in - upstream.acks)
        self.bytes = max(self.bytes, stats.frontend_in_bytes - upstream.ack_bytes)
        self.subscriptions = upstream.subscriptions

    # -- reload and status (sensorwire.service) -----------------------------------------------
    def reload(self, config: ProxyConfig) -> None:
        """Apply a new configuration: ``summary_s`` and ``log_level`` at once, and the
        allow-lists' folders are read again; every other key needs a restart (said, and the
        running value kept)."""
        fixed = [k for k in config.__struct_fields__ if k not in LIVE_KEYS
                 and getattr(config, k) != getattr(self.config, k)]
        if fixed:
            kept = ", ".join(f"{k}={getattr(self.config, k)!r}" for k in fixed)
            log.warning("reload: %s changed but take effect only after a restart; keeping %s",
                        ", ".join(fixed), kept)
            config = msgspec.structs.replace(config, **{k: getattr(self.config, k) for k in fixed})
        self.config = config
        self.security.reload()  # the allow-lists, at once

    def status(self) -> str:
        """The one-line STATUS= for systemd."""
        rate = self._rate.per_s(self.frames)
        return f"forwarding {rate:.1f} frames/s; {self.frames} frames, {self.bytes} bytes in all"

    def _upstream(self, back: zmq.Socket[bytes], front: zmq.Socket[bytes]) -> None:
        """Subscriptions and repair requests to agents; pings answered here."""
        for _ in range(BATCH):
            try:
                msg = back.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            kind = msg[:1]
            if kind == wire.PING:
                back.send(wire.ACK + msg[1:65])
                continue
            if kind not in UPSTREAM_KINDS:
                self._drop_upstream("unknown_kind", f"a message starting {msg[:8]!r}")
                continue
            if kind != wire.REPAIR and len(msg) > SUBSCRIPTION_MAX_BYTES:
                self._drop_upstream("subscription_too_long", f"a subscription of {len(msg) - 1} "
                                    f"bytes (a topic has at most {wire.MAX_TOPIC_BYTES})")
                continue
            if kind == b"\x01":
                prefix = msg[1:]
                if prefix not in self._forwarded:
                    if (len(self._forwarded) >= libzmqproxy.MAX_SUBSCRIPTIONS or self._forwarded_bytes
                            + len(prefix) > libzmqproxy.MAX_SUBSCRIPTION_BYTES):
                        self._drop_upstream("too_many_subscriptions", "collectors hold "
                                            f"{len(self._forwarded)} distinct subscriptions "
                                            f"({self._forwarded_bytes} bytes), the most the agents "
                                            "take; without CURVE anyone who reaches the backend "
                                            "can subscribe: set [security] authorized_collectors")
                        continue
                    self._forwarded.add(prefix)
                    self._forwarded_bytes += len(prefix)
                    # once only: with the cache on the backend passes every collector's
                    # subscription (XPUB_VERBOSE) but only the last unsubscription, and the
                    # frontend (XSUB) counts what it is sent: a repeat sent on would keep the
                    # prefix at the agents after its last collector left, and they would send
                    # frames nobody takes instead of spooling them
                    front.send(msg)
                self.subscriptions += 1
                if self.cache is not None:
                    self._send_cached(back, prefix)
                continue
            if kind == b"\x00":
                prefix = msg[1:]
                if prefix not in self._forwarded:
                    continue  # never forwarded: nothing to take back
                self._forwarded.remove(prefix)
                self._forwarded_bytes -= len(prefix)
            front.send(msg)

    def _drop_upstream(self, reason: str, detail: str) -> None:
        self.upstream_dropped[reason] += 1
        _limited.warning(f"upstream:{reason}", "proxy: dropped a message from a collector (%s): "
                         "%s; %d dropped for this reason so far", reason, detail,
                         self.upstream_dropped[reason])

    def _send_cached(self, back: zmq.Socket[bytes], prefix: bytes) -> None:
        assert self.cache is not None
        sent = 0
        for msg in self.cache.replay(prefix):
            back.send(msg)
            sent += 1
        if sent:
            log.debug("last-value cache: %d frames for a new subscription %r", sent, prefix)


def _abandon(why: str) -> None:
    """Exit the process at once: a proxy thread that did not stop still uses its sockets, so
    closing them is unsafe and ``zmq_ctx_term`` would wait for them forever (a process that
    forwards nothing and ignores SIGTERM).  systemd restarts us (``Restart=on-failure``)."""
    log.error("proxy: %s; exiting without closing its sockets", why)
    logging.shutdown()  # flush the handlers: os._exit skips them
    os._exit(1)
