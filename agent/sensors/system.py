"""``kind = "system"``: the device's own health through psutil.

Metrics: ``cpu.percent``, ``load.1m``/``5m``/``15m``, ``memory.used_percent``,
``memory.available`` (bytes), ``disk.<name>.used_percent`` and
``disk.<name>.free`` for each configured path (``/`` is named ``root``),
``net.bytes_sent``/``net.bytes_recv`` (totals since boot) and
``temperature.<sensor>`` in C for every temperature the platform reports (the
Raspberry Pi's SoC arrives as ``temperature.cpu_thermal``).  Files given in
``thermal_files`` (millidegrees, like ``/sys/class/thermal/*/temp``) are read
too, as ``temperature.<file's parent folder>``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import msgspec

from sensorwire.agent.sensors import Reading, SensorConfig, SensorKind


class SystemConfig(SensorConfig, kw_only=True):
    interval_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    disks: list[str] = msgspec.field(default_factory=lambda: ["/"])
    temperatures: bool = True
    thermal_files: list[str] = []
    network: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for d in self.disks:
            if not d.startswith("/"):
                raise ValueError(f"disks: {d!r} is not an absolute path")


def _disk_name(path: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", path.strip("/"))
    return name or "root"


def _metric_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "sensor"


class SystemSensor:
    def __init__(self, config: SystemConfig) -> None:
        self.config = config
        self._psutil: Any = None

    def open(self) -> None:
        import psutil  # imported here: agents without a system sensor never load it

        self._psutil = psutil
        psutil.cpu_percent(interval=None)  # primes the counter; the first call returns 0.0

    def read(self) -> Sequence[Reading]:
        ps = self._psutil
        out: list[Reading] = [("cpu.percent", ps.cpu_percent(interval=None), "%")]
        if hasattr(os, "getloadavg"):
            one, five, fifteen = os.getloadavg()
            out += [("load.1m", one, ""), ("load.5m", five, ""), ("load.15m", fifteen, "")]
        mem = ps.virtual_memory()
        out += [("memory.used_percent", mem.percent, "%"), ("memory.available", float(mem.available), "B")]
        for path in self.config.disks:
            try:
                du = ps.disk_usage(path)
            except OSError:
                continue
            name = _disk_name(path)
            out += [(f"disk.{name}.used_percent", du.percent, "%"),
                    (f"disk.{name}.free", float(du.free), "B")]
        if self.config.network:
            net = ps.net_io_counters()
            if net is not None:
                out += [("net.bytes_sent", float(net.bytes_sent), "B"),
                        ("net.bytes_recv", float(net.bytes_recv), "B")]
        if self.config.temperatures and hasattr(ps, "sensors_temperatures"):
            seen: set[str] = set()
            for chip, entries in (ps.sensors_temperatures() or {}).items():
                for i, entry in enumerate(entries):
                    label = _metric_part(chip if not entry.label else f"{chip}_{entry.label}")
                    if label in seen:
                        label = f"{label}_{i}"
                    seen.add(label)
                    out.append((f"temperature.{label}", float(entry.current), "C"))
        for file in self.config.thermal_files:
            raw = Path(file).read_text().strip()  # an unreadable file fails the read: counted
            out.append((f"temperature.{_metric_part(Path(file).parent.name)}", int(raw) / 1000.0, "C"))
        return out

    def close(self) -> None:
        self._psutil = None


KIND = SensorKind("system", SystemConfig, SystemSensor)
