"""SinkRunner calls ``tick(now_ns)`` on sinks that have it, with or without frames."""

from __future__ import annotations

import time
from collections.abc import Sequence

from support import wait_until

from sensorwire.collector.sinks import Item, SinkRunner
from sensorwire.collector.frames import CheckedFrame
from sensorwire.proto.v1.telemetry_pb2 import Frame


class Ticking:
    name = "ticking"

    def __init__(self) -> None:
        self.ticks: list[int] = []
        self.frames = 0

    def open(self) -> None:
        pass

    def write(self, batch: Sequence[Item]) -> None:
        self.frames += len(batch)

    def tick(self, now_ns: int) -> None:
        self.ticks.append(now_ns)

    def close(self) -> None:
        pass


def test_an_idle_sink_is_ticked_every_flush_interval() -> None:
    sink = Ticking()
    r = SinkRunner(sink, flush_interval_s=0.02)
    r.start()
    try:
        wait_until(lambda: len(sink.ticks) >= 5, what="5 ticks without any frame")
    finally:
        r.close()
    assert sink.frames == 0
    assert sink.ticks == sorted(sink.ticks) and abs(sink.ticks[-1] - time.time_ns()) < 10 * 10**9


def test_a_busy_sink_is_ticked_too() -> None:
    sink = Ticking()
    r = SinkRunner(sink, flush_interval_s=0.02, batch_max=1)
    r.start()
    try:
        f = CheckedFrame.from_pb(Frame(site="s", device_id="d", seq=1, sensor="x"))
        def busy() -> bool:
            for _ in range(20):
                r.offer([(f, 1)])
            return len(sink.ticks) >= 5
        wait_until(busy, interval_s=0.001, what="ticks while frames flow")
    finally:
        r.close()
    assert sink.frames > 0
