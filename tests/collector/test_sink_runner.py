"""SinkRunner: what it keeps per device is bounded; a sink that hangs is told from one that is
slow but moving, and the collector's systemd watchdog stops pinging only for the first."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import zmq
from support import Nowhere, tcp, wait_until

from sensorwire.collector.config import CollectorConfig, StorageConfig, SubscribeConfig
from sensorwire.collector.frames import EMPTY, CheckedFrame
from sensorwire.collector.runtime import Collector
from sensorwire.collector.sinks import DROPS_BY_DEVICE_MAX, HALVING_BUDGET, Item, SinkError, SinkRunner
from sensorwire.lifecycle import StopSignal
from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import Frame
from sensorwire.sdnotify import NotifyListener
from sensorwire.service import Service
from sensorwire.watchdog import Watchdog

STALLED_AFTER_S = 0.3
WATCHDOG_S = 0.1  # ping interval: half of a WATCHDOG_USEC of 0.2 s


class Blocking(Nowhere):
    """A storage write that does not return until released (a database that hangs)."""

    name = "blocking"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.frames = 0

    def write(self, batch: Sequence[Item]) -> None:
        self.entered.set()
        assert self.release.wait(30), "never released"
        self.frames += len(batch)


class Flaky(Nowhere):
    """Fails, retryably, ``failures`` times before it writes: the runner backs off in between."""

    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0
        self.frames = 0

    def write(self, batch: Sequence[Item]) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise SinkError("database is locked", retryable=True)
        self.frames += len(batch)


def frames(devices: int) -> list[Item]:
    return [(CheckedFrame("gh", f"made-up-{i}", 1, 1, 0, "env", 0, EMPTY, ()), 0)
            for i in range(devices)]


def test_drops_are_counted_per_device_for_a_bounded_number_of_devices() -> None:
    runner = SinkRunner(Nowhere(), queue_max=1)  # not started: the queue only fills
    assert runner.offer(frames(DROPS_BY_DEVICE_MAX + 1))[0][0].device_id == "made-up-1"
    assert runner.dropped == DROPS_BY_DEVICE_MAX
    assert len(runner.dropped_by_device) == DROPS_BY_DEVICE_MAX
    runner.offer(frames(3))                     # three more devices: the table starts again
    assert runner.dropped == DROPS_BY_DEVICE_MAX + 3
    assert dict(runner.dropped_by_device) == {f"made-up-{i}": 1 for i in range(3)}


def test_a_write_that_does_not_return_is_a_stall_until_it_returns() -> None:
    sink = Blocking()
    runner = SinkRunner(sink, flush_interval_s=0.01)
    runner.start()
    try:
        runner.offer(frames(2))
        assert sink.entered.wait(5)
        now = time.monotonic()
        assert runner.stalled(now, limit_s=60) is None          # not for that long yet
        why = runner.stalled(now + 61, limit_s=60)
        assert why is not None and why.startswith("sink blocking: a write into it has been "
                                                  "running for 6")
        sink.release.set()
        wait_until(lambda: runner.written == 2, what="the write to return")
        assert runner.stalled(time.monotonic() + 61, limit_s=60) is None
    finally:
        sink.release.set()
        runner.close()


def test_retries_and_their_backoff_are_not_a_stall() -> None:
    sink = Flaky(failures=3)                    # waits 0.1, 0.2 and 0.4 s between attempts
    runner = SinkRunner(sink, flush_interval_s=0.01)
    runner.start()
    try:
        runner.offer(frames(1))
        stalls: list[str] = []
        deadline = time.monotonic() + 10
        while runner.written == 0 and time.monotonic() < deadline:
            why = runner.stalled(time.monotonic(), limit_s=0.05)  # shorter than every wait
            if why is not None:
                stalls.append(why)
            time.sleep(0.005)  # sampling while it retries, not waiting for it
        assert (sink.attempts, runner.written, runner.dropped) == (4, 1, 0)
        assert stalls == []
    finally:
        runner.close()


# -- the collector's watchdog, with a real NOTIFY_SOCKET and frames on real sockets ------------
class Fed:
    """A collector with ``sink`` in a thread, fed by a PUB socket, kept by a real watchdog."""

    def __init__(self, sink: Nowhere, listener: NotifyListener) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        ep = tcp()
        self.pub.bind(ep)
        self.listener = listener
        cfg = CollectorConfig(subscribe=SubscribeConfig(connect=[ep]), storage=StorageConfig(
            kind="none", flush_interval_s=0.02, stalled_after_s=STALLED_AFTER_S))
        self.collector = Collector(cfg, sinks=[sink])
        self.stop = StopSignal()
        self.watchdog = Watchdog(WATCHDOG_S)
        service = Service(self.stop, watchdog=self.watchdog)
        ready = threading.Event()
        self.thread = threading.Thread(target=self.collector.run,
                                       args=(self.stop, ready.set, service))
        self.thread.start()
        assert ready.wait(10)
        self.seq = 0

    def send(self) -> None:
        self.seq += 1
        f = Frame(site="gh", device_id="pi-1", boot_id=1, seq=self.seq,
                  time_unix_nano=1_700_000_000_000_000_000 + self.seq, sensor="env")
        f.samples.add(metric="t", value=1.0)
        self.pub.send(wire.encode(wire.data_topic("gh", "pi-1", "env"), f))

    def pings_in(self, seconds: float) -> int:
        """The pings that arrive within the next ``seconds`` (a measurement, not a wait)."""
        self.listener.wait_for("\0never", 0.05)  # what was sent before and not read yet
        self.listener.messages.clear()
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.listener.wait_for("\0never", min(left, 0.05))
        return sum(m == "WATCHDOG=1" for m in self.listener.messages)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(15)
        self.stop.close()
        self.pub.close()
        self.ctx.term()


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyListener]:
    with tempfile.TemporaryDirectory(prefix="sw-") as d:  # unix socket paths: 108 bytes at most
        listen = NotifyListener(str(Path(d) / "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", listen.path)
        yield listen
        listen.close()


def test_a_hung_sink_stops_the_watchdog_pings_and_says_which_sink(
        listener: NotifyListener, caplog: pytest.LogCaptureFixture) -> None:
    sink = Blocking()
    fed = Fed(sink, listener)
    try:
        assert listener.wait_for("WATCHDOG=1", 5)
        with caplog.at_level(logging.INFO, logger="sensorwire"):
            def write_begun() -> bool:
                fed.send()
                return sink.entered.is_set()
            wait_until(write_begun, what="a write to begin")
            wait_until(lambda: fed.watchdog.withheld > 0, what="a ping withheld")
            assert fed.pings_in(0.5) == 0  # about 5 were due: systemd would restart us
            stalled = "sink blocking: a write into it has been running for"
            assert stalled in fed.collector.status()
            log = caplog.text
            assert "watchdog: no longer telling systemd that all is well: " + stalled in log
            assert "(more than [storage] stalled_after_s = 0.3 s)" in log
            assert "the systemd watchdog is no longer pinged, so systemd restarts" in log
            sink.release.set()               # the write returns: pings again
            assert listener.wait_for("WATCHDOG=1", 5)
            wait_until(lambda: "sinks: none is stalled any more" in caplog.text,
                       what="the collector to say so")
        assert "watchdog: pinging systemd again" in caplog.text
        assert "sink blocking" not in fed.collector.status()
    finally:
        sink.release.set()
        fed.close()


@pytest.mark.slow
def test_a_sink_slow_but_moving_keeps_the_watchdog_pinging(listener: NotifyListener) -> None:
    sink = Flaky(failures=4)                 # 0.1 + 0.2 + 0.4 + 0.8 s of backoff: 1.5 s
    fed = Fed(sink, listener)
    try:
        assert listener.wait_for("WATCHDOG=1", 5)
        def write_begun() -> bool:
            fed.send()
            return sink.attempts > 0
        wait_until(write_begun, what="a write to begin")
        pings = fed.pings_in(1.0)            # while it backs off: longer than stalled_after_s
        wait_until(lambda: sink.frames > 0, what="the write to succeed")
        assert sink.attempts >= 5 and fed.collector.runners[0].dropped == 0
        assert pings >= 5 and fed.watchdog.withheld == 0
    finally:
        fed.close()


def test_a_full_queue_logs_a_bounded_number_of_lines_and_counts_every_drop(
        caplog: pytest.LogCaptureFixture) -> None:
    runner = SinkRunner(Nowhere(), queue_max=10)  # not started: nothing drains the queue
    runner.sink.name = "full-queue"  # a key of its own for the rate limit
    with caplog.at_level(logging.WARNING, logger="sensorwire.collector.sinks"):
        lost = sum(len(runner.offer(frames(5))) for _ in range(1000))
    assert lost == runner.dropped == 5000 - 10
    assert sum(runner.dropped_by_device.values()) == 4990
    lines = [r.getMessage() for r in caplog.records if "full-queue" in r.getMessage()]
    assert lines == ["sink full-queue: queue full (10 frames): 5 frames dropped (5 in all)"]


class Picky(Nowhere):
    """Refuses, for good, any batch holding a frame of one device (a frame the store cannot
    take); or every batch, with ``everything``."""

    name = "picky"

    def __init__(self, *bad: str, everything: bool = False) -> None:
        self.bad, self.everything = set(bad or ["made-up-5"]), everything
        self.stored: list[str] = []
        self.attempts = 0

    def write(self, batch: Sequence[Item]) -> None:
        self.attempts += 1
        if self.everything or any(f.device_id in self.bad for f, _ in batch):
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        self.stored += [f.device_id for f, _ in batch]


def test_a_batch_refused_for_one_frame_loses_only_that_frame() -> None:
    sink = Picky()
    runner = SinkRunner(sink, flush_interval_s=60.0)
    runner.offer(frames(16))
    runner.start()
    runner.close()
    assert sorted(sink.stored) == sorted(f"made-up-{i}" for i in range(16) if i != 5)
    assert (runner.written, runner.dropped) == (15, 1)
    assert runner.dropped_by_device == {"made-up-5": 1}
    assert sink.attempts <= 1 + 2 * 4  # halving: two writes a level, four levels for 16


def test_a_sink_that_refuses_everything_is_not_asked_again_and_again() -> None:
    sink = Picky(everything=True)
    runner = SinkRunner(sink, flush_interval_s=60.0)
    runner.offer(frames(1000))
    runner.start()
    runner.close()
    assert (runner.written, runner.dropped) == (0, 1000)
    # the batch, HALVING_BUDGET failed halves, then one try of each part left (a stack of at
    # most two a level, ten levels for 1000): not a write per frame
    assert sink.attempts <= 1 + HALVING_BUDGET + 2 * 10


def test_bad_frames_spread_through_a_batch_cost_only_themselves() -> None:
    """Both halves of the batch fail (a bad frame in each): the halving goes on, not the
    whole batch dropped, as one publisher's bad frames once made every device's."""
    sink = Picky("made-up-100", "made-up-900")
    runner = SinkRunner(sink, flush_interval_s=60.0)
    runner.offer(frames(1000))
    runner.start()
    runner.close()
    assert (runner.written, runner.dropped) == (998, 2)
    assert runner.dropped_by_device == {"made-up-100": 1, "made-up-900": 1}
