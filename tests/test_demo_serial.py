"""``sensorwire demo`` runs one agent on a simulated serial device, and stores its readings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support import run_cli


@pytest.mark.slow
def test_demo_stores_readings_of_the_serial_agent(tmp_path: Path) -> None:
    r = run_cli("demo", "--duration", "4", "--dir", str(tmp_path / "demo"), timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    row = re.search(r"^workshop\s+pi-04\s+(\d+)\s+(\d+)", r.stdout, re.M)
    assert row, r.stdout
    assert int(row.group(1)) > 0 and int(row.group(2)) > 0
    # every agent's spool is in the demo's folder, not in the user's home
    assert (tmp_path / "demo" / "spool" / "pi-04" / "lock").exists()
