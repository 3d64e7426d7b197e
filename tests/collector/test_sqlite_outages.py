"""The SQLite sink while its database cannot be written for a while, on real files: another
process keeps a write transaction open on it, or the disk under it is full.  That is the store's
fault, not the batch's: the frames are kept (in the runner's bounded queue) and written once it
ends, not dropped after a few retries."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import small_tmpfs, wait_until

from sensorwire.collector import sinks
from sensorwire.collector.frames import CheckedFrame, Layout
from sensorwire.collector.sinks import SinkRunner
from sensorwire.collector.sinks.sqlite import SqliteSink
from sensorwire.logs import RateLimited

LAYOUT = Layout([(f"m{i}", "C") for i in range(8)])
T0 = 1_800_000_000_000_000_000


def frames(first: int, n: int) -> list[tuple[CheckedFrame, int]]:
    return [(CheckedFrame("gh", "pi-1", 7, seq, T0 + seq, "env", 0, LAYOUT,
                          tuple(float(seq + i) for i in range(8))), T0 + seq)
            for seq in range(first, first + n)]


def seqs(db: Path) -> list[int]:
    conn = sqlite3.connect(db)
    try:
        return [s for (s,) in conn.execute("SELECT seq FROM frames ORDER BY seq")]
    finally:
        conn.close()


@pytest.fixture(autouse=True)
def every_retry_said(monkeypatch: pytest.MonkeyPatch) -> None:
    """An outage's retries are logged once a minute; here every one, to count them."""
    monkeypatch.setattr(sinks, "_outage", RateLimited(sinks.log, period_s=0.0))


@contextlib.contextmanager
def running(sink: SqliteSink) -> Iterator[SinkRunner]:
    # no retries of an ordinary retryable error: a batch the runner gave up on is dropped at once
    runner = SinkRunner(sink, flush_interval_s=0.01, retries=0)
    runner.start()
    try:
        yield runner
    finally:
        runner.close()


def test_a_write_lock_kept_by_another_process_delays_frames_and_loses_none(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A ``sqlite3`` shell left in ``BEGIN IMMEDIATE`` (or a VACUUM) once cost the batch at the
    head of the queue: dropped after its retries (about a minute with the 10 s lock timeout),
    and never asked for again while the collector ran."""
    db = tmp_path / "t.db"
    sink = SqliteSink(str(db))
    with running(sink) as runner:
        runner.offer(frames(1, 10))
        wait_until(lambda: runner.written == 10, what="the first frames written")
        assert sink.writer.conn is not None
        sink.writer.conn.execute("PRAGMA busy_timeout = 20")  # (10 s otherwise, each attempt)
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], "
             "isolation_level=None); c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); "
             "sys.stdin.read()", str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
            runner.offer(frames(11, 100))
            said = "database is locked (another process keeps a write transaction open on it"
            wait_until(lambda: runner.dropped or caplog.text.count(said) >= 3,
                       what="three attempts that met the lock")
            assert runner.dropped == 0
        finally:
            assert holder.stdin is not None
            holder.stdin.close()
            holder.wait(10)
        wait_until(lambda: runner.written == 110, what="the frames written once the lock is gone")
        assert "sink sqlite: writing again, after" in caplog.text
    assert seqs(db) == list(range(1, 111))
    assert runner.dropped == 0


def test_a_full_disk_delays_frames_and_loses_none(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A full disk once cost a batch every 3 s or so (dropped after its retries), for as long
    as it lasted."""
    with small_tmpfs(tmp_path / "fs", 2 << 20) as fs:
        db = fs / "t.db"
        sink = SqliteSink(str(db))
        with running(sink) as runner:
            runner.offer(frames(1, 10))
            wait_until(lambda: runner.written == 10, what="the first frames written")
            filler = fs / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
            try:  # every byte left
                while True:
                    os.write(fd, b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
            finally:
                os.close(fd)
            runner.offer(frames(11, 2000))
            said = f"database or disk is full (the disk under {fs} is full: make room"
            wait_until(lambda: runner.dropped or caplog.text.count(said) >= 3,
                       what="three attempts that met the full disk")
            assert runner.dropped == 0
            os.unlink(filler)
            wait_until(lambda: runner.written == 2010, what="the frames written once there is room")
        assert seqs(db) == list(range(1, 2011))
        assert runner.dropped == 0
