"""``sensorwire query``, ``status`` and ``alerts`` on real SQLite files: the file they read is the
one named, whatever its name; a file they cannot read is explained; and a reader that reads
slowly (a pager, a pipe nobody empties) neither holds the collector's WAL nor keeps it large."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from support import run_cli

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
