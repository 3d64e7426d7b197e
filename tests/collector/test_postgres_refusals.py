"""What PostgreSQL refuses, and what it must not cost: the good frames beside a bad one, the
frames held through an outage, the whole fleet's storage.

Real PostgreSQL (a schema per test, see ``pgsupport``); an outage is a connection killed with
``pg_terminate_backend`` while the sink's DSN points where nothing answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from pgsupport import PgSchema, boots_consistent, frame, storage_config, stored
from support import run_cli, wait_until

from sensorwire.collector import pg_store, storage
from sensorwire.collector.backlog import Backlog
from sensorwire.collector.events import Counts, Event, Presence
from sensorwire.collector.frames import CheckedFrame
from sensorwire.collector.pg_schema import MigrationError
from sensorwire.collector.sinks import Item, SinkRunner
from sensorwire.collector.sinks import postgres as postgres_sink
from sensorwire.collector.sinks.postgres import PostgresSink
from sensorwire.logs import RateLimited
from sensorwire.proto.v1.telemetry_pb2 import Frame

NOWHERE = "postgresql://postgres@127.0.0.1:1/none"


@pytest.fixture(autouse=True)
def fresh_retry_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """The retries' lines are limited per kind for 10 s across the process: a test must not
    miss its line because the test before said one of the same kind."""
    monkeypatch.setattr(postgres_sink, "_retry_log", RateLimited(postgres_sink.log, period_s=10.0))


def flagged(device: str, seq: int, flags: int) -> Item:
    f, received = frame(device, seq)
    pb = f.to_pb()
    pb.flags = flags
    return CheckedFrame.from_pb(pb), received


def at_seq(device: str, seq: int, boot: int) -> Item:
    f = Frame(site="gh", device_id=device, boot_id=boot, seq=seq, time_unix_nano=1_700_000_000 * 10**9,
              sensor="env")
    f.samples.add(metric="t", value=1.0)
    return CheckedFrame.from_pb(f), 1_700_000_000 * 10**9


def write_back(sink: PostgresSink) -> None:
    """Tick the sink until what it holds is written (reconnecting at once, not after backoff)."""
    def written() -> bool:
        sink._retry_at = 0.0
        sink.tick(0)
        return not sink.backlog
    wait_until(written, timeout_s=20, what="what the sink held written")


def cut_off(pg: PgSchema, sink: PostgresSink) -> str:
    """Kill the sink's connection; it reconnects to nowhere until the DSN returned is put back."""
    good = sink.writer.dsn
    sink.writer.dsn = NOWHERE
    assert sink.writer.conn is not None
    pg.rows("SELECT pg_terminate_backend(%s)", sink.writer.conn.info.backend_pid)
    return good


def test_flags_with_the_top_bit_set_are_stored_with_the_good_frames(pg: PgSchema) -> None:
    """uint32 on the wire, a signed integer column: flags >= 2^31 once failed to encode."""
    sink = PostgresSink(storage_config(pg))
    runner = SinkRunner(sink, flush_interval_s=0.05)
    runner.start()
    runner.offer([frame("pi-1", 1), flagged("evil", 1, 0x8000_0000), frame("pi-1", 2),
                  flagged("evil", 2, 0xFFFF_FFF7)])
    runner.close()
    assert runner.dropped_total == 0
    assert [(d, s) for d, _, s in stored(pg)] == [("evil", 1), ("evil", 2), ("pi-1", 1), ("pi-1", 2)]
    flags = sorted(f for (f,) in pg.rows("SELECT flags FROM frames"))
    assert flags == sorted([0, 0, pg_store.to_i32(0x8000_0000), pg_store.to_i32(0xFFFF_FFF7)])


def test_a_bad_frame_held_through_an_outage_costs_only_itself(pg: PgSchema, tmp_path: Path) -> None:
    """Written back after the outage: the piece is halved round the frames PostgreSQL refuses
    (text cannot hold NUL), which are counted; the others are stored."""
    sink = PostgresSink(storage_config(pg, tmp_path, buffer_max=1000))
    sink.open()
    good = cut_off(pg, sink)
    held = [frame("pi-1", s) for s in range(1, 101)]
    held[30] = frame("pi-\x00", 31)
    held[70] = frame("pi-\x00", 71)
    sink.write(held)
    shown = SinkRunner(sink)  # not started: only what the metrics and summary read of it
    assert not sink.connected and shown.held == 100
    sink.writer.dsn = good
    write_back(sink)
    sink.close()
    assert [s for _, _, s in stored(pg)] == [s for s in range(1, 101) if s not in (31, 71)]
    assert sink.failed == 2 and shown.dropped_total == 2 and shown.held == 0
    boots_consistent(pg)


def test_an_error_that_is_not_the_databases_loses_nothing_uncounted(
        pg: PgSchema, tmp_path: Path) -> None:
    """A frame the writer cannot even encode (a bug, or input nobody foresaw) held through an
    outage: counted as refused, the rest stored; once only the held pieces were caught."""
    sink = PostgresSink(storage_config(pg, tmp_path, buffer_max=1000))
    sink.open()
    good = cut_off(pg, sink)
    held = [frame("pi-1", s) for s in range(1, 51)]
    f, received = frame("pi-2", 1)
    f.seq = 1 << 64  # struct.error when packed as a bigint
    held.append((f, received))
    sink.write(held)
    sink.writer.dsn = good
    write_back(sink)
    sink.close()
    assert [s for _, _, s in stored(pg)] == list(range(1, 51))
    assert sink.failed == 1


def test_rows_deleted_under_a_running_writer_do_not_stop_storage(pg: PgSchema) -> None:
    """An operator deletes a device's rows: the ids the writer cached are stale; its next
    write refreshes them rather than failing for ever."""
    sink = PostgresSink(storage_config(pg))
    sink.open()
    sink.write([frame("pi-1", 1), frame("pi-2", 1)])
    pg.rows("TRUNCATE devices CASCADE")  # and every row that names one
    sink.write([frame("pi-1", 2), frame("pi-2", 2)])  # raised SinkError: foreign key violation
    sink.close()
    assert [(d, s) for d, _, s in stored(pg)] == [("pi-1", 2), ("pi-2", 2)]
    boots_consistent(pg)


def test_a_table_renamed_for_maintenance_is_an_outage_not_bad_frames(
        pg: PgSchema, tmp_path: Path) -> None:
    sink = PostgresSink(storage_config(pg, tmp_path))
    sink.open()
    sink.write([frame("pi-1", 1)])
    pg.rows("ALTER TABLE frames RENAME TO frames_maint")
    sink.write([frame("pi-1", s) for s in range(2, 11)])  # held, not refused
    assert sink.held == 9 and sink.failed == 0
    pg.rows("ALTER TABLE frames_maint RENAME TO frames")
    write_back(sink)
    sink.close()
    assert [s for _, _, s in stored(pg)] == list(range(1, 11))
    assert sink.lost == 0


def test_seqs_at_the_top_of_the_range_do_not_break_status_or_resume(pg: PgSchema) -> None:
    top = (1 << 63) - 1
    sink = PostgresSink(storage_config(pg))
    sink.open()
    sink.write([at_seq("pi-1", top, boot=7), at_seq("pi-1", top, boot=8),
                at_seq("pi-1", 1, boot=9)])
    resumed = sink.resume(0)  # "bigint out of range" in the gaps query: resumed nothing
    sink.close()
    assert sorted((b.boot_id, b.max_seq) for b in resumed) == [(7, top), (8, top), (9, 1)]
    assert {b.boot_id: b.missing for b in resumed}[7] == [(1, top - 1)]
    reader = storage.connect_reader(pg.dsn)
    try:
        [row] = reader.status()
    finally:
        reader.close()
    assert row["frames"] == 3 and row["gaps"] == 2 * (top - 1)


def test_the_writer_refuses_a_database_that_is_not_utf8(pg: PgSchema) -> None:
    import psycopg
    from psycopg.conninfo import make_conninfo

    name = f"{pg.name}_latin1"
    with psycopg.connect(pg.server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' "
                      "TEMPLATE template0")
    try:
        w = pg_store.PgWriter(make_conninfo(pg.server, dbname=name))
        try:
            w.open()
            raise AssertionError("a LATIN1 database was accepted")
        except MigrationError as exc:
            assert "encoding is LATIN1" in str(exc) and "ENCODING 'UTF8'" in str(exc)
        finally:
            w.close()
    finally:
        with psycopg.connect(pg.server, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name}")


def test_frame_pb_round_trip_keeps_flags() -> None:  # the helper above relies on it
    f = Frame(site="gh", device_id="d", boot_id=1, seq=1, time_unix_nano=1, flags=0x8000_0000)
    assert CheckedFrame.from_pb(f).to_pb().flags == 0x8000_0000


CRASH_MID_WRITE = """
import os, sys
sys.path.insert(0, sys.argv[2])
import pytest
from pgsupport import frame
from sensorwire.collector.backlog import Backlog
b = Backlog(buffer_max=5, spool_dir=sys.argv[1], spool_max_bytes=1 << 20)
b.open()
b.park([frame("pi-1", s) for s in range(1, 21)])  # past buffer_max: all of it to the spool
b.park([frame("pi-1", 21)])
piece = b.take(1_000_000)  # everything in the spool, read for a write ...
assert piece is not None and len(piece) == 20, piece
os._exit(9)  # ... that never commits: the process dies first
"""


def test_frames_read_back_from_the_spool_survive_a_crash_before_they_are_written(
        tmp_path: Path) -> None:
    """The spool's segments go only once what was read from them is stored: a collector killed
    while writing its backlog reads them again at the next start (the database drops the
    duplicates), where once they were deleted as soon as they were read."""
    import subprocess
    import sys

    spool = tmp_path / "spool"
    tests = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", CRASH_MID_WRITE, str(spool), str(tests)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 9, r.stderr
    b = Backlog(buffer_max=5, spool_dir=spool, spool_max_bytes=1 << 20)
    b.open()
    assert b.spool_pending == 20  # frame 21 was in memory: a crash loses memory, as documented
    piece = b.take(1_000_000)
    assert isinstance(piece, list) and [f.seq for f, _ in piece] == list(range(1, 21))
    b.stored()  # written: now the segments can go
    assert not any(spool.glob("seg-*"))
    b.close()
    b = Backlog(buffer_max=5, spool_dir=spool, spool_max_bytes=1 << 20)
    b.open()
    assert b.spool_pending == 0 and b.take(10) is None
    b.close()


def test_a_flood_of_events_is_written_a_batch_at_a_time(pg: PgSchema) -> None:
    """2,000 made-up devices each resending a frame: their duplicate counts, and presence,
    go in a few transactions with the frames beside them, not one each (which once held
    every device's frames back by minutes)."""
    sink = PostgresSink(storage_config(pg))
    calls: list[int] = []
    events = sink.writer.events

    def counted(evs: Sequence[Event]) -> None:
        calls.append(len(evs))
        events(evs)
    sink.writer.events = counted  # type: ignore[method-assign]
    runner = SinkRunner(sink, flush_interval_s=60.0)  # not started: all is queued first
    for i in range(2000):
        runner.offer_event(Counts("gh", f"made-up-{i}", 1, 0))
        runner.offer_event(Counts("gh", f"made-up-{i}", 2, 1))
    runner.offer_event(Presence("gh", "pi-1", "online", None, 1, 5))
    runner.offer([frame("pi-1", s) for s in range(1, 11)])
    runner.start()
    runner.close()
    assert sum(calls) == 4001 and len(calls) <= 3, calls
    assert pg.rows("SELECT count(*), sum(duplicates), sum(out_of_order) FROM devices "
                   "WHERE device LIKE 'made-up-%%'") == [(2000, 6000, 2000)]
    assert pg.rows("SELECT state FROM presence") == [("online",)]
    assert [s for _, _, s in stored(pg)] == list(range(1, 11))


def test_events_held_through_an_outage_are_bounded_by_buffer_max(tmp_path: Path) -> None:
    """An event takes the room of a frame in memory: a flood of made-up devices during an
    outage goes to the spool, or without one is dropped and counted, not kept for ever."""
    small = Backlog(buffer_max=10)
    small.open()
    small.park([frame("pi-1", s) for s in range(1, 5)])
    for i in range(100):
        small.park_event(Counts("gh", f"made-up-{i}", 1, 0))
    assert small.dropped_events == 94 and small.frames_in_memory == 4
    small.park([frame("pi-1", 5)])  # no room left for frames either
    assert small.dropped == 1
    taken = [small.take(1000) for _ in range(7)]
    assert isinstance(taken[0], list) and [f.seq for f, _ in taken[0]] == [1, 2, 3, 4]
    assert all(isinstance(e, Counts) for e in taken[1:]) and small.take(1000) is None
    small.close()

    spooled = Backlog(buffer_max=10, spool_dir=tmp_path / "spool", spool_max_bytes=1 << 20)
    spooled.open()
    for i in range(100):
        spooled.park_event(Counts("gh", f"made-up-{i}", 1, 0))
    assert spooled.dropped_events == 0 and spooled.spool_pending >= 90
    got = []
    while (piece := spooled.take(1000)) is not None:
        assert isinstance(piece, Counts)
        got.append(piece.device)
        spooled.stored()
    assert got == [f"made-up-{i}" for i in range(100)]  # all of them, in order
    spooled.close()


def test_a_stop_stuck_on_a_lock_cancels_the_statement_and_spools_the_batch(
        pg: PgSchema, tmp_path: Path) -> None:
    """A write blocked on a lock for longer than the stop waits (the DSN turns the session's
    own lock and statement timeouts off): the statement is cancelled, and the batch, with what
    was queued behind it, goes to the spool for the next start instead of being lost."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    dsn = make_conninfo(pg.server, options="-c lock_timeout=0 -c statement_timeout=0")
    sink = PostgresSink(storage_config(pg, tmp_path, dsn=dsn))
    runner = SinkRunner(sink, flush_interval_s=0.05)
    runner.start()
    runner.offer([frame("pi-1", 1)])
    wait_until(lambda: [s for _, s in pg.seqs("pi-1")] == [1], timeout_s=10, what="the first frame stored")
    with psycopg.connect(pg.dsn) as locker:
        locker.execute("LOCK TABLE frames IN ACCESS EXCLUSIVE MODE")  # held until the block ends
        runner.offer([frame("pi-1", s) for s in range(2, 12)])
        wait_until(lambda: runner.stalled(time.monotonic(), 0.2) is not None, timeout_s=10,
                   what="the write blocked on the lock")
        runner.offer([frame("pi-1", s) for s in range(12, 15)])
        started = time.monotonic()
        runner.close(timeout_s=0.5)
        took = time.monotonic() - started
        locker.rollback()
    assert took < 0.5 + 5.0, f"the stop took {took:.1f} s"
    assert [s for _, s in pg.seqs("pi-1")] == [1]
    assert sink.backlog.dropped == 0 and runner.dropped_total == 0
    back = Backlog(buffer_max=1000, spool_dir=tmp_path / "pgspool", spool_max_bytes=1 << 20)
    back.open()
    piece = back.take(1_000_000)
    assert isinstance(piece, list)
    assert sorted(f.seq for f, _ in piece) == list(range(2, 15))
    back.close()


@pytest.mark.slow
def test_a_lock_on_meta_during_a_reconnect_is_waited_out_not_a_hang(
        pg: PgSchema, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A session holding a lock on meta (LOCK TABLE, VACUUM FULL) while the writer reconnects:
    the look at the tables once waited on it without a bound or a word, until the watchdog
    killed the collector (and what it held in memory); now the reconnect gives up after the
    writer's lock_timeout, names the session, and is tried again until the lock is gone."""
    import threading

    import psycopg

    sink = PostgresSink(storage_config(pg, tmp_path))
    sink.open()
    sink.write([frame("pi-1", 1)])
    good = cut_off(pg, sink)
    sink.write([frame("pi-1", s) for s in range(2, 6)])  # held: the connection is gone
    sink.writer.dsn = good
    with psycopg.connect(pg.dsn) as locker:
        locker.execute("LOCK TABLE meta IN ACCESS EXCLUSIVE MODE")
        locker_pid = locker.info.backend_pid

        def reconnect() -> None:
            sink._retry_at = 0.0
            sink.tick(0)
        with caplog.at_level(logging.WARNING, logger="sensorwire.collector.sinks.postgres"):
            t = threading.Thread(target=reconnect, daemon=True)
            t.start()
            try:
                wait_until(lambda: not t.is_alive(), timeout_s=15, what="the reconnect to give up")
            finally:
                locker.rollback()  # the old code's reconnect waits for this
                t.join(30)
        assert not sink.connected and sink.held == 4
        assert (f"cannot write yet (gave up waiting (lock_timeout) for a lock another session holds "
                f"on the tables: pid {locker_pid} (role ") in caplog.text
        assert "holding AccessExclusiveLock on meta: LOCK TABLE meta IN ACCESS EXCLUSIVE MODE" in caplog.text
    write_back(sink)
    sink.close()
    assert [s for _, _, s in stored(pg)] == [1, 2, 3, 4, 5] and sink.lost == 0


def test_a_write_blocked_by_a_lock_says_who_holds_it_and_stores_everything_after(
        pg: PgSchema, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A write that gives up waiting for a lock (here the DSN's own, short lock_timeout) is
    held, and the log names the session holding the lock instead of "lost the database"."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    dsn = make_conninfo(pg.server, options="-c lock_timeout=200ms")
    sink = PostgresSink(storage_config(pg, tmp_path, dsn=dsn))
    sink.open()
    sink.write([frame("pi-1", 1)])
    with psycopg.connect(pg.dsn) as locker:
        locker.execute("LOCK TABLE frames IN SHARE MODE")  # as CREATE INDEX takes
        locker_pid = locker.info.backend_pid
        with caplog.at_level(logging.WARNING, logger="sensorwire.collector.sinks.postgres"):
            sink.write([frame("pi-1", s) for s in range(2, 12)])
        assert sink.held == 10 and sink.lost == 0
        locker.rollback()
    assert "lost the database" not in caplog.text
    assert (f"postgres: a write gave up waiting (lock_timeout) for a lock another session holds on "
            f"the tables: pid {locker_pid} (role ") in caplog.text
    assert "holding ShareLock on frames: LOCK TABLE frames IN SHARE MODE); holding frames" in caplog.text
    write_back(sink)
    sink.close()
    assert [s for _, _, s in stored(pg)] == list(range(1, 12)) and sink.lost == 0
    boots_consistent(pg)


def test_a_column_given_another_type_holds_the_frames_until_it_is_put_back(
        pg: PgSchema, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A column of sensorwire's changed to another type under a running collector refuses
    every write whatever the frames: they were dropped, a batch after another, as if at fault;
    now they are held as for a renamed table, and the log says what to look at."""
    sink = PostgresSink(storage_config(pg, tmp_path))
    sink.open()
    sink.write([frame("pi-1", 1)])
    pg.rows("ALTER TABLE devices ALTER COLUMN clock_synced TYPE integer USING 0")
    with caplog.at_level(logging.WARNING, logger="sensorwire.collector.sinks.postgres"):
        sink.write([frame("pi-1", s) for s in range(2, 12)])  # raised SinkError: refused for good
    assert sink.held == 10 and sink.lost == 0
    assert ("postgres: the database refuses writes to the tables (COALESCE types boolean and "
            "integer cannot be matched") in caplog.text
    assert "were the tables changed under the collector" in caplog.text
    pg.rows("ALTER TABLE devices ALTER COLUMN clock_synced TYPE boolean USING NULL")
    write_back(sink)
    sink.close()
    assert [s for _, _, s in stored(pg)] == list(range(1, 12)) and sink.lost == 0
    boots_consistent(pg)


def test_a_table_dropped_under_the_collector_is_named_as_gone_not_as_a_missing_grant(
        pg: PgSchema) -> None:
    w = pg_store.PgWriter(pg.server, pg.name)
    w.open()
    w.close()
    pg.rows("DROP TABLE lost_ranges")
    try:
        w.open()
        raise AssertionError("a schema without lost_ranges was accepted")
    except MigrationError as exc:
        assert str(exc).startswith(f"schema {pg.name} has sensorwire's schema_migrations but not its "
                                   "table lost_ranges: dropped or renamed by someone; restore"), exc
        assert "grant" not in str(exc)  # once: "the tables' owner must grant them"
    finally:
        w.close()


def test_while_a_lock_is_still_held_writes_are_held_at_once_not_each_made_to_wait(
        pg: PgSchema, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """After a lock timeout, each reconnect wrote the held frames again and waited the whole
    lock_timeout (5 s) each time, during which reception's queue filled and dropped frames
    while the spool had room; now it looks whether the lock is still held, and if so holds
    the writes at once and looks again later."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    dsn = make_conninfo(pg.server, options="-c lock_timeout=200ms")
    sink = PostgresSink(storage_config(pg, tmp_path, dsn=dsn))
    sink.open()
    sink.write([frame("pi-1", 1)])
    attempts: list[int] = []
    write = sink.writer.write

    def counted(batch: Sequence[Item]) -> None:
        attempts.append(len(batch))
        write(batch)
    sink.writer.write = counted  # type: ignore[method-assign]
    with psycopg.connect(pg.dsn) as locker:
        locker.execute("LOCK TABLE frames IN ACCESS EXCLUSIVE MODE")
        locker_pid = locker.info.backend_pid
        sink.write([frame("pi-1", s) for s in range(2, 7)])  # waits lock_timeout: held
        assert attempts == [5] and sink.held == 5
        with caplog.at_level(logging.WARNING, logger="sensorwire.collector.sinks.postgres"):
            sink._retry_at = 0.0  # the next look is due
            sink.write([frame("pi-1", s) for s in range(7, 12)])
        assert attempts == [5], "a write was made to wait for the lock again"
        assert sink.held == 10 and not sink.connected
        assert f"postgres: the lock is still held: pid {locker_pid} (role " in caplog.text
        locker.rollback()
    write_back(sink)
    sink.close()
    assert [s for _, _, s in stored(pg)] == list(range(1, 12)) and sink.lost == 0
    boots_consistent(pg)


@pytest.mark.slow
def test_a_lock_on_boots_at_start_does_not_hang_the_resume(
        pg: PgSchema, caplog: pytest.LogCaptureFixture) -> None:
    """The collector reads the seq state at start on a connection of its own, which had no
    lock or statement timeout: a session holding a lock on boots hung the start, silently,
    until it let go; now the resume gives up after lock_timeout, naming the session, and the
    collector starts without it (as it does when the state cannot be read)."""
    import threading

    import psycopg

    sink = PostgresSink(storage_config(pg))
    sink.open()
    sink.write([frame("pi-1", 1)])
    got: list[object] = []
    with psycopg.connect(pg.dsn) as locker:
        locker.execute("LOCK TABLE boots IN ACCESS EXCLUSIVE MODE")
        locker_pid = locker.info.backend_pid
        with caplog.at_level(logging.WARNING, logger="sensorwire.collector.sinks.postgres"):
            t = threading.Thread(target=lambda: got.append(sink.resume(0)), daemon=True)
            t.start()
            try:
                wait_until(lambda: not t.is_alive(), timeout_s=15, what="the resume to give up")
            finally:
                locker.rollback()  # the old code's resume waits for this
                t.join(30)
    sink.close()
    assert got == [[]]
    assert "postgres: cannot read the seq state to resume from (canceling statement due to lock " \
           "timeout" in caplog.text
    assert f"another session holds a lock on the tables: pid {locker_pid} (role " in caplog.text


def test_a_statement_timeout_is_said_as_such_not_as_a_lost_database(
        pg: PgSchema, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An error from a database that still answers (a statement timeout; out of disk or memory
    alike) was logged once as "lost the database", then "reconnected" every 0.5 s."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    dsn = make_conninfo(pg.server, options="-c lock_timeout=0 -c statement_timeout=300ms")
    sink = PostgresSink(storage_config(pg, tmp_path, dsn=dsn))
    sink.open()
    sink.write([frame("pi-1", 1)])
    with psycopg.connect(pg.dsn) as locker:
        locker.execute("LOCK TABLE frames IN SHARE MODE")  # makes the write run past 300 ms
        with caplog.at_level(logging.WARNING, logger="sensorwire.collector.sinks.postgres"):
            sink.write([frame("pi-1", s) for s in range(2, 7)])
        locker.rollback()
    assert sink.held == 5 and sink.lost == 0
    assert "lost the database" not in caplog.text
    assert ("postgres: the database cannot take writes now (canceling statement due to statement "
            "timeout") in caplog.text and "trying again every 5 s" in caplog.text
    assert sink._retry_at - time.monotonic() > 1.0  # not again in 0.5 s: it still answers
    write_back(sink)
    sink.close()
    assert [s for _, _, s in stored(pg)] == list(range(1, 7))


def test_status_and_query_on_a_locked_table_give_up_and_name_the_holder(
        pg: PgSchema, tmp_path: Path) -> None:
    """``sensorwire status`` and ``query`` waited for ever, without a word, on a table another
    session had locked (VACUUM FULL, LOCK TABLE); now they give up after their lock_timeout
    (10 s; here the DSN's own, shorter) and name the session."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    sink = PostgresSink(storage_config(pg, tmp_path))
    sink.open()
    sink.write([frame("pi-1", 1)])
    sink.close()
    dsn = str(make_conninfo(pg.dsn, options=f"-csearch_path={pg.name} -clock_timeout=300"))
    with psycopg.connect(pg.dsn) as locker:
        locker.execute("LOCK TABLE devices, boots, frames IN ACCESS EXCLUSIVE MODE")
        pid = locker.info.backend_pid
        for argv in (["status", "--db", dsn], ["query", "--db", dsn]):
            r = run_cli(*argv, timeout=30)
            assert r.returncode == 1, (argv, r.stderr)
            assert "canceling statement due to lock timeout" in r.stderr, r.stderr
            assert (f"(another session holds a lock on the tables: pid {pid} (role ") in r.stderr
            assert "holding AccessExclusiveLock on boots, AccessExclusiveLock on devices" in r.stderr
        locker.rollback()
    r = run_cli("status", "--db", dsn)
    assert r.returncode == 0 and "pi-1" in r.stdout, r.stderr
