"""MQTT through Mosquitto with paho-mqtt 2: QoS 0 and QoS 1.

Both sides set ``TCP_NODELAY`` on the client socket (paho leaves Nagle on;
the ``on_socket_open`` hook is where a paho user turns it off).  The
publisher calls ``publish`` from its main thread with paho's network thread
started by ``loop_start()``, as paho's documentation shows; the subscriber
runs ``loop(timeout=0.1)`` in its own main thread.  MQTT 3.1.1, clean
sessions, paho's default in-flight window (20) and an unlimited client-side
queue; the broker keeps its defaults too (``max_inflight_messages 20``,
``max_queued_messages 1000`` per client for QoS 1).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from bench import workload
from bench.transports.base import Env, Handler, SyncSender, Transport

HOST, PORT = "127.0.0.1", 1883
TOPIC = workload.TOPIC


def _client(role: str) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{role}-{os.getpid()}",
                         protocol=mqtt.MQTTv311, clean_session=True)

    def nodelay(_client: Any, _userdata: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    client.on_socket_open = nodelay
    return client


class _Pub(SyncSender):
    def __init__(self, qos: int) -> None:
        super().__init__()
        self.qos = qos
        self.client: Any = None
        self.last: Any = None

    def open(self) -> None:
        self.client = _client("pub")
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.connect(HOST, PORT, keepalive=60)
        self.client.loop_start()
        if not connected.wait(10.0):
            raise RuntimeError(f"no CONNACK from {HOST}:{PORT} within 10 s")

    def send(self, n: int) -> int:
        publish, build, qos = self.client.publish, self.builder.build, self.qos
        ok = 0
        info = None
        for _ in range(n):
            info = publish(TOPIC, build(), qos)
            ok += info.rc == 0
        self.last = info
        return ok

    def flush(self, timeout_s: float) -> None:
        if self.last is not None:
            try:
                self.last.wait_for_publish(timeout_s)
            except (RuntimeError, ValueError):
                pass  # not connected / queue refused: the subscriber counts the loss

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()


class _Sub:
    def __init__(self, qos: int) -> None:
        self.qos = qos

    def run(self, handle: Handler, stop: threading.Event, ready: Callable[[], None]) -> None:
        client = _client("sub")
        subscribed = threading.Event()
        decode = workload.decode
        client.on_connect = lambda c, *a: c.subscribe(TOPIC, self.qos)
        client.on_subscribe = lambda *a: subscribed.set()
        client.on_message = lambda _c, _u, msg: handle(decode(msg.payload))
        client.connect(HOST, PORT, keepalive=60)
        try:
            deadline = time.monotonic() + 10.0
            while not subscribed.is_set():
                client.loop(timeout=0.1)
                if time.monotonic() > deadline or stop.is_set():
                    raise RuntimeError(f"no SUBACK from {HOST}:{PORT} within 10 s")
            ready()
            while not stop.is_set():
                client.loop(timeout=0.1)
        finally:
            client.disconnect()

    def details(self) -> dict[str, object]:
        return {}


class MqttTransport(Transport):
    modules = ("paho",)
    server = (HOST, PORT)

    def __init__(self, qos: int) -> None:
        self.qos = qos
        self.name = f"mqtt-qos{qos}"
        self.label = f"MQTT QoS {qos} (Mosquitto, paho)"
        self.practice = (f"paho-mqtt 2, MQTT 3.1.1, QoS {qos} on both sides, TCP_NODELAY via "
                         "on_socket_open; publisher: publish() with loop_start()'s network thread; "
                         "subscriber: loop(timeout=0.1) in its main thread; "
                         "default in-flight windows")

    def versions(self) -> str:
        from importlib.metadata import version

        return f"paho-mqtt {version('paho-mqtt')}, {_broker_version()}"

    def sender(self, env: Env) -> _Pub:
        return _Pub(self.qos)

    def receiver(self, env: Env) -> _Sub:
        return _Sub(self.qos)


def _broker_version() -> str:
    """The broker's own word, from the retained ``$SYS/broker/version``."""
    client = _client("version")
    got: list[str] = []
    client.on_connect = lambda c, *a: c.subscribe("$SYS/broker/version")
    client.on_message = lambda _c, _u, msg: got.append(msg.payload.decode(errors="replace"))
    try:
        client.connect(HOST, PORT, keepalive=10)
        deadline = time.monotonic() + 2.0
        while not got and time.monotonic() < deadline:
            client.loop(timeout=0.1)
        client.disconnect()
    except OSError as exc:
        return f"broker version unknown ({exc})"
    return got[0] if got else "broker version unknown"
