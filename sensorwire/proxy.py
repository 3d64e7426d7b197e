"""The XSUB/XPUB proxy where agents and collectors meet.

Agents connect to the XSUB *frontend*, collectors to the XPUB *backend*.
Frames flow frontend -> backend; subscriptions and gap-repair requests flow
backend -> frontend, so filtering happens at the agents.  The proxy counts
frames and bytes passed and logs a one-line summary every minute.

Two more things happen here:

- a *ping* from a subscriber (``0x03`` + nonce, sent after its subscriptions)
  is answered on the backend with ``$ack/<nonce>``: the subscriber then knows
  its subscriptions are live here;
- with ``last_value_cache = true`` the proxy keeps the last frame of every
  topic and, when a subscription arrives, sends the frames of the topics it
  matches at once (the ZeroMQ guide's last-value cache; the backend is an XPUB
  with ``XPUB_VERBOSE`` so every subscription is seen).  Those frames carry
  flag 8 (``from a last-value cache``) so collectors do not count or store
  them twice; ``sensorwire tail`` shows them.

On SIGHUP it re-reads its file: ``log_level`` and ``summary_s`` apply at once;
``frontend`` and ``backend`` need a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
import time
from pathlib import Path
from typing import Annotated, Literal

import msgspec

import msgspec
import zmq
from google.protobuf.message import DecodeError

from sensorwire import configload, zmqutil
from sensorwire.configload import Config
from sensorwire.lifecycle import StopSignal
from sensorwire.proto import wire
from sensorwire.metrics import MetricsConfig
from sensorwire.service import NO_SERVICE, Rate, Service

log = logging.getLogger(__name__)

BATCH = 1000  # messages moved per socket per wake-up, so neither direction starves


class ProxyConfig(Config):
    frontend: str
    backend: str
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    summary_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    last_value_cache: bool = False
    last_value_topics: Annotated[int, msgspec.Meta(gt=0)] = 100_000
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)


def load(path: str | Path) -> ProxyConfig:
    return configload.load(path, ProxyConfig)


class Proxy:
    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.frames = 0
        self.bytes = 0
        self.subscriptions = 0
        self.cache: dict[bytes, bytes] | None = {} if config.last_value_cache else None
        self.cache_sent = 0
        self._rate = Rate()

    def run(self, stop: StopSignal, ready: Callable[[], None] | None = None,
            service: Service | None = None) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        front = ctx.socket(zmq.XSUB)
        back = ctx.socket(zmq.XPUB)
        try:
            for s in (front, back):
                s.setsockopt(zmq.LINGER, 0)
            if self.cache is not None:
                back.setsockopt(zmq.XPUB_VERBOSE, 1)
            zmqutil.bind(front, self.config.frontend)
            zmqutil.bind(back, self.config.backend)
            log.info("proxy up: agents -> %s, collectors <- %s", self.config.frontend, self.config.backend)
            if ready is not None:
                ready()
            self._loop(stop, front, back, service or NO_SERVICE)
            log.info("proxy stopping: %d frames, %d bytes forwarded", self.frames, self.bytes)
        finally:
            front.close()
            back.close()
            ctx.term()

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
                self._downstream(front, back)
            if back in events:
                self._upstream(back, front)
            now = time.monotonic()
            if now >= next_summary:
                rate = (self.frames - last_frames) / self.config.summary_s
                log.info("proxy: %.1f frames/s, %d frames and %d bytes forwarded in all",
                         rate, self.frames, self.bytes)
                last_frames = self.frames
                next_summary = now + self.config.summary_s

    # -- reload and status (sensorwire.service) -----------------------------------------------
    def reload(self, config: ProxyConfig) -> None:
        """Apply a new configuration: summary_s at once; endpoints need a restart."""
        fixed = [k for k in ("frontend", "backend")
                 if getattr(config, k) != getattr(self.config, k)]
        if config.metrics != self.config.metrics:
            fixed.append("metrics")
        if fixed:
            kept = ", ".join(f"{k}={getattr(self.config, k)!r}" for k in fixed)
            log.warning("reload: %s changed but take effect only after a restart; keeping %s",
                        ", ".join(fixed), kept)
            config = msgspec.structs.replace(config, **{k: getattr(self.config, k) for k in fixed})
        self.config = config

    def status(self) -> str:
        """The one-line STATUS= for systemd."""
        rate = self._rate.per_s(self.frames)
        return f"forwarding {rate:.1f} frames/s; {self.frames} frames, {self.bytes} bytes in all"

    def _downstream(self, front: zmq.Socket[bytes], back: zmq.Socket[bytes]) -> None:
        """Frames from agents to collectors (and into the last-value cache)."""
        n = nbytes = 0
        recv, send = front.recv, back.send
        cache = self.cache
        for _ in range(BATCH):
            try:
                msg = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if front.rcvmore:  # not sensorwire: pass it on whole, collectors count it
                send(msg, zmq.SNDMORE)
                continue
            send(msg)
            n += 1
            nbytes += len(msg)
            if cache is not None:
                end = msg.find(wire.DELIM, 0, wire.MAX_TOPIC_BYTES + 1)
                if end > 0:
                    topic = msg[:end]
                    cache.pop(topic, None)
                    cache[topic] = msg
                    if len(cache) > self.config.last_value_topics:
                        del cache[next(iter(cache))]
        self.frames += n
        self.bytes += nbytes

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
            front.send(msg)
            if kind == b"\x01":
                self.subscriptions += 1
                if self.cache is not None:
                    self._send_cached(back, msg[1:])

    def _send_cached(self, back: zmq.Socket[bytes], prefix: bytes) -> None:
        assert self.cache is not None
        sent = 0
        for topic, msg in list(self.cache.items()):
            if (topic + wire.DELIM).startswith(prefix):
                try:
                    back.send(wire.mark_cached(msg))
                except DecodeError:
                    continue  # not a frame: nothing to cache (collectors rejected it already)
                sent += 1
        self.cache_sent += sent
        if sent:
            log.debug("last-value cache: %d frames for a new subscription %r", sent, prefix)
