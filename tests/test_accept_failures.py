"""A proxy out of file descriptors says so, counts it, keeps forwarding, and recovers.

When every descriptor is taken, libzmq's TCP listener fails ``accept()`` with
EMFILE and tries again at once, in a loop (:mod:`sensorwire.guard`).  A real
``sensorwire proxy`` runs here; once it is up, the test lowers its descriptor
limit (``prlimit``) to what it has open and a little more, and opens plain TCP
connections to its frontend until it can accept no more.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families
from support import Proc, free_port, tcp, wait_until, write

from sensorwire.guard import ACCEPT_QUIET_S

HEADROOM = 2  # descriptors the proxy may still open once its limit is lowered
TOPIC = b"gh/pi-1/env\x00"


class Starved:
    """A proxy with an agent and a collector connected, then its descriptors all taken."""

    def __init__(self, tmp: Path, procs: Callable[..., Proc],
                 ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.front, self.back, self.metrics = tcp(), tcp(), free_port()
        self.ctx = ctx
        self.proxy = procs("proxy", "proxy", "-c", str(write(tmp / "proxy.toml", (
            f'frontend = "{self.front}"\nbackend = "{self.back}"\n'
            f'[metrics]\nlisten = "127.0.0.1:{self.metrics}"\n'))))
        self.ps = psutil.Process(self.proxy.popen.pid)
        self.agent = self.socket(zmq.XPUB, self.front)
        self.collector = self.socket(zmq.XSUB, self.back)
        self.collector.send(b"\x01" + TOPIC)
        assert self.agent.poll(10_000), "the collector's subscription did not reach the agent"
        self.agent.recv()
        self.forwards(b"before")
        self.open = self.ps.num_fds()
        _, hard = self.ps.rlimit(psutil.RLIMIT_NOFILE)
        self.limit = self.open + HEADROOM
        self.ps.rlimit(psutil.RLIMIT_NOFILE, (self.limit, hard))
        host, port = self.front.removeprefix("tcp://").split(":")
        # the kernel completes every handshake (the listen queue); the proxy accepts HEADROOM
        self.raw = [socket.create_connection((host, int(port)), timeout=5)
                    for _ in range(HEADROOM + 6)]

    def socket(self, kind: int, endpoint: str) -> zmq.Socket[bytes]:
        s = self.ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        return s

    def forwards(self, payload: bytes) -> None:
        self.agent.send(TOPIC + payload)
        assert self.collector.poll(5000), f"{payload!r} was not forwarded"
        assert self.collector.recv() == TOPIC + payload

    def release(self) -> None:
        for s in self.raw:
            s.close()
        self.raw.clear()

    def logged(self, text: str) -> bool:
        return text in self.proxy.log()


@pytest.fixture
def starved(tmp_path: Path, procs: Any, ctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[Starved]:
    s = Starved(tmp_path, procs, ctx)
    yield s
    s.release()


def scrape(port: int) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, s.labels.get("socket", "")): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.mark.slow  # waits ACCEPT_QUIET_S for the all-clear
def test_out_of_descriptors_is_logged_counted_and_does_not_stop_open_connections(
        starved: Starved) -> None:
    wait_until(lambda: starved.logged(f"frontend: cannot accept connections on {starved.front}"),
               what="the warning about the failed accepts")
    log = starved.proxy.log()
    assert "too many open files (EMFILE): raise LimitNOFILE=" in log
    assert f"the limit is {starved.limit} now" in log

    # the agent and the collector connected before keep going, and the proxy does not spin
    # (libzmq alone takes a whole core here; the guard's slow reading of its events holds it)
    cpu_before, wall_before = sum(starved.ps.cpu_times()[:2]), time.monotonic()
    for i in range(10):
        starved.forwards(b"during %d" % i)
    cpu = sum(starved.ps.cpu_times()[:2]) - cpu_before
    wall = time.monotonic() - wall_before
    assert cpu / wall < 0.5, f"the proxy used {cpu:.2f} s of CPU in {wall:.2f} s"

    starved.release()
    wait_until(lambda: starved.logged("new connections are accepted again"),
               timeout_s=ACCEPT_QUIET_S + 10, what="the all-clear")
    m = scrape(starved.metrics)  # the metrics endpoint needs a descriptor too
    assert m[("sensorwire_accept_failures_total", "frontend")] > 0
    assert m[("sensorwire_accept_failures_total", "backend")] == 0
    late = starved.socket(zmq.XPUB, starved.front)  # a new agent gets in again
    assert late.poll(10_000), "a new agent could not connect after the descriptors were freed"
    starved.forwards(b"after")
    assert starved.proxy.terminate() == 0


def test_out_of_descriptors_the_proxy_still_stops_on_sigterm(starved: Starved) -> None:
    wait_until(lambda: starved.logged("cannot accept connections"),
               what="the warning about the failed accepts")
    assert starved.proxy.terminate(timeout_s=5.0) == 0
    assert "proxy stopping" in starved.proxy.log()


def test_a_port_probe_is_not_blamed_on_curve(tmp_path: Path, procs: Callable[..., Proc]) -> None:
    """A TCP connection that closes without a word of ZeroMQ (a port scan, a load balancer's
    health check) fails the handshake too: the warning must not only suggest CURVE."""
    front, back = tcp(), tcp()
    proxy = procs("proxy", "proxy", "--frontend", front, "--backend", back)
    host, port = front.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5):
        pass
    wait_until(lambda: "frontend: handshake on" in proxy.log(), timeout_s=10,
               what="the proxy's warning about the failed handshake")
    assert "not a ZeroMQ peer at all (a port scan, a TCP health check)" in proxy.log()
