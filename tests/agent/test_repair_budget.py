"""Gap repair has a budget: a flood of repair requests cannot make an agent resend without end.

A real agent process connects to an XSUB socket of the test, standing in for
the proxy; the test asks, again and again, for every seq the agent ever sent,
as a hostile or broken client behind a proxy could.  The agent resends at
most ``[spool] replay_rate`` frames a second (bursts of REPAIR_BURST_S of it),
writes a few log lines, not one per request, and still stops at once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from support import tcp, wait_until, write

from sensorwire.agent.publisher import REPAIR_BURST_S
from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import Frame, RepairRequest, SeqRange

pytestmark = pytest.mark.slow

RATE = 50.0  # [spool] replay_rate: the budget of frames resent per second


def test_a_flood_of_repair_requests_is_held_to_the_budget_and_sigterm_is_prompt(
        tmp_path: Path, procs: Any) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    up = ctx.socket(zmq.XSUB)
    up.setsockopt(zmq.LINGER, 0)
    up.setsockopt(zmq.RCVHWM, 0)
    ep = tcp()
    up.bind(ep)
    try:
        agent = procs("agent", "agent", "-c", str(write(tmp_path / "agent.toml", f"""\
site = "gh"
device_id = "pi-1"
[publish]
connect = ["{ep}"]
heartbeat_s = 0.25
[[sensors]]
name = "env"
kind = "simulated"
interval_s = 0.002
metrics = [{{ name = "t", signal = "constant", value = 1.0 }}]
[spool]
dir = "{tmp_path / 'spool'}"
replay_rate = {RATE}
""")))
        up.send(b"\x01")  # everything

        heartbeats: list[tuple[float, int, int]] = []  # (uptime_s, repaired, repairs_cut)
        boot_id = 0
        top = 0

        def drain() -> None:
            """Take what has arrived, waiting at most 10 ms for it."""
            nonlocal boot_id, top
            up.poll(10)
            while True:
                try:
                    msg = up.recv(zmq.NOBLOCK)
                except zmq.Again:
                    return
                frame = Frame.FromString(msg[msg.index(wire.DELIM) + 1:])
                boot_id = frame.boot_id
                if frame.seq == 0:
                    c = frame.heartbeat.counters
                    heartbeats.append((frame.heartbeat.uptime_s, c["repaired"], c["repairs_cut"]))
                top = max(top, frame.seq)

        def ring_filled() -> bool:
            drain()
            return top >= 2 * RATE * REPAIR_BURST_S  # more in the ring than a full bucket
        wait_until(ring_filled, timeout_s=30, what="the agent's ring to hold a full bucket")

        ask = wire.REPAIR + RepairRequest(device_id="pi-1", ranges=[
            SeqRange(boot_id=boot_id, first=1, last=100_000)]).SerializeToString()
        flood_started = len(heartbeats)
        end = time.monotonic() + 3.0  # a dozen heartbeats
        sent = 0
        while time.monotonic() < end:
            for _ in range(20):
                up.send(ask)
            sent += 20
            drain()
        window = heartbeats[flood_started:]
        assert len(window) >= 5, window
        (u0, r0, _), (u1, r1, cut) = window[0], window[-1]
        # at most a full bucket plus the rate over the window (the margin is for rounding)
        assert 0 < r1 - r0 <= RATE * REPAIR_BURST_S + RATE * (u1 - u0) + 10, (r1 - r0, u1 - u0)
        assert cut > 0 and sent > 1000

        # SIGTERM while the flood goes on: the agent stops within a few seconds
        agent.popen.terminate()
        deadline = time.monotonic() + 5.0
        while agent.popen.poll() is None and time.monotonic() < deadline:
            for _ in range(20):
                up.send(ask)
            drain()
        assert agent.popen.poll() == 0, "the agent did not stop within 5 s of SIGTERM"
        log = agent.log()
        assert log.count("repair request") <= 3, log  # one INFO line per 10 s, not per request
        assert "answered only in part" in log
    finally:
        up.close()
        ctx.term()
