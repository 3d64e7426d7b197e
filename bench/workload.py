"""The one workload every transport carries: a telemetry frame of 8 readings.

Every peer sends the same protobuf ``Frame`` (about 217 bytes encoded): one
BME680-like sensor read of 8 samples with metric names and units.  The frame
carries what the subscriber needs to measure loss and latency:

* ``seq`` numbers the frames of one publisher process, from 1 upwards, so a
  subscriber finds missing and duplicated frames;
* ``time_unix_nano`` is the send time (``time.time_ns()`` just before the frame
  is encoded), so the receive time minus it is the latency: publisher and
  subscriber run on the same machine and read the same clock.

The builder reuses one ``Frame`` object and clears it per frame, as
``sensorwire.agent.publisher.Publisher.build_data`` does, so no peer pays for
rebuilding message objects.
"""

from __future__ import annotations

import time

from sensorwire.proto.v1.telemetry_pb2 import Frame

SITE = "greenhouse"
DEVICE = "pi-07"
SENSOR = "bme680"
BOOT_ID = 0x5EED_0F_B007_1D00  # fixed: keeps every frame the same size

# (metric, value, unit): what an environmental sensor reports once per read.
READINGS: tuple[tuple[str, float, str], ...] = (
    ("temp", 21.53, "Cel"),
    ("rh", 48.2, "%"),
    ("pressure", 101325.0, "Pa"),
    ("gas", 12034.0, "Ohm"),
    ("dew_point", 10.14, "Cel"),
    ("alt", 35.2, "m"),
    ("iaq", 51.0, ""),
    ("co2", 612.0, "ppm"),
)

TOPIC = f"{SITE}/{DEVICE}/{SENSOR}"  # ZeroMQ, MQTT, Redis and Zenoh key
NATS_SUBJECT = TOPIC.replace("/", ".")  # NATS separates tokens with dots


class FrameBuilder:
    """Numbers, stamps and encodes the workload frame; one per publisher process."""

    def __init__(self) -> None:
        self.seq = 0
        self._frame = Frame()

    @property
    def next_seq(self) -> int:
        return self.seq + 1

    def build(self) -> bytes:
        """The next frame, encoded (the protobuf payload only, no topic)."""
        self.seq += 1
        f = self._frame
        f.Clear()
        f.site = SITE
        f.device_id = DEVICE
        f.boot_id = BOOT_ID
        f.seq = self.seq
        f.time_unix_nano = time.time_ns()
        f.sensor = SENSOR
        add = f.samples.add
        for metric, value, unit in READINGS:
            add(metric=metric, value=value, unit=unit)
        return f.SerializeToString()


def decode(payload: bytes) -> Frame:
    """What a subscriber does with a payload: parse it as a ``Frame``."""
    return Frame.FromString(payload)


def frame_size() -> int:
    """Encoded size of the workload frame (with a realistic seq and time)."""
    b = FrameBuilder()
    b.seq = 123_456
    return len(b.build())
