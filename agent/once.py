"""``sensorwire agent --once -c FILE``: read every sensor once and print the frames.

The first thing to run on a freshly wired device: no sockets, no proxy; each
sensor is opened, read once and closed, and its frame is printed as one JSON
line in ``sensorwire tail``'s format.  A stream sensor (a serial line) gets
up to ``STREAM_WAIT_S`` for its first reading.  Sensors that fail are named on
standard error and make the exit status 1.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO

from sensorwire import render
from sensorwire.agent.config import AgentConfig
from sensorwire.agent.publisher import Publisher
from sensorwire.agent.sensors import Reading, SensorConfig, SensorKind
from sensorwire.proto import wire

STREAM_WAIT_S = 10.0


def read_once(kind: SensorKind, config: SensorConfig,
              stream_wait_s: float = STREAM_WAIT_S) -> Sequence[Reading]:
    """One sample's readings; raises what the sensor raised, or TimeoutError."""
    sensor = kind.factory(config)
    sensor.open()
    try:
        if not kind.streaming:
            readings: Sequence[Reading] | None = sensor.read()  # type: ignore[union-attr]
            if not readings:
                raise ValueError("returned no readings")
            return readings
        deadline = time.monotonic() + stream_wait_s
        while (left := deadline - time.monotonic()) > 0:
            readings = sensor.read_next(min(left, 0.5))  # type: ignore[union-attr]
            if readings:
                return readings
        raise TimeoutError(f"no reading within {stream_wait_s:.0f} s")
    finally:
        sensor.close()


def run(config: AgentConfig, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
        stream_wait_s: float = STREAM_WAIT_S) -> int:
    publisher = Publisher(config.site, config.device_id, config.publish)
    decoder = wire.Decoder()
    failed: list[str] = []
    for kind, cfg in config.sensors:
        try:
            readings = read_once(kind, cfg, stream_wait_s)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the others
            failed.append(cfg.name)
            print(f"sensor {cfg.name} ({kind.name}): {type(exc).__name__}: {exc}", file=err)
            continue
        topic, msg = publisher.build_data(cfg.name, readings, time.time_ns())
        frame = decoder.decode(msg)
        out.write(render.json_line(render.frame_dict(frame, topic.decode("ascii"))) + "\n")
        out.flush()
    if failed:
        print(f"sensorwire: {len(failed)} of {len(config.sensors)} sensors failed: "
              f"{', '.join(failed)}", file=err)
        return 1
    return 0
