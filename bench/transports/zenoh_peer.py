"""Zenoh in peer mode with eclipse-zenoh (zenoh-python), over loopback only.

Two peers and no router: the subscriber listens on ``tcp/127.0.0.1:PORT``,
the publisher connects to it and listens nowhere.  Multicast and gossip
scouting are off, so nothing leaves the machine, and shared memory is off,
so Zenoh moves bytes over TCP like every other row.  The publisher is a
declared ``Publisher`` with the defaults (congestion control DROP, batching
on, not express); the subscriber uses a Python callback.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

from bench import procs, workload
from bench.transports.base import Env, Handler, SyncSender, Transport

KEY = workload.TOPIC


def _config(listen: list[str], connect: list[str]) -> Any:
    import zenoh

    conf = zenoh.Config()
    for key, value in (
        ("mode", "peer"),
        ("scouting/multicast/enabled", False),  # never announce or look for peers on the network
        ("scouting/gossip/enabled", False),
        ("listen/endpoints", listen),
        ("connect/endpoints", connect),
        ("transport/shared_memory/enabled", False),
    ):
        conf.insert_json5(key, json.dumps(value))
    return conf


def _open(listen: list[str], connect: list[str]) -> Any:
    import zenoh

    zenoh.init_log_from_env_or("error")
    return zenoh.open(_config(listen, connect))


class _Pub(SyncSender):
    def __init__(self, endpoint: str) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.session: Any = None
        self.pub: Any = None

    def open(self) -> None:
        self.session = _open(listen=[], connect=[self.endpoint])
        self.pub = self.session.declare_publisher(KEY)

    def send(self, n: int) -> int:
        put, build = self.pub.put, self.builder.build
        for _ in range(n):
            put(build())
        return n

    def close(self) -> None:
        if self.pub is not None:
            self.pub.undeclare()
        if self.session is not None:
            self.session.close()


class _Sub:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def run(self, handle: Handler, stop: threading.Event, ready: Callable[[], None]) -> None:
        session = _open(listen=[self.endpoint], connect=[])
        decode = workload.decode
        try:
            sub = session.declare_subscriber(
                KEY, lambda sample: handle(decode(sample.payload.to_bytes())))
            ready()
            stop.wait()
            sub.undeclare()
        finally:
            session.close()

    def details(self) -> dict[str, object]:
        return {}


class ZenohPeer(Transport):
    name = "zenoh"
    label = "Zenoh peer"
    practice = ("eclipse-zenoh, two peers (no router) on tcp/127.0.0.1, multicast and gossip "
                "scouting off, shared memory off; declared Publisher with default congestion "
                "control (DROP) and batching; subscriber with a Python callback")
    modules = ("zenoh",)

    def versions(self) -> str:
        from importlib.metadata import version

        return f"eclipse-zenoh {version('eclipse-zenoh')}"

    @contextlib.contextmanager
    def services(self) -> Iterator[Env]:
        yield {"endpoint": f"tcp/{procs.LOOPBACK}:{procs.free_port()}"}

    def sender(self, env: Env) -> _Pub:
        return _Pub(env["endpoint"])

    def receiver(self, env: Env) -> _Sub:
        return _Sub(env["endpoint"])
