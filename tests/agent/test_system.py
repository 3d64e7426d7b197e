"""The system sensor reports the device's health, thermal files included."""

from __future__ import annotations

from pathlib import Path

import msgspec

from sensorwire.agent.sensors.system import SystemConfig, SystemSensor


def test_reports_cpu_memory_disk_network_and_thermal_files(tmp_path: Path) -> None:
    zone = tmp_path / "thermal_zone0"
    zone.mkdir()
    (zone / "temp").write_text("48312\n")  # a Raspberry Pi's SoC, in millidegrees
    cfg = msgspec.convert({"name": "health", "kind": "system", "disks": ["/"],
                           "thermal_files": [str(zone / "temp")]}, SystemConfig)
    s = SystemSensor(cfg)
    s.open()
    try:
        readings = {m: (v, u) for m, v, u in s.read()}
    finally:
        s.close()
    for metric in ("cpu.percent", "load.1m", "memory.used_percent", "disk.root.used_percent",
                   "net.bytes_sent"):
        assert metric in readings, metric
    assert readings["temperature.thermal_zone0"] == (48.312, "C")
    assert 0.0 <= readings["disk.root.used_percent"][0] <= 100.0


def test_an_unreadable_thermal_file_fails_the_read(tmp_path: Path) -> None:
    cfg = msgspec.convert({"name": "health", "kind": "system",
                           "thermal_files": [str(tmp_path / "missing")]}, SystemConfig)
    s = SystemSensor(cfg)
    s.open()
    try:
        s.read()
    except OSError:
        return
    finally:
        s.close()
    raise AssertionError("expected the read to fail")
