"""The collector stores good frames, once, and counts every bad message."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from support import FedCollector, Nowhere, wait_until

from sensorwire.collector.config import (
    CollectorConfig,
    LimitsConfig,
    PresenceConfig,
    StorageConfig,
    SubscribeConfig,
)
from sensorwire.collector.runtime import Collector, make_sinks
from sensorwire.collector.sinks import Item, Sink, SinkRunner
from sensorwire.collector.sinks.metrics import MetricsSink
from sensorwire.collector.tracking import JOIN_GRACE_S
from sensorwire.lifecycle import StopSignal
from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import Frame


def frame(device: str, seq: int, sensor: str = "env", site: str = "gh", n: int = 8,
          boot_id: int = 77) -> Frame:
    f = Frame(site=site, device_id=device, boot_id=boot_id, seq=seq,
              time_unix_nano=1_700_000_000_000_000_000 + seq * 1_000_000, sensor=sensor)
    for i in range(n):
        f.samples.add(metric=f"m{i}", value=seq + i / 10, unit="C" if i == 0 else "")
    return f


def encode(f: Frame) -> bytes:
    return wire.encode(wire.data_topic(f.site, f.device_id, f.sensor), f)


class Running(FedCollector):
    """A collector running in a thread, fed by a real PUB socket it connects to."""

    def __init__(self, tmp_path: Path, prefixes: list[str] | None = None,
                 offline_after_s: float | None = None, sinks: list[Sink] | None = None,
                 **limits: int) -> None:
        self.db = tmp_path / "t.db"

        def config(ep: str) -> CollectorConfig:
            return CollectorConfig(
                subscribe=SubscribeConfig(connect=[ep], prefixes=prefixes or []),
                storage=StorageConfig(path=str(self.db), flush_interval_s=0.05),
                presence=PresenceConfig(offline_after_s=offline_after_s),
                limits=LimitsConfig(**limits),
            )

        # sndhwm 0: never drop at the sender, the tests count exactly
        super().__init__(config, lambda cfg: make_sinks(cfg) + (sinks or []), sndhwm=0)
        # the subscription travels to the PUB asynchronously: send probes until one arrives
        probe = frame("probe", 1, site="zz")
        probe_filter_ok = not prefixes
        if probe_filter_ok:
            wait_until(lambda: self._probe(probe), what="the collector's subscription")
            self.base_accepted = self.collector.accepted

    def _probe(self, probe: Frame) -> bool:
        self.pub.send(encode(probe))
        return self.collector.accepted > 0

    def send(self, *msgs: bytes | list[bytes]) -> None:
        for m in msgs:
            if isinstance(m, list):
                self.pub.send_multipart(m)
            else:
                self.pub.send(m)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    r = Running(tmp_path)
    yield r
    r.close()


def stored_seqs(r: Running, device: str) -> list[int]:
    return [s for (s,) in r.rows(
        "SELECT f.seq FROM frames f JOIN devices d ON d.id=f.device_key "
        f"WHERE d.device='{device}' ORDER BY f.seq")]


def test_bad_messages_are_counted_and_good_ones_after_them_stored(running: Running) -> None:
    big = frame("pi-1", 99, n=1)
    big.samples[0].unit = "x" * 30
    oversized = encode(big) + b"\0" * 70000
    running.send(
        encode(frame("pi-1", 1)),
        b"\x00\xff garbage",                          # no topic, protobuf garbage
        b"just bytes with no delimiter at all",       # no delimiter
        [b"gh/pi-1/env", frame("pi-1", 50).SerializeToString()],  # two parts
        oversized,
        encode(frame("pi-1", 2))[:-5],                # truncated protobuf
        wire.encode(b"gh/pi-1/env", frame("pi-2", 60)),  # topic names another device
        encode(frame("pi-1", 2)),
        encode(frame("pi-1", 3)),
    )
    wait_until(lambda: stored_seqs(running, "pi-1") == [1, 2, 3], what="good frames stored")
    rejected = running.collector.rejected
    wait_until(lambda: sum(rejected.values()) == 6, what="6 rejections")
    assert rejected["multipart"] == 1
    assert rejected["oversized"] == 1
    assert rejected["no_delimiter"] == 1
    assert rejected["topic_mismatch"] == 1
    assert rejected["decode"] == 2
    assert stored_seqs(running, "pi-2") == []


def test_a_seq_past_what_a_database_stores_is_rejected_and_costs_no_other_frame(
        running: Running) -> None:
    """It once made SQLite refuse the whole batch it was in, other devices' frames with it."""
    evil = frame("evil", 1)
    evil.seq = 2**63
    running.send(encode(frame("pi-1", 1)), encode(evil), encode(frame("pi-1", 2)))
    wait_until(lambda: stored_seqs(running, "pi-1") == [1, 2], what="the good frames stored")
    wait_until(lambda: running.collector.rejected["bad_seq"] == 1, what="the bad seq counted")
    assert stored_seqs(running, "evil") == []


def test_a_frame_marked_as_a_proxy_cache_copy_is_not_stored_but_counted(running: Running) -> None:
    cached = frame("pi-1", 2)
    cached.flags = wire.FLAG_CACHED
    running.send(encode(frame("pi-1", 1)), encode(cached), encode(frame("pi-1", 3)))
    wait_until(lambda: stored_seqs(running, "pi-1") == [1, 3], what="the others stored")
    assert running.collector.cached_ignored == 1  # in the summary line and the metrics


def test_a_frame_that_arrives_twice_is_stored_once(running: Running) -> None:
    for _ in range(3):
        running.send(encode(frame("pi-1", 1)), encode(frame("pi-1", 2)))
    running.send(encode(frame("pi-1", 3)))
    wait_until(lambda: stored_seqs(running, "pi-1") == [1, 2, 3], what="frames stored")
    n_samples = running.rows("SELECT count(*) FROM samples v JOIN frames f ON f.id=v.frame_id "
                             "JOIN devices d ON d.id=f.device_key WHERE d.device='pi-1'")[0][0]
    assert n_samples == 3 * 8


def test_samples_keep_values_units_and_the_frame_identity(running: Running) -> None:
    running.send(encode(frame("pi-9", 5, boot_id=2**64 - 1)))
    wait_until(lambda: stored_seqs(running, "pi-9") == [5], what="frame stored")
    rows = running.rows("SELECT metric, value, unit, boot_id, seq FROM readings "
                        "WHERE device='pi-9' ORDER BY metric")
    assert rows[0] == ("m0", 5.0, "C", -1, 5)  # boot_id 2**64-1 is stored as the signed -1
    assert rows[1][2] is None
    assert len(rows) == 8


def test_filters_are_segment_safe(tmp_path: Path) -> None:
    r = Running(tmp_path, prefixes=["gh/pi-1/bme280"])
    try:
        def sent_and_stored() -> bool:
            r.send(encode(frame("pi-1", 1, sensor="bme2801")), encode(frame("pi-1", 1, sensor="bme280")))
            return bool(r.rows("SELECT 1 FROM frames WHERE sensor='bme280'"))
        wait_until(sent_and_stored, what="bme280 stored")
        r.send(encode(frame("pi-1", 2, sensor="bme2801")), encode(frame("pi-1", 2, sensor="bme280")))
        wait_until(lambda: r.rows("SELECT max(seq) FROM frames WHERE sensor='bme280'")[0][0] == 2,
                   what="second bme280 frame")
        assert r.rows("SELECT count(*) FROM frames WHERE sensor='bme2801'")[0][0] == 0
    finally:
        r.close()


def test_too_many_samples_are_rejected(tmp_path: Path) -> None:
    r = Running(tmp_path, max_samples_per_frame=16)
    try:
        r.send(encode(frame("pi-1", 1, n=17)), encode(frame("pi-1", 2, n=16)))
        wait_until(lambda: stored_seqs(r, "pi-1") == [2], what="the small frame")
        assert r.collector.rejected["too_many_samples"] == 1
    finally:
        r.close()


def test_stop_flushes_everything_received(tmp_path: Path) -> None:
    r = Running(tmp_path)
    try:
        for seq in range(1, 2001):
            r.send(encode(frame("pi-1", seq)))
        wait_until(lambda: r.collector.accepted - r.base_accepted >= 2000, what="all received")
    finally:
        r.close()
    conn = sqlite3.connect(r.db)
    n = conn.execute("SELECT count(*) FROM frames f JOIN devices d ON d.id=f.device_key "
                     "WHERE d.device='pi-1'").fetchone()[0]
    conn.close()
    assert n == 2000


def test_a_new_device_is_rejected_and_counted_while_every_device_followed_is_online(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    r = Running(tmp_path, max_devices=3)  # the probe, pi-1 and pi-2
    try:
        with caplog.at_level(logging.WARNING, logger="sensorwire.collector.runtime"):
            r.send(encode(frame("pi-1", 1)), encode(frame("pi-2", 1)), encode(frame("pi-3", 1)),
                   encode(frame("pi-1", 2)))
            wait_until(lambda: stored_seqs(r, "pi-1") == [1, 2], what="pi-1's frames")
        assert r.collector.rejected["too_many_devices"] == 1
        assert stored_seqs(r, "pi-3") == []
        assert set(r.collector.tracker.devices) == {"probe", "pi-1", "pi-2"}
        assert ("rejected a message (too_many_devices): device gh/pi-3 is new and all 3 devices "
                "followed are online ([limits] max_devices = 3): raise max_devices") in caplog.text
    finally:
        r.close()


def test_an_offline_device_makes_room_and_comes_back_with_no_false_gap_or_restart(
        tmp_path: Path) -> None:
    r = Running(tmp_path, offline_after_s=0.3, max_devices=2)  # the probe and one more

    def offline(*devices: str) -> bool:
        states = dict(r.rows("SELECT device, state FROM devices"))
        return all(states.get(d) == "offline" for d in devices)

    try:
        r.collector.tracker.started -= JOIN_GRACE_S  # as if long started: new boots from seq 1
        r.send(*(encode(frame("pi-1", seq)) for seq in (1, 2, 3)))
        wait_until(lambda: stored_seqs(r, "pi-1") == [1, 2, 3], what="pi-1's frames")
        wait_until(lambda: offline("probe", "pi-1"), what="the probe and pi-1 offline")
        r.send(encode(frame("pi-2", 1)), encode(frame("pi-3", 1)))  # evict the probe, then pi-1
        wait_until(lambda: stored_seqs(r, "pi-3") == [1], what="pi-3's frame")
        assert set(r.collector.tracker.devices) == {"pi-2", "pi-3"}
        wait_until(lambda: offline("pi-2", "pi-3"), what="pi-2 and pi-3 offline")
        r.send(encode(frame("pi-1", 4)))  # pi-1 again, on the same boot: evicts pi-2
        wait_until(lambda: stored_seqs(r, "pi-1") == [1, 2, 3, 4], what="pi-1's next frame")
        tracker = r.collector.tracker
        assert set(tracker.devices) == {"pi-3", "pi-1"}
        t = tracker.totals()
        assert (t["evicted"], t["gaps"], t["restarts"]) == (3, 0, 0)
        assert tracker.requests_sent == 0  # nothing asked for again: 1-3 are not a gap
        assert r.collector.rejected["too_many_devices"] == 0
    finally:
        r.close()


def test_a_reload_applies_the_frame_budget_at_once_to_and_from_no_limit(tmp_path: Path) -> None:
    import msgspec

    r = Running(tmp_path, max_frames_per_s_per_device=1)  # 10 frames deep (BURST_S)
    seq = 0

    def burst(n: int = 100) -> tuple[int, int]:
        """Send ``n`` frames of pi-1 at once: (stored, rate_limited) of them."""
        nonlocal seq
        stored0, limited0 = len(stored_seqs(r, "pi-1")), r.collector.rejected["rate_limited"]
        r.send(*(encode(frame("pi-1", seq + i)) for i in range(1, n + 1)))
        seq += n

        def done() -> bool:
            return (len(stored_seqs(r, "pi-1")) - stored0
                    + r.collector.rejected["rate_limited"] - limited0) == n
        wait_until(done, what=f"the {n} frames stored or rate limited")
        return len(stored_seqs(r, "pi-1")) - stored0, r.collector.rejected["rate_limited"] - limited0

    def reload(per_s: int) -> None:
        limits = LimitsConfig(max_frames_per_s_per_device=per_s)
        r.collector.reload(msgspec.structs.replace(r.collector.config, limits=limits))

    try:
        stored, limited = burst()
        assert stored <= 12 and limited >= 88  # the depth, and what refilled while sending
        reload(0)   # no limit
        assert burst() == (100, 0)
        reload(1)   # a limit again
        stored, limited = burst()
        assert stored <= 12 and limited >= 88
        reload(100_000)  # a bigger budget, applied to the device's bucket already there
        stored, limited = burst()
        assert limited <= 12  # only the emptied bucket refilling at the new rate
        assert burst() == (100, 0)
    finally:
        r.close()


def test_a_reload_applies_max_devices_to_the_metrics_sink(tmp_path: Path) -> None:
    import msgspec

    metrics = MetricsSink(devices_max=100)
    r = Running(tmp_path, max_devices=100, sinks=[metrics])

    def reload(max_devices: int) -> None:
        limits = LimitsConfig(max_devices=max_devices)
        r.collector.reload(msgspec.structs.replace(r.collector.config, limits=limits))

    try:
        r.send(*(encode(frame(f"pi-{i}", 1)) for i in range(20)))
        wait_until(lambda: metrics.devices_seen() == 21, what="20 devices and the probe")
        reload(8)   # fewer: forgotten down to it at once, the ones silent longest first
        wait_until(lambda: metrics.devices_max == 8, what="the metrics sink's reload")
        assert metrics.devices_seen() == 8
        assert ("gh", "pi-19") in metrics._devices and ("zz", "probe") not in metrics._devices
        reload(100)  # more: new devices are kept beside them again
        wait_until(lambda: metrics.devices_max == 100, what="the second reload")
        r.send(*(encode(frame(f"new-{i}", 1)) for i in range(5)))
        wait_until(lambda: metrics.devices_seen() == 13, what="5 more devices kept")
    finally:
        r.close()


def test_what_one_wake_up_takes_is_handed_on_in_one_batch() -> None:
    """One offer per sink per wake-up, however many frames: an offer costs about 2 µs per
    sink, so handing frames on one by one would cost a fleet's collector a few % of a core
    (measured: about 4 % at 10,000 devices) for a latency no sink sees, as sinks batch."""
    class Recording(SinkRunner):
        def __init__(self) -> None:
            super().__init__(Nowhere())
            self.offers: list[list[int]] = []

        def offer(self, batch: list[Item], samples: int | None = None) -> list[Item]:
            self.offers.append([f.seq for f, _ in batch])
            return []

    cfg = CollectorConfig(subscribe=SubscribeConfig(connect=["tcp://127.0.0.1:1"]),
                          storage=StorageConfig(kind="none"))
    collector = Collector(cfg, sinks=[])
    runner = Recording()
    collector.runners = [runner]
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    tx, rx = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        rx.bind("inproc://burst")
        tx.connect("inproc://burst")
        burst = 20
        for seq in range(1, burst + 1):
            tx.send(encode(frame("pi-1", seq)))
        assert rx.poll(1000)
        assert collector.drain(rx) == burst
    finally:
        tx.close(linger=0)
        rx.close(linger=0)
        ctx.term()
    assert runner.offers == [list(range(1, burst + 1))]
    assert collector.accepted == burst


def test_a_collector_given_a_context_reaches_inproc_in_it_and_leaves_it_open() -> None:
    """``run(context=...)``: the socket is made in the caller's context, so an ``inproc://``
    endpoint bound there (a proxy in the same process) is reachable; the context stays open."""
    class Recording(SinkRunner):
        def __init__(self) -> None:
            super().__init__(Nowhere())
            self.seqs: list[int] = []

        def offer(self, batch: list[Item], samples: int | None = None) -> list[Item]:
            self.seqs.extend(f.seq for f, _ in batch)
            return []

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("inproc://in-process-proxy")
    cfg = CollectorConfig(subscribe=SubscribeConfig(connect=["inproc://in-process-proxy"]),
                          storage=StorageConfig(kind="none"))
    collector = Collector(cfg, sinks=[])
    runner = Recording()
    collector.runners = [runner]
    stop = StopSignal()
    thread = threading.Thread(target=collector.run, args=(stop,), kwargs={"context": ctx})
    thread.start()
    try:
        seq = iter(range(1, 10_000))

        def stored() -> bool:
            pub.send(encode(frame("pi-1", next(seq))))  # dropped until the subscription arrives
            return bool(runner.seqs)

        wait_until(stored, what="a frame over inproc://")
    finally:
        stop.set()
        thread.join(10)
        stop.close()
    assert not thread.is_alive()
    assert not ctx.closed
    probe = ctx.socket(zmq.PAIR)  # the caller's context still works
    probe.close()
    pub.close()
    ctx.term()
