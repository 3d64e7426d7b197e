"""The SQLite writer on real files: frames numbered by the writer, and what happens when that fails.

A batch's frames go in with one ``executemany`` and ids the writer numbers;
a frame stored before, or an id another writer took, makes the batch go in
frame by frame instead.  Either way every new frame is stored once with all
its samples, and every repeat is counted as a duplicate.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sensorwire.collector.frames import CheckedFrame, Layout
from sensorwire.collector.sqlite_store import SqliteWriter, status

LAYOUT = Layout([("t", "C"), ("h", "%"), ("t", "C")])  # "t" twice: the first value counts
T0 = 1_800_000_000_000_000_000


def frame(device: str, seq: int) -> tuple[CheckedFrame, int]:
    return CheckedFrame("gh", device, 7, seq, T0 + seq, "env", 0, LAYOUT,
                        (float(seq), seq + 0.5, -1.0)), T0 + seq + 1


def rows(db: Path) -> list[tuple[str, int, str, float]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT device, seq, metric, value FROM readings "
                            "ORDER BY device, seq, metric").fetchall()
    finally:
        conn.close()


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
