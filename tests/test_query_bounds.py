"""``sensorwire query`` with arguments at the edges: times before or after what a 64-bit
nanosecond count holds, limits past any table, and outputs longer than memory."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import run_cli

from sensorwire.collector import query, storage
from sensorwire.collector.frames import CheckedFrame, Layout
from sensorwire.collector.sqlite_store import QueryFilter, SqliteWriter


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


@pytest.mark.parametrize("limit", ["abc", "1.5", "0", "-3"])
def test_a_limit_that_is_no_whole_number_above_zero_is_refused_in_words(limit: str) -> None:
    r = run_cli("query", "--db", "t.db", "--limit", limit)
    assert r.returncode == 2, r.stderr
    assert f"--limit: expected a whole number > 0, got {limit}" in r.stderr, r.stderr


def test_alerts_since_a_time_after_2262_lists_nothing(tmp_path: Path) -> None:
    """It was refused as a time "before 1678"."""
    db = database(tmp_path / "t.db")
    r = run_cli("alerts", "--db", str(db), "--since", "9999-12-31", "--format", "json")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stderr


class Counting:
    """A reader of ``n`` rows that notes how much had been written when the last was read."""

    def __init__(self, n: int, out: io.StringIO) -> None:
        self.n, self.out, self.written_before_last = n, out, -1

    def query(self, f: QueryFilter) -> Iterator[tuple[Any, ...]]:
        for i in range(self.n):
            if i == self.n - 1:
                self.written_before_last = len(self.out.getvalue())
            yield (i, "pi-1", "env", "t", float(i), "C", 1, i + 1)

    def close(self) -> None:
        pass


def test_a_table_is_written_as_its_rows_come(monkeypatch: pytest.MonkeyPatch) -> None:
    """A table of every row of a month took as many rows in memory (1.3 GB for 2 million):
    the widths come from the first rows, and the rest are written as they are read."""
    out = io.StringIO()
    reader = Counting(50_000, out)
    monkeypatch.setattr(storage, "connect_reader", lambda db: reader)
    assert query.run("t.db", QueryFilter(), "table", out) == 0
    assert reader.written_before_last > 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 + 50_000 and lines[0].split() == ["time", "device", "sensor", "metric",
                                                             "value", "unit"]
    assert len({len(line) for line in lines[2:]}) == 1  # aligned: the widest cells came first
