"""``kind = "simulated"``: deterministic signals for laptops, demos and tests.

Given the same ``seed`` a sensor produces the same values reading after
reading: signals advance by reading count times ``interval_s``, not by the
wall clock, so scheduling jitter does not change them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Annotated

import msgspec

from sensorwire.agent.sensors import Reading, SensorConfig, SensorKind
from sensorwire.configload import Config
from sensorwire.names import metric_problem

Positive = Annotated[float, msgspec.Meta(gt=0)]


class _Signal(Config, tag_field="signal", kw_only=True):
    name: str
    unit: str = ""
    noise: Annotated[float, msgspec.Meta(ge=0)] = 0.0

    def __post_init__(self) -> None:
        problem = metric_problem(self.name)
        if problem:
            raise ValueError(f"name: {self.name!r} {problem}")


class Sine(_Signal, tag="sine", kw_only=True):
    mean: float = 0.0
    amplitude: float = 1.0
    period_s: Positive = 60.0


class RandomWalk(_Signal, tag="random_walk", kw_only=True):
    start: float = 0.0
    step: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    min: float = -math.inf
    max: float = math.inf

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min > self.max:
            raise ValueError(f"min: {self.min} is above max {self.max}")


class Constant(_Signal, tag="constant", kw_only=True):
    value: float = 0.0


class Step(_Signal, tag="step", kw_only=True):
    values: list[float]
    every_s: Positive = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.values:
            raise ValueError("values: give at least one value")


Signal = Sine | RandomWalk | Constant | Step


class SimulatedConfig(SensorConfig, kw_only=True):
    seed: int = 0
    metrics: list[Signal]

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.metrics:
            raise ValueError("metrics: give at least one metric")
        seen: set[str] = set()
        for m in self.metrics:
            if m.name in seen:
                raise ValueError(f"metrics: metric {m.name!r} is listed twice")
            seen.add(m.name)


class SimulatedSensor:
    def __init__(self, config: SimulatedConfig) -> None:
        self.config = config
        self._n = 0
        self._rngs = [random.Random(config.seed * 1_000_003 + i) for i in range(len(config.metrics))]
        self._walk = [m.start if isinstance(m, RandomWalk) else 0.0 for m in config.metrics]

    def open(self) -> None:
        pass

    def read(self) -> Sequence[Reading]:
        t = self._n * self.config.interval_s
        self._n += 1
        out: list[Reading] = []
        for i, m in enumerate(self.config.metrics):
            rng = self._rngs[i]
            if isinstance(m, Sine):
                v = m.mean + m.amplitude * math.sin(2 * math.pi * t / m.period_s)
            elif isinstance(m, RandomWalk):
                if self._n > 1:
                    w = self._walk[i] + rng.uniform(-m.step, m.step)
                    self._walk[i] = min(m.max, max(m.min, w))
                v = self._walk[i]
            elif isinstance(m, Constant):
                v = m.value
            else:
                v = m.values[int(t // m.every_s) % len(m.values)]
            if m.noise:
                v += rng.gauss(0.0, m.noise)
            out.append((m.name, v, m.unit))
        return out

    def close(self) -> None:
        pass


KIND = SensorKind("simulated", SimulatedConfig, SimulatedSensor)
