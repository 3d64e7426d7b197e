"""SinkRunner calls ``tick(now_ns)`` on sinks that have it, with or without frames; and when
it waits for a batch to fill."""

from __future__ import annotations

import time
from collections.abc import Sequence

from support import wait_until

from sensorwire.collector.frames import CheckedFrame
from sensorwire.collector.sinks import Item, SinkRunner
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


def test_a_sink_that_is_behind_gets_what_is_queued_without_waiting_for_the_interval() -> None:
    sink = Ticking()
    r = SinkRunner(sink, batch_max=10, flush_interval_s=60.0)
    f = CheckedFrame.from_pb(Frame(site="s", device_id="d", seq=1, sensor="x"))
    r.offer([(f, 1)] * 10)  # queued before the thread starts: a full batch, then 5 more
    r.offer([(f, 1)] * 5)
    r.start()
    try:
        # without the rule the 5 would wait the whole minute
        wait_until(lambda: sink.frames == 15, timeout_s=10, what="the 5 after a full batch, at once")
        r.offer([(f, 1)] * 3)  # not behind any more: these wait for the interval
        time.sleep(0.2)
        assert sink.frames == 15
    finally:
        r.close()
    assert sink.frames == 18


def test_frames_queued_between_events_do_not_wait_for_the_interval() -> None:
    """New devices at a low rate queue event, frame, event, frame...: each frame is written
    before the event after it, without waiting for a batch to fill."""
    seen: list[object] = []

    class Recording(Ticking):
        def write(self, batch: Sequence[Item]) -> None:
            seen.extend(f.seq for f, _ in batch)

        def event(self, ev: object) -> None:
            seen.append(ev)

    r = SinkRunner(Recording(), batch_max=1000, flush_interval_s=60.0)
    frames = [CheckedFrame.from_pb(Frame(site="s", device_id=f"d{i}", seq=1 + i, sensor="x"))
              for i in range(5)]
    for i, f in enumerate(frames):
        r.offer_event(f"online {i}")  # type: ignore[arg-type]
        r.offer([(f, 1)])
    r.start()
    try:
        # all but the last frame, which has no event after it: that one waits for a batch
        wait_until(lambda: len(seen) == 9, timeout_s=10, what="every frame before an event")
        assert len(seen) == 9
    finally:
        r.close()
    assert seen == [x for i in range(5) for x in (f"online {i}", 1 + i)]


def test_a_sink_that_takes_events_with_batches_gets_one_batch_and_every_event_before_it() -> None:
    log: list[object] = []

    class Store(Ticking):
        events_with_batches = True  # as the SQLite sink: events go into the batch's transaction

        def write(self, batch: Sequence[Item]) -> None:
            log.append([f.seq for f, _ in batch])

        def event(self, ev: object) -> None:
            log.append(ev)

    r = SinkRunner(Store(), batch_max=1000, flush_interval_s=60.0)
    for i in range(5):
        r.offer_event(f"online {i}")  # type: ignore[arg-type]
        r.offer([(CheckedFrame.from_pb(Frame(site="s", device_id=f"d{i}", seq=1 + i, sensor="x")), 1)])
    r.start()
    r.close()
    assert log == [f"online {i}" for i in range(5)] + [[1, 2, 3, 4, 5]]
