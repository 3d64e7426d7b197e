"""PostgreSQL storage: idempotent, exact under concurrency, same answers as SQLite, rides out outages.

Against the real server of $SENSORWIRE_TEST_PG_DSN (see tests/pgsupport.py).
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
from pgsupport import BOOT, PgSchema, boots_consistent, frame, heartbeat, storage_config, stored
from support import wait_until

from sensorwire.collector import pg_store, storage
from sensorwire.collector.backlog import Backlog
from sensorwire.collector.config import StorageConfig
from sensorwire.collector.events import Counts, Event, Lost, Presence
from sensorwire.collector.frames import CheckedFrame
from sensorwire.collector.pg_config import spool_folder
from sensorwire.collector.pg_schema import SCHEMA_VERSION, MigrationError, Policy
from sensorwire.collector.pg_store import PgWriter
from sensorwire.collector.sinks import SinkError, SinkRunner
from sensorwire.collector.sinks.postgres import PostgresSink
from sensorwire.collector.sqlite_store import QueryFilter, SqliteWriter, StoreError


def writer(pg: PgSchema) -> PgWriter:
    w = PgWriter(pg.server, pg.name)
    w.open()
    return w


# -- configuration --------------------------------------------------------------------------
def test_postgres_needs_a_dsn_and_its_keys_need_postgres() -> None:
    with pytest.raises(msgspec.ValidationError, match="dsn: required"):
        msgspec.convert({"kind": "postgres"}, StorageConfig)
    for key, value in (("dsn", "postgresql://x/y"), ("timescaledb", "on"), ("buffer_max", 10),
                       ("spool_max_mb", 5.0), ("spool_dir", "/tmp/x")):
        with pytest.raises(msgspec.ValidationError, match=f"{key}: only used with kind"):
            msgspec.convert({"kind": "sqlite", key: value}, StorageConfig)
    with pytest.raises(msgspec.ValidationError, match="schema"):
        msgspec.convert({"kind": "postgres", "dsn": "host=x", "schema": "Bad-Name"}, StorageConfig)
    ok = msgspec.convert({"kind": "postgres", "dsn": "postgresql://u@h/db", "buffer_max": 10},
                         StorageConfig)
    assert ok.buffer_max == 10 and ok.timescaledb == "auto"


@pytest.mark.parametrize("db, dsn", [
    ("postgresql://u@h/db", True), ("postgres://h/db", True), ("host=h dbname=db", True),
    ("dbname=telemetry", True), ("telemetry.db", False), ("/var/lib/sw/telemetry.db", False),
    ("./a=b.db", False),
])
def test_db_argument_is_a_path_or_a_dsn(db: str, dsn: bool) -> None:
    assert storage.is_dsn(db) is dsn


def test_password_is_masked_in_logs() -> None:
    assert "secret" not in pg_store.safe_dsn("postgresql://u:secret@h/db")


# -- schema ----------------------------------------------------------------------------------
def test_migrations_are_versioned_and_idempotent(pg: PgSchema) -> None:
    for _ in range(2):
        writer(pg).close()
    assert pg.rows("SELECT version FROM schema_migrations") == [(SCHEMA_VERSION,)]
    assert dict(pg.rows("SELECT key, value FROM meta"))["layout"] in ("brin", "timescaledb")
    pg.rows("INSERT INTO schema_migrations VALUES (%s, 'from the future')", SCHEMA_VERSION + 1)
    with pytest.raises(MigrationError, match="newer than this sensorwire"):
        writer(pg)


def test_policies_without_timescaledb_are_refused(pg: PgSchema) -> None:
    available = pg.rows("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
    if available[0][0]:
        pytest.skip("this server has timescaledb")
    w = PgWriter(pg.server, pg.name, Policy(retention_days=30))
    with pytest.raises(MigrationError, match="TimescaleDB policies"):
        w.open()
    w = PgWriter(pg.server, pg.name, Policy(timescaledb="on"))
    with pytest.raises(MigrationError, match="no timescaledb extension"):
        w.open()


# -- writing -----------------------------------------------------------------------------------
def test_a_frame_is_stored_once_and_boots_count_exactly(pg: PgSchema) -> None:
    w = writer(pg)
    batch = [frame("pi-1", s) for s in (1, 2, 3, 5)] + [heartbeat("pi-1", 7)]
    w.write(batch)
    w.write(batch + [frame("pi-1", 4)])
    assert stored(pg) == [("pi-1", BOOT - (1 << 64), s) for s in (1, 2, 3, 4, 5)]
    assert w.frames_stored == 5 and w.already_stored == 4 and w.samples_stored == 15
    boots_consistent(pg)
    [(max_seq, announced, n)] = pg.rows("SELECT max_seq, announced_seq, stored FROM boots")
    assert (max_seq, announced, n) == (5, 7, 5)
    assert w.resume(0)[0].missing == [(6, 7)]
    w.close()


def test_two_writers_racing_on_the_same_frames_store_each_once(pg: PgSchema) -> None:
    """Redundant collectors: the same frames, in different batches and orders, at the same time."""
    writer(pg).close()  # tables first, so that both start writing together
    frames = [frame(f"pi-{d}", s) for d in range(20) for s in range(1, 151)]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run(seed: int) -> None:
        w = writer(pg)
        mine = frames[:]
        random.Random(seed).shuffle(mine)
        start.wait()
        try:
            for i in range(0, len(mine), 250):
                for attempt in range(5):  # what the runner does with a retryable error
                    try:
                        w.write(mine[i:i + 250])
                        break
                    except psycopg.Error as exc:
                        if pg_store.classify(exc, w.conn) != "transient" or attempt == 4:
                            raise
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            w.close()

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(stored(pg)) == len(set(stored(pg))) == 20 * 150
    assert pg.rows("SELECT sum(stored)::bigint FROM boots") == [(20 * 150,)]
    boots_consistent(pg)


def test_the_same_metric_twice_in_a_frame_keeps_the_first(pg: PgSchema) -> None:
    f, r = frame("pi-1", 1, n=1)
    pb = f.to_pb()
    pb.samples.add(metric="m0", value=99.0, unit="C")
    f = CheckedFrame.from_pb(pb)
    w = writer(pg)
    w.write([(f, r)])
    assert pg.rows("SELECT metric, value FROM readings") == [("m0", 1.0)]
    w.close()


def test_query_and_status_answer_as_sqlite_does(pg: PgSchema, tmp_path: Path) -> None:
    batches = [
        [frame("pi-1", 1), frame("pi-2", 1), heartbeat("pi-1", 3)],
        [frame("pi-1", 2), frame("pi-1", 4), frame("pi-2", 2, boot=9)],
        [frame("pi-1", 2)],
    ]
    events: list[Event] = [Presence("gh", "pi-1", "online", None, 10, 5), Lost("gh", "pi-1", BOOT, 3, 3),
              Counts("gh", "pi-1", 2, 1), Presence("gh", "pi-2", "stopped", "online", 20, 15)]
    db = tmp_path / "t.db"
    lite = SqliteWriter(db)
    lite.open()
    w = writer(pg)
    for target in (lite, w):
        for b in batches:
            target.write(b)
        for ev in events:
            target.event(ev)
    lite.close()
    w.close()
    for f in (QueryFilter(), QueryFilter(device="pi-1", metric="m0"),
              QueryFilter(since_ns=1_700_000_000_002_000_000, limit=4)):
        ours, theirs = storage.connect_reader(pg.dsn), storage.connect_reader(str(db))
        try:
            assert list(ours.query(f)) == list(theirs.query(f))
        finally:
            ours.close()
            theirs.close()
    ours, theirs = storage.connect_reader(pg.dsn), storage.connect_reader(str(db))
    mine, lites = ours.status(), theirs.status()
    ours.close()
    theirs.close()
    for row in lites:  # storage-level conflicts are not device duplicates in PostgreSQL
        row["duplicates"] -= 1 if row["device"] == "pi-1" else 0
    assert mine == lites


def test_a_reader_of_an_empty_schema_says_what_is_wrong(pg: PgSchema) -> None:
    with pytest.raises(StoreError, match="no sensorwire tables"):
        storage.connect_reader(pg.dsn)


def test_presence_and_lost_are_recorded_once_when_two_collectors_report_them(pg: PgSchema) -> None:
    a, b = writer(pg), writer(pg)
    for w in (a, b):
        w.event(Presence("gh", "pi-1", "online", None, 10, 5))
        w.event(Lost("gh", "pi-1", BOOT, 3, 4))
    assert pg.rows("SELECT state FROM presence") == [("online",)]
    assert pg.rows("SELECT lost FROM devices") == [(2,)]
    a.close()
    b.close()


# -- the outage backlog -----------------------------------------------------------------------
def test_backlog_holds_memory_then_spool_in_order_and_counts_what_overflows(tmp_path: Path) -> None:
    b = Backlog(buffer_max=10, spool_dir=tmp_path / "spool", spool_max_bytes=1 << 20)
    b.open()
    b.park([frame("pi-1", s) for s in range(1, 8)])
    b.park_event(Presence("gh", "pi-1", "offline", "online", 1, 1))
    b.park([frame("pi-1", s) for s in range(8, 16)])  # memory overflows: all of it to the spool
    b.park([frame("pi-1", 16)])
    assert b.spool_pending == 7 + 1 and b.frames_in_memory == 9
    b.close()  # memory goes to the spool: nothing lost at shutdown
    b = Backlog(buffer_max=10, spool_dir=tmp_path / "spool", spool_max_bytes=1 << 20)
    b.open()
    got: list[Any] = []
    while (piece := b.take(4)) is not None:
        if isinstance(piece, list):
            got.extend(f.seq for f, _ in piece)
        else:
            assert isinstance(piece, Presence)  # the only kind of event parked above
            got.append(piece.state)
    assert got == [1, 2, 3, 4, 5, 6, 7, "offline", *range(8, 17)]
    b.close()
    small = Backlog(buffer_max=5)
    small.open()
    small.park([frame("pi-1", s) for s in range(1, 9)])
    assert small.frames_in_memory == 5 and small.dropped == 3
    assert small.dropped_by_device["pi-1"] == 3
    small.close()


def test_sink_rides_out_a_lost_connection_and_writes_everything(pg: PgSchema, tmp_path: Path) -> None:
    sink = PostgresSink(storage_config(pg, tmp_path, buffer_max=50))
    sink.open()
    sink.write([frame("pi-1", s) for s in range(1, 11)])
    good_dsn = sink.writer.dsn
    # the server drops our connection, and for a while nothing answers where we connect
    sink.writer.dsn = "postgresql://postgres@127.0.0.1:1/none"
    pid = sink.writer.conn.info.backend_pid  # type: ignore[union-attr]
    pg.rows("SELECT pg_terminate_backend(%s)", pid)
    sink.write([frame("pi-1", s) for s in range(11, 41)])   # fails: held in memory
    sink.event(Presence("gh", "pi-1", "offline", "online", 10, 5))
    sink.write([frame("pi-1", s) for s in range(41, 101)])  # beyond buffer_max: to the spool
    sink.tick(0)
    assert not sink.connected and sink.backlog.spool_pending > 0
    assert len(stored(pg)) == 10
    sink.writer.dsn = good_dsn
    def backlog_written() -> bool:
        sink.tick(0)
        return not sink.backlog
    wait_until(backlog_written, timeout_s=20, what="backlog written")
    sink.write([frame("pi-1", s) for s in range(101, 111)])
    sink.close()
    assert [s for _, _, s in stored(pg)] == list(range(1, 111))
    assert sink.backlog.dropped == 0
    assert pg.rows("SELECT state FROM presence") == [("offline",)]
    boots_consistent(pg)


def test_a_sink_riding_out_an_outage_returns_from_every_call_so_is_never_stalled(
        pg: PgSchema, tmp_path: Path) -> None:
    sink = PostgresSink(storage_config(pg, tmp_path, buffer_max=50))
    runner = SinkRunner(sink, flush_interval_s=0.02)
    runner.start()
    stalls: list[str] = []

    def feed(first: int, last: int) -> None:
        for s in range(first, last + 1):
            runner.offer([frame("pi-1", s)])
            why = runner.stalled(time.monotonic(), limit_s=1.0)  # the default is 120 s
            if why is not None:
                stalls.append(why)
            time.sleep(0.01)  # frames at a pace, not a wait for anything

    try:
        feed(1, 10)
        wait_until(lambda: len(stored(pg)) == 10, what="the first frames stored")
        good_dsn = sink.writer.dsn
        sink.writer.dsn = "postgresql://postgres@127.0.0.1:1/none"  # nothing answers there
        pid = sink.writer.conn.info.backend_pid  # type: ignore[union-attr]
        pg.rows("SELECT pg_terminate_backend(%s)", pid)
        feed(11, 150)                        # 1.4 s of frames, held in memory then the spool
        wait_until(lambda: sink.backlog.spool_pending > 0, what="frames held in the spool")
        assert not sink.connected
        sink.writer.dsn = good_dsn
        wait_until(lambda: len(stored(pg)) == 150, timeout_s=20, what="everything written")
        assert stalls == [] and runner.dropped == 0
    finally:
        runner.close()


def test_sink_counts_what_exceeds_its_bounds(pg: PgSchema) -> None:
    sink = PostgresSink(storage_config(pg, buffer_max=20))  # no spool_dir
    sink.open()
    sink.writer.dsn = "postgresql://postgres@127.0.0.1:1/none"
    sink.writer.conn.close()  # type: ignore[union-attr]
    sink.write([frame("pi-1", s) for s in range(1, 51)])
    assert sink.backlog.frames_in_memory == 20 and sink.backlog.dropped == 30
    sink.close()
    assert sink.backlog.dropped == 50  # unreachable at shutdown, and nowhere to keep them


def test_a_collector_service_spools_in_its_state_directory_unless_told(
        pg: PgSchema, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No spool_dir: $STATE_DIRECTORY/pgspool when systemd started the collector as a service
    ($INVOCATION_ID set too), none when it was started by hand."""
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path / 'state'}:{tmp_path / 'other'}")
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    assert spool_folder(storage_config(pg)) is None  # by hand (the tests' conftest sets the dir)
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
    assert spool_folder(storage_config(pg)) == tmp_path / "state" / "pgspool"
    assert spool_folder(storage_config(pg, tmp_path)) == tmp_path / "pgspool"  # spool_dir wins
    sink = PostgresSink(storage_config(pg, buffer_max=20))
    sink.open()
    sink.writer.dsn = "postgresql://postgres@127.0.0.1:1/none"
    sink.writer.conn.close()  # type: ignore[union-attr]
    sink.write([frame("pi-1", s) for s in range(1, 51)])
    assert sink.backlog.spool_pending > 0  # past buffer_max: on disk, not dropped
    assert sink.backlog.frames_in_memory + sink.backlog.spool_pending == 50
    assert sink.backlog.dropped == 0
    sink.close()
    assert sink.backlog.dropped == 0  # all 50 kept on disk for the next start
    assert any((tmp_path / "state" / "pgspool").glob("seg-*"))


def test_a_refused_batch_is_a_permanent_error(pg: PgSchema) -> None:
    sink = PostgresSink(storage_config(pg))
    sink.open()
    with pytest.raises(SinkError) as err:
        sink.write([frame("pi-\x00", 1)])  # PostgreSQL text cannot hold NUL
    assert not err.value.retryable
    sink.close()


def test_start_fails_clearly_when_the_database_is_unreachable(pg: PgSchema) -> None:
    sink = PostgresSink(StorageConfig(kind="postgres", dsn="postgresql://u:pw@127.0.0.1:1/x"))
    with pytest.raises(StoreError, match=r"password=\*\*\*.*cannot connect"):
        sink.open()


def test_resume_reads_what_storage_knows(pg: PgSchema) -> None:
    sink = PostgresSink(storage_config(pg))
    sink.open()
    sink.write([frame("pi-1", s) for s in (1, 2, 5, 9)] + [heartbeat("pi-1", 10)])
    [boot] = sink.resume(time.time_ns() - 10**18)
    assert (boot.device, boot.boot_id, boot.max_seq, boot.missing) == ("pi-1", BOOT, 10,
                                                                       [(3, 4), (6, 8), (10, 10)])
    sink.close()


def test_a_second_collector_service_on_the_default_spool_goes_on_without_one(
        pg: PgSchema, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Two collectors with the same state folder: the second keeps no disk spool, and says so,
    instead of failing to start (a spool_dir the user chose is still an error)."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
    first, second = PostgresSink(storage_config(pg)), PostgresSink(storage_config(pg))
    first.open()
    try:
        second.open()
        assert second.backlog.spool_dir is None
        assert any("no disk spool" in r.getMessage() for r in caplog.records)
        second.close()
        chosen = PostgresSink(storage_config(pg, tmp_path / "state"))  # the same folder, chosen
        with pytest.raises(StoreError, match="spool"):
            chosen.open()
    finally:
        first.close()
