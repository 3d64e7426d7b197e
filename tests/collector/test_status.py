"""``sensorwire status`` on a real SQLite file."""

from __future__ import annotations

from pathlib import Path

from sensorwire.collector import status
from sensorwire.collector.sqlite_store import connect


def test_a_clock_offset_that_rounds_to_zero_shows_zero_not_minus_zero(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    conn = connect(db)
    conn.execute("INSERT INTO devices(device, site, first_seen_ns, last_seen_ns, state, clock_offset_s) "
                 "VALUES ('pi-1', 'gh', 1, 2, 'stopped', -0.0004), ('pi-2', 'gh', 1, 2, 'stopped', -0.25)")
    conn.commit()
    conn.close()
    found = {r["device"]: r["clock_offset_s"] for r in status.rows(str(db))}
    assert found == {"pi-1": 0.0, "pi-2": -0.25}
    assert str(found["pi-1"]) == "0.0"


def test_status_and_alerts_print_valid_json_whatever_the_numbers_stored(tmp_path: Path) -> None:
    """An infinite heartbeat_s or clock offset (intake refuses one today; a database written by
    anything else may hold it) came out as Infinity, which is not JSON.  Alerts with a value
    of inf show it as null already."""
    import json

    from support import run_cli

    from sensorwire.collector.alerting.store import SCHEMA

    db = tmp_path / "t.db"
    conn = connect(db)
    conn.executescript(SCHEMA)
    conn.execute("INSERT INTO devices(device, site, first_seen_ns, last_seen_ns, state, heartbeat_s, "
                 "clock_offset_s) VALUES ('pi-1', 'gh', 1, 2, 'stopped', 9e999, -9e999)")
    conn.execute("INSERT INTO alert_history(time_ns, rule, severity, state, site, device, value, "
                 "threshold, started_ns, summary) VALUES (1, 'hot', 'warning', 'firing', 'gh', "
                 "'pi-1', 9e999, 40.0, 1, 'too hot')")
    conn.commit()
    conn.close()

    def strict(text: str) -> object:
        raise ValueError(f"{text} is not JSON")

    for cmd in ("status", "alerts"):
        r = run_cli(cmd, "--db", str(db), "--format", "json")
        assert r.returncode == 0, r.stderr
        (line,) = r.stdout.splitlines()
        found = json.loads(line, parse_constant=strict)
        assert (found["heartbeat_s"], found["clock_offset_s"]) == ("inf", "-inf") if cmd == "status" \
            else found["value"] is None, found
