"""``sensorwire alerts`` and ``sensorwire alerts test``: both forms, as written in the issue."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from alerting_support import Live
from support import run_cli, wait_until, write

from sensorwire.collector.alerting.store import AlertStore
from sensorwire.collector.sqlite_store import SqliteWriter

RULES = """
[[alerts]]
name = "greenhouse-hot"
match = "greenhouse/*/env"
metric = "temperature"
above = 35.0
clear = 33.0
"""


@pytest.mark.slow
def test_alerts_and_alerts_test_from_the_command_line(live: Callable[..., Live]) -> None:
    c = live(RULES)
    for v in (30.0, 36.0, 34.0, 32.0, 36.0):
        c.send({"temperature": v})
    wait_until(lambda: len(c.history()) == 3, what="3 transitions")
    c.close()
    config = str(c.db.parent / "collector.toml")

    listed = run_cli("alerts", "--db", str(c.db), "--format", "json")
    assert listed.returncode == 0, listed.stderr
    live_objs = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [o["state"] for o in live_objs] == ["firing", "resolved", "firing"]

    active = run_cli("alerts", "--db", str(c.db), "--active", "--since", "1h")
    assert active.returncode == 0
    assert len(active.stdout.splitlines()) == 3 and "firing" in active.stdout.splitlines()[2]

    for argv in (["alerts", "test", "-c", config, "--db", str(c.db), "--since", "24h", "--format", "json"],
                 ["alerts", "--db", str(c.db), "--format", "json", "test", "-c", config],
                 ["alerts", "test", "-c", config, "--format", "json"]):  # --db from [storage] path
        r = run_cli(*argv)
        assert r.returncode == 0, (argv, r.stderr)
        assert [json.loads(line) for line in r.stdout.splitlines()] == live_objs, argv

    table = run_cli("alerts", "test", "-c", config, "--db", str(c.db), "--since", "24h")
    assert table.stdout.splitlines()[-1] == \
        "3 notifications would have been sent: 2 firing, 1 resolved; 1 still firing at the end"


def test_alerts_argument_errors_exit_2(tmp_path: object) -> None:
    r = run_cli("alerts")
    assert r.returncode == 2 and "give --db FILE" in r.stderr
    r = run_cli("alerts", "--db", "x.db", "--since", "yesterday")
    assert r.returncode == 2 and "neither a duration" in r.stderr
    r = run_cli("alerts", "test", "--db", "x.db")
    assert r.returncode == 2 and "-c/--config" in r.stderr


def test_a_since_before_any_stored_time_is_explained_with_exit_2(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    store = AlertStore(db)
    store.open()  # the alert tables exist: the query reaches SQLite
    store.close()
    config = write(tmp_path / "collector.toml", '[subscribe]\nconnect = ["tcp://127.0.0.1:5557"]\n'
                   f'[storage]\npath = "{db}"\n' + RULES)
    for argv in (["alerts", "--db", str(db), "--since", "99999999999d"],
                 ["alerts", "--db", str(db), "--active", "--since", "99999999999d"],
                 ["alerts", "test", "-c", str(config), "--since", "99999999999d"]):
        r = run_cli(*argv)
        assert r.returncode == 2, (argv, r.stderr)
        assert "--since: that is before 1678" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_alerts_test_needs_no_notifier_secrets(tmp_path: Path) -> None:
    """It notifies nobody: a notifier's ${SMTP_PASSWORD} need not be set to run it, while
    the collector itself refuses to start without it."""
    db = tmp_path / "t.db"
    w = SqliteWriter(db)  # an empty telemetry database
    w.open()
    w.close()
    config = write(tmp_path / "collector.toml", '[subscribe]\nconnect = ["tcp://127.0.0.1:5557"]\n'
                   f'[storage]\npath = "{db}"\n' + RULES + """
[[notifiers]]
name = "ops-mail"
kind = "email"
host = "127.0.0.1"
starttls = true
username = "alerts"
password = "${SENSORWIRE_TEST_UNSET_SECRET}"
from = "alerts@example.org"
to = ["ops@example.org"]
""")
    r = run_cli("alerts", "test", "-c", str(config), "--since", "1h")
    assert r.returncode == 0, r.stderr
    assert "0 notifications would have been sent" in r.stdout, r.stdout
    r = run_cli("check-config", str(config))
    assert r.returncode == 2 and "SENSORWIRE_TEST_UNSET_SECRET is not set" in r.stderr, r.stderr


@pytest.mark.slow
def test_a_long_alert_history_is_listed_in_little_memory(tmp_path: Path) -> None:
    """A flapping alert's months: 100,000 notifications.  Listed as they are read, in either
    format; the whole history in memory took about 150 MiB (434 MiB at 300,000)."""
    import sqlite3
    import subprocess
    import sys

    from sensorwire.collector.alerting.store import SCHEMA

    db = tmp_path / "t.db"
    w = SqliteWriter(db)
    w.open()
    w.close()
    conn = sqlite3.connect(db)
    conn.executescript(SCHEMA)
    conn.executemany(
        "INSERT INTO alert_history(time_ns, rule, severity, state, site, device, sensor, metric, "
        "value, threshold, started_ns, resolved_ns, summary) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        ((10**18 + i, "greenhouse-hot", "critical", "firing" if i % 2 == 0 else "resolved", "gh",
          "pi-1", "env", "temperature", 31.5, 30.0, 10**18 + i, None, "temperature above 30 C " * 4)
         for i in range(100_000)))
    conn.commit()
    conn.close()
    # the CLI in a child that reports its own peak memory as it ends: VmHWM, of its own memory
    # since exec (ru_maxrss would carry over the parent's, which vfork shares until the exec)
    child = ("import re, sys\nfrom sensorwire.cli import main\nrc = main(sys.argv[1:])\n"
             "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read())\n"
             "sys.stderr.write(f'maxrss {hwm.group(1)}')\nsys.exit(rc)")
    for fmt in ("table", "json"):
        p = subprocess.run([sys.executable, "-c", child, "alerts", "--db", str(db), "--format", fmt],
                           capture_output=True)
        assert p.returncode == 0, p.stderr
        assert p.stdout.count(b"\n") >= 100_000
        peak_mib = int(p.stderr.decode().rsplit("maxrss ", 1)[1]) // 1024
        assert peak_mib < 70, f"--format {fmt}: {peak_mib} MiB at peak"
