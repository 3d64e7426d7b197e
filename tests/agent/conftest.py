"""Fixtures of the serial sensor tests: a pseudo-terminal, and sensors closed after the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sensorwire.agent import sensors
from sensorwire.agent.sensors.serial import SerialSensor
from sensorwire.serialsim import Pty


@pytest.fixture
def pty() -> Iterator[Pty]:
    with Pty() as p:
        yield p


@pytest.fixture
def make_sensor() -> Iterator[Callable[..., SerialSensor]]:
    """``make_sensor(port=..., format=..., ...)``: a serial sensor, closed after the test."""
    made: list[SerialSensor] = []

    def make(**keys: Any) -> SerialSensor:
        _, cfg = sensors.parse({"name": "dev", "kind": "serial", **keys}, 0, "test.toml")
        s = SerialSensor(cfg)  # type: ignore[arg-type]
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()
