"""The agent's publishing socket: frame building, sequence numbers, heartbeats.

The socket is an XPUB: it works like a PUB, and it also sees the
subscriptions of the collectors behind the proxy, so the agent knows whether
anybody listens for a topic.  ``XPUB_NODROP`` makes a full send queue visible
(``zmq.Again``) instead of a silent drop, so every drop is counted.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence

import zmq

from sensorwire import __version__, zmqutil
from sensorwire.agent.config import PublishConfig
from sensorwire.agent.sensors import Reading
from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import Frame

log = logging.getLogger(__name__)


class Publisher:
    """Owns the XPUB socket; used only by the agent's main thread."""

    def __init__(self, site: str, device_id: str, config: PublishConfig) -> None:
        self.site = site
        self.device_id = device_id
        self.config = config
        # os.urandom, not secrets: secrets pulls in hashlib/OpenSSL (3.5 MB of RSS on a Pi)
        self.boot_id = int.from_bytes(os.urandom(8), "little") or 1
        self.seq = 0
        self.started = time.monotonic()
        self.counters: dict[str, int] = {
            "frames_sent": 0,
            "heartbeats_sent": 0,
            "dropped_hwm": 0,
            "sent_unsubscribed": 0,
        }
        self.subscriptions: set[bytes] = set()
        self._listened: dict[bytes, bool] = {}
        self._topics: dict[str, bytes] = {}
        self._frame = Frame()
        self._hb_topic = wire.heartbeat_topic(site, device_id)
        self.sock: zmq.Socket[bytes] | None = None

    def open(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> zmq.Socket[bytes]:
        sock = ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.SNDHWM, self.config.sndhwm)
        sock.setsockopt(zmq.XPUB_NODROP, 1)
        try:
            for ep in self.config.bind:
                zmqutil.bind(sock, ep)
            for ep in self.config.connect:
                zmqutil.connect(sock, ep)
        except zmqutil.EndpointError:
            sock.close(linger=0)
            raise
        self.sock = sock
        return sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    # -- subscriptions ----------------------------------------------------
    def handle_subscriptions(self) -> None:
        """Read the subscription messages waiting on the socket."""
        assert self.sock is not None
        while True:
            try:
                msg = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not msg:
                continue
            if msg[0] == 1:
                self.subscriptions.add(msg[1:])
            elif msg[0] == 0:
                self.subscriptions.discard(msg[1:])
            self._listened.clear()
            log.debug("subscriptions now %r", sorted(self.subscriptions))

    def listened(self, topic: bytes) -> bool:
        """Is at least one subscriber listening for ``topic``?"""
        known = self._listened.get(topic)
        if known is None:
            msg = topic + wire.DELIM
            known = any(msg.startswith(s) for s in self.subscriptions)
            self._listened[topic] = known
        return known

    # -- frames -----------------------------------------------------------
    def topic(self, sensor: str) -> bytes:
        t = self._topics.get(sensor)
        if t is None:
            t = self._topics[sensor] = wire.data_topic(self.site, self.device_id, sensor)
        return t

    def build_data(self, sensor: str, readings: Sequence[Reading], time_ns: int) -> tuple[bytes, bytes]:
        """Number the next data frame and return ``(topic, message)``."""
        self.seq += 1
        f = self._frame
        f.Clear()
        f.site = self.site
        f.device_id = self.device_id
        f.boot_id = self.boot_id
        f.seq = self.seq
        f.time_unix_nano = time_ns
        f.sensor = sensor
        add = f.samples.add
        for metric, value, unit in readings:
            add(metric=metric, value=value, unit=unit)
        topic = self.topic(sensor)
        return topic, topic + wire.DELIM + f.SerializeToString()

    def build_heartbeat(self, interval_s: float, stopping: bool = False,
                        extra: Iterable[tuple[str, int]] = ()) -> bytes:
        f = self._frame
        f.Clear()
        f.site = self.site
        f.device_id = self.device_id
        f.boot_id = self.boot_id
        f.time_unix_nano = time.time_ns()
        hb = f.heartbeat
        hb.agent_version = __version__
        hb.uptime_s = time.monotonic() - self.started
        hb.interval_s = interval_s
        hb.last_seq = self.seq
        hb.stopping = stopping
        for k, v in self.counters.items():
            hb.counters[k] = v
        for k, v in extra:
            hb.counters[k] = v
        return self._hb_topic + wire.DELIM + f.SerializeToString()

    def send(self, topic: bytes, msg: bytes, heartbeat: bool = False) -> bool:
        """Hand one message to ZeroMQ; False (and counted) when the queue is full."""
        assert self.sock is not None
        if not self.listened(topic):
            self.counters["sent_unsubscribed"] += 1
        try:
            self.sock.send(msg, zmq.NOBLOCK)
        except zmq.Again:
            self.counters["dropped_hwm"] += 1
            return False
        self.counters["heartbeats_sent" if heartbeat else "frames_sent"] += 1
        return True
