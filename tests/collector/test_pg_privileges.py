"""The collector's roles in PostgreSQL: an owner creates the tables once, a role with only the
grants docs/postgres.md lists runs the collector, and a database shared with other tools is
refused rather than misread.

Each test makes a database (and roles) of its own on the server of
$SENSORWIRE_TEST_PG_DSN (tests/pgsupport.py), named fixpg_..., dropped afterwards: the grants
on a database and on ``public`` need a database nobody else uses.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from support import run_cli, write

from sensorwire.collector.events import Counts, Lost, Presence
from sensorwire.collector.frames import CheckedFrame
from sensorwire.collector.pg_schema import MigrationError
from sensorwire.collector.pg_store import PgWriter
from sensorwire.proto.v1.telemetry_pb2 import Frame

DOCS = Path(__file__).resolve().parents[2] / "docs" / "postgres.md"
SCHEMA = "sensorwire"


@dataclass
class Database:
    server: str                       # the server's DSN (a superuser)
    name: str
    roles: list[str] = field(default_factory=list)

    def dsn(self, user: str | None = None) -> str:
        return str(make_conninfo(self.server, dbname=self.name, **({"user": user} if user else {})))

    def run(self, q: str | sql.SQL | sql.Composed, *args: Any,
            user: str | None = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn(user), autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(q, args or None)
            return list(cur.fetchall()) if cur.description else []

    def role(self, label: str) -> str:
        name = f"{self.name}_{label}"
        self.run(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        self.roles.append(name)
        self.run(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
            sql.Identifier(self.name), sql.Identifier(name)))
        return name


@pytest.fixture
def db(pg_server: str) -> Iterator[Database]:
    """A database of this test's own; PUBLIC may not connect or make temporary tables in it."""
    d = Database(pg_server, f"fixpg_{secrets.token_hex(4)}")
    with psycopg.connect(pg_server, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(d.name)))
    try:
        d.run(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(d.name)))
        yield d
    finally:
        with psycopg.connect(pg_server, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(d.name)))
            for role in reversed(d.roles):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def frame(device: str, seq: int, boot: int = 7) -> tuple[CheckedFrame, int]:
    f = Frame(site="gh", device_id=device, boot_id=boot, seq=seq,
              time_unix_nano=1_700_000_000_000_000_000 + seq, sensor="env")
    f.samples.add(metric="t", value=seq / 2, unit="C")
    return CheckedFrame.from_pb(f), 1_700_000_000_000_000_000 + seq


def heartbeat(device: str, last_seq: int, boot: int = 7) -> tuple[CheckedFrame, int]:
    f = Frame(site="gh", device_id=device, boot_id=boot, seq=0, time_unix_nano=1)
    f.heartbeat.last_seq = last_seq
    f.heartbeat.interval_s = 0.5
    return CheckedFrame.from_pb(f), 1_700_000_000_000_000_000 + last_seq


def documented_grants(db: Database, role: str) -> list[str]:
    """The SQL block of docs/postgres.md's "A least-privilege role", for this database and role."""
    section = DOCS.read_text().split("## A least-privilege role", 1)[1]
    block = section.split("```sql\n", 1)[1].split("```", 1)[0]
    block = block.replace("sw_ingest", f'"{role}"').replace("telemetry", f'"{db.name}"')
    return [s.strip() for s in block.split(";") if s.strip()]


def owner_creates_the_tables(db: Database) -> str:
    owner = db.role("owner")
    db.run(sql.SQL("GRANT CREATE, TEMPORARY ON DATABASE {} TO {}").format(
        sql.Identifier(db.name), sql.Identifier(owner)))
    w = PgWriter(db.dsn(owner), SCHEMA)
    w.open()
    w.write([frame("pi-1", 1)])
    w.close()
    return owner


def test_a_role_with_only_the_documented_grants_runs_the_writer(db: Database) -> None:
    owner_creates_the_tables(db)
    ingest = f"{db.name}_ingest"
    db.roles.append(ingest)
    for statement in documented_grants(db, ingest):
        db.run(statement)
    assert db.run("SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = %s",
                  ingest) == [(False, False, False)]
    for _ in range(2):  # a start, then a reconnect: no DDL either time
        w = PgWriter(db.dsn(ingest), SCHEMA)
        w.open()
        w.write([frame("pi-1", 2), frame("pi-2", 1), frame("pi-2", 3), heartbeat("pi-2", 3)])
        w.write([frame("pi-1", 2)])  # stored already: ON CONFLICT, RETURNING
        w.event(Presence("gh", "pi-3", "online", None, 1, 1))
        w.event(Lost("gh", "pi-2", 7, 2, 2))
        w.event(Counts("gh", "pi-2", 1, 1))
        resumed = {(r.device, r.boot_id): r for r in w.resume(0)}
        w.close()
    assert resumed[("pi-2", 7)].missing == [(2, 2)]
    rows = db.run(f"SELECT d.device, f.seq FROM {SCHEMA}.frames f JOIN {SCHEMA}.devices d "
                  "ON d.id = f.device_key ORDER BY 1, 2")
    assert rows == [("pi-1", 1), ("pi-1", 2), ("pi-2", 1), ("pi-2", 3)]
    assert db.run(f"SELECT device, lost, duplicates FROM {SCHEMA}.devices WHERE device = 'pi-2'") \
        == [("pi-2", 1, 2)]
    assert db.run(f"SELECT count(*) FROM {SCHEMA}.presence") == [(1,)]
    owned = db.run("SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner "
                   "WHERE r.rolname = %s", ingest)
    assert owned == [(0,)]  # its staging table is temporary and gone with its session


def test_a_role_without_the_grants_is_told_what_it_lacks(db: Database) -> None:
    owner_creates_the_tables(db)
    role = db.role("bare")
    with pytest.raises(MigrationError, match=f"role {role} has no USAGE on schema {SCHEMA}"):
        PgWriter(db.dsn(role), SCHEMA).open()
    # everything documented but INSERT on frames and TEMPORARY
    for statement in documented_grants(db, role):
        if statement.startswith(("CREATE ROLE", "GRANT CONNECT")):
            continue
        db.run(statement)
    db.run(f'REVOKE INSERT ON {SCHEMA}.frames FROM "{role}"')
    with pytest.raises(MigrationError) as err:
        PgWriter(db.dsn(role), SCHEMA).open()
    message = str(err.value)
    assert f"role {role} cannot write the tables in schema {SCHEMA}" in message
    assert "INSERT on frames" in message and "TEMPORARY on the database" in message
    assert "devices" not in message and "least-privilege role" in message
    # where the tables are not made yet, the role that may not make them is told so
    with pytest.raises(MigrationError, match=rf"cannot create schema other \(permission denied"
                                             rf" for database {db.name}\): run the collector once"):
        PgWriter(db.dsn(role), "other").open()


def test_the_collector_started_as_a_bare_role_exits_saying_what_it_lacks(
        db: Database, tmp_path: Path) -> None:
    owner_creates_the_tables(db)
    role = db.role("bare")
    cfg = write(tmp_path / "collector.toml",
                '[subscribe]\nconnect = ["tcp://127.0.0.1:1"]\n'
                f'[storage]\nkind = "postgres"\ndsn = "{db.dsn(role)}"\nschema = "{SCHEMA}"\n')
    r = run_cli("collector", "-c", str(cfg))
    assert r.returncode == 1, r
    assert f"role {role} has no USAGE on schema {SCHEMA}" in r.stderr, r.stderr


def test_another_tool_s_schema_migrations_in_public_is_not_read_as_sensorwire_s(db: Database) -> None:
    # golang-migrate's table, at a timestamp version
    db.run("CREATE TABLE public.schema_migrations (version bigint NOT NULL PRIMARY KEY, "
           "dirty boolean NOT NULL)")
    db.run("INSERT INTO public.schema_migrations VALUES (20240101120000, false)")
    with pytest.raises(MigrationError) as err:
        PgWriter(db.dsn()).open()
    message = str(err.value)
    assert re.search(r"a table schema_migrations that is not sensorwire's exists in schema public"
                     r" \(columns version, dirty\): set \[storage\] schema to a schema of "
                     r"sensorwire's own", message), message
    assert "newer" not in message and "upgrade" not in message
    # tables named as sensorwire's, without its schema_migrations: refused too
    db.run("DROP TABLE public.schema_migrations")
    db.run("CREATE TABLE public.devices (id serial PRIMARY KEY, name text)")
    with pytest.raises(MigrationError, match=r"schema public has tables named as sensorwire's "
                                             r"\(devices\) but no sensorwire schema_migrations"):
        PgWriter(db.dsn()).open()
    assert db.run("SELECT to_regclass('public.frames') IS NULL") == [(True,)]  # nothing made
    # a schema of its own beside them: fine
    w = PgWriter(db.dsn(), SCHEMA)
    w.open()
    w.write([frame("pi-1", 1)])
    w.close()
    assert db.run(f"SELECT count(*) FROM {SCHEMA}.frames") == [(1,)]
