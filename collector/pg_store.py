"""The PostgreSQL writer and readers: SQLite's logical schema, written with binary COPY.

One batch is one transaction, in this order (every collector takes its locks
in the same order, so two collectors writing the same frames wait for each
other instead of deadlocking):

1. devices and series new to this process are upserted first, in a short
   transaction of their own, sorted (their ids are cached);
2. the batch's frames, each with its samples as two arrays (series ids and
   values), are COPYed (binary) into a temporary staging table;
3. ``INSERT INTO frames ... SELECT ... ORDER BY key ON CONFLICT DO NOTHING
   RETURNING`` keeps exactly the frames not stored yet, by this or any other
   collector: the ``(device, boot_id, seq)`` rule;
4. ``boots`` is upserted with the counts of the rows actually inserted (from
   ``RETURNING``), so ``stored`` stays exact when collectors compete;
5. ``devices.last_seen_ns`` and ``heartbeat_s``, rows locked in id order.

Errors are psycopg's; :func:`classify` sorts them for the sink into
``outage`` (connection lost, server shutting down or out of resources: hold
the data and reconnect), ``transient`` (deadlock, serialization: try the batch
again) and ``permanent``.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import psycopg
from psycopg import sql

from sensorwire.collector.events import Event, Lost, Presence
from sensorwire.collector.frames import CheckedFrame
from sensorwire.collector.frames import Layout as SampleLayout
from sensorwire.collector.pg_schema import Layout, MigrationError, Policy, migrate
from sensorwire.collector.sqlite_store import QueryFilter, StoreError, to_i64, to_u64
from sensorwire.collector.tracking import ResumeBoot

log = logging.getLogger(__name__)

Conn = psycopg.Connection[tuple[Any, ...]]
ErrorClass = Literal["outage", "transient", "permanent"]

_CACHE_MAX = 100_000
# the writer's session, set after the schema is ready: a write waiting on another session's
# lock, or running for longer than any batch should, fails and is held as in an outage (and
# written again), rather than holding the sink past a clean stop's wait of 10 s
SESSION_TIMEOUTS = {"lock_timeout": "5s", "statement_timeout": "30s"}
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
# sw_stage_frames: 9 fields; device_key, boot_id, seq, then the length of the sensor text
_STAGE_HEAD = struct.Struct(">hiqiqiqi").pack
_STAGE_TIMES = struct.Struct(">iqiqii").pack   # time_ns, received_ns, flags
_INT8_OID, _FLOAT8_OID = 20, 701
_ARRAYS: dict[tuple[int, int], struct.Struct] = {}


def _array(n: int, items: Sequence[int] | Sequence[float], oid: int) -> bytes:
    """A one-dimensional int8[] or float8[] in COPY's binary format, with its field length."""
    st = _ARRAYS.get((n, oid))
    if st is None:
        elem = "iq" if oid == _INT8_OID else "id"
        if n == 0:
            st = struct.Struct(">iiii")
        else:
            st = struct.Struct(">iiiiii" + elem * n)
        _ARRAYS[(n, oid)] = st
    if n == 0:
        return st.pack(12, 0, 0, oid)
    args: list[int | float] = [8] * (2 * n)
    args[1::2] = items
    return st.pack(st.size - 4, 1, 0, oid, n, 1, *args)


# insert the staged frames not stored yet (sorted: collectors lock keys in one order);
# what was inserted, per boot
_INSERT_FRAMES = """
WITH ins AS (
    INSERT INTO frames (device_key, boot_id, seq, sensor, time_ns, received_ns, flags,
                        sample_series, sample_values)
    SELECT device_key, boot_id, seq, sensor, time_ns, received_ns, flags, sample_series,
           sample_values
    FROM sw_stage_frames ORDER BY device_key, boot_id, seq
    ON CONFLICT DO NOTHING
    RETURNING device_key, boot_id, seq, cardinality(sample_series) AS n)
SELECT device_key, boot_id, max(seq), count(*), sum(n)::bigint FROM ins GROUP BY 1, 2
"""

_UPSERT_BOOTS = """
INSERT INTO boots (device_key, boot_id, max_seq, stored, announced_seq, first_seen_ns, last_seen_ns)
SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[],
                     %s::bigint[], %s::bigint[]) ORDER BY 1, 2
ON CONFLICT (device_key, boot_id) DO UPDATE SET
    max_seq = GREATEST(boots.max_seq, EXCLUDED.max_seq),
    stored = boots.stored + EXCLUDED.stored,
    announced_seq = GREATEST(boots.announced_seq, EXCLUDED.announced_seq),
    last_seen_ns = GREATEST(boots.last_seen_ns, EXCLUDED.last_seen_ns)
"""

_DEFAULTS = {
    "connect_timeout": "5",
    "application_name": "sensorwire-collector",
    # find a dead server or a broken link in about half a minute rather than hours
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}


def to_i32(u: int) -> int:
    """A frame's ``flags`` (uint32 on the wire) as the signed ``integer`` with the same bits."""
    return u - (1 << 32) if u >= 1 << 31 else u


def safe_dsn(dsn: str) -> str:
    """The DSN for logs: the password masked; an unparsable one is not shown at all."""
    from sensorwire.collector.pg_config import parse_dsn, reveals, spilled

    try:
        params = parse_dsn(dsn)
    except ValueError:
        return "<an unparsable DSN>"
    suspects = spilled(dsn)  # part of a password libpq split elsewhere (an unencoded '@')
    parts = [f"{k}={'***' if k == 'password' or reveals(v, suspects) else v}"
             for k, v in params.items()]
    return " ".join(parts)


# refusals that say nothing about the frames: the whole database cannot take writes now (a
# table renamed or dropped under us, a privilege revoked, a read-only transaction or standby,
# a column missing, out of disk or memory, an admin shutdown, a statement or lock timeout):
# what is written is held, as in an outage, until it can be written again
# 42804 and 42883 are a column of another type than sensorwire gave it ("COALESCE types boolean
# and integer cannot be matched", "operator does not exist: integer = text"): every frame was
# refused, and dropped, until the column was put back
_DATABASE_WIDE = ("42P01", "42501", "25006", "42703", "42804", "42883",
                  "55P03")  # 55P03: lock_timeout
_DATABASE_WIDE_CLASSES = ("53", "57", "58", "08")  # 57014, statement_timeout, is in 57


def classify(exc: BaseException, conn: Conn | None) -> ErrorClass:
    """What a failed write means: ``transient`` (try again now), ``outage`` (hold the data
    and reconnect) or ``permanent`` (these frames cannot be stored; anything not from
    psycopg, e.g. a value that cannot be encoded, is permanent)."""
    if not isinstance(exc, psycopg.Error):
        return "permanent"
    state = exc.sqlstate or ""
    if state.startswith("40"):  # deadlock_detected, serialization_failure
        return "transient"
    if conn is None or conn.broken or conn.closed or isinstance(exc, psycopg.OperationalError):
        return "outage"
    if isinstance(exc, psycopg.InterfaceError):
        return "outage"
    if state in _DATABASE_WIDE or state[:2] in _DATABASE_WIDE_CLASSES:
        return "outage"
    return "permanent"


# the other sessions' locks on the tables of the search_path's schema that block a write
# (or, ACCESS EXCLUSIVE, a read): LOCK TABLE, ALTER TABLE, VACUUM FULL, CREATE INDEX, ...
_LOCK_HOLDERS = """
SELECT a.pid, a.usename, a.application_name, a.state,
       extract(epoch FROM now() - coalesce(a.xact_start, a.query_start))::bigint,
       string_agg(DISTINCT l.mode || ' on ' || c.relname, ', '), left(a.query, 200)
FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.granted AND l.locktype = 'relation' AND l.pid <> pg_backend_pid()
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
  AND l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
GROUP BY 1, 2, 3, 4, 5, 7 ORDER BY 1 LIMIT 3
"""


def lock_holders(conn: Conn | None) -> str:
    """For the log, after a lock timeout: who holds the lock (pid, role, application, what it
    runs), e.g. ``: pid 4242 (role admin, psql, idle in transaction for 75 s, holding
    AccessExclusiveLock on frames: LOCK TABLE frames IN ACCESS EXCLUSIVE MODE)``; "" when no
    such session is seen now (or pg_locks cannot be read)."""
    if conn is None or conn.closed or conn.broken:
        return ""
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(_LOCK_HOLDERS)
            rows = cur.fetchall()
    except psycopg.Error:
        return ""
    return "".join(
        f"{': ' if i == 0 else '; '}pid {pid} (role {user}, {app or 'no application_name'}, "
        f"{state} for {secs} s, holding {locks}: {' '.join(str(q).split())})"
        for i, (pid, user, app, state, secs, locks, q) in enumerate(rows))


def set_timeouts(conn: Conn, dsn: str) -> None:
    """:data:`SESSION_TIMEOUTS` for the session of ``conn``, but those the DSN sets itself."""
    for name, value in SESSION_TIMEOUTS.items():
        if name not in dsn:  # a DSN's own options=-c ... wins
            conn.execute(sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))


def connect(dsn: str, schema: str | None = None, autocommit: bool = False) -> Conn:
    """A connection with keepalives and timeouts; ``search_path`` set to ``schema`` if given.

    libpq reads the password as usual: from the DSN, ``$PGPASSWORD`` or the passfile.
    An unparsable DSN raises ``psycopg.ProgrammingError`` saying so without libpq's message
    (which quotes the DSN); the text of any other error has the DSN's password scrubbed out.
    """
    from sensorwire.collector.pg_config import parse_dsn, scrub

    try:
        params: dict[str, Any] = dict(parse_dsn(dsn))
    except ValueError as exc:
        raise psycopg.ProgrammingError(str(exc)) from None
    for k, v in _DEFAULTS.items():
        params.setdefault(k, v)
    try:
        conn: Conn = psycopg.connect(autocommit=autocommit, **params)
    except psycopg.Error as exc:
        exc.args = (scrub(str(exc), dsn),)  # the same error (class, sqlstate), its text scrubbed
        raise
    if schema is not None:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        if not autocommit:
            conn.commit()
    return conn


class PgWriter:
    """Writes batches of frames, one transaction each.  One thread only."""

    def __init__(self, dsn: str, schema: str | None = None, policy: Policy | None = None) -> None:
        self.dsn = dsn
        self.schema = schema
        self.policy = policy or Policy()
        self.conn: Conn | None = None
        self.layout: Layout | None = None
        self._devices: dict[str, int] = {}
        self._series: dict[tuple[int, str, str, str], int] = {}
        # (device key, sensor, sample layout) -> its series ids (the first of a metric named twice)
        self._layout_ids: dict[tuple[int, str, SampleLayout], list[int]] = {}
        self.frames_stored = 0
        self.samples_stored = 0
        self.already_stored = 0  # frames another collector (or an earlier run) had stored

    # -- lifecycle --------------------------------------------------------------------
    def open(self) -> None:
        """Connect and migrate; psycopg errors propagate (the sink classifies them)."""
        conn = connect(self.dsn, self.schema)
        try:
            encoding = conn.info.parameter_status("server_encoding")
            if encoding not in (None, "UTF8"):
                # names and units are Unicode: LATIN1 and the like refuse some of them, and a
                # refused frame would cost the good frames written with it
                raise MigrationError(f"the database's encoding is {encoding}; sensorwire stores "
                                     "names and units as UTF-8: create the database with "
                                     "ENCODING 'UTF8' (e.g. createdb -E UTF8 -T template0 NAME)")
            # set before the look at the tables, not only after it: a session holding a lock
            # on meta or schema_migrations (LOCK TABLE, VACUUM FULL, a long ALTER TABLE) once
            # hung a reconnect, silently, until the watchdog killed the collector and what it
            # held in memory; now the open fails, saying who holds it (a reconnect is tried again,
            # a start exits 1); migrate() lifts the bounds for its DDL, which may have to wait
            set_timeouts(conn, self.dsn)
            conn.commit()
            try:
                self.layout = migrate(conn, self.schema, self.policy)
            except psycopg.errors.LockNotAvailable:
                raise MigrationError(
                    f"gave up waiting (lock_timeout) for a lock another session holds on the "
                    f"tables{lock_holders(conn)} (end that transaction if it should not be "
                    "open)") from None
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS sw_stage_frames (device_key bigint, "
                         "boot_id bigint, seq bigint, sensor text, time_ns bigint, received_ns bigint, "
                         "flags integer, sample_series bigint[], sample_values float8[]) "
                         "ON COMMIT DELETE ROWS")
            conn.commit()
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None

    def reset(self) -> None:
        """Forget the connection (after an error) and the id caches."""
        self.close()
        self.forget_ids()

    def forget_ids(self) -> None:
        """Forget the device and series ids cached from the database (after a refusal: rows
        may have been deleted under us, and a cached id would be refused for ever)."""
        self._devices.clear()
        self._series.clear()
        self._layout_ids.clear()

    # -- ids ----------------------------------------------------------------------------
    def _upsert_devices(self, conn: Conn, new: dict[str, tuple[str, int]]) -> None:
        names = sorted(new)
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                "INSERT INTO devices (device, site, first_seen_ns, last_seen_ns) "
                "SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[]) "
                "ORDER BY 1 ON CONFLICT (device) DO UPDATE SET site = EXCLUDED.site "
                "WHERE devices.site <> EXCLUDED.site",  # a device moved: as SQLite does
                (names, [new[n][0] for n in names], [new[n][1] for n in names],
                 [new[n][1] for n in names]))
            cur.execute("SELECT device, id FROM devices WHERE device = ANY(%s)", (names,))
            found: dict[str, int] = dict(cur.fetchall())
        if len(self._devices) + len(found) > _CACHE_MAX:
            self._devices.clear()
        self._devices.update(found)

    def _upsert_series(self, conn: Conn, new: set[tuple[int, str, str, str]]) -> None:
        keys = sorted(new)
        cols = list(zip(*keys, strict=True))
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                "INSERT INTO series (device_key, sensor, metric, unit) "
                "SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[]) "
                "ORDER BY 1, 2, 3, 4 ON CONFLICT DO NOTHING",
                [list(c) for c in cols])
            cur.execute(
                "SELECT s.device_key, s.sensor, s.metric, s.unit, s.id FROM series s "
                "JOIN unnest(%s::bigint[], %s::text[], %s::text[], %s::text[]) "
                "AS k(device_key, sensor, metric, unit) USING (device_key, sensor, metric, unit)",
                [list(c) for c in cols])
            rows = cur.fetchall()
        if len(self._series) + len(rows) > _CACHE_MAX:
            self._series.clear()
        for d, sensor, metric, unit, sid in rows:
            self._series[(d, sensor, metric, unit)] = sid

    # -- frames ---------------------------------------------------------------------------
    def write(self, batch: Sequence[tuple[CheckedFrame, int]]) -> None:
        conn = self.conn
        if conn is None:
            raise psycopg.OperationalError("not connected")
        devices = self._devices
        new_devices = {f.device_id: (f.site, r) for f, r in batch if f.device_id not in devices}
        if new_devices:
            self._upsert_devices(conn, new_devices)
        # per (device_key, boot_id): [announced seq, first seen, last seen]
        boots: dict[tuple[int, int], list[int]] = {}
        last_seen: dict[int, int] = {}
        heartbeat_s: dict[int, float] = {}
        clocks: dict[int, tuple[float, bool]] = {}
        stage: list[bytes] = [_COPY_HEADER]
        later: list[tuple[CheckedFrame, int, int, int]] = []  # frames with series new to this process
        n_data = 0
        for frame, received in batch:
            dev = devices[frame.device_id]
            last_seen[dev] = received
            boot = to_i64(frame.boot_id)
            b = boots.get((dev, boot))
            if b is None:
                b = boots[(dev, boot)] = [0, received, received]
            b[2] = received
            if frame.seq == 0:
                hb = frame.heartbeat
                assert hb is not None  # seq 0: a heartbeat
                if hb.last_seq > b[0]:
                    b[0] = hb.last_seq
                if hb.interval_s:
                    heartbeat_s[dev] = hb.interval_s
                clocks[dev] = ((frame.time_unix_nano - received) / 1e9, hb.clock_synced)
                continue
            n_data += 1
            row = self._stage_row(frame, dev, boot, received)
            if row is None:
                later.append((frame, dev, boot, received))
            else:
                stage.append(row)
        if later:
            self._upsert_series(conn, {(dev, f.sensor, metric, unit)
                                       for f, dev, _, _ in later for metric, unit in f.layout.pairs})
            for frame, dev, boot, received in later:
                row = self._stage_row(frame, dev, boot, received)
                assert row is not None
                stage.append(row)
        stage.append(_COPY_TRAILER)

        stored: dict[tuple[int, int], tuple[int, int]] = {}  # (dev, boot) -> (max seq, count)
        n_samples = 0
        with conn.transaction(), conn.cursor() as cur:
            if n_data:
                with cur.copy("COPY sw_stage_frames FROM STDIN (FORMAT BINARY)") as cp:
                    cp.write(b"".join(stage))
                cur.execute(_INSERT_FRAMES)
                for dev, boot, top, count, samples in cur.fetchall():
                    stored[(dev, boot)] = (top, count)
                    n_samples += samples
            keys = sorted(boots)
            cur.execute(_UPSERT_BOOTS, (
                [d for d, _ in keys], [b for _, b in keys],
                [stored.get(k, (0, 0))[0] for k in keys], [stored.get(k, (0, 0))[1] for k in keys],
                [boots[k][0] for k in keys], [boots[k][1] for k in keys],
                [boots[k][2] for k in keys]))
            ids = sorted(last_seen)
            cur.execute("SELECT id FROM devices WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (ids,))
            cur.execute(
                "UPDATE devices d SET last_seen_ns = GREATEST(d.last_seen_ns, v.t), "
                "heartbeat_s = coalesce(v.hb, d.heartbeat_s), "
                "clock_offset_s = coalesce(v.off, d.clock_offset_s), "
                "clock_synced = coalesce(v.sync, d.clock_synced) "
                "FROM unnest(%s::bigint[], %s::bigint[], %s::float8[], %s::float8[], %s::bool[]) "
                "AS v(id, t, hb, off, sync) WHERE d.id = v.id",
                (ids, [last_seen[i] for i in ids], [heartbeat_s.get(i) for i in ids],
                 [clocks[i][0] if i in clocks else None for i in ids],
                 [clocks[i][1] if i in clocks else None for i in ids]))
        n_frames = sum(c for _, c in stored.values())
        self.frames_stored += n_frames
        self.samples_stored += n_samples
        self.already_stored += n_data - n_frames

    def _stage_row(self, frame: CheckedFrame, dev: int, boot: int, received: int) -> bytes | None:
        """One binary COPY tuple of the staging table; None if a series has no id yet."""
        sensor = frame.sensor
        layout = frame.layout
        key = (dev, sensor, layout)
        sids = self._layout_ids.get(key)
        if sids is None:
            series = self._series
            pairs = layout.pairs if layout.unique is None else [layout.pairs[i] for i in layout.unique]
            try:
                sids = [series[(dev, sensor, metric, unit)] for metric, unit in pairs]
            except KeyError:
                return None
            if len(self._layout_ids) >= _CACHE_MAX:
                self._layout_ids.clear()
            self._layout_ids[key] = sids
        values = frame.values
        if layout.unique is not None:  # the same metric twice in one frame: the first counts
            values = [values[i] for i in layout.unique]
        n = len(sids)
        name = sensor.encode()
        return b"".join((
            _STAGE_HEAD(9, 8, dev, 8, boot, 8, frame.seq, len(name)), name,
            _STAGE_TIMES(8, frame.time_unix_nano, 8, received, 4, to_i32(frame.flags)),
            _array(n, sids, _INT8_OID), _array(n, values, _FLOAT8_OID)))

    # -- events ---------------------------------------------------------------------------
    def event(self, ev: Event) -> None:
        self.events([ev])

    def events(self, evs: Sequence[Event]) -> None:
        """Record presence transitions, frames lost for good, and drop counts, in one
        transaction (a fleet's start, or a flood of made-up devices, brings thousands at once).

        Idempotent across collectors where it can be: a transition to the state the
        device already has is not recorded again, and a lost range is counted once.  The
        devices' rows are locked in id order first, as the frame writer does.
        """
        conn = self.conn
        if conn is None:
            raise psycopg.OperationalError("not connected")
        if not evs:
            return
        now = time.time_ns()
        devices = {ev.device: k for ev in evs if (k := self._devices.get(ev.device)) is not None}
        new = {ev.device: (ev.site, now) for ev in evs if ev.device not in devices}
        if new:  # the cache may be cleared when it is full: the keys are kept here
            self._upsert_devices(conn, new)
            devices.update((d, self._devices[d]) for d in new)
        counts: dict[int, list[int]] = {}
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT id FROM devices WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                        (sorted({devices[ev.device] for ev in evs}),))
            for ev in evs:
                key = devices[ev.device]
                if isinstance(ev, Presence):
                    cur.execute("UPDATE devices SET state = %s, state_since_ns = %s "
                                "WHERE id = %s AND state IS DISTINCT FROM %s",
                                (ev.state, ev.time_ns, key, ev.state))
                    if cur.rowcount == 1:
                        cur.execute("INSERT INTO presence (device_key, time_ns, state, previous) "
                                    "VALUES (%s, %s, %s, %s)",
                                    (key, ev.time_ns, ev.state, ev.previous))
                elif isinstance(ev, Lost):
                    cur.execute("INSERT INTO lost_ranges VALUES (%s, %s, %s, %s) "
                                "ON CONFLICT DO NOTHING", (key, to_i64(ev.boot_id), ev.first, ev.last))
                    if cur.rowcount == 1:
                        cur.execute("UPDATE devices SET lost = lost + %s WHERE id = %s",
                                    (ev.count, key))
                else:  # counts: one update a device for all of them
                    c = counts.setdefault(key, [0, 0])
                    c[0] += ev.duplicates
                    c[1] += ev.out_of_order
            if counts:
                ids = sorted(counts)
                cur.execute("UPDATE devices d SET duplicates = d.duplicates + v.dup, "
                            "out_of_order = d.out_of_order + v.ooo "
                            "FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS v(id, dup, ooo) "
                            "WHERE d.id = v.id",
                            (ids, [counts[i][0] for i in ids], [counts[i][1] for i in ids]))

    # -- start-up -------------------------------------------------------------------------
    def resume(self, since_ns: int) -> list[ResumeBoot]:
        """The boots seen since ``since_ns``, with the seqs missing from storage."""
        out: list[ResumeBoot] = []
        # a connection of its own: the collector calls this from its main thread
        with connect(self.dsn, self.schema) as conn, conn.cursor() as cur:
            # bounded as the writer is: a lock held on boots or devices (LOCK TABLE, VACUUM FULL)
            # once hung the collector's start, without a word, until it was released
            set_timeouts(conn, self.dsn)
            try:
                self._resume(cur, since_ns, out)
            except psycopg.errors.LockNotAvailable as exc:
                conn.rollback()
                exc.args = (f"{' '.join(str(exc).split())}: another session holds a lock on the "
                            f"tables{lock_holders(conn)}",)
                raise
        return out

    def _resume(self, cur: psycopg.Cursor[tuple[Any, ...]], since_ns: int,
                out: list[ResumeBoot]) -> None:
        cur.execute(
            "SELECT d.site, d.device, d.id, b.boot_id, b.max_seq, b.announced_seq, b.stored, "
            "b.last_seen_ns, d.state FROM boots b JOIN devices d ON d.id = b.device_key "
            "WHERE b.last_seen_ns >= %s", (since_ns,))
        for site, device, key, boot, max_seq, announced, stored, last_ns, state in cur.fetchall():
            top = max(max_seq, announced)
            missing: list[tuple[int, int]] = []
            if top > stored:
                cur.execute(_GAPS, (key, boot, top))
                missing = [(int(a), int(b)) for a, b in cur.fetchall()]
            out.append(ResumeBoot(site, device, to_u64(boot), top, missing, last_ns, state))


# the holes in one boot's seqs 1..top, computed in the server
_GAPS = """
WITH edges AS (
    SELECT seq, lead(seq) OVER (ORDER BY seq) AS next FROM (
        SELECT 0::numeric AS seq
        UNION ALL SELECT seq::numeric FROM frames WHERE device_key = %s AND boot_id = %s
        UNION ALL SELECT %s::numeric + 1) AS x)
SELECT seq + 1, next - 1 FROM edges WHERE next > seq + 1 ORDER BY seq
"""


# -- readers ------------------------------------------------------------------------------
def status(conn: Conn) -> list[dict[str, Any]]:
    """One dict per device, as :func:`sensorwire.collector.sqlite_store.status`."""
    rows = conn.execute(
        "SELECT d.site, d.device, d.state, d.last_seen_ns, "
        "coalesce(sum(b.stored), 0), "  # numeric: seqs near 2^63 over boots pass bigint
        "coalesce(sum(GREATEST(b.max_seq, b.announced_seq) - b.stored), 0), "
        "d.duplicates, GREATEST(count(b.boot_id) - 1, 0)::bigint, d.out_of_order, d.lost, "
        "d.heartbeat_s, d.state_since_ns, d.clock_offset_s, d.clock_synced "
        "FROM devices d LEFT JOIN boots b ON b.device_key = d.id "
        "GROUP BY d.id ORDER BY d.site, d.device").fetchall()
    keys = ("site", "device", "state", "last_seen_ns", "frames", "gaps", "duplicates", "restarts",
            "out_of_order", "lost", "heartbeat_s", "state_since_ns", "clock_offset_s", "clock_synced")
    return [dict(zip(keys, (r[0], r[1], r[2], r[3], int(r[4]), int(r[5]), *r[6:]), strict=True))
            for r in rows]


def query(conn: Conn, f: QueryFilter) -> Iterator[tuple[Any, ...]]:
    """Rows ``(time_ns, device, sensor, metric, value, unit, boot_id, seq)`` by time."""
    where: list[str] = []
    args: list[Any] = []
    for cond, value in (("d.device = %s", f.device), ("f.sensor = %s", f.sensor),
                        ("s.metric = %s", f.metric), ("f.time_ns >= %s", f.since_ns),
                        ("f.time_ns < %s", f.until_ns)):
        if value is not None:
            where.append(cond)
            args.append(value)
    q = ("SELECT f.time_ns, d.device, f.sensor, s.metric, u.value, NULLIF(s.unit, ''), f.boot_id, "
         "f.seq FROM frames f JOIN devices d ON d.id = f.device_key "
         "CROSS JOIN LATERAL unnest(f.sample_series, f.sample_values) AS u(series_id, value) "
         "JOIN series s ON s.id = u.series_id")
    if where:
        q += " WHERE " + " AND ".join(where)
    q += " ORDER BY f.time_ns, f.id, s.metric"
    if f.limit is not None:
        q += " LIMIT %s"
        args.append(f.limit)
    # a server-side cursor: millions of rows stream instead of filling memory
    with conn.cursor(name="sensorwire_query") as cur:
        cur.itersize = 10_000
        cur.execute(q, args)
        for row in cur:
            yield row[:6] + (to_u64(row[6]), row[7])


@contextlib.contextmanager
def store_errors(dsn: str, conn: Conn | None = None) -> Iterator[None]:
    """psycopg errors inside become :class:`StoreError` naming the DSN (password masked); a
    lock timeout also names who holds the lock (a reader on ``conn``)."""
    try:
        yield
    except psycopg.Error as exc:
        holders = ""
        if isinstance(exc, psycopg.errors.LockNotAvailable) and conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            holders = (f" (another session holds a lock on the tables{lock_holders(conn)}: "
                       "try again when it is released)")
        raise StoreError(f"{safe_dsn(dsn)}: {' '.join(str(exc).split())}{holders}") from None


READER_LOCK_TIMEOUT = "10s"  # status and query: a table locked by another session (VACUUM FULL)


def connect_readonly(dsn: str) -> Conn:
    """A reader's connection; errors become :class:`StoreError` with the DSN (password masked)."""
    try:
        conn = connect(dsn)
        conn.read_only = True
        if "lock_timeout" not in dsn:  # a DSN's own options=-c ... wins
            # not waiting for ever, without a word, on a table another session locked
            conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(READER_LOCK_TIMEOUT)))
            conn.commit()
        row = conn.execute("SELECT to_regclass('devices') IS NOT NULL AND "
                           "to_regclass('schema_migrations') IS NOT NULL").fetchone()
    except psycopg.Error as exc:
        raise StoreError(f"{safe_dsn(dsn)}: {str(exc).strip()}") from None
    if not (row and row[0]):
        conn.close()
        raise StoreError(f"{safe_dsn(dsn)}: no sensorwire tables here (is the DSN right? is the "
                         "schema in its search_path, e.g. options=-csearch_path=NAME? the collector "
                         "creates them)")
    return conn
