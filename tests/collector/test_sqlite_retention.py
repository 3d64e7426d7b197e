"""``[storage] retention_days`` with SQLite: a collector left alone for a year does not fill
its disk.  Real SQLite files; frames stamped days in the past stand for old data."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from support import run_cli, wait_until, write

from sensorwire.collector import sqlite_store
from sensorwire.collector.events import Presence
from sensorwire.collector.frames import CheckedFrame
from sensorwire.collector.sinks import SinkRunner
from sensorwire.collector.sinks.sqlite import SqliteSink
from sensorwire.collector.sqlite_store import SqliteWriter, status
from sensorwire.proto.v1.telemetry_pb2 import Frame

DAY_NS = 86_400 * 10**9
BOOT = 42


def item(seq: int, age_days: float, device: str = "pi-1") -> tuple[CheckedFrame, int]:
    t = time.time_ns() - int(age_days * DAY_NS)
    f = Frame(site="gh", device_id=device, boot_id=BOOT, seq=seq, time_unix_nano=t, sensor="env")
    for m in ("t", "h"):
        f.samples.add(metric=m, value=float(seq))
    return CheckedFrame.from_pb(f), t


def counts(db: Path) -> tuple[int, int, list[int]]:
    conn = sqlite3.connect(db)
    try:
        frames = conn.execute("SELECT count(*) FROM frames").fetchone()[0]
        samples = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
        seqs = [s for (s,) in conn.execute("SELECT seq FROM frames ORDER BY seq")]
        return frames, samples, seqs
    finally:
        conn.close()


def test_frames_past_the_retention_go_with_their_samples_and_the_counters_stay(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    w = SqliteWriter(db, retention_ns=2 * DAY_NS)
    w.open()
    old = time.time_ns() - 5 * DAY_NS
    w.event(Presence("gh", "pi-1", "online", None, old, old))
    w.write([item(s, 5.0) for s in range(1, 11)] + [item(s, 1.0) for s in range(11, 21)])
    w.event(Presence("gh", "pi-1", "offline", "online", time.time_ns(), time.time_ns()))
    w.flush()
    assert w.conn is not None
    before = status(w.conn)
    assert w.trim(time.time_ns()) is False
    assert w.trimmed == 10
    assert counts(db) == (10, 20, list(range(11, 21)))
    assert [s for (s,) in w.conn.execute("SELECT state FROM presence")] == ["offline"]
    assert status(w.conn) == before  # frames stored, gaps, lost: what was stored, not what is kept
    assert before[0]["frames"] == 20 and before[0]["gaps"] == 0
    # resuming after a restart: the deleted seqs are not "missing", a real gap still is
    w.write([item(23, 0.0)])
    # a boot whose frames are all deleted, with seqs 4 and 5 never received
    hb = Frame(site="gh", device_id="pi-2", boot_id=BOOT, seq=0, time_unix_nano=time.time_ns())
    hb.heartbeat.last_seq = 5
    w.write([item(s, 9.0, "pi-2") for s in range(1, 4)] + [(CheckedFrame.from_pb(hb), time.time_ns())])
    assert w.trim(time.time_ns()) is False
    missing = {b.device: b.missing for b in w.resume(0)}
    assert missing == {"pi-1": [(21, 22)], "pi-2": []}
    w.close()


def test_a_large_backlog_is_deleted_a_slice_at_a_time(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "TRIM_SLICE", 7)
    w = SqliteWriter(tmp_path / "t.db", retention_ns=DAY_NS)
    w.open()
    w.write([item(s, 3.0) for s in range(1, 31)] + [item(31, 0.0)])
    assert w.trim(time.time_ns(), budget_s=0.0) is True  # one slice, more left
    assert w.trimmed == 7
    while w.trim(time.time_ns(), budget_s=0.0):
        pass
    assert w.trimmed == 30 and counts(tmp_path / "t.db")[2] == [31]
    w.close()


def test_the_running_sink_trims_on_its_own(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    runner = SinkRunner(SqliteSink(str(db), retention_days=1.0), flush_interval_s=0.05)
    runner.start()
    try:
        runner.offer([item(s, 10.0) for s in range(1, 6)] + [item(s, 0.0) for s in range(6, 9)])
        wait_until(lambda: counts(db)[2] == [6, 7, 8], timeout_s=10,
                   what="the frames older than a day deleted")
    finally:
        runner.close()
    assert runner.dropped_total == 0


def test_retention_days_is_a_sqlite_key_too(tmp_path: Path) -> None:
    head = '[subscribe]\nconnect = ["tcp://127.0.0.1:5557"]\n'
    ok = write(tmp_path / "c.toml", head + '[storage]\nkind = "sqlite"\npath = "t.db"\nretention_days = 90\n')
    r = run_cli("check-config", str(ok))
    assert r.returncode == 0, r.stderr
    none = write(tmp_path / "n.toml", head + '[storage]\nkind = "none"\nretention_days = 90\n')
    r = run_cli("check-config", str(none))
    assert r.returncode == 2 and "retention_days" in r.stderr
    bad = write(tmp_path / "b.toml", head + '[storage]\nkind = "sqlite"\nretention_days = 0\n')
    r = run_cli("check-config", str(bad))
    assert r.returncode == 2 and "retention_days" in r.stderr


def test_a_retention_longer_than_any_stored_time_deletes_nothing_and_fails_nothing(
        tmp_path: Path) -> None:
    """retention_days = 1e6 (for "keep it all") put the cutoff before -2^63 ns: every tick of
    the running collector ended in an OverflowError traceback."""
    sink = SqliteSink(str(tmp_path / "t.db"), retention_days=1e6)
    sink.open()
    try:
        sink.write([item(1, 5.0)])
        assert sink.writer.trim(time.time_ns()) is False
    finally:
        sink.close()
    assert counts(tmp_path / "t.db")[2] == [1]


def test_with_a_retention_the_gaps_of_a_boot_nothing_was_deleted_from_are_still_asked_for(
        tmp_path: Path) -> None:
    """Seqs below a boot's oldest frame kept were never asked for again once retention_days
    was set, even for a boot none of whose frames was deleted: a collector restarted after
    missing the first frames of a new boot left them missing."""
    w = SqliteWriter(tmp_path / "t.db", retention_ns=30 * DAY_NS)
    w.open()
    w.write([item(s, 0.0) for s in (3, 4, 6)])  # 1, 2 and 5 never arrived
    hb = Frame(site="gh", device_id="pi-2", boot_id=BOOT, seq=0, time_unix_nano=time.time_ns())
    hb.heartbeat.last_seq = 4  # a boot none of whose frames arrived
    w.write([(CheckedFrame.from_pb(hb), time.time_ns())])
    assert w.trim(time.time_ns()) is False and w.trimmed == 0
    missing = {b.device: b.missing for b in w.resume(0)}
    assert missing == {"pi-1": [(1, 2), (5, 5)], "pi-2": [(1, 4)]}
    w.close()


class SlowClock:
    """time.monotonic as on a machine where every statement takes ``step_s``."""

    def __init__(self, step_s: float) -> None:
        self.now, self.step_s = 1000.0, step_s

    def __call__(self) -> float:
        self.now += self.step_s
        return self.now


def test_on_a_slow_machine_slices_shrink_so_that_writes_never_wait_past_the_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A slice of 5,000 frames of 8 samples took 0.1 s here; a machine several times slower
    held the writer's batches for more than the budget at every slice, and a pass went a
    whole slice past its budget."""
    w = SqliteWriter(tmp_path / "t.db", retention_ns=DAY_NS)
    w.open()
    w.write([item(s, 3.0) for s in range(1, 201)])
    monkeypatch.setattr(sqlite_store, "TRIM_SLICE", 64)
    monkeypatch.setattr(sqlite_store, "TRIM_SLICE_MIN", 4)
    w.trim_slice = 64
    clock = SlowClock(0.15)  # each slice "takes" more than half of the 0.2 s budget
    monkeypatch.setattr(time, "monotonic", clock)  # the module sqlite_store uses too
    start = clock.now
    assert w.trim(time.time_ns(), budget_s=0.2) is True
    assert clock.now - start <= 0.2 + 2 * clock.step_s  # one slice, not two or more
    assert w.trimmed == 64 and w.trim_slice == 32
    while w.trim(time.time_ns(), budget_s=0.2):
        pass
    assert w.trim_slice == 4 and counts(tmp_path / "t.db")[0] == 0
    w.close()


def test_frames_of_one_time_across_slices_go_each_with_all_its_samples(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices end inside a run of frames stamped alike: after every slice each frame kept has
    all its samples and no sample is left without its frame."""
    monkeypatch.setattr(sqlite_store, "TRIM_SLICE", 7)
    db = tmp_path / "t.db"
    w = SqliteWriter(db, retention_ns=DAY_NS)
    w.open()
    old = time.time_ns() - 3 * DAY_NS
    w.write([item(s, 3.0) for s in range(1, 31)])
    assert w.conn is not None
    w.conn.execute("UPDATE frames SET time_ns = ?", (old,))  # all thirty at the same nanosecond
    while w.trim(time.time_ns(), budget_s=0.0):
        frames, samples, _ = counts(db)
        assert samples == 2 * frames and frames % 7 == 30 % 7
        orphans = w.conn.execute("SELECT count(*) FROM samples WHERE frame_id NOT IN "
                                 "(SELECT id FROM frames)").fetchone()[0]
        assert orphans == 0
    assert counts(db)[:2] == (0, 0) and w.trimmed == 30
    w.close()


def test_presence_changes_past_the_retention_are_found_by_index_not_by_reading_them_all(
        tmp_path: Path) -> None:
    """Each slice of every pass read the whole presence table (40 ms at 800,000 changes, in
    the write transaction, with nothing to delete); it seeks each device's old changes."""
    w = SqliteWriter(tmp_path / "t.db", retention_ns=DAY_NS)
    w.open()
    assert w.conn is not None
    plan = " / ".join(r[3] for r in w.conn.execute(
        "EXPLAIN QUERY PLAN " + sqlite_store._TRIM_PRESENCE, (0, 1)))
    assert "SCAN presence" not in plan and "SCAN p " not in plan, plan
    old, new = time.time_ns() - 3 * DAY_NS, time.time_ns()
    for dev, t in (("pi-1", old), ("pi-2", old), ("pi-2", new)):
        w.event(Presence("gh", dev, "online", None, t, t))
    w.flush()
    assert w.trim(time.time_ns()) is False
    assert w.conn.execute("SELECT count(*), min(time_ns) FROM presence").fetchone() == (1, new)
    w.close()
