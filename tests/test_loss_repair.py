"""An agent says a frame is gone only when it is: never one it is about to send, never one a
full queue kept it from sending again.  A collector counts what it hears is gone as lost for
good and stops asking for it, so a wrong "gone" is a frame counted lost and then stored, or
lost for good when a later request would have brought it.

A real XSUB socket stands in for the proxy; a full ZeroMQ queue is made by refusing sends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from support import tcp, wait_until

from sensorwire.agent.config import PublishConfig
from sensorwire.agent.publisher import Publisher
from sensorwire.agent.spool import Spool
from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import Frame, RepairRequest, SeqRange

READINGS = [("t", 21.5, "C")]


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    c: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield c
    c.destroy(linger=0)


class Upstream:
    """The proxy's side of the agent's connection: an XSUB the publisher connects to."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.endpoint = tcp()
        self.sock = ctx.socket(zmq.XSUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(self.endpoint)

    def subscribe(self, p: Publisher) -> None:
        def subscribed() -> bool:
            self.sock.send(b"\x01")  # sent again until it arrives
            assert p.sock is not None
            p.sock.poll(50)
            p.handle_incoming()
            return bool(p.subscriptions)
        wait_until(subscribed, what="the publisher to see the subscription")

    def ask(self, p: Publisher, first: int, last: int) -> None:
        req = RepairRequest(device_id=p.device_id,
                            ranges=[SeqRange(boot_id=p.boot_id, first=first, last=last)])
        self.sock.send(wire.REPAIR + req.SerializeToString())
        def arrived() -> bool:
            assert p.sock is not None
            if not p.sock.poll(50):
                return False
            p.handle_incoming()
            return True
        wait_until(arrived, what="the repair request to arrive")

    def seqs(self) -> list[int]:
        out: list[int] = []
        while self.sock.poll(300):
            msg = self.sock.recv()
            out.append(Frame.FromString(msg[msg.index(wire.DELIM) + 1:]).seq)
        return out


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
        up.subscribe(p)
        with monkeypatch.context() as m:
            m.setattr(p, "_send", lambda msg: False)  # the queue is full
            p.replay()  # seq 1 leaves the spool, is refused, and waits to be sent again
        assert p.replaying
        up.ask(p, 1, 1)
        assert p.take_unavailable() == []
        wait_until(lambda: p.replay() is None, what="the replay")
        assert up.seqs() == [1]
    finally:
        p.close()


def test_a_frame_a_full_queue_kept_from_being_resent_is_left_to_the_next_request(
        ctx: zmq.Context[zmq.Socket[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    up = Upstream(ctx)
    p = Publisher("gh", "pi-07", PublishConfig(connect=[up.endpoint]))
    p.open(ctx)
    try:
        up.subscribe(p)
        publish(p, 3)
        assert up.seqs() == [1, 2, 3]
        with monkeypatch.context() as m:
            m.setattr(p, "_send_on", lambda i, msg: False)  # the queue is full
            up.ask(p, 1, 3)
        assert p.take_unavailable() == []  # in the ring: not gone
        assert p.counters["repairs_cut"] == 1
        up.ask(p, 1, 3)  # the collector asks again
        assert up.seqs() == [1, 2, 3]
        assert p.take_unavailable() == []
    finally:
        p.close()
