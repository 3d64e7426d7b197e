"""The metrics sink: what ``/metrics`` needs from the frames the collector accepted.

Added by the collector when its metrics endpoint is on; it runs in a thread of
its own behind a :class:`~sensorwire.collector.sinks.SinkRunner` like every
sink, so the receive loop does no extra work per frame.  It keeps:

- the end-to-end latency histogram: the collector's receive time minus the
  frame's sample time (subscriber lag; a frame replayed from an agent's spool
  arrives late and lands in the top buckets; a negative lag, from clocks out of
  step, counts as 0);
- which devices are online: a device is online while its frames keep coming
  (within three of its heartbeat intervals) and its last heartbeat did not say
  it was stopping; at most ``devices_max`` devices (``[limits] max_devices``,
  which a reload changes at once) are kept: when full, the offline ones are
  forgotten (and the ones silent longest, up to an eighth of them);
- with ``[metrics] export_values = true``, the latest value of every
  ``(site, device, sensor, metric)``, at most ``values_max`` series.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from sensorwire.collector.frames import CheckedFrame
from sensorwire.collector.sinks import Item
from sensorwire.metrics import Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
DEFAULT_HEARTBEAT_S = 5.0   # until a device's first heartbeat says otherwise
ONLINE_HEARTBEATS = 3       # silent for this many heartbeat intervals: offline

SeriesKey = tuple[str, str, str, str]  # site, device, sensor, metric


class MetricsSink:
    name = "metrics"

    def __init__(self, export_values: bool = False, values_max: int = 10_000,
                 clock_ns: Callable[[], int] = time.time_ns, devices_max: int = 100_000) -> None:
        self.export_values = export_values
        self.values_max = values_max
        self.devices_max = devices_max
        self.latency = Histogram(LATENCY_BUCKETS)
        self.data_frames = 0
        self.heartbeats = 0
        self.values_dropped = 0
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        # (site, device) -> [last frame received ns, heartbeat interval s, stopping]
        self._devices: dict[tuple[str, str], list[float]] = {}
        self._values: dict[SeriesKey, float] = {}

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def reload(self, config: Any) -> None:
        """SIGHUP: ``[limits] max_devices`` applies at once; with fewer, the offline devices
        and those silent longest are forgotten down to it.  (``[metrics]`` needs a restart.)"""
        devices_max = config.limits.max_devices
        with self._lock:
            self.devices_max = devices_max
            over = len(self._devices) - devices_max
            if over > 0:
                self._make_room(self._clock_ns(), over)

    def write(self, batch: Sequence[Item]) -> None:
        observe = self.latency.observe
        devices = self._devices
        with self._lock:
            for frame, received_ns in batch:
                key = (frame.site, frame.device_id)
                dev = devices.get(key)
                if dev is None:
                    if len(devices) >= self.devices_max:
                        self._make_room(received_ns)
                    dev = devices[key] = [0, DEFAULT_HEARTBEAT_S, 0]
                dev[0] = received_ns
                if frame.seq == 0:
                    self.heartbeats += 1
                    hb = frame.heartbeat
                    assert hb is not None  # seq 0: a heartbeat
                    if hb.interval_s > 0:
                        dev[1] = hb.interval_s
                    dev[2] = 1 if hb.stopping else 0
                    continue
                dev[2] = 0
                self.data_frames += 1
                lag = (received_ns - frame.time_unix_nano) / 1e9
                observe(lag if lag > 0 else 0.0)
                if self.export_values:
                    self._keep_values(frame.site, frame.device_id, frame.sensor, frame)

    def _make_room(self, now_ns: int, at_least: int = 1) -> None:
        """Forget the devices that are not online, and if they are fewer than an eighth of
        ``devices_max`` (or ``at_least``), the ones silent longest up to that (so this runs at
        most once per ``devices_max / 8`` new devices)."""
        devices = self._devices
        gone = [k for k, (last, interval, stopping) in devices.items()
                if stopping or now_ns - last > ONLINE_HEARTBEATS * interval * 1e9]
        for k in gone:
            del devices[k]
        short = max(at_least, self.devices_max // 8) - len(gone)
        if short > 0:
            for k in sorted(devices, key=lambda k: devices[k][0])[:short]:
                del devices[k]

    def _keep_values(self, site: str, device: str, sensor: str, frame: CheckedFrame) -> None:
        values = self._values
        for metric, value in zip(frame.layout.metrics, frame.values, strict=True):
            key = (site, device, sensor, metric)
            if key in values or len(values) < self.values_max:
                values[key] = value
            else:
                self.values_dropped += 1

    def devices_online(self) -> int:
        now = self._clock_ns()
        with self._lock:
            return sum(1 for last, interval, stopping in self._devices.values()
                       if not stopping and now - last <= ONLINE_HEARTBEATS * interval * 1e9)

    def devices_seen(self) -> int:
        return len(self._devices)

    def values(self) -> dict[SeriesKey, float]:
        with self._lock:
            return dict(self._values)
