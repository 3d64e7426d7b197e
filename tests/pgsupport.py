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
from typing import Any

import pytest

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
