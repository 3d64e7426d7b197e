"""``sensorwire agent --once``: one frame per sensor, and the failing ones named."""

from __future__ import annotations

import json
from pathlib import Path

from support import run_cli, write

AGENT = """\
site = "gh"
device_id = "pi-1"
[publish]
connect = ["tcp://127.0.0.1:1"]   # never used: --once opens no socket
[[sensors]]
name = "env"
kind = "simulated"
metrics = [{ name = "temperature", unit = "C", signal = "constant", value = 21.5 }]
[[sensors]]
name = "health"
kind = "system"
"""

BROKEN = """\
[[sensors]]
name = "board"
kind = "system"
thermal_files = ["%s"]
"""


def test_once_prints_one_frame_per_sensor_and_exits_0(tmp_path: Path) -> None:
    r = run_cli("agent", "--once", "-c", str(write(tmp_path / "agent.toml", AGENT)))
    assert r.returncode == 0, r.stderr
    frames = [json.loads(line) for line in r.stdout.splitlines()]
    assert [f["sensor"] for f in frames] == ["env", "health"]
    env = frames[0]
    assert env["topic"] == "gh/pi-1/env" and env["type"] == "data" and env["seq"] == 1
    assert env["samples"] == [{"metric": "temperature", "value": 21.5, "unit": "C"}]
    assert any(s["metric"] == "memory.used_percent" for s in frames[1]["samples"])


def test_once_names_the_sensor_that_failed_and_exits_1(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-zone" / "temp"
    cfg = write(tmp_path / "agent.toml", AGENT + BROKEN % missing)
    r = run_cli("agent", "--once", "-c", str(cfg))
    assert r.returncode == 1
    assert [json.loads(line)["sensor"] for line in r.stdout.splitlines()] == ["env", "health"]
    assert ("sensor board (system): FileNotFoundError: [Errno 2] No such file or directory: "
            f"'{missing}'") in r.stderr
    assert r.stderr.rstrip().endswith("sensorwire: 1 of 3 sensors failed: board")
