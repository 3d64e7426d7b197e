"""Helpers for the alerting tests: rules from dicts, frames from values."""

from __future__ import annotations

from typing import Any

import msgspec

from sensorwire.collector.alerting.engine import Engine
from sensorwire.collector.alerting.notification import Notification
from sensorwire.collector.alerting.rules import AlertRule
from sensorwire.proto.v1.telemetry_pb2 import Frame

NS = 1_000_000_000
T0 = 1_800_000_000 * NS  # a round start time


def rule(**kw: Any) -> AlertRule:
    kw.setdefault("name", "r")
    return msgspec.convert(kw, AlertRule)


def frame(values: dict[str, float], t_s: float, site: str = "greenhouse", device: str = "pi-07",
          sensor: str = "env", seq: int = 1) -> Frame:
    f = Frame(site=site, device_id=device, boot_id=1, seq=seq, sensor=sensor,
              time_unix_nano=T0 + int(t_s * NS))
    for metric, value in values.items():
        f.samples.add(metric=metric, value=value)
    return f


def at(t_s: float) -> int:
    return T0 + int(round(t_s * NS))


def feed(engine: Engine, series: list[tuple[float, float]], metric: str = "temperature",
         **where: Any) -> list[Notification]:
    """Feed ``(t_s, value)`` readings, received at their own time."""
    out: list[Notification] = []
    for i, (t, v) in enumerate(series):
        out += engine.observe(frame({metric: v}, t, seq=i + 1, **where), at(t))
    return out


def brief(notes: list[Notification]) -> list[tuple[str, float]]:
    """``(state, seconds after T0)`` of each notification."""
    return [(n.state, (n.time_ns - T0) / NS) for n in notes]
