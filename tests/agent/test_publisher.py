"""The publisher's ring of recent frames keeps both of its bounds, whichever is reached first.

A real XSUB socket stands in for the proxy: it subscribes, receives the
frames and sends repair requests upstream, as the proxy does.
"""

from __future__ import annotations

import time

import zmq
from support import Upstream, wait_until

from sensorwire.agent.config import PublishConfig
from sensorwire.agent.publisher import Publisher
from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import Frame

READINGS = [("t", 21.5, "C"), ("h", 40.0, "%")]


def started(ctx: zmq.Context[zmq.Socket[bytes]], up: Upstream, **ring: float) -> Publisher:
    p = Publisher("gh", "pi-07", PublishConfig(connect=[up.endpoint], **ring))  # type: ignore[arg-type]
    p.open(ctx)
    try:
        up.subscribe_and_wait(p)
    except BaseException:
        p.close()
        raise
    return p


def send(p: Publisher, n: int) -> None:
    for _ in range(n):
        p.publish(*p.build_data("env", READINGS, time.time_ns()))


def test_the_ring_keeps_the_last_ring_frames_and_repairs_from_them(
        ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    up = Upstream(ctx)
    p = started(ctx, up, ring_frames=5)
    try:
        send(p, 8)
        assert up.seqs(8) == [1, 2, 3, 4, 5, 6, 7, 8]
        up.ask_repair(p, p.boot_id, 1, 8)
        assert up.seqs(5) == [4, 5, 6, 7, 8]
        assert [(r.first, r.last) for r in p.take_unavailable()] == [(1, 3)]
        assert p.counters["repaired"] == 5 and p.counters["unavailable"] == 3
    finally:
        p.close()


def test_a_frame_older_than_ring_s_is_never_resent(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    up = Upstream(ctx)
    p = started(ctx, up, ring_s=2.0)
    try:
        send(p, 3)
        sent_at = time.monotonic()
        assert up.seqs(3) == [1, 2, 3]
        # ring_s passes; nothing is published meanwhile, so nothing has pruned the ring
        wait_until(lambda: time.monotonic() > sent_at + 2.0, what="ring_s to pass")
        up.ask_repair(p, p.boot_id, 1, 3)
        assert up.seqs(0) == []
        assert [(r.first, r.last) for r in p.take_unavailable()] == [(1, 3)]
        send(p, 1)  # a new frame is remembered and can be resent; the old ones are gone
        hb = Frame.FromString(p.build_heartbeat(5.0).split(wire.DELIM, 1)[1]).heartbeat
        assert hb.counters["ring_frames"] == 1
        assert up.seqs(1) == [4]
        up.ask_repair(p, p.boot_id, 3, 4)
        assert up.seqs(1) == [4]
        assert [(r.first, r.last) for r in p.take_unavailable()] == [(3, 3)]
    finally:
        p.close()


def test_ring_frames_0_keeps_nothing(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    up = Upstream(ctx)
    p = started(ctx, up, ring_frames=0)
    try:
        send(p, 2)
        assert up.seqs(2) == [1, 2]
        up.ask_repair(p, p.boot_id, 1, 2)
        assert up.seqs(0) == []
        assert [(r.first, r.last) for r in p.take_unavailable()] == [(1, 2)]
    finally:
        p.close()
