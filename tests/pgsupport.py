"""PostgreSQL for the storage tests: the server from $SENSORWIRE_TEST_PG_DSN, a schema per test.

Where ``SENSORWIRE_TEST_PG_DSN`` is unset the tests that need it are skipped,
saying why; with ``SENSORWIRE_REQUIRE_ALL=1`` (``.ci/run`` sets it) a missing
DSN or an unreachable server fails them instead: CI must run them.

Each test gets its own schema ``sw_test_<random>``, dropped afterwards; the
collector reaches it with ``[storage] schema``, the CLI with a DSN whose
``options`` set the ``search_path``.  ``conftest.py`` imports the fixtures
``pg_server`` and ``pg``; psycopg is imported only when one is used.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sensorwire.collector.config import StorageConfig
from sensorwire.collector.frames import CheckedFrame
from sensorwire.proto.v1.telemetry_pb2 import Frame

ENV_DSN = "SENSORWIRE_TEST_PG_DSN"
ENV_REQUIRE = "SENSORWIRE_REQUIRE_ALL"



def _unavailable(reason: str) -> None:
    if os.environ.get(ENV_REQUIRE) == "1":
        pytest.fail(f"{reason} ({ENV_REQUIRE}=1: these tests may not be skipped)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The DSN of a reachable PostgreSQL server."""
    try:
        import psycopg
    except ImportError:
        _unavailable("PostgreSQL tests need psycopg: pip install -e '.[test]' (or the postgres extra)")
    dsn = os.environ.get(ENV_DSN, "").strip()
    if not dsn:
        _unavailable(f"PostgreSQL tests need {ENV_DSN}, e.g. "
                     "postgresql://postgres@127.0.0.1:5432/test (.ci/run sets it)")
    try:
        psycopg.connect(dsn, connect_timeout=5).close()
    except psycopg.Error as exc:
        _unavailable(f"PostgreSQL at {ENV_DSN}={dsn} is unreachable: {' '.join(str(exc).split())}")
    return dsn


@dataclass
class PgSchema:
    server: str   # the server's DSN
    name: str     # this test's schema

    @property
    def dsn(self) -> str:
        """A libpq DSN whose search_path is this schema (for ``--db``)."""
        from psycopg.conninfo import make_conninfo

        return str(make_conninfo(self.server, options=f"-csearch_path={self.name}"))

    def storage_toml(self, extra: str = "") -> str:
        return (f'[storage]\nkind = "postgres"\ndsn = "{self.server}"\nschema = "{self.name}"\n'
                f"flush_interval_s = 0.05\n{extra}")

    def rows(self, q: str, *args: Any) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.dsn, connect_timeout=5) as conn:
            cur = conn.execute(q, args)
            return list(cur.fetchall()) if cur.description else []

    def seqs(self, device: str) -> list[tuple[int, int]]:
        """(boot_id, seq) stored for ``device``, in order; [] before the tables exist."""
        import psycopg

        try:
            return [(int(b), int(s)) for b, s in self.rows(
                "SELECT f.boot_id, f.seq FROM frames f JOIN devices d ON d.id = f.device_key "
                "WHERE d.device = %s ORDER BY f.boot_id, f.seq", device)]
        except psycopg.Error:
            return []


@pytest.fixture
def pg(pg_server: str) -> Iterator[PgSchema]:
    """A schema of this test's own on the server, dropped afterwards."""
    import psycopg

    schema = PgSchema(pg_server, f"sw_test_{secrets.token_hex(4)}")
    yield schema
    deadline = time.monotonic() + 30
    while True:  # the outage test restarts the server: wait for it rather than leak the schema
        try:
            with psycopg.connect(pg_server, connect_timeout=5, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema.name} CASCADE")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def cluster() -> list[str]:
    """``pg_ctlcluster VERSION main``, to stop and start the local server (the outage test)."""
    if shutil.which("pg_ctlcluster") is None or not os.path.isdir("/etc/postgresql"):
        _unavailable("the outage test stops and starts the local server with pg_ctlcluster, "
                     "which is not here")
    versions = sorted(os.listdir("/etc/postgresql"))
    if not versions:
        _unavailable("no cluster under /etc/postgresql")
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main"]


def pg_ctl(action: str, *extra: str) -> None:
    subprocess.run([*cluster(), action, *extra], check=True, capture_output=True, timeout=60)


# -- frames and what is stored, for the storage tests -------------------------------------

BOOT = (1 << 63) + 12345  # above 2^63: stored as a negative bigint, read back unsigned


def frame(device: str, seq: int, boot: int = BOOT, site: str = "gh", n: int = 3) -> tuple[CheckedFrame, int]:
    f = Frame(site=site, device_id=device, boot_id=boot, seq=seq,
              time_unix_nano=1_700_000_000_000_000_000 + seq * 1_000_000, sensor="env")
    for i in range(n):
        f.samples.add(metric=f"m{i}", value=seq + i / 10, unit="C" if i == 0 else "")
    return CheckedFrame.from_pb(f), 1_700_000_000_000_000_000 + seq * 1_000_000 + 500


def heartbeat(device: str, last_seq: int, boot: int = BOOT) -> tuple[CheckedFrame, int]:
    f = Frame(site="gh", device_id=device, boot_id=boot, seq=0, time_unix_nano=1)
    f.heartbeat.last_seq = last_seq
    f.heartbeat.interval_s = 0.5
    return CheckedFrame.from_pb(f), 1_700_000_000_000_000_000 + last_seq * 1_000_000 + 900


def storage_config(pg: PgSchema, tmp: Path | None = None, **kw: Any) -> StorageConfig:
    spool: dict[str, Any] = {"spool_dir": str(tmp / "pgspool")} if tmp is not None else {}
    return StorageConfig(**{"kind": "postgres", "dsn": pg.server, "schema": pg.name, **spool, **kw})


def stored(pg: PgSchema) -> list[tuple[str, int, int]]:
    return sorted((d, int(b), int(s)) for d, b, s in pg.rows(
        "SELECT d.device, f.boot_id, f.seq FROM frames f JOIN devices d ON d.id = f.device_key"))


def boots_consistent(pg: PgSchema) -> bool:
    """Every boot's ``stored`` is exactly its number of frames."""
    bad = pg.rows("SELECT b.device_key, b.boot_id, b.stored, (SELECT count(*) FROM frames f "
                  "WHERE f.device_key = b.device_key AND f.boot_id = b.boot_id) FROM boots b "
                  "WHERE b.stored <> (SELECT count(*) FROM frames f WHERE f.device_key = "
                  "b.device_key AND f.boot_id = b.boot_id)")
    assert not bad, bad
    return True
