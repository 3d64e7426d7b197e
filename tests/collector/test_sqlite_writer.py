"""The SQLite writer on real files: frames numbered by the writer, and what happens when that fails.

A batch's frames go in as statements of many rows, with ids the writer numbers;
a frame stored before, or an id another writer took, makes the batch go in
frame by frame instead.  Either way every new frame is stored once with all
its samples, and every repeat is counted as a duplicate.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import run_cli, small_tmpfs, status_by_device, tcp, write

from sensorwire.collector import sqlite_store
from sensorwire.collector.alerting.notification import Notification
from sensorwire.collector.alerting.store import AlertStore
from sensorwire.collector.events import Counts, Lost, Presence
from sensorwire.collector.frames import CheckedFrame, Layout
from sensorwire.collector.sqlite_store import SqliteWriter, StoreError, status

LAYOUT = Layout([("t", "C"), ("h", "%"), ("t", "C")])  # "t" twice: the first value counts
T0 = 1_800_000_000_000_000_000


def frame(device: str, seq: int) -> tuple[CheckedFrame, int]:
    return CheckedFrame("gh", device, 7, seq, T0 + seq, "env", 0, LAYOUT,
                        (float(seq), seq + 0.5, -1.0)), T0 + seq + 1


def fetch(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """The rows of one query, on a connection of its own."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def rows(db: Path) -> list[tuple[str, int, str, float]]:
    return fetch(db, "SELECT device, seq, metric, value FROM readings ORDER BY device, seq, metric")


def expected(device: str, seqs: range) -> list[tuple[str, int, str, float]]:
    return [r for s in seqs for r in sorted([(device, s, "h", s + 0.5), (device, s, "t", float(s))],
                                            key=lambda r: r[2])]


def test_new_frames_in_one_go_repeats_counted_and_skipped(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    w = SqliteWriter(db)
    w.open()
    w.write([frame("pi-1", s) for s in range(1, 6)])
    w.write([frame("pi-1", s) for s in range(4, 9)])  # 4 and 5 again
    w.close()
    assert rows(db) == expected("pi-1", range(1, 9))
    assert (w.frames_stored, w.duplicates, w.samples_stored) == (8, 2, 16)
    [dev] = status(sqlite3.connect(db))
    assert (dev["frames"], dev["gaps"], dev["duplicates"], dev["last_seen_ns"]) == (8, 0, 2, T0 + 9)


def test_an_id_taken_by_another_writer_sends_the_batch_in_frame_by_frame(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    w = SqliteWriter(db)
    w.open()
    w.write([frame("pi-1", 1)])
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("INSERT INTO frames(device_key, boot_id, seq, sensor, time_ns, received_ns) "
                  "VALUES (1, 99, 1, 'x', 0, 0)")  # takes the id this writer would give next
    other.close()
    w.write([frame("pi-1", s) for s in range(2, 5)])
    w.write([frame("pi-1", s) for s in range(5, 7)])  # numbered again from the table's maximum
    w.close()
    assert rows(db) == expected("pi-1", range(1, 7))
    assert (w.frames_stored, w.duplicates) == (6, 0)


def test_last_seen_of_a_device_is_written_at_close_when_it_was_held_back(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    w = SqliteWriter(db)
    w.open()
    w.write([frame("pi-1", 1)])
    w.write([frame("pi-1", 2)])  # 1 ns later: devices.last_seen_ns is not written yet
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT last_seen_ns FROM devices").fetchone() == (T0 + 2,)
    assert status(conn)[0]["last_seen_ns"] == T0 + 3  # from boots, exact
    conn.close()
    w.close()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT last_seen_ns FROM devices").fetchone() == (T0 + 3,)
    conn.close()


def test_last_seen_held_back_is_bounded_for_devices_that_come_and_go(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each device sends twice and is never heard from again (new ids all the time, or made-up
    ones): the held-back last_seen of each waited for a close that may be a year away."""
    monkeypatch.setattr(sqlite_store, "_CACHE_MAX", 50)
    db = tmp_path / "t.db"
    w = SqliteWriter(db)
    w.open()
    for n in range(200):
        w.write([frame(f"pi-{n}", 1)])
        w.write([frame(f"pi-{n}", 2)])  # 1 ns later: devices.last_seen_ns held back
        assert len(w._seen_pending) <= 50
    # a device's last_seen is either written (the held-back ones when there were too many) or
    # still held: none lost
    assert fetch(db, f"SELECT count(*) FROM devices WHERE last_seen_ns = {T0 + 3}") == [
        (200 - len(w._seen_pending),)]
    w.close()
    assert fetch(db, f"SELECT count(*) FROM devices WHERE last_seen_ns = {T0 + 3}") == [(200,)]


def test_batches_of_every_size_go_in_whole(tmp_path: Path) -> None:
    """Statements of many rows: whole ones, then one of each smaller power of two."""
    db = tmp_path / "t.db"
    w = SqliteWriter(db)
    w.open()
    first = 1
    for n in (1, 63, 64, 65, 200, 0, 7):
        w.write([frame(f"pi-{n}", s) for s in range(first, first + n)])
        first += n
    w.close()
    assert fetch(db, "SELECT count(*), count(DISTINCT seq) FROM frames") == [(first - 1, first - 1)]
    assert fetch(db, "SELECT count(*) FROM samples") == [(2 * (first - 1),)]
    # every value went to its own frame and series
    assert fetch(db, "SELECT count(*) FROM readings WHERE (metric = 't' AND value != seq) "
                     "OR (metric = 'h' AND value != seq + 0.5)") == [(0,)]
    assert (w.frames_stored, w.samples_stored, w.duplicates) == (first - 1, 2 * (first - 1), 0)


def test_a_frame_with_more_samples_than_a_statement_takes_is_stored_row_by_row(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    w = SqliteWriter(db, max_params=15)  # a frame of 8 samples needs 17
    w.open()
    wide = Layout([(f"m{i}", "") for i in range(8)])
    batch = [(CheckedFrame("gh", "pi-1", 7, s, T0 + s, "wide", 0, wide,
                           tuple(float(s * 10 + i) for i in range(8))),
              T0 + s) for s in (1, 2, 3)]
    w.write(batch + [frame("pi-1", 4)])
    w.close()
    got = fetch(db, "SELECT seq, metric, value FROM readings WHERE sensor = 'wide' ORDER BY seq, metric")
    assert got == [(s, f"m{i}", float(s * 10 + i)) for s in (1, 2, 3) for i in range(8)]
    assert rows(db)[-2:] == expected("pi-1", range(4, 5))


def test_events_are_written_with_the_next_batch_or_by_flush_or_close(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    w = SqliteWriter(db)
    w.open()

    def presence() -> list[tuple[Any, ...]]:
        return fetch(db, "SELECT d.device, p.state FROM presence p JOIN devices d ON d.id = p.device_key "
                         "ORDER BY p.rowid")

    w.event(Presence("gh", "pi-1", "online", None, T0, 0))
    assert presence() == []  # kept for the next transaction
    w.write([frame("pi-1", 1)])
    assert presence() == [("pi-1", "online")]
    w.event(Presence("gh", "pi-2", "online", None, T0, 0))
    w.flush()
    assert presence() == [("pi-1", "online"), ("pi-2", "online")]
    w.event(Lost("gh", "pi-1", 7, 5, 9))  # seqs 5 to 9: 5 frames
    w.event(Presence("gh", "pi-1", "offline", "online", T0 + 5, 0))
    w.close()
    assert presence()[-1] == ("pi-1", "offline")
    [d1, d2] = status(sqlite3.connect(db))
    assert (d1["device"], d1["lost"], d1["state"], d2["state"]) == ("pi-1", 5, "offline", "online")


def test_status_of_boots_at_the_top_of_the_seq_range(tmp_path: Path) -> None:
    """Two boots with seq 2^63 - 1: an integer sum of their gaps overflowed ("integer
    overflow") and `sensorwire status` failed for the whole file."""
    top = (1 << 63) - 1
    layout = Layout([("t", "C")])
    w = SqliteWriter(tmp_path / "t.db")
    w.open()
    w.write([(CheckedFrame("gh", "pi-1", boot, top, 1, "env", 0, layout, (1.0,)), 2)
             for boot in (7, 8)])
    w.close()
    conn = sqlite3.connect(tmp_path / "t.db")
    try:
        [row] = status(conn)
    finally:
        conn.close()
    assert row["frames"] == 2 and row["gaps"] == 2 * (top - 1)


def test_one_collector_a_file(tmp_path: Path) -> None:
    """A second writer would count the first one's frames as its duplicates and every loss
    twice; it is refused, saying what to do, and the file is free again once the first is
    closed."""
    db = tmp_path / "t.db"
    first = SqliteWriter(db)
    first.open()
    second = SqliteWriter(db)
    with pytest.raises(StoreError, match=r"another collector is writing this database .*"
                                         r"give each collector a file of its own"):
        second.open()
    assert second.conn is None
    first.close()
    second.open()
    second.close()


def test_a_second_collector_process_on_the_file_stops_at_start(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    cfg = write(tmp_path / "c.toml", f'[subscribe]\nconnect = ["{tcp()}"]\n[storage]\npath = "{db}"\n'
                '[metrics]\nlisten = ""\n')
    holder = SqliteWriter(db)  # stands for the first collector
    holder.open()
    try:
        r = run_cli("collector", "-c", str(cfg), timeout=30)
    finally:
        holder.close()
    assert r.returncode == 1, r.stderr
    assert "another collector is writing this database" in r.stderr


def collector_on(tmp_path: Path, db: Path, unprivileged: bool = False) -> subprocess.CompletedProcess[str]:
    """A real collector process on ``db`` that must stop at start: with nothing to subscribe
    to, one that starts runs until the timeout."""
    cfg = write(tmp_path / "c.toml", f'[subscribe]\nconnect = ["{tcp()}"]\n[storage]\npath = "{db}"\n'
                '[metrics]\nlisten = ""\n')
    prefix: list[str] = []
    if unprivileged and os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv (util-linux): root writes any file")
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]
    try:
        return subprocess.run([*prefix, sys.executable, "-m", "sensorwire", "collector", "-c", str(cfg)],
                              capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the collector started on {db}") from None


def test_a_database_of_another_application_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    """The collector once added its tables (and WAL mode) to any SQLite file it was given, a
    user's own database too; one whose meta table had other columns got "no such column: value
    (can this user create and write it, and its folder?)"."""
    other = tmp_path / "crm.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("CREATE TABLE meta (k TEXT, v TEXT)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    r = collector_on(tmp_path, other)
    assert r.returncode == 1, r.stderr
    assert (f"{other}: not a sensorwire database (it has tables customers, meta but no "
            "meta.schema_version): another application's? name a new file") in r.stderr
    assert other.read_bytes() == before
    assert not (tmp_path / "crm.db-wal").exists()


def test_a_database_of_an_older_sensorwire_gets_its_missing_columns(tmp_path: Path) -> None:
    """A file written before devices had its clock columns: every batch failed ("no such column:
    clock_offset_s") and was dropped, for as long as the collector ran, and ``status`` failed."""
    db = tmp_path / "old.db"
    w = SqliteWriter(db)
    w.open()
    w.write([frame("pi-1", 1)])
    w.close()
    conn = sqlite3.connect(db)
    conn.execute("DROP VIEW readings")  # (3.35's DROP COLUMN refuses a column a view names)
    conn.execute("ALTER TABLE devices DROP COLUMN clock_offset_s")
    conn.execute("ALTER TABLE devices DROP COLUMN clock_synced")
    conn.commit()
    conn.close()
    r = run_cli("status", "--db", str(db))
    assert r.returncode == 1 and "start the collector on it once" in r.stderr, r.stderr
    w = SqliteWriter(db)
    w.open()
    w.write([frame("pi-1", 2), frame("pi-2", 1)])
    w.close()
    assert fetch(db, "SELECT device, seq FROM frames JOIN devices d ON d.id = device_key "
                     "ORDER BY device, seq") == [("pi-1", 1), ("pi-1", 2), ("pi-2", 1)]
    assert {row["device"]: row["frames"] for row in status_by_device(db).values()} == {
        "pi-1": 2, "pi-2": 1}


def test_a_read_only_database_is_refused_at_start(tmp_path: Path) -> None:
    """A read-only file opened (SQLite opens it read-only without a word), and then every batch
    failed and was dropped, for as long as the collector ran."""
    db = tmp_path / "t.db"
    w = SqliteWriter(db)
    w.open()
    w.write([frame("pi-1", 1)])
    w.close()
    db.chmod(0o444)
    r = collector_on(tmp_path, db, unprivileged=True)
    assert r.returncode == 1, r.stderr
    assert f"[storage] path: {db}: attempt to write a readonly database (can this user" in r.stderr


def test_a_database_deleted_while_written_is_saved_beside_it_with_what_came_since(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``rm telemetry.db`` while the collector ran: it went on writing the deleted file, every
    batch "written", and all of it was gone once the collector stopped."""
    db = tmp_path / "t.db"
    w = SqliteWriter(db)
    w.open()
    w.write([frame("pi-1", 1)])
    db.unlink()
    w.write([frame("pi-1", 2)])
    w.event(Lost("gh", "pi-1", 7, 3, 5))
    w.flush()
    w.close()
    (saved,) = (p for p in tmp_path.glob("t.db.saved-*") if not p.name.endswith(("-wal", "-shm")))
    assert w.path == saved and not db.exists()
    assert fetch(saved, "SELECT seq FROM frames ORDER BY seq") == [(1,), (2,)]
    assert status_by_device(saved)["pi-1"]["lost"] == 3
    assert (f"{db}: the database file was deleted while the collector was writing it; the "
            f"collector's database is saved as {saved} and written there until it restarts: to "
            f"go on with it, stop the collector, move it to {db} and start it again") in caplog.text


def test_alerting_says_once_that_its_records_go_to_the_deleted_file(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Alerting has a connection of its own to the same file: it does not follow the writer to
    the new file, and says so (it went on writing the deleted file without a word)."""
    db = tmp_path / "t.db"
    w = SqliteWriter(db)
    w.open()
    store = AlertStore(db)
    store.open()
    note = Notification(rule="hot", severity="warning", state="firing", site="gh", device="pi-1",
                        sensor="env", metric="t", value=31.0, threshold=30.0, started_ns=1,
                        resolved_ns=None, summary="hot", time_ns=1)
    w.write([frame("pi-1", 1)])
    store.record([note])
    assert "alerting's state and history go on to the old file" not in caplog.text
    db.unlink()
    w.write([frame("pi-1", 2)])  # the writer goes on in a new file beside the path
    store.record([note])
    store.record([note])
    (saved,) = (p for p in tmp_path.glob("t.db.saved-*") if not p.name.endswith(("-wal", "-shm")))
    assert fetch(saved, "PRAGMA integrity_check") == [("ok",)]
    assert fetch(saved, "SELECT seq FROM frames ORDER BY seq") == [(1,), (2,)]
    assert caplog.text.count(f"{db}: the database file was deleted or replaced while the collector "
                             "was writing it; alerting's state and history go on to the old file "
                             "until the collector restarts: restart it") == 1
    store.close()
    w.close()


def test_a_database_replaced_while_written_is_left_alone_and_ours_saved_beside_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "t.db"
    w = SqliteWriter(db)
    w.open()
    w.write([frame("pi-1", 1)])
    db.rename(tmp_path / "moved.db")  # (its -wal and -shm stay: still named after t.db)
    theirs = tmp_path / "theirs.db"
    conn = sqlite3.connect(theirs)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.commit()
    conn.close()
    theirs.rename(db)
    w.write([frame("pi-1", 2)])
    w.close()
    saved = list(tmp_path.glob("t.db.saved-*"))
    assert [p.name for p in saved] == [w.path.name]
    assert fetch(saved[0], "SELECT seq FROM frames ORDER BY seq") == [(1,), (2,)]
    assert fetch(db, "SELECT name FROM sqlite_master") == [("notes",)]  # read through no WAL of ours
    assert fetch(db, "PRAGMA integrity_check") == [("ok",)]
    assert (f"{db}: the database file was replaced by another file while the collector was "
            "writing it; that one is left as it is") in caplog.text


def test_a_full_disk_at_start_is_named(tmp_path: Path) -> None:
    """SQLite cannot make the -shm of a WAL database on a full disk: "disk I/O error", and the
    collector asked whether this user may write the file."""
    with small_tmpfs(tmp_path / "fs", 1 << 20) as fs:
        db = fs / "t.db"
        w = SqliteWriter(db)
        w.open()
        w.write([frame("pi-1", 1)])
        w.close()
        fd = os.open(fs / "filler", os.O_WRONLY | os.O_CREAT)
        try:  # every byte left
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        r = collector_on(tmp_path, db)
    assert r.returncode == 1, r.stderr
    assert f"{db}: disk I/O error (is the disk under it full, or failing?" in r.stderr


def test_events_kept_while_the_file_cannot_be_written_are_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The sink retries a locked or full file for as long as that lasts; the events waiting for
    the next transaction grew with it, without a bound."""
    monkeypatch.setattr(sqlite_store, "EVENTS_MAX", 40)
    db = tmp_path / "t.db"
    w = SqliteWriter(db)
    w.open()
    w.write([frame("pi-1", 1), frame("pi-2", 1)])
    t = 1_700_000_000 * 10**9
    for i in range(200):  # nothing written meanwhile: as while the file cannot be
        w.event(Lost("gh", "pi-1", 7, 10 * i + 1, 10 * i + 2))
        w.event(Counts("gh", "pi-2", 1, 2))
        w.event(Presence("gh", f"pi-{i % 2 + 1}", "offline" if i % 2 == 0 else "online", None,
                         t + i, t + i))
        assert len(w._events) <= 2 * sqlite_store.EVENTS_MAX
    w.flush()
    w.close()
    assert w.presence_dropped > 0
    assert "presence changes not written (the file cannot be written now" in caplog.text
    by_device = status_by_device(db)
    assert by_device["pi-1"]["lost"] == 400  # every count, merged
    assert by_device["pi-2"]["duplicates"] == 200 and by_device["pi-2"]["out_of_order"] == 400
    # each device's last state kept: pi-1's last change (i = 198) offline, pi-2's (199) online
    assert fetch(db, "SELECT device, state FROM devices ORDER BY device") == [
        ("pi-1", "offline"), ("pi-2", "online")]
    rows = fetch(db, "SELECT count(*) FROM presence")[0][0]
    assert rows + w.presence_dropped == 200
