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
