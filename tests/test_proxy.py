"""The proxy forwarding in libzmq (the default): pings, counters, stop.

A real :class:`~sensorwire.proxy.Proxy` runs in a thread on loopback ports; the
test's own sockets play an agent (XPUB, as the Publisher) and a collector (XSUB).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import zmq
from support import tcp, wait_until

from sensorwire.lifecycle import StopSignal
from sensorwire.proto import wire
from sensorwire.proxy import Proxy, ProxyConfig


class Running:
    def __init__(self, proxy: Proxy, stop: StopSignal, thread: threading.Thread) -> None:
        self.proxy, self.stop, self.thread = proxy, stop, thread


@pytest.fixture
def running() -> Iterator[Running]:
    proxy = Proxy(ProxyConfig(frontend=tcp(), backend=tcp()))
    stop = StopSignal()  # not installed: set() from the test
    up = threading.Event()
    thread = threading.Thread(target=proxy.run, args=(stop, up.set), daemon=True)
    thread.start()
    assert up.wait(10), "the proxy did not come up"
    yield Running(proxy, stop, thread)
    stop.set()
    thread.join(10)
    assert not thread.is_alive(), "the proxy did not stop"
    stop.close()


def recv(sock: zmq.Socket[bytes], timeout_ms: int = 10_000) -> bytes:
    assert sock.poll(timeout_ms), "nothing arrived"
    return sock.recv()


def test_forwards_in_libzmq_answers_pings_with_no_agent_and_counts(
        running: Running, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    proxy = running.proxy
    assert proxy.in_libzmq
    sub = ctx.socket(zmq.XSUB)
    sub.connect(proxy.config.backend)
    sub.send(b"\x01gh/")
    sub.send(b"\x01" + wire.ACK + b"n1")
    sub.send(wire.PING + b"n1")
    assert recv(sub) == wire.ACK + b"n1"  # from the proxy itself: no agent is up

    agent = ctx.socket(zmq.XPUB)
    agent.connect(proxy.config.frontend)
    subs = {recv(agent), recv(agent)}
    assert subs == {b"\x01gh/", b"\x01" + wire.ACK + b"n1"}
    frames = [b"gh/pi-1/env\x00" + bytes([i]) * i for i in range(1, 11)]
    for f in frames:
        agent.send(f)
    assert [recv(sub) for _ in frames] == frames
    agent.send_multipart([b"gh/pi-1/env\x00", b"x"])  # passed on: the collector rejects it
    assert recv(sub) == b"gh/pi-1/env\x00" and sub.rcvmore and recv(sub) == b"x"

    total = sum(len(f) for f in frames) + len(b"gh/pi-1/env\x00x")
    # the answer to our ping is not a forwarded frame; libzmq counts each part of the
    # multi-part message; the counters refresh every second
    wait_until(lambda: (proxy.frames, proxy.bytes) == (12, total), timeout_s=5,
               what="libzmq's counters in the proxy's")
    assert proxy.subscriptions == 2
    assert proxy.status().endswith(f"; 12 frames, {total} bytes in all")

    sub.send(wire.PING + b"n2")  # an agent is up now: it hears the ping too (no $ack/n2 sub)
    assert recv(agent) == wire.PING + b"n2"
    for s in (sub, agent):
        s.close(linger=0)
