"""``[storage] kind = "sqlite"``: the embedded default store."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from sensorwire.collector.events import Event
from sensorwire.collector.sinks import Item, SinkError
from sensorwire.collector.sqlite_store import SqliteWriter, StoreError
from sensorwire.collector.tracking import ResumeBoot

log = logging.getLogger(__name__)

TRIM_EVERY_S = 60.0  # retention: a pass this often (and at once after a pass that was cut short)
NS_PER_DAY = 86_400 * 10**9


def _outage(exc: sqlite3.Error, path: Path) -> str:
    """What to do, when ``exc`` says the database cannot be written now whatever the batch (the
    runner then keeps the batch until it can); else ''."""
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return (" (another process keeps a write transaction open on it: a sqlite3 shell, a "
                "VACUUM?; frames are kept, in the bounded queue, until it ends)")
    if name.startswith("SQLITE_FULL"):
        return (f" (the disk under {path.parent} is full: make room; frames are kept, in the "
                "bounded queue, until there is)")
    if name.startswith(("SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN")):
        return (" (the file or its file system cannot be written now: a read-only remount, a "
                "failing disk?; frames are kept, in the bounded queue, until it can)")
    return ""


class SqliteSink:
    name = "sqlite"
    events_with_batches = True  # the writer keeps events for the next batch's transaction

    def __init__(self, path: str, retention_days: float | None = None) -> None:
        self.writer = SqliteWriter(path, retention_ns=None if retention_days is None
                                   else int(retention_days * NS_PER_DAY))
        self.retention_days = retention_days
        self._trim_at = 0.0  # monotonic time of the next retention pass
        self._trim_logged = 0

    def open(self) -> None:
        try:
            self.writer.open()
        except StoreError as exc:
            raise StoreError(f"[storage] path: {exc}") from None

    def write(self, batch: Sequence[Item]) -> None:
        try:
            self.writer.write(batch)
        except sqlite3.OperationalError as exc:  # locked, busy, disk full, I/O error
            hint = _outage(exc, self.writer.path)
            raise SinkError(f"{self.writer.path}: {exc}{hint}", retryable=True,
                            outage=bool(hint)) from exc
        except sqlite3.DatabaseError as exc:
            raise SinkError(f"{self.writer.path}: {exc}", retryable=False) from exc

    def event(self, ev: Event) -> None:
        self.writer.event(ev)  # written with the next batch, or by tick when no frames come

    def tick(self, now_ns: int) -> None:
        try:
            self.writer.flush()
        except sqlite3.Error as exc:  # the events stay: written with the next batch or tick
            log.warning("%s: events not written yet (%s); trying again", self.writer.path, exc)
        if self.retention_days is not None and time.monotonic() >= self._trim_at:
            self._trim(now_ns)

    def _trim(self, now_ns: int) -> None:
        try:
            more = self.writer.trim(now_ns)
        except sqlite3.Error as exc:
            log.warning("%s: frames past retention_days not deleted (%s); trying again in %.0f s",
                        self.writer.path, exc, TRIM_EVERY_S)
            more = False
        self._trim_at = time.monotonic() + (0.0 if more else TRIM_EVERY_S)
        if not more and self.writer.trimmed > self._trim_logged:
            log.info("%s: %d frames older than %g days deleted (retention_days; %d since start)",
                     self.writer.path, self.writer.trimmed - self._trim_logged, self.retention_days,
                     self.writer.trimmed)
            self._trim_logged = self.writer.trimmed

    def resume(self, since_ns: int) -> list[ResumeBoot]:
        return self.writer.resume(since_ns)

    def close(self) -> None:
        self.writer.close()
