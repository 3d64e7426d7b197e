"""Alert state and history in SQLite, in the collector's database file.

Two tables of their own, created when missing (``docs/alerting.md``
documents them)::

    alert_instances(rule, site, device, sensor, metric, severity, value, threshold,
                    started_ns, notified_ns, summary,
                    PRIMARY KEY(rule, site, device, sensor, metric))
    alert_history  (id, time_ns, rule, severity, state, site, device, sensor, metric,
                    value, threshold, started_ns, resolved_ns, summary)

``alert_instances`` holds the alerts firing now (``sensor``/``metric`` are ``''``
when the alert has none), so a restarted collector carries them over instead
of firing them again; ``alert_history`` holds every notification sent, firing
and resolved, in order (``sensor``/``metric`` NULL when none).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from sensorwire.collector import sqlite_store
from sensorwire.collector.alerting.engine import ActiveAlert
from sensorwire.collector.alerting.notification import Notification

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_instances (
    rule TEXT NOT NULL,
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    sensor TEXT NOT NULL DEFAULT '',
    metric TEXT NOT NULL DEFAULT '',
    severity TEXT NOT NULL,
    value REAL,
    threshold REAL,
    started_ns INTEGER NOT NULL,
    notified_ns INTEGER NOT NULL,
    summary TEXT NOT NULL,
    PRIMARY KEY (rule, site, device, sensor, metric)
);
CREATE TABLE IF NOT EXISTS alert_history (
    id INTEGER PRIMARY KEY,
    time_ns INTEGER NOT NULL,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('firing', 'resolved')),
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    sensor TEXT,
    metric TEXT,
    value REAL,
    threshold REAL,
    started_ns INTEGER NOT NULL,
    resolved_ns INTEGER,
    summary TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_history_time ON alert_history (time_ns);
"""

_COLUMNS = ("rule, severity, state, site, device, sensor, metric, value, threshold, "
            "started_ns, resolved_ns, summary")
_INSERT_HISTORY = f"INSERT INTO alert_history(time_ns, {_COLUMNS}) VALUES ({', '.join('?' * 13)})"
_UPSERT_FIRING = (
    "INSERT INTO alert_instances(rule, site, device, sensor, metric, severity, value, threshold, "
    "started_ns, notified_ns, summary) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT DO UPDATE SET severity=excluded.severity, value=excluded.value, "
    "threshold=excluded.threshold, started_ns=excluded.started_ns, "
    "notified_ns=excluded.notified_ns, summary=excluded.summary"
)
_DELETE = ("DELETE FROM alert_instances "
           "WHERE rule=? AND site=? AND device=? AND sensor=? AND metric=?")


class AlertStore:
    """Writes alert transitions; one thread only (the alerting sink's)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.conn: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened
        self._moved_told = False

    def open(self) -> None:
        if not self.path.parent.exists():
            raise sqlite_store.StoreError(f"{self.path}: the folder {self.path.parent} does not exist")
        conn = sqlite3.connect(str(self.path), timeout=10.0, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
            self._file = sqlite_store.file_identity(self.path)
        except (sqlite3.Error, OSError):
            conn.close()
            raise
        self.conn = conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def active(self) -> list[ActiveAlert]:
        assert self.conn is not None
        return [
            ActiveAlert(rule, site, device, sensor or None, metric or None, started, notified,
                        value, threshold)
            for rule, site, device, sensor, metric, started, notified, value, threshold
            in self.conn.execute(
                "SELECT rule, site, device, sensor, metric, started_ns, notified_ns, value, "
                "threshold FROM alert_instances ORDER BY started_ns")
        ]

    def forget(self, alerts: Sequence[ActiveAlert]) -> None:
        """Delete firing alerts (of rules no longer configured)."""
        assert self.conn is not None
        self.conn.executemany(
            _DELETE, [(a.rule, a.site, a.device, a.sensor or "", a.metric or "") for a in alerts])

    def record(self, notes: Sequence[Notification]) -> None:
        """Store notifications in one transaction: history, and what fires now."""
        conn = self.conn
        assert conn is not None
        self._check_file()
        cur = conn.cursor()
        cur.execute("BEGIN")
        try:
            for n in notes:
                key = (n.rule, n.site, n.device, n.sensor or "", n.metric or "")
                cur.execute(
                    _INSERT_HISTORY,
                    (n.time_ns, n.rule, n.severity, n.state, n.site, n.device, n.sensor, n.metric,
                     n.value, n.threshold, n.started_ns, n.resolved_ns, n.summary))
                if n.state == "firing":
                    cur.execute(_UPSERT_FIRING, (*key, n.severity, n.value, n.threshold,
                                                 n.started_ns, n.time_ns, n.summary))
                else:
                    cur.execute(_DELETE, key)
            cur.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                cur.execute("ROLLBACK")
            raise

    def _check_file(self) -> None:
        """Say once when the file at the path is no longer the one open: deleted or replaced under
        the collector, whose writer then goes on in a new file (sqlite_store); these records go
        on to the old one until a restart."""
        if self._moved_told:
            return
        try:
            same = sqlite_store.file_identity(self.path) == self._file
        except OSError:
            same = False
        if not same:
            self._moved_told = True
            log.error("%s: the database file was deleted or replaced while the collector was "
                      "writing it; alerting's state and history go on to the old file until the "
                      "collector restarts: restart it", self.path)

    def known_series(self) -> Iterator[tuple[str, str, str, list[str], int]]:
        """``(site, device, sensor, metrics, device last seen)`` of every stored series."""
        assert self.conn is not None
        try:
            rows = self.conn.execute(
                "SELECT d.site, d.device, s.sensor, group_concat(s.metric, char(0)), d.last_seen_ns "
                "FROM series s JOIN devices d ON d.id = s.device_key "
                "GROUP BY d.id, s.sensor").fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return  # no samples stored yet
            raise
        for site, device, sensor, metrics, seen in rows:
            yield site, device, sensor, sorted(set(metrics.split("\0"))), seen


# -- readers for ``sensorwire alerts`` ------------------------------------------
def history(conn: sqlite3.Connection, since_ns: int | None = None) -> Iterator[Notification]:
    """Every notification sent, oldest first."""
    sql = f"SELECT {_COLUMNS}, time_ns FROM alert_history"
    args: list[int] = []
    if since_ns is not None:
        sql += " WHERE time_ns >= ?"
        args.append(since_ns)
    sql += " ORDER BY time_ns, id"
    try:
        rows = conn.execute(sql, args)  # read as they are written out: any number in little memory
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return  # the collector never ran with [[alerts]]
        raise
    for row in rows:
        yield Notification(*row)


def active(conn: sqlite3.Connection, since_ns: int | None = None) -> Iterator[Notification]:
    """The alerts firing now, oldest first."""
    sql = ("SELECT rule, severity, site, device, sensor, metric, value, threshold, started_ns, "
           "summary FROM alert_instances")
    args: list[int] = []
    if since_ns is not None:
        sql += " WHERE started_ns >= ?"
        args.append(since_ns)
    sql += " ORDER BY started_ns, rule, site, device, sensor, metric"
    try:
        rows = conn.execute(sql, args)
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return
        raise
    for rule, sev, site, device, sensor, metric, value, threshold, started, summ in rows:
        yield Notification(rule, sev, "firing", site, device, sensor or None, metric or None,
                           value, threshold, started, None, summ, started)
