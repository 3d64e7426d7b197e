"""A flood of distinct subscriptions through a real proxy, against a real agent.

libzmq keeps every subscription in the proxy and in every agent it reaches (15 to
85 bytes of memory per subscribed byte).  Past its budget an agent drops its
connection to the proxy, which frees them, and connects again: its memory stays
bounded, the resets are counted in its heartbeat, and a real collector still gets
every frame (what was built meanwhile is spooled and replayed, gaps repaired).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from securestack import agent_toml, boots, collector_toml, proxy_toml, seqs
from support import tcp, wait_until, write

from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import Frame

# distinct subscriptions of 1 KiB: 2.5 MB; without a bound the agent's RSS grew by 120 MB (by 47
# for 1,000, 144 for 3,000: at this rate 1 GB is 21 MB of subscriptions); with it, by 14 MB
# whatever the flood (30 with two busy processes on the machine's two cores)
FLOOD = 2500
GROWTH_MAX_MB = 80


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def counters(sub: zmq.Socket[bytes]) -> dict[str, int]:
    """The counters of the last heartbeat waiting on ``sub``, and its ``last_seq`` ({} when
    none is)."""
    last: dict[str, int] = {}
    while sub.poll(0):
        msg = sub.recv()
        hb = Frame.FromString(msg[msg.index(wire.DELIM) + 1:]).heartbeat
        last = dict(hb.counters, last_seq=hb.last_seq)
    return last


@pytest.mark.slow
def test_a_subscription_flood_leaves_the_agent_bounded_and_the_collector_complete(
        tmp_path: Path, procs: Any) -> None:
    front, back, db = tcp(), tcp(), tmp_path / "t.db"
    procs("proxy", "proxy", "-c", str(write(tmp_path / "proxy.toml", proxy_toml(front, back))))
    procs("collector", "collector", "-c", str(write(tmp_path / "collector.toml",
                                                    collector_toml(db, [back]))))
    agent = procs("agent-pi-1", "agent", "-c", str(write(
        tmp_path / "agent.toml", agent_toml("pi-1", front, tmp_path / "spool"))))
    wait_until(lambda: len(seqs(db, "pi-1")) >= 10, timeout_s=20, what="frames stored")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    hb = ctx.socket(zmq.SUB)
    hb.setsockopt(zmq.LINGER, 0)
    hb.connect(back)
    hb.subscribe(wire.heartbeat_topic("gh", "pi-1"))
    flood = ctx.socket(zmq.XSUB)
    flood.setsockopt(zmq.LINGER, 0)
    flood.connect(back)
    try:
        base = peak = rss_mb(agent.popen.pid)
        for i in range(FLOOD):
            flood.send(b"\x01gh/pi-1/%06d" % i + os.urandom(1014))
            if i % 50 == 0:
                peak = max(peak, rss_mb(agent.popen.pid))
                assert peak - base < GROWTH_MAX_MB, f"agent RSS {base:.0f} -> {peak:.0f} MB"
                flood.poll(0)
        # while the flood lasts the proxy sends it again at each reconnection: the agent
        # drops it each time (1, 2, 4 s apart), and builds spooled frames meanwhile

        def reset() -> bool:
            nonlocal peak
            peak = max(peak, rss_mb(agent.popen.pid))
            assert peak - base < GROWTH_MAX_MB, f"agent RSS {base:.0f} -> {peak:.0f} MB"
            flood.poll(50)
            return "hold more than 10000 subscriptions or 256 KiB" in agent.log()
        wait_until(reset, timeout_s=10, what="the agent to drop its connection")
        until = time.monotonic() + 3
        while time.monotonic() < until:
            peak = max(peak, rss_mb(agent.popen.pid))
            flood.poll(100)
        assert peak - base < GROWTH_MAX_MB, f"agent RSS {base:.0f} -> {peak:.0f} MB"
        flood.close()  # the flood ends: the proxy forgets it; the agent's next connection is clean
        seen: dict[str, int] = {}

        def counted() -> int:
            seen.update(counters(hb))
            return seen.get("subscription_resets", 0)
        wait_until(counted, timeout_s=20, what="the resets counted in the agent's heartbeat")
        assert seen["subscriptions_refused"] >= 1
        # frames sent while a connection was being dropped are gaps, repaired from the ring
        # connected again (its heartbeats arrive): the spool replayed, the gaps repaired
        n = seen["last_seq"]
        wait_until(lambda: seqs(db, "pi-1")[:n] == list(range(1, n + 1)), timeout_s=30,
                   what=f"every seq 1..{n} stored")
        assert agent.terminate() == 0, agent.log()
        m = re.search(r"agent stopping: last seq (\d+);.*\((\d+) still in the spool\)", agent.log())
        assert m, agent.log()
        last, left = int(m.group(1)), int(m.group(2))
        (boot,) = boots(db, "pi-1")
        if left:
            # stopped between two connections (a reset's backoff, when the agent's reconnection
            # met the flood still held by the proxy): the spool keeps them for the next start
            procs("agent-pi-1-again", "agent", "-c", str(tmp_path / "agent.toml"))
        wait_until(lambda: seqs(db, "pi-1", boot) == list(range(1, last + 1)), timeout_s=20,
                   what=f"every seq 1..{last} stored ({left} were in the spool at the stop; "
                   f"missing: {sorted(set(range(1, last + 1)) - set(seqs(db, 'pi-1', boot)))[:20]})")
    finally:
        flood.close()
        hb.close()
        ctx.term()
