"""Redis pub/sub with redis-py: PUBLISH through a pipeline, a PubSub reader.

The publisher sends each burst of due frames as one pipeline (one round trip
for up to 64 PUBLISH commands, ``transaction=False``); the subscriber reads
with ``PubSub.get_message(timeout=...)``.  redis-py uses the hiredis parser
when the ``hiredis`` package is installed (the ``bench`` extra installs it).

Redis drops nothing on the way, but disconnects a subscriber whose output
buffer passes ``client-output-buffer-limit pubsub`` (32 MB by default): a
publisher much faster than its subscriber loses the subscriber, not frames.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from bench import workload
from bench.transports.base import Env, Handler, SyncSender, Transport

HOST, PORT = "127.0.0.1", 6379
CHANNEL = workload.TOPIC


class _Pub(SyncSender):
    def __init__(self) -> None:
        super().__init__()
        self.client: Any = None

    def open(self) -> None:
        import redis

        self.client = redis.Redis(host=HOST, port=PORT, socket_timeout=10)
        self.client.ping()

    def send(self, n: int) -> int:
        pipe = self.client.pipeline(transaction=False)
        build = self.builder.build
        for _ in range(n):
            pipe.publish(CHANNEL, build())
        pipe.execute()
        return n

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class _Sub:
    def run(self, handle: Handler, stop: threading.Event, ready: Callable[[], None]) -> None:
        import redis

        client: Any = redis.Redis(host=HOST, port=PORT)
        ps = client.pubsub(ignore_subscribe_messages=True)
        try:
            ps.subscribe(CHANNEL)
            ready()
            decode = workload.decode
            get = ps.get_message
            while not stop.is_set():
                msg = get(timeout=0.1)
                if msg is not None:
                    handle(decode(msg["data"]))
        finally:
            ps.close()
            client.close()

    def details(self) -> dict[str, object]:
        return {}


class RedisPubSub(Transport):
    name = "redis"
    label = "Redis pub/sub"
    practice = ("redis-py with hiredis; the publisher sends each burst of due frames as one "
                "pipeline of PUBLISH commands (≤64, no transaction); the subscriber loops on "
                "PubSub.get_message(timeout=0.1)")
    modules = ("redis",)
    server = (HOST, PORT)

    def versions(self) -> str:
        import redis

        try:
            info = redis.Redis(host=HOST, port=PORT, socket_timeout=2).info("server")
            server = f"redis-server {info.get('redis_version', '?')}"
        except redis.RedisError as exc:
            server = f"redis-server ? ({exc})"
        parser = "hiredis" if _has_hiredis() else "pure-Python parser"
        return f"redis-py {redis.__version__} ({parser}), {server}"

    def sender(self, env: Env) -> _Pub:
        return _Pub()

    def receiver(self, env: Env) -> _Sub:
        return _Sub()


def _has_hiredis() -> bool:
    import importlib.util

    return importlib.util.find_spec("hiredis") is not None
