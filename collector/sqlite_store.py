"""The SQLite schema, its writer and its readers.

Schema (version 1; ``docs/storage.md`` documents it for people)::

    devices(id, device UNIQUE, site, first_seen_ns, last_seen_ns, state, state_since_ns,
            heartbeat_s, duplicates, out_of_order, lost)
    boots  (device_key, boot_id, max_seq, announced_seq, stored, first_seen_ns, last_seen_ns)
    presence(device_key, time_ns, state, previous)
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

import contextlib
import logging
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sensorwire import filelock
from sensorwire.collector.events import Counts, Event, Lost, Presence
from sensorwire.collector.frames import CheckedFrame, Layout
from sensorwire.collector.multirow import MultiRow, fan_out, param_limit, plain
from sensorwire.collector.tracking import ResumeBoot

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1
_CACHE_MAX = 100_000
READ_TIMEOUT_S = 10.0  # a reader waits this long for a lock (a WAL database has few)
# events kept for the next transaction, at most: while the file cannot be written (a lock, a full
# disk: the sink retries for as long as that lasts) they would grow for ever; past this, the
# loss and duplicate counts are merged per device, and the oldest presence rows go (counted;
# each device's last state is kept)
EVENTS_MAX = 100_000
WAL_SIZE_LIMIT = 64 << 20  # bytes of WAL file kept after a checkpoint (PRAGMA journal_size_limit)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL UNIQUE,
    site TEXT NOT NULL,
    first_seen_ns INTEGER NOT NULL,
    last_seen_ns INTEGER NOT NULL,
    state TEXT,
    state_since_ns INTEGER,
    heartbeat_s REAL,
    duplicates INTEGER NOT NULL DEFAULT 0,
    out_of_order INTEGER NOT NULL DEFAULT 0,
    lost INTEGER NOT NULL DEFAULT 0,
    clock_offset_s REAL,
    clock_synced INTEGER
);
CREATE TABLE IF NOT EXISTS boots (
    device_key INTEGER NOT NULL REFERENCES devices(id),
    boot_id INTEGER NOT NULL,
    max_seq INTEGER NOT NULL DEFAULT 0,
    announced_seq INTEGER NOT NULL DEFAULT 0,
    stored INTEGER NOT NULL DEFAULT 0,
    first_seen_ns INTEGER NOT NULL,
    last_seen_ns INTEGER NOT NULL,
    PRIMARY KEY (device_key, boot_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS presence (
    device_key INTEGER NOT NULL REFERENCES devices(id),
    time_ns INTEGER NOT NULL,
    state TEXT NOT NULL,
    previous TEXT
);
CREATE INDEX IF NOT EXISTS presence_device_time ON presence (device_key, time_ns);
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


_UPDATE_LAST_SEEN = "UPDATE devices SET last_seen_ns=max(last_seen_ns, ?) WHERE id=?"
LAST_SEEN_EVERY_NS = 10 * 10**9  # devices.last_seen_ns is written this often per device at most
_INSERT_FRAME = ("INSERT OR IGNORE INTO frames(device_key, boot_id, seq, sensor, time_ns, received_ns, "
                 "flags) VALUES (?,?,?,?,?,?,?)")
_INSERT_FRAMES_WITH_IDS = ("INSERT OR IGNORE INTO frames(id, device_key, boot_id, seq, sensor, time_ns, "
                           "received_ns, flags) VALUES ")
_INSERT_SAMPLES = "INSERT OR IGNORE INTO samples(frame_id, series_id, value) VALUES "
_INSERT_BOOTS = ("INSERT INTO boots(device_key, boot_id, max_seq, stored, announced_seq, first_seen_ns, "
                 "last_seen_ns) VALUES ")
_UPSERT_BOOTS = (" ON CONFLICT DO UPDATE SET max_seq=max(max_seq, excluded.max_seq), "
                 "stored=stored+excluded.stored, announced_seq=max(announced_seq, excluded.announced_seq), "
                 "last_seen_ns=max(last_seen_ns, excluded.last_seen_ns)")
# many devices at once (SQLite 3.33 and newer)
_UPDATE_LAST_SEEN_FROM = "UPDATE devices SET last_seen_ns=max(devices.last_seen_ns, v.column1) FROM (VALUES "
_UPDATE_LAST_SEEN_WHERE = ") AS v WHERE devices.id=v.column2"


# retention: the oldest frames first, a slice a transaction (the writer's batches wait meanwhile)
TRIM_SLICE = 5000  # frames a transaction at most; fewer where that takes long (trim_slice)
TRIM_SLICE_MIN = 100
TRIM_BUDGET_S = 0.2
_OLDEST = "(SELECT id FROM frames WHERE time_ns < ? ORDER BY time_ns, id LIMIT ?)"  # by frames_time
_TRIM_SAMPLES = "DELETE FROM samples WHERE frame_id IN " + _OLDEST
_TRIM_FRAMES = "DELETE FROM frames WHERE id IN " + _OLDEST
# each device's old changes by presence_device_time (CROSS JOIN: devices outer); a plain
# "WHERE time_ns < ?" read the whole table, in the write transaction, at every slice
_TRIM_PRESENCE = ("DELETE FROM presence WHERE rowid IN (SELECT p.rowid FROM devices d CROSS JOIN "
                  "presence p ON p.device_key = d.id AND p.time_ns < ? LIMIT ?)")
_TRIM_ALERTS = ("DELETE FROM alert_history WHERE rowid IN (SELECT rowid FROM alert_history "
                "WHERE time_ns < ? LIMIT ?)")  # the alert store's table, when alerting is on


def to_i64(u: int) -> int:
    return u - _U64 if u > _I64_MAX else u


def to_u64(i: int) -> int:
    return i + _U64 if i < 0 else i


class StoreError(Exception):
    """The database cannot be used; the message says which file and why."""


def connect(path: str | Path, readonly: bool = False) -> sqlite3.Connection:
    """The database at ``path``; the writer's (``readonly=False``) is created with its schema.

    Raises :class:`StoreError` naming the file when it cannot be used."""
    p = Path(path)
    if p.is_dir():
        raise StoreError(f"{p}: a folder, not a database file (name a file, e.g. {p / 'sensorwire.db'})")
    if p.exists() and not p.is_file():  # a FIFO would wait for a writer for ever
        raise StoreError(f"{p}: not a regular file (a FIFO, a device?); a database is a file")
    if readonly:
        if not p.exists():
            raise StoreError(f"{p}: no such database (is the path right? the collector creates it)")
        # quoted: a '#', '?' or '%' in the name would end or change the path, opening (and
        # creating) another file, read-write
        uri = f"file:{urllib.parse.quote(str(p.resolve()))}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=READ_TIMEOUT_S)
        try:
            _check_version(p, _schema_version(p, conn))
        except BaseException:
            conn.close()
            raise
    else:
        if p.parent and not p.parent.exists():
            raise StoreError(f"{p}: the folder {p.parent} does not exist")
        try:
            # the writer's statements of many rows come in a few sizes per table and sample count
            conn = sqlite3.connect(str(p), timeout=10.0, isolation_level=None,
                                   check_same_thread=False, cached_statements=512)
            conn.execute("PRAGMA synchronous=NORMAL")
            # a reader that holds a snapshot long (a query into a pager) lets the WAL grow past
            # the checkpoints; once it is gone, the WAL is cut back to this at the next one
            # instead of keeping its largest size for ever
            conn.execute(f"PRAGMA journal_size_limit={int(WAL_SIZE_LIMIT)}")
            _create(p, conn)
            conn.execute("PRAGMA journal_mode=WAL")  # after _create: not on another application's file
        except StoreError:
            conn.close()
            raise
        except sqlite3.OperationalError as exc:  # cannot open or write: permissions, disk, locks
            raise StoreError(f"{p}: {exc}{_open_hint(exc)}") from None
        except sqlite3.DatabaseError as exc:  # "file is not a database" and the like
            raise StoreError(f"{p}: {exc} (is it a sensorwire database? the collector creates "
                             "a new one when the file does not exist)") from None
    return conn


def _open_hint(exc: sqlite3.Error) -> str:
    """What to do about an error met opening the writer's database (a lock or a full disk is
    not a question of permissions)."""
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return (" (another process kept a write transaction open on it for more than 10 s: "
                "a sqlite3 shell?)")
    if name.startswith("SQLITE_FULL"):
        return " (the disk under it is full: make room)"
    if name.startswith("SQLITE_IOERR"):  # a -shm that cannot grow on a full disk, too
        return (" (is the disk under it full, or failing? SQLite needs room for its -wal and -shm "
                "files beside it)")
    return " (can this user create and write it, and its folder?)"


def _create(p: Path, conn: sqlite3.Connection) -> None:
    """The writer's schema, in a database that is new or sensorwire's: a file of another
    application (tables, but no ``meta.schema_version``) is refused rather than given our
    tables; the columns an older sensorwire did not have are added; and a file this process
    may not write (read-only, on a read-only mount) is refused now rather than at every batch.

    In one transaction: a crash half-way leaves the file as it was."""
    conn.execute("BEGIN IMMEDIATE")  # the write lock first: a read-only file says so here
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                             "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        version = _version_if_ours(conn) if "meta" in tables else None
        if tables and version is None:
            shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
            raise StoreError(f"{p}: not a sensorwire database (it has tables {shown} but no "
                             "meta.schema_version): another application's? name a new file; the "
                             "collector creates it")
        if version is not None:
            _check_version(p, version)
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        _add_columns(p, conn)
        # a write whatever the file held: a read-only one fails here, not at every batch
        conn.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT DO UPDATE "
                     "SET value=value", (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _version_if_ours(conn: sqlite3.Connection) -> str | None:
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    except sqlite3.OperationalError:  # a meta table of other columns: not ours
        return None
    return None if row is None else str(row[0])


def _add_columns(p: Path, conn: sqlite3.Connection) -> None:
    """Add the columns of :data:`_SCHEMA` that a table of an older sensorwire lacks (the clock
    columns of ``devices``, say): without them every batch failed ("no such column"), and was
    dropped, for as long as the collector ran."""
    ref = sqlite3.connect(":memory:")
    try:
        ref.executescript(_SCHEMA)
        tables = [r[0] for r in ref.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            for _, name, decl, notnull, default, pk in ref.execute(f"PRAGMA table_info({table})"):
                if name in have:
                    continue
                if pk or (notnull and default is None):
                    raise StoreError(f"{p}: written by a much older sensorwire ({table} has no "
                                     f"column {name}, which cannot be added); move it aside, and "
                                     "the collector creates a new one")
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}"
                             + (" NOT NULL" if notnull else "")
                             + (f" DEFAULT {default}" if default is not None else ""))
                log.info("%s: column %s.%s added (the file was written by an older sensorwire)",
                         p, table, name)
    finally:
        ref.close()


def _schema_version(p: Path, conn: sqlite3.Connection) -> str:
    """A reader's first read: ``meta.schema_version``, or :class:`StoreError` saying why the
    file cannot be read."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            raise StoreError(f"{p}: not a sensorwire database (it has no meta table)") from None
        if "readonly" in str(exc) or "unable to open" in str(exc):
            # a WAL database with no -shm beside it (the collector is not running): SQLite
            # must create it, in a folder this user may not write to
            raise StoreError(f"{p}: cannot be read ({exc}): while the collector is stopped, "
                             f"reading it takes write access to {p.parent} (for SQLite's "
                             f"{p.name}-shm); run this as the collector's user") from None
        raise StoreError(f"{p}: {exc}{_busy(exc)}") from None
    except sqlite3.DatabaseError as exc:  # "file is not a database", "malformed"
        raise StoreError(f"{p}: {exc} (is it a sensorwire database?)") from None
    if row is None:
        raise StoreError(f"{p}: not a sensorwire database (no schema_version in its meta table)")
    return str(row[0])


def _busy(exc: sqlite3.Error) -> str:
    locked = "locked" in str(exc)
    return f" (another process kept it locked for more than {READ_TIMEOUT_S:g} s)" if locked else ""


def reading(p: str | Path) -> contextlib.AbstractContextManager[None]:
    """Translates what a read of ``p`` may meet (a lock kept past the timeout, an I/O error,
    a damaged page) into :class:`StoreError`."""
    return _reading(Path(p))


@contextlib.contextmanager
def _reading(p: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise StoreError(f"{p}: {exc}{_busy(exc)}{_older(exc)}") from None
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{p}: {exc} (is it a sensorwire database?)") from None


def _older(exc: sqlite3.Error) -> str:
    if "no such column" not in str(exc):
        return ""
    return (" (the file was written by an older sensorwire: start the collector on it once, "
            "which adds what is missing)")


def _check_version(p: Path, version: str) -> None:
    if int(version) > SCHEMA_VERSION:
        raise StoreError(f"{p}: schema version {version} is newer than this sensorwire "
                         f"understands ({SCHEMA_VERSION}); upgrade sensorwire")


def file_identity(p: Path) -> tuple[int, int]:
    """(st_dev, st_ino) of the file at ``p``: which file it is, whatever its name."""
    st = os.stat(p)
    return st.st_dev, st.st_ino


def _copy(conn: sqlite3.Connection, target: Path) -> sqlite3.Connection:
    """The database of ``conn`` copied to a new file ``target``, opened as the writer's; no
    file is left there when that fails (the next write tries again)."""
    try:
        dest = sqlite3.connect(str(target))
        try:
            conn.backup(dest)
        finally:
            dest.close()
        return connect(target)
    except BaseException:
        for name in (target.name, target.name + "-wal", target.name + "-shm"):
            with contextlib.suppress(OSError):
                os.unlink(target.with_name(name))
        raise


class SqliteWriter:
    """Writes batches of frames in one transaction each. One thread only.

    Events (presence, frames lost, counts) are kept until the next batch's
    transaction, :meth:`flush` or :meth:`close`: they come in bursts (every
    device of a fleet goes online when a collector starts), and one
    transaction each would cost more than the frames.
    """

    def __init__(self, path: str | Path, max_params: int | None = None,
                 retention_ns: int | None = None) -> None:
        self.path = Path(path)
        self.max_params = max_params  # per statement; None: as many as this SQLite allows
        self.retention_ns = retention_ns  # frames older than this are deleted by trim()
        self.trimmed = 0  # frames deleted by trim()
        self.trim_slice = TRIM_SLICE  # frames a trim() transaction, fitted to this machine
        self.conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None  # flock on <file>.lock while open
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) of the file written
        self._devices: dict[str, int] = {}
        self._series: dict[tuple[int, str, str, str], int] = {}
        self._layouts: dict[tuple[int, str, Layout], tuple[int, ...]] = {}
        self._next_id: int | None = None  # the id the next frame gets
        self._seen_written: dict[int, int] = {}  # device key -> devices.last_seen_ns written
        self._seen_pending: dict[int, int] = {}  # device key -> a newer one, not yet written
        self._events: list[Event] = []  # not written yet
        self.presence_dropped = 0  # presence rows not written: EVENTS_MAX, while it cannot write
        self._compact_at = EVENTS_MAX
        self._samples: dict[int, MultiRow | None] = {}  # by samples per frame
        self.frames_stored = 0
        self.samples_stored = 0
        self.duplicates = 0

    def open(self) -> None:
        conn = connect(self.path)  # first: its messages for a path that cannot be a database
        try:
            self._lock()
        except BaseException:
            conn.close()
            raise
        self.conn = conn
        self._file = file_identity(self.path)
        limit = param_limit(self.conn)
        if self.max_params is not None:
            limit = min(limit, self.max_params)
        self._params = limit
        self._frames = MultiRow(_INSERT_FRAMES_WITH_IDS, plain(8), 8, max_params=limit)
        self._boots = MultiRow(_INSERT_BOOTS, plain(7), 7, _UPSERT_BOOTS, max_params=limit)
        self._seen = (MultiRow(_UPDATE_LAST_SEEN_FROM, plain(2), 2, _UPDATE_LAST_SEEN_WHERE, max_params=limit)
                      if sqlite3.sqlite_version_info >= (3, 33, 0) else None)

    def flush(self) -> None:
        """Write the events kept so far (the sink calls it when no frames come)."""
        conn = self.conn
        if conn is None:
            return
        conn = self._same_file(conn)
        if not self._events:
            return
        cur = conn.cursor()
        with self._transaction(conn, cur):
            pass  # the transaction writes the events kept

    @contextlib.contextmanager
    def _transaction(self, conn: sqlite3.Connection, cur: sqlite3.Cursor) -> Iterator[None]:
        """One transaction that writes the events kept so far first; after a rollback the
        events stay kept, and what this process cached is forgotten."""
        cur.execute("BEGIN")
        try:
            self._write_events(cur)
            yield
            cur.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                cur.execute("ROLLBACK")
            self._forget()
            raise
        self._events.clear()
        self._compact_at = EVENTS_MAX

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.flush()
                if self._seen_pending:
                    with self.conn:
                        self.conn.executemany(_UPDATE_LAST_SEEN,
                                              [(t, d) for d, t in self._seen_pending.items()])
            finally:
                self._seen_pending.clear()
                self.conn.close()
                self.conn = None
                self._unlock()

    def _same_file(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        """The connection to write with: this one, while its file is still the one at
        :attr:`path`.  A file deleted (``rm telemetry.db``) or replaced (``mv``) while open is
        written on unseen, and is gone with everything in it when the collector stops: what it
        holds is copied to a new file beside the path, and writing goes on there.  Not at the
        path itself, even when nothing is there now: a new file there would take the old one's
        -wal and -shm by their names while alerting's connection (sensorwire.collector.alerting
        .store) still uses them for the old file, and each would be read through the other's
        pages."""
        try:
            if file_identity(self.path) == self._file:
                return conn
            what, then = "replaced by another file", "that one is left as it is; "
        except FileNotFoundError:
            what, then = "deleted", ""
        except OSError:  # the folder unreadable, say: no way to tell, and nothing to do
            return conn
        target = self.path.with_name(f"{self.path.name}.saved-{time.strftime('%Y%m%dT%H%M%S')}")
        then += (f"the collector's database is saved as {target} and written there until it "
                 f"restarts: to go on with it, stop the collector, move it to {self.path} and "
                 "start it again")
        # the -wal and -shm beside the path are this file's still: emptied into it first, lest a
        # new file there (ours, or the one that replaced it) be read through them, and damaged
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        try:
            self.conn = _copy(conn, target)
        except StoreError as exc:  # a write error to the sink, which tries again
            raise sqlite3.OperationalError(str(exc)) from None
        conn.close()
        self._file = file_identity(target)
        log.error("%s: the database file was %s while the collector was writing it; %s",
                  self.path, what, then)
        self.path = target
        return self.conn

    def _lock(self) -> None:
        """One writer a file: a second collector on it would count every frame of the first
        as a duplicate of its own and every loss twice (``status`` would show both).  The lock
        is ``flock`` on ``<file>.lock`` beside it (not on the database, whose POSIX locks are
        SQLite's), released by the kernel however the process ends."""
        lock = self.path.with_name(self.path.name + ".lock")
        try:
            self._lock_fd = filelock.take(lock, 0o644)
        except filelock.Held:
            raise StoreError(f"{self.path}: another collector is writing this database (it holds "
                             f"{lock.name}); give each collector a file of its own, or use "
                             "PostgreSQL for several collectors on one store (docs/postgres.md)"
                             ) from None
        except OSError as exc:
            raise StoreError(f"{lock}: cannot create the writer's lock file: {exc.strerror}") from None

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def trim(self, now_ns: int, budget_s: float = TRIM_BUDGET_S) -> bool:
        """Delete frames (with their samples), presence changes and alert history older than
        the retention, in transactions of :attr:`trim_slice` frames, for ``budget_s`` at most
        (one slice for 0); True when more is left for the next call.  A slice is kept at a
        quarter of the budget or so, halved when it takes more than half, doubled (up to
        TRIM_SLICE) when less than an eighth: on a slow machine too, the writer's batches
        wait ``budget_s`` at most.  The counters (``boots.stored``, ``devices.lost``, ...) keep
        counting what was stored, so ``status`` does not change."""
        conn = self.conn
        assert conn is not None and self.retention_ns is not None
        cutoff = max(now_ns - self.retention_ns, -_I64_MAX - 1)  # a retention of a million days
        cur = conn.cursor()
        alerts = cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                             "name = 'alert_history'").fetchone() is not None
        t0 = start = time.monotonic()
        while True:
            size = self.trim_slice
            with self._transaction(conn, cur):
                cur.execute(_TRIM_SAMPLES, (cutoff, size))
                n = cur.execute(_TRIM_FRAMES, (cutoff, size)).rowcount
                cur.execute(_TRIM_PRESENCE, (cutoff, size))
                if alerts:
                    cur.execute(_TRIM_ALERTS, (cutoff, size))
            now = time.monotonic()
            took, t0 = now - t0, now
            self.trimmed += n
            if budget_s > 0:
                if took > budget_s / 2:
                    self.trim_slice = max(TRIM_SLICE_MIN, size // 2)
                elif took < budget_s / 8:
                    self.trim_slice = min(TRIM_SLICE, size * 2)
            if n < size:
                return False
            if now - start + took > budget_s:  # another slice like this one would end past it
                return True

    def _forget(self) -> None:
        """After a rollback: what this process cached may not be in the database."""
        self._devices.clear()
        self._series.clear()
        self._layouts.clear()
        self._seen_written.clear()
        self._next_id = None

    def _write_last_seen(self, cur: sqlite3.Cursor, last_seen: dict[int, int]) -> None:
        """The ``devices.last_seen_ns`` updates due: at most one per device per LAST_SEEN_EVERY_NS
        (``boots.last_seen_ns`` is exact; the rest is written at close, or when more than
        _CACHE_MAX devices wait)."""
        written, pending = self._seen_written, self._seen_pending
        if len(written) >= _CACHE_MAX:
            written.clear()
        rows = []
        if len(pending) >= _CACHE_MAX:
            # devices that came and went (made-up ids too) must not grow memory: write them now
            rows = [(t, d) for d, t in pending.items() if d not in last_seen]
            pending.clear()
        for d, t in last_seen.items():
            if t - written.get(d, 0) >= LAST_SEEN_EVERY_NS:
                rows.append((t, d))
                written[d] = t
                pending.pop(d, None)
            else:
                pending[d] = t
        if self._seen is not None:
            self._seen.run(cur, rows)
        else:
            cur.executemany(_UPDATE_LAST_SEEN, rows)

    def _device_key(self, cur: sqlite3.Cursor, site: str, device: str, now_ns: int) -> int:
        key = self._devices.get(device)
        if key is None:
            cur.execute(
                "INSERT INTO devices(device, site, first_seen_ns, last_seen_ns) VALUES (?,?,?,?) "
                "ON CONFLICT(device) DO UPDATE SET site=excluded.site RETURNING id",
                (device, site, now_ns, now_ns),
            )
            key = int(cur.fetchone()[0])
            if len(self._devices) >= _CACHE_MAX:
                self._devices.clear()
            self._devices[device] = key
        return key

    def _series_ids(self, cur: sqlite3.Cursor, dev: int, sensor: str, layout: Layout) -> tuple[int, ...]:
        """The series ids of a frame's samples (of the first of each metric named twice);
        the ones new to this process are upserted together."""
        pairs = layout.pairs if layout.unique is None else [layout.pairs[i] for i in layout.unique]
        known = self._series
        missing = list(dict.fromkeys(p for p in pairs if (dev, sensor, *p) not in known))
        if len(known) + len(missing) > _CACHE_MAX:
            known.clear()
            missing = list(dict.fromkeys(pairs))
        per = max(1, min(256, self._params // 4))
        for at in range(0, len(missing), per):
            part = missing[at:at + per]
            cur.execute(
                "INSERT INTO series(device_key, sensor, metric, unit) VALUES "
                + ",".join(["(?,?,?,?)"] * len(part))
                + " ON CONFLICT DO UPDATE SET unit=excluded.unit RETURNING id, metric, unit",
                [x for m, u in part for x in (dev, sensor, m, u)])
            for sid, m, u in cur.fetchall():
                known[(dev, sensor, m, u)] = int(sid)
        ids = tuple([known[(dev, sensor, m, u)] for m, u in pairs])
        if len(self._layouts) >= _CACHE_MAX:
            self._layouts.clear()
        self._layouts[(dev, sensor, layout)] = ids
        return ids

    def write(self, batch: Sequence[tuple[CheckedFrame, int]]) -> None:
        """Store a batch in one transaction: the events kept, new frames with their samples,
        boots, devices.

        Frame ids are numbered here, so a batch's frames go in with a few
        multi-row statements; if not all of them went in (a frame stored
        before, or another writer took an id), the batch's frames are inserted
        again one by one, each one that is already there counted as a duplicate.
        """
        conn = self.conn
        assert conn is not None
        conn = self._same_file(conn)
        cur = conn.cursor()
        if self._next_id is None:
            self._next_id = int(cur.execute("SELECT coalesce(max(id), 0) + 1 FROM frames").fetchone()[0])
        devices = self._devices
        layouts = self._layouts
        last_seen: dict[int, int] = {}
        # per (device_key, boot_id): [max seq stored, frames stored, announced seq, last seen]
        boots: dict[tuple[int, int], list[int]] = {}
        heartbeats: dict[int, tuple[float | None, float, int]] = {}
        data: list[tuple[int, int, int, int, str, int, int, int]] = []
        samples: list[tuple[Any, ...]] = []  # per frame: (frame id, series ids..., values...)
        n_samples = 0
        fid = self._next_id
        with self._transaction(conn, cur):
            for frame, received in batch:
                dev = devices.get(frame.device_id)
                if dev is None:
                    dev = self._device_key(cur, frame.site, frame.device_id, received)
                last_seen[dev] = received
                boot = frame.boot_id
                if boot > _I64_MAX:
                    boot -= _U64
                bs = boots.get((dev, boot))
                if bs is None:
                    bs = boots[(dev, boot)] = [0, 0, 0, received]
                bs[3] = received
                seq = frame.seq
                if seq == 0:
                    hb = frame.heartbeat
                    assert hb is not None
                    if hb.last_seq > bs[2]:
                        bs[2] = hb.last_seq
                    heartbeats[dev] = (hb.interval_s or None, (frame.time_unix_nano - received) / 1e9,
                                       int(hb.clock_synced))
                    continue
                layout = frame.layout
                sids = layouts.get((dev, frame.sensor, layout))
                if sids is None:
                    sids = self._series_ids(cur, dev, frame.sensor, layout)
                data.append((fid, dev, boot, seq, frame.sensor, frame.time_unix_nano, received, frame.flags))
                if sids:
                    values = frame.values
                    if layout.unique is not None:
                        values = [values[i] for i in layout.unique]
                    samples.append((fid, *sids, *values))
                    n_samples += len(sids)
                if seq > bs[0]:
                    bs[0] = seq
                bs[1] += 1
                fid += 1
            duplicates = 0
            if data and not self._insert_frames(conn, cur, data):
                samples, duplicates = self._insert_one_by_one(cur, data, samples, boots)
                n_samples = sum((len(r) - 1) // 2 for r in samples)
            self._insert_samples(cur, samples)
            self._write_last_seen(cur, last_seen)
            self._boots.run(cur, [(d, b, v[0], v[1], v[2], v[3], v[3]) for (d, b), v in boots.items()])
            if heartbeats:
                cur.executemany("UPDATE devices SET heartbeat_s=coalesce(?, heartbeat_s), clock_offset_s=?, "
                                "clock_synced=? WHERE id=?", [(*h, d) for d, h in heartbeats.items()])
        self.frames_stored += len(data) - duplicates
        self.samples_stored += n_samples
        self.duplicates += duplicates

    def _insert_frames(self, conn: sqlite3.Connection, cur: sqlite3.Cursor,
                       data: list[tuple[int, int, int, int, str, int, int, int]]) -> bool:
        """Insert the frames with the ids numbered here; False (and nothing inserted) unless
        every one went in."""
        before = conn.total_changes
        cur.execute("SAVEPOINT frames")
        self._frames.run(cur, data)
        if conn.total_changes - before == len(data):
            cur.execute("RELEASE frames")
            self._next_id = data[-1][0] + 1
            return True
        cur.execute("ROLLBACK TO frames")
        cur.execute("RELEASE frames")
        return False

    def _insert_one_by_one(self, cur: sqlite3.Cursor,
                           data: list[tuple[int, int, int, int, str, int, int, int]],
                           samples: list[tuple[Any, ...]], boots: dict[tuple[int, int], list[int]],
                           ) -> tuple[list[tuple[Any, ...]], int]:
        """Insert frames one at a time, SQLite giving the ids: the samples rows of the frames
        that went in (with their ids) and how many were stored before."""
        for bs in boots.values():
            bs[0] = bs[1] = 0
        by_id = {r[0]: r for r in samples}
        kept: list[tuple[Any, ...]] = []
        dups_by_dev: dict[int, int] = {}
        for row in data:
            cur.execute(_INSERT_FRAME, row[1:])
            _, dev, boot, seq = row[:4]
            if cur.rowcount != 1:
                dups_by_dev[dev] = dups_by_dev.get(dev, 0) + 1
                continue
            bs = boots[(dev, boot)]
            if seq > bs[0]:
                bs[0] = seq
            bs[1] += 1
            s = by_id.get(row[0])
            if s is not None:
                kept.append((cur.lastrowid, *s[1:]))
        if dups_by_dev:
            cur.executemany("UPDATE devices SET duplicates=duplicates+? WHERE id=?",
                            [(n, d) for d, n in dups_by_dev.items()])
        self._next_id = None  # ids were given by SQLite: read the next one again
        return kept, sum(dups_by_dev.values())

    def _insert_samples(self, cur: sqlite3.Cursor, samples: list[tuple[Any, ...]]) -> None:
        """One row per frame ``(frame id, k series ids, k values)``: k samples rows each,
        frames of the same k several to a statement."""
        by_k: dict[int, list[tuple[Any, ...]]] = {}
        for row in samples:
            k = len(row)
            rows = by_k.get(k)
            if rows is None:
                rows = by_k[k] = []
            rows.append(row)
        for width, rows in by_k.items():
            k = (width - 1) // 2
            if k not in self._samples:
                self._samples[k] = (MultiRow(_INSERT_SAMPLES, fan_out(1, 2, k), width,
                                             max_params=self._params)
                                    if width <= self._params else None)
            multi = self._samples[k]
            if multi is not None:
                multi.run(cur, rows)
            else:  # more samples than one statement may have parameters for
                cur.executemany(_INSERT_SAMPLES + "(?,?,?)",
                                [(r[0], r[1 + i], r[1 + k + i]) for r in rows for i in range(k)])

    def event(self, ev: Event) -> None:
        """Keep a presence transition, frames lost for good, or drop counts, to be written with
        the next batch (or by :meth:`flush`)."""
        self._events.append(ev)
        if len(self._events) > self._compact_at:
            self._compact()
            # (a fleet of more devices than that keeps more: not merged again at every event)
            self._compact_at = max(EVENTS_MAX, 2 * len(self._events))

    def _compact(self) -> None:
        """Bound the events kept (:data:`EVENTS_MAX`): counts merged per device, then the oldest
        presence rows dropped but each device's last one."""
        lost: dict[tuple[str, str], int] = {}
        counts: dict[tuple[str, str], tuple[int, int]] = {}
        presence: list[Presence] = []
        for ev in self._events:
            key = (ev.site, ev.device)
            if isinstance(ev, Presence):
                presence.append(ev)
            elif isinstance(ev, Lost):
                lost[key] = lost.get(key, 0) + ev.count
            else:
                d, o = counts.get(key, (0, 0))
                counts[key] = (d + ev.duplicates, o + ev.out_of_order)
        room = EVENTS_MAX // 2 - len(lost) - len(counts)
        if len(presence) > room:
            last = {(p.site, p.device): i for i, p in enumerate(presence)}
            keep = set(last.values())
            over = len(presence) - max(room, len(keep))
            dropped = 0
            kept: list[Presence] = []
            for i, p in enumerate(presence):
                if dropped < over and i not in keep:
                    dropped += 1
                    continue
                kept.append(p)
            presence = kept
            self.presence_dropped += dropped
            log.warning("%s: %d presence changes not written (the file cannot be written now, and "
                        "%d are kept at most); each device's state is kept; %d dropped in all",
                        self.path, dropped, EVENTS_MAX, self.presence_dropped)
        # SQLite stores a loss as a count (devices.lost): one of first..last covers the sum
        merged: list[Event] = [Lost(site, device, 0, 1, n) for (site, device), n in lost.items()]
        merged += [Counts(site, device, d, o) for (site, device), (d, o) in counts.items()]
        self._events = [*presence, *merged]

    def _write_events(self, cur: sqlite3.Cursor) -> None:
        for ev in self._events:
            key = self._device_key(cur, ev.site, ev.device, time.time_ns())
            if isinstance(ev, Presence):
                cur.execute("INSERT INTO presence(device_key, time_ns, state, previous) VALUES (?,?,?,?)",
                            (key, ev.time_ns, ev.state, ev.previous))
                cur.execute("UPDATE devices SET state=?, state_since_ns=? WHERE id=?",
                            (ev.state, ev.time_ns, key))
            elif isinstance(ev, Lost):
                cur.execute("UPDATE devices SET lost=lost+? WHERE id=?", (ev.count, key))
            else:
                cur.execute("UPDATE devices SET duplicates=duplicates+?, out_of_order=out_of_order+? "
                            "WHERE id=?", (ev.duplicates, ev.out_of_order, key))

    def resume(self, since_ns: int) -> list[ResumeBoot]:
        """The boots seen since ``since_ns``, with the seqs missing from storage."""
        assert self.conn is not None
        out: list[ResumeBoot] = []
        rows = self.conn.execute(
            "SELECT d.site, d.device, d.id, b.boot_id, b.max_seq, b.announced_seq, b.stored, "
            "b.last_seen_ns, d.state FROM boots b JOIN devices d ON d.id = b.device_key "
            "WHERE b.last_seen_ns >= ?", (since_ns,)).fetchall()
        for site, device, key, boot, max_seq, announced, stored, last_ns, state in rows:
            top = max(max_seq, announced)
            missing: list[tuple[int, int]] = []
            if top > stored:
                expect = 1
                # once trim() deleted some of a boot's frames (fewer kept than stored), the seqs
                # below its oldest frame kept may be those, not lost: they are not asked for
                # again (a loss there was counted when it happened)
                trimmed = self.retention_ns is not None and self.conn.execute(
                    "SELECT count(*) FROM frames WHERE device_key=? AND boot_id=?",
                    (key, boot)).fetchone()[0] < stored
                for (seq,) in self.conn.execute(
                        "SELECT seq FROM frames WHERE device_key=? AND boot_id=? ORDER BY seq",
                        (key, boot)):
                    if trimmed:
                        expect, trimmed = seq, False
                    if seq > expect:
                        missing.append((expect, seq - 1))
                    expect = seq + 1
                if top >= expect and not trimmed:  # (none kept: the boot's frames may all be gone)
                    missing.append((expect, top))
            out.append(ResumeBoot(site, device, to_u64(boot), top, missing, last_ns, state))
        return out


def status(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """One dict per device: presence and loss counters, computed from what is stored."""
    rows = conn.execute(
        "SELECT d.site, d.device, d.state, max(d.last_seen_ns, coalesce(max(b.last_seen_ns), 0)), "
        # exact whatever the seqs: SQLite's integer sum() fails past 2^63 (two boots near the
        # top of the seq range), its total() is a float; group_concat and Python's int add up
        "coalesce(group_concat(b.stored), ''), "
        "coalesce(group_concat(max(b.max_seq, b.announced_seq) - b.stored), ''), "
        "d.duplicates, max(count(b.boot_id) - 1, 0), d.out_of_order, d.lost, d.heartbeat_s, "
        "d.state_since_ns, d.clock_offset_s, d.clock_synced "
        "FROM devices d LEFT JOIN boots b ON b.device_key = d.id "
        "GROUP BY d.id ORDER BY d.site, d.device").fetchall()
    keys = ("site", "device", "state", "last_seen_ns", "frames", "gaps", "duplicates", "restarts",
            "out_of_order", "lost", "heartbeat_s", "state_since_ns", "clock_offset_s", "clock_synced")
    return [dict(zip(keys, (*r[:4], _total(r[4]), _total(r[5]), *r[6:]), strict=True)) for r in rows]


def _total(concatenated: str) -> int:
    return sum(int(x) for x in concatenated.split(",")) if concatenated else 0


@dataclass(frozen=True)
class QueryFilter:
    device: str | None = None
    sensor: str | None = None
    metric: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    limit: int | None = None


QUERY_PAGE = 10_000  # rows read in one transaction by query()


def query(conn: sqlite3.Connection, f: QueryFilter) -> Iterator[tuple[Any, ...]]:
    """Rows ``(time_ns, device, sensor, metric, value, unit, boot_id, seq)`` by time.

    Read QUERY_PAGE rows a transaction, each page after the last row of the one before: a
    caller that takes its time (output into a pager) holds no snapshot meanwhile, which
    would keep every frame written since in the WAL.  A frame stored while this runs is in
    the result if it sorts after the rows read by then."""
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
    select = (
        "SELECT f.time_ns, d.device, f.sensor, s.metric, v.value, NULLIF(s.unit, ''), f.boot_id, "
        "f.seq, f.id, v.series_id "
        "FROM frames f JOIN devices d ON d.id = f.device_key "
        "JOIN samples v ON v.frame_id = f.id JOIN series s ON s.id = v.series_id"
    )
    order = " ORDER BY f.time_ns, f.id, s.metric, v.series_id LIMIT ?"
    first = select + (" WHERE " + " AND ".join(where) if where else "") + order
    # f.time_ns >= ? lets the page start in the time index; the row value says where exactly
    after = " AND ".join([*where, "f.time_ns >= ?",
                          "(f.time_ns, f.id, s.metric, v.series_id) > (?, ?, ?, ?)"])
    nxt = select + " WHERE " + after + order
    left = f.limit
    key: tuple[Any, ...] | None = None
    while left is None or left > 0:
        n = QUERY_PAGE if left is None else min(QUERY_PAGE, left)
        if key is None:
            rows = conn.execute(first, [*args, n]).fetchall()
        else:
            rows = conn.execute(nxt, [*args, key[0], *key, n]).fetchall()
        for row in rows:
            yield row[:6] + (to_u64(row[6]), row[7])
        if len(rows) < n:
            return
        if left is not None:
            left -= n
        last = rows[-1]
        key = (last[0], last[8], last[3], last[9])
