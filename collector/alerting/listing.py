"""``sensorwire alerts``: stored alerts, as a table or JSON lines.

Without ``--active``: the history, every notification sent (firing and
resolved), oldest first.  With ``--active``: the alerts firing now.  JSON is
one object per line with exactly the notification's fields.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TextIO

from sensorwire import render
from sensorwire.collector import sqlite_store
from sensorwire.collector.alerting import store
from sensorwire.collector.alerting.notification import Notification
from sensorwire.configload import ConfigError
from sensorwire.timefmt import iso_from_ns

HEADERS = ["time", "state", "severity", "rule", "where", "value", "threshold", "summary"]


INT64_MIN = -(2**63)


def check_since(since_ns: int | None) -> None:
    """Refuse a ``--since`` further back than a stored time can be (SQLite's 64-bit
    integers: before 1678), which SQLite would refuse with an OverflowError."""
    if since_ns is not None and not INT64_MIN <= since_ns < 2**63:
        raise ConfigError("--since: that is before 1678, further back than any stored time; "
                          "give a shorter duration (3650d) or a date (2020-01-01)")


def run(db: str, active: bool, since_ns: int | None, fmt: str, out: TextIO = sys.stdout) -> int:
    check_since(since_ns)
    conn = sqlite_store.connect(db, readonly=True)
    try:
        notes = store.active(conn, since_ns) if active else store.history(conn, since_ns)
        write(notes, fmt, out)
    finally:
        conn.close()
    return 0


def write(notes: Iterable[Notification], fmt: str, out: TextIO) -> None:
    if fmt == "json":
        for n in notes:
            out.write(render.json_line(n.to_dict()) + "\n")
    else:
        for line in render.table_lines(HEADERS, (row(n) for n in notes)):
            out.write(line + "\n")
    out.flush()


def row(n: Notification) -> list[str]:
    where = n.topic_name() + (f" {n.metric}" if n.metric else "")
    return [iso_from_ns(n.time_ns), n.state, n.severity, n.rule, where, _g(n.value),
            _g(n.threshold), n.summary]


def _g(v: float | None) -> str:
    return "" if v is None else f"{v:.6g}"
