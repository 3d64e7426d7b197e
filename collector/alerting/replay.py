"""``sensorwire alerts test``: stored samples and presence replayed through the rules.

The frames stored since ``--since`` are fed to a fresh engine in the order
they were received, with the times they were received, exactly as the live
collector saw them; the presence transitions stored since then (the
``presence`` table: online, offline, stopped) are merged in at the times the
collector decided them, before the frames received at the same instant, as
the live collector hands them to its sinks; then time runs on to now, so
stale data is found.  What would have fired and resolved, and when, is
printed; nobody is notified and nothing is written.  The replay starts with
every alert ok, so an alert already firing at the start of the window appears
as firing at its first reading (a ``device_offline`` alert only if the device
goes offline again inside the window).

A presence row does not keep the device's last contact before it went
offline, which the live engine reports as the silence (``value``, "silent
for ..."): the replay takes the last stored frame of the device before the
transition, or the end of a boot that never spoke again (a restarted agent,
whose heartbeats count too: ``boots.last_seen_ns``).  Heartbeats are not
stored one by one, so when a device came back with the same boot and its
last contact was a heartbeat, the replayed silence is measured from its last
sample and is longer than the live one; the times of the transitions are
those stored.
"""

from __future__ import annotations

import heapq
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

from sensorwire.collector import sqlite_store
from sensorwire.collector.alerting import listing
from sensorwire.collector.alerting.engine import Engine
from sensorwire.collector.alerting.notification import Notification
from sensorwire.collector.alerting.rules import AlertRule
from sensorwire.collector.events import Presence, State
from sensorwire.collector.frames import CheckedFrame, Layouts


@dataclass(frozen=True)
class _Change:
    """A stored presence transition of the device with key ``key``."""

    key: int
    site: str
    device: str
    state: State
    previous: State | None


# (time, 0, n, change) sorts before (time, 1, n, (device key, frame)): at one instant the
# live collector hands a device's presence change to its sinks before the frame behind it;
# n keeps each stream's own order
_Timed = tuple[int, int, int, "_Change | tuple[int, CheckedFrame]"]


def replay(conn: sqlite3.Connection, rules: list[AlertRule], since_ns: int,
           until_ns: int) -> Iterator[Notification]:
    engine = Engine(rules)
    streams = [_frames(conn, since_ns)]
    if any(r.kind == "offline" for r in rules):
        streams.append(_presence(conn, since_ns))
    last_rx: dict[int, int] = {}  # device key -> when its last stored frame was received
    for t, _, _, item in heapq.merge(*streams):
        if isinstance(item, _Change):
            # online and stopped are decided on a frame received at that instant; offline
            # after a silence that began with the device's last contact
            seen = t if item.state != "offline" else \
                _last_contact(conn, item.key, t, last_rx.get(item.key, 0))
            yield from engine.presence(
                Presence(item.site, item.device, item.state, item.previous, t, seen))
        else:
            key, frame = item
            last_rx[key] = t
            yield from engine.observe(frame, t)
    yield from engine.tick(until_ns)


def _frames(conn: sqlite3.Connection, since_ns: int) -> Iterator[_Timed]:
    rows = conn.execute(
        "SELECT f.id, f.received_ns, f.time_ns, d.id, d.site, d.device, f.sensor, s.metric, s.unit, "
        "v.value FROM frames f JOIN devices d ON d.id = f.device_key "
        "JOIN samples v ON v.frame_id = f.id JOIN series s ON s.id = v.series_id "
        "WHERE f.time_ns >= ? ORDER BY f.received_ns, f.id, s.id", (since_ns,))
    layouts = Layouts()
    current: int | None = None
    head: tuple[str, str, str, int] = ("", "", "", 0)
    pairs: list[tuple[str, str]] = []
    values: list[float] = []
    received = key = n = 0
    for fid, rx, t, dkey, site, device, sensor, metric, unit, value in rows:
        if fid != current:
            if current is not None:
                n += 1
                yield received, 1, n, (key, _frame(head, pairs, values, layouts))
            current, received, key = fid, rx, dkey
            head, pairs, values = (site, device, sensor, t), [], []
        pairs.append((metric, unit))
        values.append(value)
    if current is not None:
        yield received, 1, n + 1, (key, _frame(head, pairs, values, layouts))


def _presence(conn: sqlite3.Connection, since_ns: int) -> Iterator[_Timed]:
    rows = conn.execute(
        "SELECT p.rowid, p.time_ns, d.id, d.site, d.device, p.state, p.previous "
        "FROM presence p JOIN devices d ON d.id = p.device_key "
        "WHERE p.time_ns >= ? ORDER BY p.time_ns, p.rowid", (since_ns,))
    for rowid, t, key, site, device, state, previous in rows:
        yield t, 0, rowid, _Change(key, site, device, state, previous)


def _last_contact(conn: sqlite3.Connection, key: int, at_ns: int, last_frame_ns: int) -> int:
    """The device's last contact before it went offline at ``at_ns``, as near as is stored."""
    (boot_end,) = conn.execute("SELECT max(last_seen_ns) FROM boots WHERE device_key = ? AND "
                               "last_seen_ns < ?", (key, at_ns)).fetchone()
    return max(last_frame_ns, boot_end or 0)


def _frame(head: tuple[str, str, str, int], pairs: list[tuple[str, str]], values: list[float],
           layouts: Layouts) -> CheckedFrame:
    site, device, sensor, t = head
    return CheckedFrame(site, device, 0, 1, t, sensor, 0, layouts.get(tuple(pairs)), values)


def run(rules: list[AlertRule], db: str, since_ns: int, fmt: str, out: TextIO = sys.stdout,
        now_ns: int | None = None) -> int:
    listing.check_since(since_ns)
    until = time.time_ns() if now_ns is None else now_ns
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
