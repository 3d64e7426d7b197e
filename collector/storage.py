"""Reading stored telemetry, whichever store holds it: ``--db`` is a path or a DSN.

``sensorwire query`` and ``sensorwire status`` open a :class:`Reader` with
:func:`connect_reader`: a PostgreSQL DSN (``postgresql://...``,
``postgres://...`` or a libpq ``key=value`` string) opens the PostgreSQL
store, anything else is the path of a SQLite file.  Both stores have the same
logical schema, so the rows are the same.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any, Protocol

from sensorwire.collector import sqlite_store
from sensorwire.collector.sqlite_store import QueryFilter


class Reader(Protocol):
    def status(self) -> list[dict[str, Any]]: ...

    def query(self, f: QueryFilter) -> Iterator[tuple[Any, ...]]: ...

    def close(self) -> None: ...


class SqliteReader:
    def __init__(self, path: str) -> None:
        self.path = path
        self.conn: sqlite3.Connection = sqlite_store.connect(path, readonly=True)

    def status(self) -> list[dict[str, Any]]:
        with sqlite_store.reading(self.path):
            return sqlite_store.status(self.conn)

    def query(self, f: QueryFilter) -> Iterator[tuple[Any, ...]]:
        with sqlite_store.reading(self.path):
            yield from sqlite_store.query(self.conn, f)

    def close(self) -> None:
        self.conn.close()


class PostgresReader:
    """Needs the ``postgres`` extra (psycopg); imported only when a DSN is given."""

    def __init__(self, dsn: str) -> None:
        from sensorwire.collector import pg_store

        self.dsn = dsn
        self.conn = pg_store.connect_readonly(dsn)

    def status(self) -> list[dict[str, Any]]:
        from sensorwire.collector import pg_store

        with pg_store.store_errors(self.dsn, self.conn):
            return pg_store.status(self.conn)

    def query(self, f: QueryFilter) -> Iterator[tuple[Any, ...]]:
        from sensorwire.collector import pg_store

        with pg_store.store_errors(self.dsn, self.conn):
            yield from pg_store.query(self.conn, f)

    def close(self) -> None:
        self.conn.close()


def is_dsn(db: str) -> bool:
    """Is ``db`` a PostgreSQL DSN rather than a file path?  A URI (``postgresql://`` or
    ``postgres://``, any case), or a libpq ``key=value`` string whose first key is one of
    libpq's connection keywords (``gssencmode=...``, ``target_session_attrs=...`` as well
    as ``host=...``)."""
    from sensorwire.collector.pg_config import looks_like_dsn

    return looks_like_dsn(db)


def connect_reader(db: str) -> Reader:
    """A reader for ``db``: a PostgreSQL DSN, or the path of a SQLite file."""
    if is_dsn(db):
        return PostgresReader(db)
    return SqliteReader(db)
