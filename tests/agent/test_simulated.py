"""Simulated signals are deterministic and follow their definitions."""

from __future__ import annotations

import math

import msgspec

from sensorwire.agent.sensors.simulated import SimulatedConfig, SimulatedSensor


def sensor(**kw: object) -> SimulatedSensor:
    raw = {"name": "env", "kind": "simulated", "interval_s": 1.0, "seed": 3, **kw}
    return SimulatedSensor(msgspec.convert(raw, SimulatedConfig))


METRICS = [
    {"name": "s", "signal": "sine", "mean": 10.0, "amplitude": 2.0, "period_s": 4.0, "unit": "C"},
    {"name": "w", "signal": "random_walk", "start": 5.0, "step": 1.0, "min": 0.0, "max": 6.0},
    {"name": "c", "signal": "constant", "value": 3.5},
    {"name": "st", "signal": "step", "values": [1.0, 2.0, 3.0], "every_s": 2.0},
    {"name": "n", "signal": "constant", "value": 0.0, "noise": 1.0},
]


def test_same_seed_same_values() -> None:
    a, b = sensor(metrics=METRICS), sensor(metrics=METRICS)
    assert [a.read() for _ in range(20)] == [b.read() for _ in range(20)]


def test_other_seed_other_noise() -> None:
    a, b = sensor(metrics=METRICS), sensor(metrics=METRICS, seed=4)
    assert [a.read() for _ in range(5)] != [b.read() for _ in range(5)]


def test_signals_follow_their_definitions() -> None:
    s = sensor(metrics=METRICS)
    reads = [dict((m, v) for m, v, _ in s.read()) for _ in range(8)]
    assert [round(r["s"], 9) for r in reads[:4]] == [10.0, 12.0, 10.0, 8.0]
    assert all(0.0 <= r["w"] <= 6.0 for r in reads) and reads[0]["w"] == 5.0
    assert all(r["c"] == 3.5 for r in reads)
    assert [r["st"] for r in reads] == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 1.0, 1.0]
    assert len({r["n"] for r in reads}) == 8 and all(abs(r["n"]) < 6 for r in reads)


def test_units_travel_with_readings() -> None:
    (m, v, unit), *_ = sensor(metrics=METRICS).read()
    assert (m, unit) == ("s", "C") and math.isfinite(v)
