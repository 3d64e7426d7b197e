"""``sensorwire query``, ``status`` and ``alerts`` on real SQLite files: the file they read is the
one named, whatever its name; a file they cannot read is explained; and a reader that reads
slowly (a pager, a pipe nobody empties) neither holds the collector's WAL nor keeps it large."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import run_cli, wait_until

from sensorwire.collector.frames import CheckedFrame, Layout
from sensorwire.collector.sqlite_store import SqliteWriter

LAYOUT = Layout([(f"m{i}", "C") for i in range(8)])


def items(first: int, n: int, t0: int) -> list[tuple[CheckedFrame, int]]:
    return [(CheckedFrame("gh", "pi-1", 1, seq, t0 + seq, "env", 0, LAYOUT,
                          tuple(float(i) for i in range(8))), t0) for seq in range(first, first + n)]


def database(path: Path, frames: int = 3) -> Path:
    w = SqliteWriter(path)
    w.open()
    w.write(items(1, frames, time.time_ns()))
    w.close()
    return path


@pytest.mark.parametrize("name", ["a#1.db", "b?mode=rw.db", "c%41.db", "d é.db"])
def test_the_file_read_is_the_one_named_whatever_its_name(tmp_path: Path, name: str) -> None:
    """The read-only URI is built from the path: '#', '?' and '%' once opened another file,
    creating it (an empty 'a', say) beside the database."""
    db = database(tmp_path / name)
    for cmd in ("query", "status", "alerts"):
        r = run_cli(cmd, "--db", str(db), "--format", "json")
        assert r.returncode == 0 and "Traceback" not in r.stderr, (cmd, r.stderr)
    assert '"device": "pi-1"' in r.stdout or r.stdout == ""
    assert run_cli("status", "--db", str(db), "--format", "json").stdout.count('"frames": 3') == 1
    # nothing beside it but its own -wal and -shm
    assert {n for n in os.listdir(tmp_path) if not n.startswith(db.name)} == set()


def test_a_database_of_a_newer_schema_or_no_sensorwire_tables_is_refused(tmp_path: Path) -> None:
    db = database(tmp_path / "new.db")
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    for cmd in ("query", "status", "alerts"):
        r = run_cli(cmd, "--db", str(db))
        assert r.returncode == 1 and "schema version 2 is newer" in r.stderr, (cmd, r.stderr)
    empty = tmp_path / "empty.db"
    empty.touch()
    for cmd in ("query", "status", "alerts"):
        r = run_cli(cmd, "--db", str(empty))
        assert r.returncode == 1 and "not a sensorwire database" in r.stderr, (cmd, r.stderr)
        assert "Traceback" not in r.stderr


def test_the_wal_shrinks_back_once_a_long_reader_is_gone(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader that held the WAL let it grow; once it is gone, the WAL goes back to a bounded
    size at the next checkpoint instead of keeping its largest size for ever."""
    from sensorwire.collector import sqlite_store

    monkeypatch.setattr(sqlite_store, "WAL_SIZE_LIMIT", 1 << 20)
    db = tmp_path / "t.db"
    w = SqliteWriter(db)
    w.open()
    t0 = time.time_ns()
    w.write(items(1, 10, t0))
    reader = sqlite3.connect(db)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM frames").fetchone()  # a snapshot, held
    seq = 11
    while os.path.getsize(f"{db}-wal") < 16 << 20:
        w.write(items(seq, 2000, t0))
        seq += 2000
    reader.close()
    for _ in range(20):  # more than enough for a checkpoint and a restart of the WAL
        w.write(items(seq, 2000, t0))
        seq += 2000
        if os.path.getsize(f"{db}-wal") < 8 << 20:
            break
    assert os.path.getsize(f"{db}-wal") < 8 << 20
    w.close()


def test_a_query_into_a_pipe_nobody_reads_does_not_hold_the_wal(tmp_path: Path) -> None:
    """A query held up by its reader (``| less``) once kept its read transaction, and with it
    every frame written meanwhile in the WAL: the WAL grew as long as the pager stayed open."""
    db = tmp_path / "t.db"
    w = SqliteWriter(db)
    w.open()
    t0 = time.time_ns()
    w.write(items(1, 3000, t0))  # 24,000 rows: far more than a pipe holds
    p = subprocess.Popen([sys.executable, "-m", "sensorwire", "query", "--db", str(db),
                          "--format", "csv"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout is not None
        assert p.stdout.readline().startswith(b"time,")  # it reads; nobody reads what it writes
        w.write(items(3001, 10, t0))
        assert w.conn is not None
        conn = w.conn

        def checkpointed() -> bool:  # every frame of the WAL copied back: no reader holds it
            _busy, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            return bool(log == done)

        wait_until(checkpointed, timeout_s=5, what="a checkpoint that no reader holds back")
    finally:
        p.kill()
        p.wait()
        w.close()


def test_pages_of_a_query_end_anywhere_and_lose_or_repeat_no_row(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames of the same time, samples of one frame split across pages, a limit that ends
    inside a page: the rows are those of one statement read at once."""
    from sensorwire.collector import sqlite_store

    db = tmp_path / "t.db"
    w = SqliteWriter(db)
    w.open()
    t = time.time_ns()
    w.write([(CheckedFrame("gh", dev, 1, seq, t + seq // 4, "env", 0, LAYOUT,
                           tuple(float(seq * 10 + i) for i in range(8))), t)
             for seq in range(1, 40) for dev in ("pi-1", "pi-2")])
    w.close()
    conn = sqlite_store.connect(db, readonly=True)
    try:
        filters = [sqlite_store.QueryFilter(), sqlite_store.QueryFilter(limit=123),
                   sqlite_store.QueryFilter(device="pi-2", metric="m3", limit=7),
                   sqlite_store.QueryFilter(since_ns=t + 3, until_ns=t + 6)]
        whole = [list(sqlite_store.query(conn, f)) for f in filters]
        assert [len(rows) for rows in whole] == [624, 123, 7, 192]
        for page in (1, 3, 8, 10):
            monkeypatch.setattr(sqlite_store, "QUERY_PAGE", page)
            assert [list(sqlite_store.query(conn, f)) for f in filters] == whole, page
    finally:
        conn.close()


def test_a_lock_kept_past_the_timeout_is_said_plainly(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A database left in rollback-journal mode (by hand, or a tool) whose writer keeps its
    lock: the read waits, then says so, not "is it a sensorwire database?"."""
    from sensorwire.collector import sqlite_store, storage

    db = database(tmp_path / "t.db")
    monkeypatch.setattr(sqlite_store, "READ_TIMEOUT_S", 0.1)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("PRAGMA journal_mode=DELETE")
    reader = storage.SqliteReader(str(db))
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(sqlite_store.StoreError,
                           match="database is locked .another process kept it locked for more "
                                 "than 0.1 s"):
            list(reader.query(sqlite_store.QueryFilter()))
        with pytest.raises(sqlite_store.StoreError, match="locked for more than 0.1 s"):
            reader.status()
    finally:
        reader.close()
        holder.close()


def test_a_fifo_or_a_device_is_refused_at_once(tmp_path: Path) -> None:
    """A FIFO named by --db (or [storage] path) made the command wait for ever for a writer."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/null")):
        for cmd in ("query", "status", "alerts"):
            r = run_cli(cmd, "--db", str(path), timeout=20)
            assert r.returncode == 1 and "not a regular file" in r.stderr, (cmd, r.stderr)
