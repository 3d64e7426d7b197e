"""``[storage] kind = "sqlite"``: the embedded default store."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence

from sensorwire.collector.events import Event
from sensorwire.collector.sinks import Item, SinkError
from sensorwire.collector.sqlite_store import SqliteWriter, StoreError
from sensorwire.collector.tracking import ResumeBoot

log = logging.getLogger(__name__)


class SqliteSink:
    name = "sqlite"
    events_with_batches = True  # the writer keeps events for the next batch's transaction

    def __init__(self, path: str) -> None:
        self.writer = SqliteWriter(path)

    def open(self) -> None:
        try:
            self.writer.open()
        except StoreError as exc:
            raise StoreError(f"[storage] path: {exc}") from None

    def write(self, batch: Sequence[Item]) -> None:
        try:
            self.writer.write(batch)
        except sqlite3.OperationalError as exc:  # locked, busy, disk full, I/O error
            raise SinkError(f"{self.writer.path}: {exc}", retryable=True) from exc
        except sqlite3.DatabaseError as exc:
            raise SinkError(f"{self.writer.path}: {exc}", retryable=False) from exc

    def event(self, ev: Event) -> None:
        self.writer.event(ev)  # written with the next batch, or by tick when no frames come

    def tick(self, now_ns: int) -> None:
        try:
            self.writer.flush()
        except sqlite3.Error as exc:  # the events stay: written with the next batch or tick
            log.warning("%s: events not written yet (%s); trying again", self.writer.path, exc)

    def resume(self, since_ns: int) -> list[ResumeBoot]:
        return self.writer.resume(since_ns)

    def close(self) -> None:
        self.writer.close()
