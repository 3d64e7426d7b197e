"""A subscriber that falls behind says so (issue 8: slow subscribers, the "suicidal snail").

LagWatch's rules on their own, then the collector with real sockets
(heartbeats that are old when read: behind; old data frames, as a replay
sends them, beside fresh heartbeats: not behind; heartbeats from a clock not
known to be synchronised: not trusted), then ``sensorwire tail`` as a real
process.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import zmq
from support import FedCollector, free_port, wait_until

from sensorwire.collector.config import CollectorConfig, StorageConfig, SubscribeConfig
from sensorwire.lag import REPEAT_S, LagWatch
from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import Frame

S = 1_000_000_000  # ns
NOW = 1_800_000_000 * S


def watch() -> LagWatch:
    return LagWatch(10.0, "the collector", "[subscribe] max_lag_s")


def test_the_newest_frame_of_a_tick_decides(caplog: pytest.LogCaptureFixture) -> None:
    w = watch()
    w.saw(NOW - 60 * S)  # a replayed frame: old by design
    w.saw(NOW - S // 10)  # and a live one in the same tick
    w.check(NOW, 0.0)
    assert (w.behind, w.fell_behind) == (False, 0)
    assert w.lag_s == pytest.approx(0.1)
    assert not caplog.records


def test_behind_past_the_bound_then_caught_up_below_half(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sensorwire.lag")
    w = watch()
    w.saw(NOW - 12 * S)
    w.check(NOW, 100.0)
    assert (w.behind, w.fell_behind, w.status()) == (True, 1, "behind by 12.0 s")
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "the collector is falling behind: the newest heartbeat it read is 12.0 s old " \
           "([subscribe] max_lag_s = 10)" in caplog.records[0].getMessage()
    w.saw(NOW + S - 7 * S)  # better, but not below half the bound: still behind, no new warning
    w.check(NOW + S, 101.0)
    assert (w.behind, len(caplog.records)) == (True, 1)
    w.check(NOW + 2 * S, 102.0)  # nothing read in this tick: nothing changes
    assert w.behind
    assert w.lag_s == pytest.approx(7.0)
    w.saw(NOW + 3 * S - 4 * S)
    w.check(NOW + 3 * S, 103.0)
    assert (w.behind, w.fell_behind, w.status()) == (False, 1, None)
    assert caplog.records[-1].levelname == "INFO"
    assert "has caught up" in caplog.records[-1].getMessage()
    w.saw(NOW + 4 * S - 30 * S)
    w.check(NOW + 4 * S, 104.0)
    assert (w.behind, w.fell_behind) == (True, 2)  # each time it happens is counted


def test_while_behind_the_warning_repeats_every_repeat_s(caplog: pytest.LogCaptureFixture) -> None:
    w = watch()
    for i in range(int(REPEAT_S) * 2 + 1):  # one check a second, 20 s behind throughout
        w.saw(NOW + i * S - 20 * S)
        w.check(NOW + i * S, float(i))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 3
    assert "still behind" in warnings[1] and "for 30 s now" in warnings[1]
    assert w.fell_behind == 1


def test_clocks_not_known_to_be_right_count_only_while_no_synchronised_one_is_seen(
        caplog: pytest.LogCaptureFixture) -> None:
    w = watch()
    w.saw(NOW - 30 * S, synced=False)  # a fleet of VMs whose kernels report no NTP state
    w.check(NOW, 0.0)
    assert (w.behind, w.untrusted) == (True, True)
    assert "not known to be synchronised" in caplog.records[0].getMessage()
    w.saw(365 * 86400 * S, synced=False)  # 1971: a clock that never set says nothing
    w.check(NOW + S // 2, 0.5)
    assert w.behind
    assert w.lag_s == pytest.approx(30.0)  # still the last measurement
    w.saw(NOW + S - 1 * S, synced=False)
    w.check(NOW + S, 1.0)
    assert not w.behind
    assert w.lag_s == pytest.approx(1.0)
    w.saw(NOW + 2 * S, synced=True)  # one synchronised clock: from now on only those count
    w.saw(NOW + 2 * S - 60 * S, synced=False)
    w.check(NOW + 2 * S, 2.0)
    assert (w.behind, w.untrusted) == (False, False)
    w.saw(NOW + 3 * S - 60 * S, synced=False)
    w.check(NOW + 3 * S, 3.0)  # an untrusted heartbeat alone measures nothing any more
    assert (w.behind, w.fell_behind) == (False, 1)
    assert w.lag_s == pytest.approx(0.0)


# -- the collector, with real sockets ----------------------------------------------------------
def frame_msg(seq: int, time_ns: int) -> bytes:
    f = Frame(site="gh", device_id="pi-1", boot_id=7, seq=seq, time_unix_nano=time_ns,
              sensor="env")
    f.samples.add(metric="t", value=1.0)
    return wire.encode(wire.data_topic("gh", "pi-1", "env"), f)


def heartbeat_msg(last_seq: int, time_ns: int, synced: bool = True) -> bytes:
    f = Frame(site="gh", device_id="pi-1", boot_id=7, seq=0, time_unix_nano=time_ns)
    f.heartbeat.interval_s = 5.0
    f.heartbeat.last_seq = last_seq
    f.heartbeat.clock_synced = synced
    return wire.encode(wire.heartbeat_topic("gh", "pi-1"), f)


class Fed(FedCollector):
    """A collector in a thread (no storage), fed by a PUB it connects to."""

    def __init__(self, max_lag_s: float) -> None:
        super().__init__(lambda ep: CollectorConfig(
            subscribe=SubscribeConfig(connect=[ep], max_lag_s=max_lag_s),
            storage=StorageConfig(kind="none")))
        self.seq = 0

    def send(self, age_s: float) -> None:
        """A data frame stamped ``age_s`` ago."""
        self.seq += 1
        self.pub.send(frame_msg(self.seq, time.time_ns() - int(age_s * S)))

    def heartbeat(self, age_s: float, synced: bool = True) -> None:
        """A heartbeat stamped ``age_s`` ago."""
        self.pub.send(heartbeat_msg(self.seq, time.time_ns() - int(age_s * S), synced))


@pytest.fixture
def fed() -> Iterator[Fed]:
    f = Fed(max_lag_s=5.0)
    yield f
    f.close()


def test_a_collector_whose_newest_heartbeats_are_old_is_behind(fed: Fed) -> None:
    def measured() -> bool:
        fed.heartbeat(age_s=60.0)  # the subscription reaches the PUB after a while: send until then
        return fed.collector.lag.lag_s is not None
    wait_until(measured, what="the collector's first lag measurement")
    wait_until(lambda: fed.collector.lag.behind, what="the collector to find itself behind")
    assert fed.collector.lag.fell_behind == 1
    assert "behind by 60." in fed.collector.status()

    def caught_up() -> bool:
        fed.heartbeat(age_s=0.0)
        return not fed.collector.lag.behind
    wait_until(caught_up, what="the collector to catch up")
    assert fed.collector.lag.fell_behind == 1
    assert fed.collector.lag.lag_s is not None and fed.collector.lag.lag_s < 2.5


def test_replayed_frames_and_untrusted_clocks_are_not_lag(fed: Fed) -> None:
    def measured() -> bool:
        fed.heartbeat(age_s=0.0)
        return fed.collector.lag.lag_s is not None
    wait_until(measured, what="the collector's first lag measurement")
    accepted = fed.collector.accepted
    deadline = time.monotonic() + 1.5  # three ticks of a spool replay, an hour old, and of
    while time.monotonic() < deadline:  # heartbeats from a clock not known to be right
        fed.send(age_s=3600.0)
        fed.heartbeat(age_s=3600.0, synced=False)
        time.sleep(0.01)  # pacing the sender, not waiting for anything
    wait_until(lambda: fed.collector.accepted > accepted + 100, what="the replayed frames")
    assert not fed.collector.lag.behind
    assert fed.collector.lag.fell_behind == 0
    assert fed.collector.lag.lag_s is not None and fed.collector.lag.lag_s < 2.5


# -- sensorwire tail, a real process -----------------------------------------------------------
def test_tail_says_on_stderr_when_it_falls_behind_and_how_often() -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    ep = f"tcp://127.0.0.1:{free_port()}"
    pub.bind(ep)
    p = subprocess.Popen([sys.executable, "-m", "sensorwire", "tail", "--connect", ep,
                          "--max-lag-s", "1", "--count", "1200", "gh"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        seq = 0
        deadline = time.monotonic() + 30
        while p.poll() is None and time.monotonic() < deadline:
            seq += 1
            pub.send(frame_msg(seq, time.time_ns() - 30 * S))  # a frame and a heartbeat, 30 s
            pub.send(heartbeat_msg(seq, time.time_ns() - 30 * S))  # old when sent
            time.sleep(0.002)  # pacing the sender: about 500 frames/s
        assert p.poll() == 0, "tail did not print its 1200 frames"
        assert p.stderr is not None
        err = p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(5)
        pub.close()
        ctx.term()
    assert "tail is falling behind: the newest heartbeat it read is 30." in err
    assert "(--max-lag-s = 1)" in err
    assert "tail fell behind 1 times (--max-lag-s 1)" in err
