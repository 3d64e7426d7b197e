"""``sensorwire alerts test``: stored samples replayed through the rules.

The frames stored since ``--since`` are fed to a fresh engine in the order
they were received, with the times they were received, exactly as the live
collector saw them; then time runs on to now, so stale data is found.  What
would have fired and resolved, and when, is printed; nobody is notified and
nothing is written.  The replay starts with every alert ok, so an alert
already firing at the start of the window appears as firing at its first
reading.  ``device_offline`` rules need presence, which is not stored: they
are not replayed.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Iterator
from typing import TextIO

from sensorwire.collector import sqlite_store
from sensorwire.collector.alerting import listing
from sensorwire.collector.alerting.engine import Engine
from sensorwire.collector.alerting.notification import Notification
from sensorwire.collector.alerting.rules import AlertRule
from sensorwire.collector.frames import CheckedFrame, Layouts


def replay(conn: sqlite3.Connection, rules: list[AlertRule], since_ns: int,
           until_ns: int) -> Iterator[Notification]:
    engine = Engine([r for r in rules if r.kind != "offline"])
    rows = conn.execute(
        "SELECT f.id, f.received_ns, f.time_ns, d.site, d.device, f.sensor, s.metric, s.unit, v.value "
        "FROM frames f JOIN devices d ON d.id = f.device_key "
        "JOIN samples v ON v.frame_id = f.id JOIN series s ON s.id = v.series_id "
        "WHERE f.time_ns >= ? ORDER BY f.received_ns, f.id, s.id", (since_ns,))
    layouts = Layouts()
    current: int | None = None
    head: tuple[str, str, str, int] = ("", "", "", 0)
    pairs: list[tuple[str, str]] = []
    values: list[float] = []
    received = 0
    for fid, rx, t, site, device, sensor, metric, unit, value in rows:
        if fid != current:
            if current is not None:
                yield from engine.observe(_frame(head, pairs, values, layouts), received)
            current, received = fid, rx
            head, pairs, values = (site, device, sensor, t), [], []
        pairs.append((metric, unit))
        values.append(value)
    if current is not None:
        yield from engine.observe(_frame(head, pairs, values, layouts), received)
    yield from engine.tick(until_ns)


def _frame(head: tuple[str, str, str, int], pairs: list[tuple[str, str]], values: list[float],
           layouts: Layouts) -> CheckedFrame:
    site, device, sensor, t = head
    return CheckedFrame(site, device, 0, 1, t, sensor, 0, layouts.get(tuple(pairs)), values)


def run(rules: list[AlertRule], db: str, since_ns: int, fmt: str, out: TextIO = sys.stdout,
        err: TextIO = sys.stderr, now_ns: int | None = None) -> int:
    until = time.time_ns() if now_ns is None else now_ns
    skipped = [r.name for r in rules if r.kind == "offline"]
    if skipped:
        err.write(f"not replayed (device_offline rules need presence, which is not stored): "
                  f"{', '.join(skipped)}\n")
    conn = sqlite_store.connect(db, readonly=True)
    try:
        notes = list(replay(conn, rules, since_ns, until))
    finally:
        conn.close()
    listing.write(notes, fmt, out)
    if fmt != "json":
        firing = sum(n.state == "firing" for n in notes)
        last = {(n.rule, n.site, n.device, n.sensor, n.metric): n.state for n in notes}
        still = sum(state == "firing" for state in last.values())
        out.write(f"{len(notes)} notifications would have been sent: {firing} firing, "
                  f"{len(notes) - firing} resolved; {still} still firing at the end\n")
    return 0
