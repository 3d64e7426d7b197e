"""A load generator: many simulated devices' frames from one process, paced.

Binds (or connects) an XPUB, waits until a subscriber is there, then sends
``frames`` frames of ``samples`` samples, round-robin over ``devices``
devices (each encoding its frames as an agent does), at ``rate`` frames/s
(0: as fast as possible). With ``XPUB_NODROP`` and a large
HWM nothing is dropped at the sender; the returned dict says what was sent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import zmq

from sensorwire.proto import wire
from sensorwire.proto.encoder import DataEncoder

BOOT_ID = 12345
METRICS = [("temperature", "C"), ("humidity", "%"), ("pressure", "hPa"), ("co2", "ppm"),
           ("pm25", "ug/m3"), ("voc", "ppb"), ("light", "lx"), ("noise", "dB")]


def run(endpoint: str, frames: int, devices: int, rate: float, samples: int = 8,
        site: str = "bench", connect: bool = False, first_device: int = 0) -> dict[str, float]:
    """Send ``frames`` frames round-robin over devices ``first_device`` ... (+ ``devices``)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, 1_000_000)
    pub.setsockopt(zmq.XPUB_NODROP, 1)
    pub.setsockopt(zmq.LINGER, 10_000)
    if connect:
        pub.connect(endpoint)
    else:
        pub.bind(endpoint)
    if not pub.poll(30_000):
        raise SystemExit("loadgen: no subscriber within 30 s")
    pub.recv()
    metrics = METRICS[:samples]
    # each device encodes as an agent does (sensorwire.proto.encoder, one encoder per sensor)
    encoders = [DataEncoder(wire.data_topic(site, name, "env"), site, name, BOOT_ID, "env", metrics)
                for name in (f"dev-{first_device + i:05d}" for i in range(devices))]
    seqs = [0] * devices
    t0 = time.perf_counter()
    again = 0
    for i in range(frames):
        d = i % devices
        seqs[d] += 1
        msg = encoders[d].encode(seqs[d], time.time_ns(), [float(i + k) for k in range(samples)])
        while True:
            try:
                pub.send(msg, zmq.NOBLOCK)
                break
            except zmq.Again:
                again += 1
                pub.poll(10, zmq.POLLOUT)
        if rate > 0 and i % 100 == 99:
            ahead = (i + 1) / rate - (time.perf_counter() - t0)
            if ahead > 0:
                time.sleep(ahead)
    elapsed = time.perf_counter() - t0
    pub.close()
    ctx.term()
    return {"frames": frames, "samples": frames * samples, "seconds": elapsed,
            "send_rate": frames / elapsed, "blocked": again}


def wait_stored(count: Callable[[], int], target: int, quiet_s: float = 5.0) -> float:
    """Poll ``count()`` until it reaches ``target`` or stops growing for ``quiet_s``;
    returns the seconds waited (the drain time after the load generator finished)."""
    return wait_growth(count, target, quiet_s)[0]


def wait_growth(count: Callable[[], int], target: int, quiet_s: float = 5.0,
                interval_s: float = 0.1) -> tuple[float, float, int]:
    """As :func:`wait_stored`; returns (seconds waited, seconds until the count last grew,
    the last count)."""
    t0 = time.monotonic()
    last, last_change = -1, t0
    while True:
        n = count()
        now = time.monotonic()
        if n != last:
            last, last_change = n, now
        if n >= target or now - last_change > quiet_s:
            return now - t0, last_change - t0, n
        time.sleep(interval_s)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("endpoint")
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--connect", action="store_true")
    ap.add_argument("--first-device", type=int, default=0)
    a = ap.parse_args()
    print(json.dumps(run(a.endpoint, a.frames, a.devices, a.rate, a.samples, connect=a.connect,
                         first_device=a.first_device)))
    sys.stdout.flush()
