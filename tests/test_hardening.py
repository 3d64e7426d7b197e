"""Hostile input: oversized messages, a million samples, a flood from one device.

A hostile publisher (a raw ZeroMQ socket in the test) sends at a real proxy
or a real collector while two real agents publish beside it.  What it sends
is dropped and counted, and the agents' frames all arrive: every seq from 1
to the last one each agent numbered.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from securestack import agent_toml, collector_toml, proxy_toml, seqs
from support import tcp, wait_until, write

from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import Frame

pytestmark = pytest.mark.slow

EMPTY_SAMPLE = b"\x3a\x00"  # field 7 (samples), length 0: the smallest sample on the wire


def data_frame(device: str, seq: int, samples: int = 1) -> bytes:
    f = Frame(site="gh", device_id=device, boot_id=99, seq=seq, time_unix_nano=time.time_ns(),
              sensor="env")
    for i in range(samples):
        f.samples.add(metric=f"m{i}", value=float(i))
    return wire.encode(wire.data_topic("gh", device, "env"), f)


def million_samples(device: str) -> bytes:
    """A frame with 1,000,000 (empty) samples: 2 MB, built without a million objects."""
    head = Frame(site="gh", device_id=device, boot_id=99, seq=1, time_unix_nano=1, sensor="env")
    return wire.data_topic("gh", device, "env") + wire.DELIM + head.SerializeToString() \
        + EMPTY_SAMPLE * 1_000_000


class Hostile:
    """A publisher that sends whatever it is told to, as fast as it can."""

    def __init__(self, endpoint: str) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock = self.ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.sock.connect(endpoint)

    def wait_subscribed(self) -> None:
        assert self.sock.poll(15_000), "no subscription reached the hostile publisher"
        while self.sock.poll(0):
            self.sock.recv()

    def send(self, *msgs: bytes) -> None:
        for m in msgs:
            self.sock.send(m)

    def disconnected(self) -> bool:
        return bool(self.monitor.poll(0))

    def close(self) -> None:
        self.monitor.close(linger=0)
        self.sock.close(linger=0)
        self.ctx.term()


def last_seq(agent: Any) -> int:
    m = re.search(r"agent stopping: last seq (\d+);", agent.log())
    assert m, agent.log()
    return int(m.group(1))


def agents_lost_nothing(db: Path, agents: dict[str, Any]) -> None:
    for device, agent in agents.items():
        assert agent.terminate() == 0, agent.log()
        n = last_seq(agent)
        def every_seq(d: str = device, n: int = n) -> bool:
            return seqs(db, d) == list(range(1, n + 1))
        wait_until(every_seq, timeout_s=30, what=f"{device}: every seq 1..{n} stored")


def keeps_arriving(db: Path, before: dict[str, int]) -> None:
    wait_until(lambda: all(len(seqs(db, d)) >= n + 40 for d, n in before.items()), timeout_s=20,
               what="the agents' frames still arriving (2 s of them since the attack began)")


def start_agents(procs: Any, tmp: Path, connect: str) -> dict[str, Any]:
    return {d: procs(f"agent-{d}", "agent", "-c", str(write(
        tmp / f"agent-{d}.toml", agent_toml(d, connect, tmp / f"spool-{d}"))))
        for d in ("pi-1", "pi-2")}


@pytest.mark.parametrize("cache", [False, True], ids=["forwarding-in-libzmq", "in-python"])
def test_hostile_input_at_the_proxy(tmp_path: Path, procs: Any, cache: bool) -> None:
    """In libzmq (the default) the collector drops the million samples; with the last-value
    cache on the proxy's Python loop drops them first.  Either way they are counted."""
    front, back, db = tcp(), tcp(), tmp_path / "t.db"
    # the size limits let the million-sample frame (2 MB) reach the sample count checks
    big = f"[limits]\nmax_message_bytes = {4 << 20}\n"
    proxy = procs("proxy", "proxy", "-c", str(write(tmp_path / "proxy.toml", proxy_toml(
        front, back, limits=f"last_value_cache = {'true' if cache else 'false'}\n" + big))))
    collector = procs("collector", "collector", "-c", str(write(
        tmp_path / "collector.toml", collector_toml(
            db, [back], limits=big + "max_frames_per_s_per_device = 100\n"))))
    agents = start_agents(procs, tmp_path, front)
    wait_until(lambda: all(len(seqs(db, d)) >= 10 for d in agents), timeout_s=20, what="flow")
    assert f"forwarding in {'Python' if cache else 'libzmq'}" in proxy.log()
    hostile = Hostile(front)
    try:
        hostile.wait_subscribed()
        before = {d: len(seqs(db, d)) for d in agents}
        hostile.send(*(data_frame("pi-9", seq) for seq in range(1, 5001)))  # a flood
        hostile.send(million_samples("pi-8"))  # another device: not the flood's rate limit
        hostile.send(b"x" * (5 << 20))  # over max_message_bytes: libzmq disconnects the sender
        wait_until(hostile.disconnected, timeout_s=10, what="the hostile publisher disconnected")
        dropper = proxy if cache else collector
        wait_until(lambda: "1000000 samples, the limit is 1024" in dropper.log(), timeout_s=10,
                   what="the million samples dropped")
        counted = r"dropped: too_many_samples 1" if cache else r"'too_many_samples': 1\b"
        wait_until(lambda: re.search(counted, dropper.log())
                   and re.search(r"frontend\.disconnects [1-9]", proxy.log()), timeout_s=10,
                   what="both counted in the summaries")
        wait_until(lambda: re.search(r"'rate_limited': \d{4}", collector.log())
                   and "device gh/pi-9 sent more than 100 frames/s" in collector.log(),
                   timeout_s=10, what="the flood's excess counted and logged at the collector")
        wait_until(lambda: len(seqs(db, "pi-9")) >= 1000, timeout_s=10, what="the flood's budget stored")
        assert len(seqs(db, "pi-9")) < 2000  # the bucket (10 s of budget) and its refill
        keeps_arriving(db, before)
        agents_lost_nothing(db, agents)
    finally:
        hostile.close()


def test_hostile_input_at_a_collector_that_binds(tmp_path: Path, procs: Any) -> None:
    ep, db = tcp(), tmp_path / "t.db"
    collector = procs("collector", "collector", "-c", str(write(
        tmp_path / "collector.toml", collector_toml(
            db, bind=[ep], limits="[limits]\nmax_frames_per_s_per_device = 100\n"))))
    agents = start_agents(procs, tmp_path, ep)
    wait_until(lambda: all(len(seqs(db, d)) >= 10 for d in agents), timeout_s=20, what="flow")
    hostile = Hostile(ep)
    try:
        hostile.wait_subscribed()
        before = {d: len(seqs(db, d)) for d in agents}
        hostile.send(data_frame("pi-8", 1) + b"\x00" * 100_000)  # over 64 KiB: counted
        hostile.send(data_frame("pi-8", 2, samples=2000))        # 28 kB, 2000 samples: counted
        hostile.send(*(data_frame("pi-9", seq) for seq in range(1, 5001)))
        hostile.send(million_samples("pi-9"))  # 2 MB, past libzmq's hard cap: disconnected
        wait_until(hostile.disconnected, timeout_s=10, what="the hostile publisher disconnected")
        wait_until(lambda: re.search(r"'oversized': 1\b", collector.log())
                   and re.search(r"'too_many_samples': 1\b", collector.log())
                   and re.search(r"'rate_limited': \d{4}", collector.log())
                   and re.search(r"subscribe\.disconnects [1-9]", collector.log()), timeout_s=10,
                   what="every kind counted in the collector's summary")
        assert seqs(db, "pi-8") == []
        wait_until(lambda: len(seqs(db, "pi-9")) >= 1000, timeout_s=10, what="the flood's budget stored")
        assert len(seqs(db, "pi-9")) < 2000
        keeps_arriving(db, before)
        agents_lost_nothing(db, agents)
    finally:
        hostile.close()
