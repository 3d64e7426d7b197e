"""NATS core pub/sub with nats-py (asyncio).

The publisher awaits ``publish`` for each frame and yields to the event loop
after every burst, so nats-py's flusher task writes the pending buffer in
big writes; ``flush()`` (a PING/PONG round trip) ends each trial.  The
subscriber uses a callback subscription (``cb=``) with nats-py's default
pending limits; a slow consumer is counted.  No JetStream: core NATS, at
most once.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable
from typing import Any

from bench import workload
from bench.pacing import Pace, SendStats, adrive
from bench.transports.base import Env, Handler, Transport
from bench.workload import FrameBuilder

HOST, PORT = "127.0.0.1", 4222
URL = f"nats://{HOST}:{PORT}"
SUBJECT = workload.NATS_SUBJECT


async def _connect(error_cb: Callable[[Exception], Any] | None = None) -> Any:
    import nats

    async def ignore(_exc: Exception) -> None:
        pass

    return await nats.connect(URL, connect_timeout=5, allow_reconnect=False,
                              error_cb=error_cb or ignore)


class _Pub:
    def __init__(self) -> None:
        self.builder = FrameBuilder()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.nc: Any = None

    @property
    def next_seq(self) -> int:
        return self.builder.next_seq

    def open(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.nc = self.loop.run_until_complete(_connect())

    async def _send(self, n: int) -> int:
        publish, build = self.nc.publish, self.builder.build
        for _ in range(n):
            await publish(SUBJECT, build())
        return n

    def run(self, pace: Pace, should_stop: Callable[[], bool] | None = None) -> SendStats:
        assert self.loop is not None
        return self.loop.run_until_complete(adrive(pace, self._send, should_stop))

    def flush(self, timeout_s: float) -> None:
        assert self.loop is not None
        self.loop.run_until_complete(self.nc.flush(timeout=max(1, int(timeout_s))))

    def close(self) -> None:
        if self.loop is not None:
            if self.nc is not None:
                self.loop.run_until_complete(self.nc.close())
            self.loop.close()


class _Sub:
    def __init__(self) -> None:
        self.errors: dict[str, int] = {}

    def run(self, handle: Handler, stop: threading.Event, ready: Callable[[], None]) -> None:
        asyncio.run(self._main(handle, stop, ready))

    async def _main(self, handle: Handler, stop: threading.Event,
                    ready: Callable[[], None]) -> None:
        async def on_error(exc: Exception) -> None:
            key = type(exc).__name__
            self.errors[key] = self.errors.get(key, 0) + 1

        nc = await _connect(on_error)
        decode = workload.decode

        async def on_msg(msg: Any) -> None:
            handle(decode(msg.data))

        try:
            await nc.subscribe(SUBJECT, cb=on_msg)
            await nc.flush()  # the server has the subscription
            ready()
            while not stop.is_set():
                await asyncio.sleep(0.05)
        finally:
            await nc.close()

    def details(self) -> dict[str, object]:
        return dict(self.errors)


class NatsCore(Transport):
    name = "nats"
    label = "NATS core"
    practice = ("nats-py (asyncio): await publish() per frame, yielding to the loop after each "
                "burst so the flusher task batches writes; subscriber: callback subscription "
                "with default pending limits")
    modules = ("nats",)
    server = (HOST, PORT)

    def versions(self) -> str:
        from importlib.metadata import version

        return f"nats-py {version('nats-py')}, {_server_version()}"

    def sender(self, env: Env) -> _Pub:
        return _Pub()

    def receiver(self, env: Env) -> _Sub:
        return _Sub()


def _server_version() -> str:
    """nats-server greets every client with an INFO line holding its version."""
    try:
        with socket.create_connection((HOST, PORT), timeout=2.0) as s:
            line = s.makefile("rb").readline(65536)
        info = json.loads(line.split(b" ", 1)[1])
        return f"nats-server {info.get('version', '?')}"
    except (OSError, ValueError, IndexError) as exc:
        return f"nats-server ? ({exc})"
