"""The XSUB/XPUB proxy where agents and collectors meet.

Agents connect to the XSUB *frontend*, collectors to the XPUB *backend*.
Frames flow frontend -> backend; subscriptions flow backend -> frontend, so
filtering happens at the agents.  The proxy counts frames and bytes passed
and logs a one-line summary every minute.

Both sockets are CURVE servers with ``[security] mode = "curve"``; what the
proxy checks in each frame from agents is in :mod:`sensorwire.proxyfilter`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
import time
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import zmq

from sensorwire import configload, security
from sensorwire.configload import Config
from sensorwire.lifecycle import StopSignal
from sensorwire.proxyfilter import FrontendFilter
from sensorwire.security import AGENTS, COLLECTORS, ProxySecurity, Security

log = logging.getLogger(__name__)

BATCH = 1000  # messages moved per socket per wake-up, so neither direction starves


class ProxyLimits(Config):
    # a bigger message disconnects the peer that sent it (ZMQ_MAXMSGSIZE, both sockets)
    max_message_bytes: Annotated[int, msgspec.Meta(gt=0)] = 65536
    max_samples_per_frame: Annotated[int, msgspec.Meta(gt=0)] = 1024


class ProxyConfig(Config):
    frontend: str
    backend: str
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    summary_s: float = 60.0
    security: ProxySecurity = msgspec.field(default_factory=ProxySecurity)
    limits: ProxyLimits = msgspec.field(default_factory=ProxyLimits)

    def __post_init__(self) -> None:
        security.check(self.security, binds=True, connects=False)


def load(path: str | Path) -> ProxyConfig:
    return configload.load(path, ProxyConfig)


class Proxy:
    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.frames = 0
        self.bytes = 0
        self.subscriptions = 0
        self.security = Security(config.security, "proxy", monitor=True)
        self.filter = FrontendFilter(config.limits.max_samples_per_frame, None)

    def run(self, stop: StopSignal, ready: Callable[[], None] | None = None) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        front = ctx.socket(zmq.XSUB)
        back = ctx.socket(zmq.XPUB)
        sec = self.security
        try:
            for s in (front, back):
                s.setsockopt(zmq.LINGER, 0)
                s.setsockopt(zmq.MAXMSGSIZE, self.config.limits.max_message_bytes)
            sec.open(ctx)
            self.filter.identity = sec.identity(AGENTS)
            sec.bind(front, self.config.frontend, "frontend", domain=AGENTS)
            sec.bind(back, self.config.backend, "backend", domain=COLLECTORS)
            log.info("proxy up: agents -> %s, collectors <- %s%s", self.config.frontend,
                     self.config.backend, " (CURVE)" if sec.curve else "")
            if ready is not None:
                ready()
            self._loop(stop, front, back)
            log.info("proxy stopping: %d frames, %d bytes forwarded%s", self.frames, self.bytes,
                     self._drops())
        finally:
            front.close()
            back.close()
            sec.close()
            ctx.term()

    def _drops(self) -> str:
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(self.filter.dropped.items()))
        guard = self.security.summary()
        return "".join([f"; dropped: {dropped}" if dropped else "",
                        f"; connections: {guard}" if guard else ""])

    def _loop(self, stop: StopSignal, front: zmq.Socket[bytes], back: zmq.Socket[bytes]) -> None:
        poller = zmq.Poller()
        poller.register(front, zmq.POLLIN)
        poller.register(back, zmq.POLLIN)
        poller.register(stop.fd, zmq.POLLIN)
        next_summary = time.monotonic() + self.config.summary_s
        last_frames = 0
        while not stop.is_set():
            timeout = max(0.0, next_summary - time.monotonic()) * 1000
            events = dict(poller.poll(timeout))
            if front in events:
                n, nbytes = self.filter.pump(front, back, BATCH)
                self.frames += n
                self.bytes += nbytes
            if back in events:
                self.subscriptions += self._pump(back, front, count=False)
            now = time.monotonic()
            if now >= next_summary:
                rate = (self.frames - last_frames) / self.config.summary_s
                log.info("proxy: %.1f frames/s, %d frames and %d bytes forwarded in all%s",
                         rate, self.frames, self.bytes, self._drops())
                last_frames = self.frames
                next_summary = now + self.config.summary_s

    def _pump(self, src: zmq.Socket[bytes], dst: zmq.Socket[bytes], count: bool) -> int:
        n = 0
        nbytes = 0
        recv, send = src.recv, dst.send
        for _ in range(BATCH):
            try:
                msg = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if src.rcvmore:
                send(msg, zmq.SNDMORE)
                continue
            send(msg)
            n += 1
            nbytes += len(msg)
        if count:
            self.frames += n
            self.bytes += nbytes
        return n
