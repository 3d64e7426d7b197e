"""``[storage] kind = "sqlite"``: the embedded default store."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from sensorwire.collector.events import Event
from sensorwire.collector.sinks import Item, SinkError
from sensorwire.collector.tracking import ResumeBoot
from sensorwire.collector.sqlite_store import SqliteWriter


class SqliteSink:
    name = "sqlite"

    def __init__(self, path: str) -> None:
        self.writer = SqliteWriter(path)

    def open(self) -> None:
        self.writer.open()

    def write(self, batch: Sequence[Item]) -> None:
        try:
            self.writer.write(batch)
        except sqlite3.OperationalError as exc:  # locked, busy, disk full, I/O error
            raise SinkError(f"{self.writer.path}: {exc}", retryable=True) from exc
        except sqlite3.DatabaseError as exc:
            raise SinkError(f"{self.writer.path}: {exc}", retryable=False) from exc

    def event(self, ev: Event) -> None:
        try:
            self.writer.event(ev)
        except sqlite3.Error as exc:
            raise SinkError(f"{self.writer.path}: {exc}", retryable=False) from exc

    def resume(self, since_ns: int) -> list[ResumeBoot]:
        return self.writer.resume(since_ns)

    def close(self) -> None:
        self.writer.close()
