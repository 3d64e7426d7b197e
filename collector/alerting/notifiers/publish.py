"""``kind = "publish"``: alerts republished as sensorwire frames on ZeroMQ.

One message per notification, ``alert/<site>/<device>/<rule>`` 0x00 Frame
(see :func:`sensorwire.proto.wire.alert_topic`), the Frame being:

- ``site``, ``device_id``: the alert's device; ``sensor``: the rule's name;
- ``boot_id``: random per collector start, ``seq``: 1, 2, 3... per start;
- ``time_unix_nano``: when it fired (``firing``) or resolved (``resolved``);
- samples ``firing`` (1 firing, 0 resolved), ``severity`` (1 info, 2
  warning, 3 critical) and, when the alert has them, ``value`` and ``threshold``.

The topic has four segments, so a data collector never mistakes an alert for
a reading; subscribe with the prefix ``alert/`` (a site) or
``alert/greenhouse/``.  Publishing is PUB: a subscriber that is not connected
when an alert goes out does not get it.
"""

from __future__ import annotations

import random
from typing import Annotated

import msgspec
import zmq

from sensorwire import zmqutil
from sensorwire.collector.alerting.notification import Notification
from sensorwire.collector.alerting.notifiers import NotifierConfig, NotifyError
from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import Frame

SEVERITY = {"info": 1.0, "warning": 2.0, "critical": 3.0}


class PublishConfig(NotifierConfig, tag="publish", kw_only=True):
    connect: list[str] = []
    bind: list[str] = []
    sndhwm: Annotated[int, msgspec.Meta(ge=0, le=2_147_483_647)] = 1000  # libzmq: an int
    retries: Annotated[int, msgspec.Meta(ge=0)] = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.connect and not self.bind:
            raise ValueError("connect: give at least one endpoint in connect or bind")
        from sensorwire.zmqutil import check_endpoints

        check_endpoints("connect", self.connect)
        check_endpoints("bind", self.bind)


def alert_frame(n: Notification, boot_id: int, seq: int) -> Frame:
    f = Frame(site=n.site, device_id=n.device, boot_id=boot_id, seq=seq,
              time_unix_nano=n.time_ns, sensor=n.rule)
    f.samples.add(metric="firing", value=1.0 if n.state == "firing" else 0.0)
    f.samples.add(metric="severity", value=SEVERITY.get(n.severity, 2.0))
    if n.value is not None:
        f.samples.add(metric="value", value=n.value)
    if n.threshold is not None:
        f.samples.add(metric="threshold", value=n.threshold)
    return f


class PublishNotifier:
    def __init__(self, config: PublishConfig) -> None:
        self.name = config.name
        self.config = config
        self._sock: zmq.Socket[bytes] | None = None
        self._boot_id = random.getrandbits(64)
        self._seq = 0

    def open(self) -> None:
        # One context per process: the shared instance (the collector's receive
        # loop keeps its own, private to its thread's sockets).
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
        try:
            sock.setsockopt(zmq.LINGER, 1000)
            sock.setsockopt(zmq.SNDHWM, self.config.sndhwm)
            for ep in self.config.bind:
                zmqutil.bind(sock, ep)
            for ep in self.config.connect:
                zmqutil.connect(sock, ep)
        except BaseException:
            sock.close(0)
            raise
        self._sock = sock

    def send(self, n: Notification) -> None:
        if self._sock is None:
            raise NotifyError("not open", retryable=False)
        self._seq += 1
        msg = wire.encode(wire.alert_topic(n.site, n.device, n.rule),
                          alert_frame(n, self._boot_id, self._seq))
        try:
            self._sock.send(msg, zmq.NOBLOCK)
        except zmq.Again:
            raise NotifyError("send queue full (sndhwm)", retryable=True) from None
        except zmq.ZMQError as exc:
            raise NotifyError(str(exc), retryable=False) from None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
