"""PostgreSQL DSNs: recognised in every libpq form, refused at load when unparsable, and the
password never shown, whatever libpq says about it.

The tests that talk to the server use $SENSORWIRE_TEST_PG_DSN (tests/pgsupport.py); the
others run the real ``sensorwire`` commands against DSNs that fail before any connection.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import psycopg
import pytest
from pgsupport import PgSchema
from support import run_cli, write

from sensorwire.collector import pg_config, pg_store, storage
from sensorwire.collector.config import StorageConfig
from sensorwire.collector.pg_store import PgWriter
from sensorwire.proto.v1.telemetry_pb2 import Frame

# (DSN, its password): libpq cannot parse these, and its message quotes the password
UNPARSABLE = [
    ("postgresql://u:Top%zzSecret2@127.0.0.1/test", "Top%zzSecret2"),      # bad %-escape
    ("postgresql://u:V3ryHidden@[::1/test", "V3ryHidden"),                # unclosed [
    ("host=127.0.0.1 password='Quoted Hidden9 dbname=test", "Quoted Hidden9"),  # unclosed '
    ("host=127.0.0.1 password=Plain77Hidden dbname", "Plain77Hidden"),    # a key without =
]


@pytest.mark.parametrize("db, dsn", [
    ("gssencmode=disable host=h dbname=db", True), ("target_session_attrs=any host=h", True),
    ("sslmode=require host=h", True), ("service=telemetry", True), (" host = h ", True),
    ("application_name=x dbname=db", True), ("POSTGRESQL://u:pw@h/db", True),
    ("Postgres://h/db", True), ("postgresql://u@h/db", True),
    ("telemetry.db", False), ("./a=b.db", False), ("/var/lib/sw/postgresql.db", False),
    ("mode=fast.db", False), ("data/host.db", False),
])
def test_every_libpq_form_is_a_dsn(db: str, dsn: bool) -> None:
    assert storage.is_dsn(db) is dsn


def test_an_upper_case_scheme_is_parsed_as_libpq_parses_a_lower_case_one() -> None:
    params = pg_config.parse_dsn("POSTGRESQL://u:pw@h:6543/db")
    assert params == {"user": "u", "password": "pw", "host": "h", "port": "6543", "dbname": "db"}


@pytest.mark.parametrize("dsn, password", UNPARSABLE)
def test_an_unparsable_dsn_is_refused_without_libpq_s_message(dsn: str, password: str) -> None:
    assert pg_store.safe_dsn(dsn) == "<an unparsable DSN>"
    with pytest.raises(psycopg.ProgrammingError) as err:
        pg_store.connect(dsn)
    assert "cannot be parsed" in str(err.value)
    for part in (password, password[:6], password[-6:]):
        assert part not in str(err.value)


def test_a_password_misparsed_into_the_host_is_scrubbed() -> None:
    # an unencoded '@' in the password: libpq takes "ss" for the host and quotes it
    dsn = "postgresql://u:p@ss:Wd99@127.0.0.1/test"
    assert "ss" not in pg_store.safe_dsn(dsn).replace("password", "")
    with pytest.raises(psycopg.Error) as err:
        pg_store.connect(dsn)
    assert "'ss'" not in str(err.value) and '"ss"' not in str(err.value)
    assert "Wd99" not in str(err.value)


def test_only_a_misparsed_password_masks_other_values() -> None:
    # parsed as written: the user and database stay readable though the password holds them
    dsn = "postgresql://postgres:postgres-sensorwire@127.0.0.1/sensorwire"
    assert pg_store.safe_dsn(dsn) == "user=postgres password=*** dbname=sensorwire host=127.0.0.1"
    message = 'FATAL: role "postgres" may not connect to database "sensorwire"'
    assert pg_config.scrub(message, dsn) == message


def test_scrub_removes_every_form_of_the_password() -> None:
    dsn = "postgresql://u:se%2Fcret42@h/db"
    assert pg_config.scrub("x se/cret42 y se%2Fcret42 z", dsn) == "x *** y *** z"
    kv = r"host=h password='it\'s hidden 5'"
    assert "hidden" not in pg_config.scrub("failed for \"it's hidden 5\"", kv)
    assert pg_config.scrub("supported socktype", "postgresql://u:p@h/db") == "supported socktype"


@pytest.mark.parametrize("dsn, password", UNPARSABLE)
def test_status_and_query_never_print_the_password(dsn: str, password: str) -> None:
    for argv in (("status", "--db", dsn), ("query", "--db", dsn)):
        r = run_cli(*argv)
        assert r.returncode == 1, r
        assert "cannot be parsed" in r.stderr
        assert password not in r.stderr + r.stdout and password[:6] not in r.stderr, r.stderr


def collector_toml(tmp: Path, dsn: str) -> Path:
    return write(tmp / "collector.toml",
                 '[subscribe]\nconnect = ["tcp://127.0.0.1:1"]\n'
                 f'[storage]\nkind = "postgres"\ndsn = "{dsn}"\n')


def test_an_unparsable_dsn_is_a_config_error_after_expansion(tmp_path: Path) -> None:
    cfg = collector_toml(tmp_path, "postgresql://sensorwire:${PW}@127.0.0.1/test")
    env = dict(os.environ, PW="Top%zzSecret2")
    for argv in (("check-config", str(cfg)), ("collector", "-c", str(cfg))):
        r = run_cli(*argv, env=env)
        assert r.returncode == 2, r
        assert "storage.dsn: the DSN cannot be parsed" in r.stderr
        assert "zzSecret" not in r.stderr + r.stdout and "Top%" not in r.stderr
    good = run_cli("check-config", str(cfg), env=dict(env, PW="Top%25zzSecret2"))
    assert good.returncode == 0, good.stderr
    with pytest.raises(msgspec.ValidationError, match="dsn: the DSN cannot be parsed"):
        msgspec.convert({"kind": "postgres", "dsn": "host='x"}, StorageConfig)


def test_an_upper_case_uri_reads_the_postgres_store(pg: PgSchema) -> None:
    w = PgWriter(pg.server, pg.name)
    w.open()
    f = Frame(site="gh", device_id="d1", boot_id=7, seq=1, time_unix_nano=10**18, sensor="env")
    f.samples.add(metric="t", value=1.5)
    from sensorwire.collector.frames import CheckedFrame

    w.write([(CheckedFrame.from_pb(f), 10**18)])
    w.close()
    params = pg_config.parse_dsn(pg.server)
    host, port, db = params.get("host", "127.0.0.1"), params.get("port", "5432"), params["dbname"]
    user = params.get("user", "postgres")
    upper = f"POSTGRESQL://{user}@{host}:{port}/{db}?options=-csearch_path%3D{pg.name}"
    r = run_cli("status", "--db", upper, "--format", "json")
    assert r.returncode == 0, r.stderr
    assert '"d1"' in r.stdout
    r = run_cli("status", "--db", f"target_session_attrs=any {pg.dsn}", "--format", "json")
    assert r.returncode == 0 and '"d1"' in r.stdout, r.stderr


def test_a_collector_whose_password_libpq_splits_never_shows_it(tmp_path: Path) -> None:
    # an unencoded '@' in a ${PW}-expanded password: libpq parses the DSN, but takes "hidden"
    # for the host and "Pass77@127.0.0.1" for the port, and quotes the one it cannot use
    cfg = collector_toml(tmp_path, "postgresql://u:${PW}@127.0.0.1/test")
    env = dict(os.environ, PW="Xy@hidden:Pass77")
    r = run_cli("collector", "-c", str(cfg), env=env)
    assert r.returncode == 1, r
    assert "cannot connect" in r.stderr, r.stderr
    for part in ("hidden", "Pass77", "Xy@"):
        assert part not in r.stderr + r.stdout, r.stderr
    r = run_cli("status", "--db", "postgresql://u:Xy@hidden:Pass77@127.0.0.1/test")
    assert r.returncode == 1 and "hidden" not in r.stderr and "Pass77" not in r.stderr, r.stderr
