"""The registry of transports, in the order of the table's rows.

To add a peer: write a module here with a :class:`~bench.transports.base.Transport`
subclass (import its client library inside the methods, not at module level,
so a missing library makes the row "skipped" instead of breaking the
benchmark) and list an instance below: in ``ALL`` for the default run, in
``EXTRA`` for a row run only when asked for (``--only NAME``).
"""

from __future__ import annotations

from bench.transports.base import Transport
from bench.transports.mqtt import MqttTransport
from bench.transports.nats_core import NatsCore
from bench.transports.redis_pubsub import RedisPubSub
from bench.transports.sensorwire_path import SensorwireHostedProxy, SensorwirePath
from bench.transports.zenoh_peer import ZenohPeer
from bench.transports.zmq_plain import ZmqHostedProxy, ZmqOnePart, ZmqProxy, ZmqTwoPart

ALL: tuple[Transport, ...] = (
    SensorwirePath(),
    NatsCore(),
    ZenohPeer(),
    ZmqTwoPart(),
    ZmqOnePart(),
    ZmqProxy(),
    MqttTransport(qos=0),
    MqttTransport(qos=1),
    RedisPubSub(),
)

# what the proxy hop costs when it is not a process of its own (see bench/README.md)
EXTRA: tuple[Transport, ...] = (ZmqHostedProxy(), SensorwireHostedProxy())

BY_NAME = {t.name: t for t in ALL + EXTRA}


def get(name: str) -> Transport:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no transport {name!r}; there are: {', '.join(BY_NAME)}") from None
