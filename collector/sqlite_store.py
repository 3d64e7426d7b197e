"""The SQLite schema, its writer and its readers.

Schema (version 1; ``docs/storage.md`` documents it for people)::

    devices(id, device UNIQUE, site, first_seen_ns, last_seen_ns)
    series (id, device_key, sensor, metric, unit, UNIQUE(device_key, sensor, metric, unit))
    frames (id, device_key, boot_id, seq, sensor, time_ns, received_ns, flags,
            UNIQUE(device_key, boot_id, seq))
    samples(frame_id, series_id, value, PRIMARY KEY(frame_id, series_id)) WITHOUT ROWID

A frame is stored once for ever: the UNIQUE key ``(device, boot_id, seq)``
makes a replayed or duplicated frame a no-op.  Times are Unix nanoseconds;
``boot_id`` (an unsigned 64-bit number on the wire) is stored as the signed
64-bit integer with the same bits.  The view ``readings`` joins it all.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sensorwire.proto.v1.telemetry_pb2 import Frame

SCHEMA_VERSION = 1
_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1
_CACHE_MAX = 100_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL UNIQUE,
    site TEXT NOT NULL,
    first_seen_ns INTEGER NOT NULL,
    last_seen_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    device_key INTEGER NOT NULL REFERENCES devices(id),
    sensor TEXT NOT NULL,
    metric TEXT NOT NULL,
    unit TEXT NOT NULL DEFAULT '',
    UNIQUE (device_key, sensor, metric, unit)
);
CREATE TABLE IF NOT EXISTS frames (
    id INTEGER PRIMARY KEY,
    device_key INTEGER NOT NULL REFERENCES devices(id),
    boot_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    sensor TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    flags INTEGER NOT NULL DEFAULT 0,
    UNIQUE (device_key, boot_id, seq)
);
CREATE INDEX IF NOT EXISTS frames_time ON frames (time_ns);
CREATE INDEX IF NOT EXISTS frames_device_time ON frames (device_key, time_ns);
CREATE TABLE IF NOT EXISTS samples (
    frame_id INTEGER NOT NULL REFERENCES frames(id),
    series_id INTEGER NOT NULL REFERENCES series(id),
    value REAL,
    PRIMARY KEY (frame_id, series_id)
) WITHOUT ROWID;
CREATE VIEW IF NOT EXISTS readings AS
    SELECT f.time_ns, d.site, d.device, f.sensor, s.metric, NULLIF(s.unit, '') AS unit,
           v.value, f.boot_id, f.seq, f.received_ns, f.flags
    FROM samples v
    JOIN frames f ON f.id = v.frame_id
    JOIN series s ON s.id = v.series_id
    JOIN devices d ON d.id = f.device_key;
"""


def to_i64(u: int) -> int:
    return u - _U64 if u > _I64_MAX else u


def to_u64(i: int) -> int:
    return i + _U64 if i < 0 else i


class StoreError(Exception):
    """The database cannot be used; the message says which file and why."""


def connect(path: str | Path, readonly: bool = False) -> sqlite3.Connection:
    p = Path(path)
    if readonly:
        if not p.exists():
            raise StoreError(f"{p}: no such database (is the path right? the collector creates it)")
        uri = f"file:{p.resolve()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=10.0)
    else:
        if p.parent and not p.parent.exists():
            raise StoreError(f"{p}: the folder {p.parent} does not exist")
        conn = sqlite3.connect(str(p), timeout=10.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            conn.close()
            raise StoreError(
                f"{p}: schema version {row[0]} is newer than this sensorwire understands "
                f"({SCHEMA_VERSION}); upgrade sensorwire"
            )
    return conn


class SqliteWriter:
    """Writes batches of frames in one transaction each. One thread only."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.conn: sqlite3.Connection | None = None
        self._devices: dict[str, int] = {}
        self._series: dict[tuple[int, str, str, str], int] = {}
        self.frames_stored = 0
        self.samples_stored = 0
        self.duplicates = 0

    def open(self) -> None:
        self.conn = connect(self.path)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _device_key(self, cur: sqlite3.Cursor, frame: Frame, now_ns: int) -> int:
        key = self._devices.get(frame.device_id)
        if key is None:
            cur.execute(
                "INSERT INTO devices(device, site, first_seen_ns, last_seen_ns) VALUES (?,?,?,?) "
                "ON CONFLICT(device) DO UPDATE SET site=excluded.site RETURNING id",
                (frame.device_id, frame.site, now_ns, now_ns),
            )
            key = int(cur.fetchone()[0])
            if len(self._devices) >= _CACHE_MAX:
                self._devices.clear()
            self._devices[frame.device_id] = key
        return key

    def _series_key(self, cur: sqlite3.Cursor, dev: int, sensor: str, metric: str, unit: str) -> int:
        k = (dev, sensor, metric, unit)
        sid = self._series.get(k)
        if sid is None:
            cur.execute(
                "INSERT INTO series(device_key, sensor, metric, unit) VALUES (?,?,?,?) "
                "ON CONFLICT DO UPDATE SET unit=excluded.unit RETURNING id",
                k,
            )
            sid = int(cur.fetchone()[0])
            if len(self._series) >= _CACHE_MAX:
                self._series.clear()
            self._series[k] = sid
        return sid

    def write(self, batch: Sequence[tuple[Frame, int]]) -> None:
        conn = self.conn
        assert conn is not None
        cur = conn.cursor()
        rows: list[tuple[int, int, float]] = []
        last_seen: dict[int, int] = {}
        insert_frame = (
            "INSERT OR IGNORE INTO frames(device_key, boot_id, seq, sensor, time_ns, received_ns) "
            "VALUES (?,?,?,?,?,?)"
        )
        stored = dups = 0
        cur.execute("BEGIN")
        try:
            for frame, received in batch:
                dev = self._device_key(cur, frame, received)
                last_seen[dev] = received
                if frame.seq == 0:
                    continue
                cur.execute(insert_frame, (dev, to_i64(frame.boot_id), frame.seq, frame.sensor,
                                           frame.time_unix_nano, received))
                if cur.rowcount != 1:
                    dups += 1
                    continue
                fid = cur.lastrowid
                stored += 1
                sensor = frame.sensor
                for s in frame.samples:
                    rows.append((fid, self._series_key(cur, dev, sensor, s.metric, s.unit), s.value))  # type: ignore[arg-type]
            cur.executemany("INSERT OR IGNORE INTO samples(frame_id, series_id, value) VALUES (?,?,?)", rows)
            cur.executemany("UPDATE devices SET last_seen_ns=max(last_seen_ns, ?) WHERE id=?",
                            [(t, d) for d, t in last_seen.items()])
            cur.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                cur.execute("ROLLBACK")
            self._devices.clear()
            self._series.clear()
            raise
        self.frames_stored += stored
        self.samples_stored += len(rows)
        self.duplicates += dups


@dataclass(frozen=True)
class QueryFilter:
    device: str | None = None
    sensor: str | None = None
    metric: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    limit: int | None = None


def query(conn: sqlite3.Connection, f: QueryFilter) -> Iterator[tuple[Any, ...]]:
    """Rows ``(time_ns, device, sensor, metric, value, unit, boot_id, seq)`` by time."""
    where: list[str] = []
    args: list[Any] = []
    if f.device is not None:
        where.append("d.device = ?")
        args.append(f.device)
    if f.sensor is not None:
        where.append("f.sensor = ?")
        args.append(f.sensor)
    if f.metric is not None:
        where.append("s.metric = ?")
        args.append(f.metric)
    if f.since_ns is not None:
        where.append("f.time_ns >= ?")
        args.append(f.since_ns)
    if f.until_ns is not None:
        where.append("f.time_ns < ?")
        args.append(f.until_ns)
    sql = (
        "SELECT f.time_ns, d.device, f.sensor, s.metric, v.value, NULLIF(s.unit, ''), f.boot_id, f.seq "
        "FROM frames f JOIN devices d ON d.id = f.device_key "
        "JOIN samples v ON v.frame_id = f.id JOIN series s ON s.id = v.series_id"
    )
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY f.time_ns, f.id, s.metric"
    if f.limit is not None:
        sql += " LIMIT ?"
        args.append(f.limit)
    for row in conn.execute(sql, args):
        yield row[:6] + (to_u64(row[6]), row[7])
