"""``[storage] kind = "postgres"``: PostgreSQL (and TimescaleDB), written with binary COPY.

The :class:`~sensorwire.collector.sinks.SinkRunner` thread is the writer: the
receive loop never waits on the database.  At start the database must answer
(a wrong DSN, password or database name stops the collector with a clear
message, :class:`~sensorwire.collector.sqlite_store.StoreError`, exit status 1);
once running, an outage is ridden out here, not in the runner:

- a write that fails because the connection is gone (or the server is shutting
  down, or out of resources) *parks* its batch in a
  :class:`~sensorwire.collector.backlog.Backlog` (memory up to ``buffer_max``
  frames, then the disk spool in ``spool_dir`` up to ``spool_max_mb``) and
  returns, so the runner neither retries nor drops it;
- while anything is parked, new batches and events are parked behind it, and
  each ``write``, ``event`` or idle ``tick`` tries to reconnect (backoff from
  0.5 s doubling to 5 s) and then writes the backlog, oldest first, for at most
  about a second per call, so the runner's queue keeps moving;
- what exceeds both bounds is dropped, counted and logged (WARNING).

The runner counts a parked batch as written; this sink logs what it held,
wrote and dropped (and its last line says so), and shows it to the runner as
``held`` and ``lost`` (for the metrics and the summary).  Deadlocks and
serialization failures are raised as retryable
:class:`~sensorwire.collector.sinks.SinkError` (the runner tries again); a
refusal that concerns the whole database (a table renamed, a privilege
revoked, a lock or statement timeout: :func:`~sensorwire.collector.pg_store.classify`)
is an outage; anything else the database refuses is permanent: tried once
more with fresh ids, then raised, and the runner writes the batch again in
halves.  Frames held through an outage are written back the same way, here.

Events (presence, lost ranges, counts) come with the batches
(``events_with_batches``) and are written in one transaction ahead of each.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence

import psycopg

from sensorwire.collector.backlog import Backlog, BacklogError, Piece
from sensorwire.collector.config import StorageConfig
from sensorwire.collector.events import Event
from sensorwire.collector.pg_config import spool_folder
from sensorwire.collector.pg_schema import MigrationError, Policy
from sensorwire.collector.pg_store import PgWriter, classify, lock_holders, safe_dsn
from sensorwire.collector.sinks import Item, SinkError
from sensorwire.collector.sqlite_store import StoreError
from sensorwire.collector.tracking import ResumeBoot
from sensorwire.logs import RateLimited

log = logging.getLogger(__name__)
_retry_log = RateLimited(log, period_s=10.0)
_refused_log = RateLimited(log, period_s=10.0)

RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 5.0
DRAIN_BUDGET_S = 1.0   # backlog written per write/tick call, at most about this long
CLOSE_BUDGET_S = 4.0   # at shutdown (the runner waits 10 s for the whole close)
CANCEL_TIMEOUT_S = 3.0  # interrupt(): for the server to take the cancel request
HALVING_BUDGET = 32    # failed writes of one held piece before what still fails is refused
FORGET_IDS_EVERY_S = 1.0  # after a refusal, cached ids are dropped and the write tried again


class PostgresSink:
    name = "postgres"
    # the runner hands events over before each batch; they are written together, in one
    # transaction ahead of the batch's (a fleet's start, or a flood of made-up devices,
    # brings thousands, and one transaction each once held every device's frames back)
    events_with_batches = True

    def __init__(self, storage: StorageConfig) -> None:
        assert storage.dsn is not None
        self.dsn = storage.dsn
        self.where = safe_dsn(storage.dsn) + (f" schema {storage.schema}" if storage.schema else "")
        self.writer = PgWriter(storage.dsn, storage.schema, Policy(
            storage.timescaledb, storage.retention_days, storage.compress_after_days))
        self.backlog = Backlog(storage.buffer_max, spool_folder(storage),
                               int(storage.spool_max_mb * 1024 * 1024))
        self._spool_chosen = storage.spool_dir is not None  # else the service's default
        self.batch_max = storage.batch_max
        self.connected = False
        self.failed = 0              # frames the database refused for good (permanent errors)
        self._retry_at = 0.0
        self._delay = RECONNECT_MIN_S
        self._outage_since: float | None = None
        self._held_in_outage = 0
        self._refused_at_outage = 0
        self._events: list[Event] = []  # handed over, not written yet
        self._ids_forgotten_at = -FORGET_IDS_EVERY_S
        self._interrupted = False    # a stop waited too long: write nothing more, hold it all
        self._locked = False         # the last write gave up waiting for another session's lock

    # -- lifecycle --------------------------------------------------------------------------
    def open(self) -> None:
        try:
            self.backlog.open()
        except BacklogError as exc:
            if self._spool_chosen:
                raise StoreError(str(exc)) from None
            # the default folder (another collector of this unit has it): go on without one
            log.warning("postgres: no disk spool: the default folder cannot be used (%s); set "
                        "storage.spool_dir to a folder of this collector's own", exc)
            self.backlog.spool_dir = None
        try:
            self.writer.open()
        except MigrationError as exc:
            self.backlog.close()
            raise StoreError(f"postgres {self.where}: {exc}") from None
        except psycopg.Error as exc:
            self.backlog.close()
            raise StoreError(f"postgres {self.where}: cannot connect or create the tables: "
                             f"{_one_line(exc)}") from None
        self.connected = True
        spool = self.backlog.spool_dir
        log.info("postgres: connected to %s, layout %s; while the database is down, %s",
                 self.where, self.writer.layout,
                 f"frames past buffer_max are spooled to {spool}" if spool is not None else
                 f"frames past buffer_max ({self.backlog.buffer_max}) are dropped and counted: "
                 "set storage.spool_dir to keep them on disk")
        if self.backlog:
            self._recover()

    def interrupt(self) -> None:
        """From another thread, when a stop has waited too long for a write (a statement
        stuck on a lock, a database that stopped answering mid-query): cancel the statement
        running; what it was writing, and everything after it, is held (and spooled at
        close) instead of written."""
        self._interrupted = True
        conn = self.writer.conn
        if conn is None:
            return
        try:
            cancel = getattr(conn, "cancel_safe", None)  # psycopg 3.2; 3.1 has cancel() only
            if cancel is not None:
                cancel(timeout=CANCEL_TIMEOUT_S)
            else:
                conn.cancel()
        except Exception as exc:  # noqa: BLE001 - closed meanwhile, or the server is gone
            log.warning("postgres: could not cancel the running statement: %s", _one_line(exc))

    def close(self) -> None:
        try:
            self._write_events()
            if self.backlog and not self._interrupted:
                self._recover(budget_s=CLOSE_BUDGET_S)
        finally:
            self.backlog.close()
            self.writer.close()
            log.info("postgres: %d frames stored (%d samples), %d already stored by another "
                     "collector or an earlier run, %d dropped while the database was unreachable "
                     "(and %d events), %d refused by the database", self.writer.frames_stored,
                     self.writer.samples_stored, self.writer.already_stored, self.backlog.dropped,
                     self.backlog.dropped_events, self.failed)

    # -- the sink interface ---------------------------------------------------------------
    def write(self, batch: Sequence[Item]) -> None:
        self._write_events()
        if self.backlog or not self.connected or self._interrupted:
            self.backlog.park(list(batch))
            self._held_in_outage += len(batch)
            self._recover()
            return
        try:
            self.writer.write(batch)
        except Exception as exc:  # noqa: BLE001 - classified: psycopg's, or a frame we cannot encode
            if classify(exc, self.writer.conn) == "permanent" and self._may_forget_ids():
                # ids cached from the database may be stale (rows deleted under us): once more
                # with fresh ones before the runner writes the batch again in halves
                try:
                    self.writer.write(batch)
                    return
                except Exception as again:  # noqa: BLE001 - as above
                    exc = again
            self._failed(exc, list(batch))

    def event(self, ev: Event) -> None:
        """Kept for the next batch's write, or the next tick (see ``events_with_batches``)."""
        self._events.append(ev)

    def tick(self, now_ns: int) -> None:
        """Called by the runner at least every flush_interval_s: write the events handed over,
        and what is held once the database is back."""
        self._write_events()
        if self.backlog or not self.connected:
            self._recover()

    def _write_events(self) -> None:
        events, self._events = self._events, []
        if not events:
            return
        if self.backlog or not self.connected or self._interrupted:
            for ev in events:
                self.backlog.park_event(ev)
            return
        try:
            self.writer.events(events)
            return
        except Exception as exc:  # noqa: BLE001 - classified
            kind = classify(exc, self.writer.conn)
            if kind != "permanent":
                if kind == "outage":
                    self._lost(exc)
                for ev in events:  # written by _recover, in order, before later frames
                    self.backlog.park_event(ev)
                return
        for i, ev in enumerate(events):  # one refused: the others must not go with it
            if (stopped := self._event_held(ev)) is not None:
                for later in events[i + 1:]:
                    self.backlog.park_event(later)
                if classify(stopped, self.writer.conn) == "outage":
                    self._lost(stopped)
                return

    def resume(self, since_ns: int) -> list[ResumeBoot]:
        try:
            return self.writer.resume(since_ns)
        except psycopg.Error as exc:
            log.warning("postgres: cannot read the seq state to resume from (%s); starting "
                        "without it", _one_line(exc))
            return []

    @property
    def lost(self) -> int:
        """Frames this sink dropped or the database refused (the runner adds its own drops)."""
        return self.backlog.dropped + self.failed

    @property
    def held(self) -> int:
        return self.backlog.frames_in_memory + self.backlog.spool_pending

    # -- failure and recovery -------------------------------------------------------------
    def _failed(self, exc: BaseException, piece: Piece) -> None:
        kind = classify(exc, self.writer.conn)
        if kind == "outage":
            self._lost(exc)
            self._park(piece)
            return
        if kind == "transient":
            raise SinkError(f"postgres: {_one_line(exc)}", retryable=True) from None
        raise SinkError(f"postgres: the database refused the batch: {_one_line(exc)}",
                        retryable=False) from None

    def _park(self, piece: Piece) -> None:
        if isinstance(piece, list):
            self.backlog.park(piece)
            self._held_in_outage += len(piece)
        else:
            self.backlog.park_event(piece)

    def _lost(self, exc: BaseException) -> None:
        # a lock timeout is not a lost database, nor is a refusal by the tables themselves (one
        # renamed, dropped or retyped, a privilege revoked, a read-only database): the reconnect
        # succeeds and the write fails again, so each is said with who or what to look at, and
        # again every 10 s while it lasts, not once as "lost the database" followed by
        # "reconnected" every few seconds as if all were well; nor is an error from a database
        # that still answers (out of disk or memory, a statement timeout)
        state = (exc.sqlstate or "") if isinstance(exc, psycopg.Error) else ""
        conn = self.writer.conn
        usable = conn is not None and not conn.broken and not self._interrupted
        locked = usable and state == "55P03"
        refused = usable and state[:2] in ("42", "25")
        busy = usable and not locked and not refused
        holders = lock_holders(conn) if locked else ""
        self.connected = False
        self.writer.reset()
        self._delay = RECONNECT_MIN_S
        self._retry_at = time.monotonic() + (RECONNECT_MAX_S if usable else self._delay)
        self._locked = locked
        first = self._outage_since is None
        if first and not self._interrupted:
            self._outage_since = time.monotonic()
            self._held_in_outage = 0
            self._refused_at_outage = self.failed
        where = (f"the spool {self.backlog.spool_dir}" if self.backlog.spool_dir
                 else "nothing more: storage.spool_dir is not set")
        if self._interrupted:
            log.warning("postgres: stopping: the write running was cancelled (%s)", _one_line(exc))
        elif usable:
            say = log.warning if first else functools.partial(_retry_log.warning, state)
            if busy:
                say("postgres: the database cannot take writes now (%s); holding frames (memory up "
                    "to %d, then %s) and trying again every %.0f s", _one_line(exc),
                    self.backlog.buffer_max, where, RECONNECT_MAX_S)
            elif locked:
                say("postgres: a write gave up waiting (lock_timeout) for a lock another session "
                    "holds on the tables%s; holding frames (memory up to %d, then %s) and trying "
                    "again until it is released (end that transaction if it should not be open)",
                    holders or " (no table lock is held now: a row lock, or released)",
                    self.backlog.buffer_max, where)
            else:
                say("postgres: the database refuses writes to the tables (%s); holding frames "
                    "(memory up to %d, then %s) and trying again: were the tables changed under "
                    "the collector (a table or column renamed, dropped or of another type, a "
                    "privilege revoked) or is the database read-only? Put them back as sensorwire "
                    "made them (docs/postgres.md, \"Schema\")", _one_line(exc),
                    self.backlog.buffer_max, where)
        elif first:
            log.warning("postgres: lost the database (%s); holding frames (memory up to %d, then %s) "
                        "and reconnecting", _one_line(exc), self.backlog.buffer_max, where)

    def _reconnect(self) -> bool:
        now = time.monotonic()
        if now < self._retry_at:
            return False
        try:
            self.writer.reset()
            self.writer.open()
        except (psycopg.Error, MigrationError) as exc:
            self._retry_at = time.monotonic() + self._delay
            what = ("cannot write yet" if isinstance(exc, MigrationError)  # e.g. a privilege
                    else "database still unreachable")
            _retry_log.warning("reconnect", f"postgres: {what} (%s); %d frames "
                               "in memory, %d records in the spool, %d dropped; next try in %.1f s",
                               _one_line(exc), self.backlog.frames_in_memory,
                               self.backlog.spool_pending, self.backlog.dropped, self._delay)
            self._delay = min(self._delay * 2, RECONNECT_MAX_S)
            return False
        if self._locked and (holders := lock_holders(self.writer.conn)):
            # the lock is still held: a write would only wait lock_timeout again, and each such
            # wait once let reception's queue fill and drop frames while the spool had room
            # (writes are held at once meanwhile; the lock is looked at every 5 s)
            self.writer.reset()
            self._retry_at = time.monotonic() + RECONNECT_MAX_S
            _retry_log.warning(
                "55P03", "postgres: the lock is still held%s; %d frames in memory, %d records in "
                "the spool, %d dropped; looking again in %.1f s", holders,
                self.backlog.frames_in_memory, self.backlog.spool_pending, self.backlog.dropped,
                RECONNECT_MAX_S)
            return False
        self._locked = False
        self.connected = True
        self._delay = RECONNECT_MIN_S
        down = time.monotonic() - self._outage_since if self._outage_since is not None else 0.0
        log.info("postgres: reconnected to %s after %.1f s; writing %d held frames and %d spooled "
                 "records", self.where, down, self.backlog.frames_in_memory, self.backlog.spool_pending)
        return True

    def _recover(self, budget_s: float = DRAIN_BUDGET_S) -> None:
        if self._interrupted or (not self.connected and not self._reconnect()):
            return
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            piece = self.backlog.take(self.batch_max)
            if piece is None:
                break
            stopped = (self._write_held(piece) if isinstance(piece, list)
                       else self._event_held(piece))
            if stopped is not None:  # the database failed again: what is not written is back
                if classify(stopped, self.writer.conn) == "outage":
                    self._lost(stopped)
                return
            self.backlog.stored()
        if not self.backlog and self._outage_since is not None:
            refused = self.failed - self._refused_at_outage
            log.info("postgres: everything held during the outage is written or accounted for "
                     "(%.1f s, %d frames held, %d dropped for want of room, %d refused by the "
                     "database)", time.monotonic() - self._outage_since, self._held_in_outage,
                     self.backlog.dropped, refused)
            self._outage_since = None

    def _may_forget_ids(self) -> bool:
        """Forget the cached ids, for one more try, unless that was done a moment ago (the
        halves of a refused batch do not each need it)."""
        now = time.monotonic()
        if now - self._ids_forgotten_at < FORGET_IDS_EVERY_S:
            return False
        self._ids_forgotten_at = now
        self.writer.forget_ids()
        return True

    def _event_held(self, ev: Event) -> BaseException | None:
        try:
            self.writer.event(ev)
        except Exception as exc:  # noqa: BLE001 - classified
            if classify(exc, self.writer.conn) != "permanent":
                self.backlog.restore(ev)
                return exc
            log.error("postgres: the database refused an event (%r): %s",
                      ev, _one_line(exc))
        return None

    def _write_held(self, frames: list[Item]) -> BaseException | None:
        """Write frames taken from the backlog.  Refused for good: once more with fresh ids,
        then in halves, so that only the frames at fault are refused (counted in ``failed``),
        at most :data:`HALVING_BUDGET` failed writes a piece.  Returns the error that stopped
        it when the database cannot take writes now; what was not written is put back."""
        todo, failures = [frames], 0
        while todo:
            part = todo.pop()
            try:
                self.writer.write(part)
                continue
            except Exception as exc:  # noqa: BLE001 - classified
                error: BaseException = exc
            if classify(error, self.writer.conn) != "permanent":
                for p in (part, *todo):
                    self.backlog.restore(p)
                return error
            failures += 1
            if failures == 1 and self._may_forget_ids():
                todo.append(part)
            elif len(part) == 1 or failures > HALVING_BUDGET:
                self.failed += len(part)
                _refused_log.error("refused", "postgres: the database refused %d frames held "
                                   "since the outage (%d in all): %s", len(part), self.failed,
                                   _one_line(error))
            else:
                mid = len(part) // 2
                todo += [part[mid:], part[:mid]]
        return None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
