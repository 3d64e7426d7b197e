"""The paho-mqtt publisher that ``bench.agent_footprint`` sets beside the agent.

What a careful user would write to do the agent's job with MQTT instead, kept
ordinary and minimal (one process, one thread of ours, paho's network thread):

- ``paho.mqtt.client.Client`` (callback API 2), ``connect`` to Mosquitto,
  ``loop_start()``; one ``publish`` per frame, QoS 0, on
  ``<site>/<device>/<sensor>``;
- every second it publishes the frames of the same 10 sensors the agent
  reads: 8 simulated sensors of 8 readings (sine plus Gaussian noise, or a
  random walk, as ``kind = "simulated"`` computes them), one system sensor
  reading the same psutil figures as ``kind = "system"`` (CPU, load, memory,
  the root disk, network bytes, temperatures where the machine has them), and
  every CSV line its serial port (a pty opened with pyserial, 115,200 baud)
  has delivered, 8 numbers a line;
- each frame is a ``sensorwire.v1.Frame`` filled and serialised with
  protobuf (one ``Frame`` object reused, cleared per frame, as
  ``bench.workload`` does): the same payload the agent sends, built the way a
  protobuf user builds it.

No spool, no ring, no heartbeats, no reconnection logic beyond paho's own:
it does less than the agent, on purpose (it is the baseline, not a rival).

    python -m bench.paho_publisher --port 1883 --serial /dev/pts/N --seconds 60
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time

import psutil
import serial  # pyserial

from sensorwire.proto.v1.telemetry_pb2 import Frame

SITE, DEVICE = "bench", "pi-paho"
# (metric, unit, signal): the readings of one simulated sensor; the agent's config says the same
METRICS: tuple[tuple[str, str, str], ...] = (
    ("temp", "Cel", "sine"), ("rh", "%", "walk"), ("pressure", "Pa", "sine"),
    ("gas", "Ohm", "walk"), ("dew_point", "Cel", "sine"), ("alt", "m", "walk"),
    ("iaq", "", "sine"), ("co2", "ppm", "walk"),
)
SERIAL_FIELDS = ("n", "temp", "rh", "pressure", "gas", "dew_point", "alt", "co2")


def system_readings() -> list[tuple[str, float, str]]:
    out = [("cpu.percent", psutil.cpu_percent(interval=None), "%")]
    one, five, fifteen = os.getloadavg()
    out += [("load.1m", one, ""), ("load.5m", five, ""), ("load.15m", fifteen, "")]
    mem = psutil.virtual_memory()
    out += [("memory.used_percent", mem.percent, "%"), ("memory.available", float(mem.available), "B")]
    du = psutil.disk_usage("/")
    out += [("disk.root.used_percent", du.percent, "%"), ("disk.root.free", float(du.free), "B")]
    net = psutil.net_io_counters()
    out += [("net.bytes_sent", float(net.bytes_sent), "B"), ("net.bytes_recv", float(net.bytes_recv), "B")]
    for chip, entries in psutil.sensors_temperatures().items():
        for i, entry in enumerate(entries):
            out.append((f"temperature.{chip}_{i}", float(entry.current), "C"))
    return out


def main(host: str, port: int, serial_port: str, seconds: float) -> None:
    import paho.mqtt.client as mqtt  # the bench's optional client library: imported when used
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-paho-agent")
    client.connect(host, port)
    client.loop_start()
    uart = serial.Serial(serial_port, 115200, timeout=0)
    frame = Frame()
    boot_id = int.from_bytes(os.urandom(8), "little")
    seq = 0
    walks = [[50.0] * len(METRICS) for _ in range(8)]
    rng = random.Random(1)
    pending = b""

    def publish(sensor: str, readings: list[tuple[str, float, str]]) -> None:
        nonlocal seq
        seq += 1
        frame.Clear()
        frame.site, frame.device_id, frame.boot_id, frame.seq = SITE, DEVICE, boot_id, seq
        frame.time_unix_nano = time.time_ns()
        frame.sensor = sensor
        for metric, value, unit in readings:
            frame.samples.add(metric=metric, value=value, unit=unit)
        client.publish(f"{SITE}/{DEVICE}/{sensor}", frame.SerializeToString(), qos=0)

    psutil.cpu_percent(interval=None)
    start = time.monotonic()
    tick = start
    while tick - start < seconds:
        t = tick - start
        for i in range(8):
            readings = []
            for j, (metric, unit, signal) in enumerate(METRICS):
                if signal == "sine":
                    v = 20.0 + 2.0 * math.sin(2 * math.pi * t / 60.0) + rng.gauss(0.0, 0.1)
                else:
                    walks[i][j] += rng.gauss(0.0, 0.5)
                    v = walks[i][j]
                readings.append((metric, v, unit))
            publish(f"sim{i}", readings)
        publish("health", system_readings())
        pending += uart.read(uart.in_waiting or 1)
        *lines, pending = pending.split(b"\n")
        for line in lines:
            values = line.strip().split(b",")
            if len(values) == len(SERIAL_FIELDS):
                publish("uart", [(f, float(v), "") for f, v in zip(SERIAL_FIELDS, values, strict=True)])
        tick += 1.0
        time.sleep(max(0.0, tick - time.monotonic()))
    uart.close()
    client.loop_stop()
    client.disconnect()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--serial", required=True, help="the serial device (a pty) to read CSV lines from")
    ap.add_argument("--seconds", type=float, default=60.0)
    a = ap.parse_args()
    main(a.host, a.port, a.serial, a.seconds)
