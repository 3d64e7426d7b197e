"""``sensorwire query`` with arguments at the edges: times before or after what a 64-bit
nanosecond count holds, limits past any table."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support import run_cli

from sensorwire.collector.frames import CheckedFrame, Layout
from sensorwire.collector.sqlite_store import SqliteWriter


def database(path: Path) -> Path:
    w = SqliteWriter(path)
    w.open()
    now = time.time_ns()
    w.write([(CheckedFrame("gh", "pi-1", 1, seq, now + seq, "env", 0, Layout([("t", "C")]),
                           (float(seq),)), now) for seq in (1, 2)])
    w.close()
    return path


@pytest.mark.parametrize("args", [
    ("--since", "1500-01-01"), ("--since", "99999999999d"), ("--until", "9999-12-31"),
    ("--limit", "99999999999999999999"),
])
def test_times_and_limits_past_64_bits_mean_no_bound(tmp_path: Path, args: tuple[str, str]) -> None:
    db = database(tmp_path / "t.db")
    r = run_cli("query", "--db", str(db), "--format", "csv", *args)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stdout.splitlines()) == 3, r.stdout  # the header and both rows
