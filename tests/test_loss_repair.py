"""An agent says a frame is gone only when it is: never one it is about to send, never one a
full queue kept it from sending again.  A collector counts what it hears is gone as lost for
good and stops asking for it, so a wrong "gone" is a frame counted lost and then stored, or
lost for good when a later request would have brought it.

A real XSUB socket stands in for the proxy; a full ZeroMQ queue is made by refusing sends.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import zmq
from support import Upstream, wait_until

from sensorwire.agent.config import PublishConfig
from sensorwire.agent.publisher import Publisher
from sensorwire.agent.spool import Spool

READINGS = [("t", 21.5, "C")]


def publish(p: Publisher, n: int) -> None:
    for _ in range(n):
        p.publish(*p.build_data("env", READINGS, time.time_ns()))


def test_the_replayed_frame_a_full_queue_refused_is_not_called_gone(
        ctx: zmq.Context[zmq.Socket[bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    up = Upstream(ctx)
    p = Publisher("gh", "pi-07", PublishConfig(connect=[up.endpoint]),
                  spool=Spool(tmp_path, max_bytes=1 << 20))
    p.open(ctx)
    try:
        publish(p, 1)  # nobody listens: spooled
        up.subscribe_and_wait(p)
        with monkeypatch.context() as m:
            m.setattr(p, "_send", lambda msg: False)  # the queue is full
            p.replay()  # seq 1 leaves the spool, is refused, and waits to be sent again
        assert p.replaying
        up.ask_repair(p, p.boot_id, 1, 1)
        assert p.take_unavailable() == []
        wait_until(lambda: p.replay() is None, what="the replay")
        assert up.seqs(1) == [1]
    finally:
        p.close()


def test_a_frame_a_full_queue_kept_from_being_resent_is_left_to_the_next_request(
        ctx: zmq.Context[zmq.Socket[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    up = Upstream(ctx)
    p = Publisher("gh", "pi-07", PublishConfig(connect=[up.endpoint]))
    p.open(ctx)
    try:
        up.subscribe_and_wait(p)
        publish(p, 3)
        assert up.seqs(3) == [1, 2, 3]
        with monkeypatch.context() as m:
            m.setattr(p, "_send_on", lambda i, msg: False)  # the queue is full
            up.ask_repair(p, p.boot_id, 1, 3)
        assert p.take_unavailable() == []  # in the ring: not gone
        assert p.counters["repairs_cut"] == 1
        up.ask_repair(p, p.boot_id, 1, 3)  # the collector asks again
        assert up.seqs(3) == [1, 2, 3]
        assert p.take_unavailable() == []
    finally:
        p.close()
