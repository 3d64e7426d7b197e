"""The agent's main loop: schedules sensors, publishes frames and heartbeats.

One thread owns the ZeroMQ socket and runs polled sensors on their intervals
(due times are fixed multiples of ``interval_s`` from the start, so they do
not drift).  Stream sensors (a serial line) each get a reader thread of their
own that hands readings to the main loop through a bounded queue and a
self-pipe.  The loop blocks in ``zmq.Poller.poll`` until the next due time, a
reading, a subscription message or a signal: no busy polling.

The host owns reliability: a sensor that raises is counted and logged once
when it starts failing and once when it recovers; ``open`` is retried with
capped exponential backoff; the other sensors go on.
"""

from __future__ import annotations

import collections
import heapq
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import zmq

from sensorwire.agent.config import AgentConfig
from sensorwire.agent.publisher import Publisher
from sensorwire.agent.sensors import Reading, Sensor, SensorConfig, SensorKind, StreamSensor
from sensorwire.lifecycle import StopSignal
from sensorwire.proto.v1.telemetry_pb2 import SeqRange
from sensorwire.waker import Waker

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
STREAM_QUEUE_MAX = 1000


@dataclass
class SensorState:
    """What the host knows about one sensor: health and retry state."""

    kind: SensorKind
    config: SensorConfig
    sensor: Sensor | StreamSensor
    opened: bool = False
    failing: bool = False
    errors: int = 0
    readings: int = 0
    backoff_s: float = BACKOFF_MIN_S
    last_error: str = ""
    thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.config.name

    def failed(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        text = f"{type(exc).__name__}: {exc}"
        if not self.failing:
            log.warning("sensor %s: %s failed: %s (retrying; logged again when it recovers)",
                        self.name, what, text)
            self.failing = True
        self.last_error = text

    def succeeded(self) -> None:
        self.readings += 1
        self.backoff_s = BACKOFF_MIN_S
        if self.failing:
            log.info("sensor %s: recovered after %d errors (last: %s)", self.name, self.errors, self.last_error)
            self.failing = False

    def next_backoff(self) -> float:
        delay = self.backoff_s
        self.backoff_s = min(BACKOFF_MAX_S, self.backoff_s * 2)
        return delay


def create_sensors(config: AgentConfig) -> list[SensorState]:
    return [SensorState(kind, cfg, kind.factory(cfg)) for kind, cfg in config.sensors]


class Agent:
    """Runs the sensors of one agent.toml until stopped."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        spool = Publisher.make_spool(config.spool, config.spool_dir)
        self.publisher = Publisher(config.site, config.device_id, config.publish, spool,
                                   replay_rate=config.spool.replay_rate, security=config.security)
        self.states = create_sensors(config)
        self._stream_q: collections.deque[tuple[SensorState, int, Sequence[Reading]]] = (
            collections.deque()
        )
        self._stream_lock = threading.Lock()
        self.stream_dropped = 0
        self._waker = Waker()
        self._threads_stop = threading.Event()

    # -- the loop -------------------------------------------------------------
    def run(self, stop: StopSignal, ready: Callable[[], None] | None = None) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            sock = self.publisher.open(ctx)
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(stop.fd, zmq.POLLIN)
            poller.register(self._waker.fd, zmq.POLLIN)
            self._start_streams()
            log.info(
                "agent %s/%s started: boot_id %d, %d sensors, publishing to %s",
                self.config.site, self.config.device_id, self.publisher.boot_id,
                len(self.states), ", ".join(self.config.publish.connect + self.config.publish.bind),
            )
            if ready is not None:
                ready()
            self._loop(stop, poller)
            self._shutdown()
        finally:
            self._threads_stop.set()
            for st in self.states:
                if st.thread is not None:
                    st.thread.join(timeout=2.0)
                _close_quietly(st)
            self.publisher.close()
            self._waker.close()
            ctx.term()

    def _loop(self, stop: StopSignal, poller: zmq.Poller) -> None:
        start = time.monotonic()
        hb_interval = self.config.publish.heartbeat_s
        # heap of (due, order, index): index -1 is the heartbeat
        due: list[tuple[float, int, int]] = [(start, -1, -1)]
        periods: dict[int, float] = {-1: hb_interval}
        nth: dict[int, int] = {-1: 0}
        for i, st in enumerate(self.states):
            if not st.kind.streaming:
                due.append((start, i, i))
                periods[i] = st.config.interval_s
                nth[i] = 0
        heapq.heapify(due)
        sock = self.publisher.sock
        publisher = self.publisher
        replay_in: float | None = None
        while not stop.is_set():
            now = time.monotonic()
            wait = (due[0][0] - now) if due else 3600.0
            if replay_in is not None:
                wait = min(wait, replay_in)
            events = dict(poller.poll(max(0.0, wait) * 1000.0))
            if stop.is_set():
                break
            if sock in events:
                publisher.handle_incoming()
                unavailable = publisher.take_unavailable()
                if unavailable:
                    self._heartbeat(False, unavailable)
            if self._waker.fd in events:
                self._waker.drain()
            self._publish_stream_readings()
            now = time.monotonic()
            while due and due[0][0] <= now:
                when, order, idx = heapq.heappop(due)
                if idx == -1:
                    self._heartbeat(False)
                    delay = 0.0
                else:
                    delay = self._poll_sensor(self.states[idx])
                nth[idx] += 1
                nxt = start + nth[idx] * periods[idx]
                if nxt <= now:  # we fell behind (a slow read): skip missed slots, don't burst
                    nth[idx] = int((now - start) / periods[idx]) + 1
                    nxt = start + nth[idx] * periods[idx]
                if delay > 0:
                    nxt = max(nxt, now + delay)
                heapq.heappush(due, (nxt, order, idx))
            replay_in = publisher.replay()
            publisher.flush()

    def _poll_sensor(self, st: SensorState) -> float:
        """Read one polled sensor and publish; returns a retry delay after an open failure."""
        sensor = st.sensor
        if not st.opened:
            try:
                sensor.open()
                st.opened = True
            except Exception as exc:  # noqa: BLE001 - a failing sensor must not stop the others
                st.failed("open", exc)
                return st.next_backoff()
        try:
            readings = sensor.read()  # type: ignore[union-attr]
            t = time.time_ns()
            if not readings:
                raise ValueError("returned no readings")
        except Exception as exc:  # noqa: BLE001
            st.failed("read", exc)
            return 0.0
        st.succeeded()
        self._publish(st.name, readings, t)
        return 0.0

    def _publish(self, sensor: str, readings: Sequence[Reading], time_ns: int) -> None:
        topic, msg = self.publisher.build_data(sensor, readings, time_ns)
        self.publisher.publish(topic, msg)

    def _heartbeat(self, stopping: bool, unavailable: Sequence[SeqRange] = ()) -> None:
        msg = self.publisher.build_heartbeat(self.config.publish.heartbeat_s, stopping,
                                             self._counters(), unavailable)
        self.publisher.send_heartbeat(msg)

    def _counters(self) -> list[tuple[str, int]]:
        out = [("sensor_errors", sum(s.errors for s in self.states)),
               ("stream_dropped", self.stream_dropped)]
        out += [(f"sensor_errors.{s.name}", s.errors) for s in self.states if s.errors]
        return out

    def _shutdown(self) -> None:
        self._threads_stop.set()
        self._publish_stream_readings()
        self._heartbeat(True)
        c = self.publisher.counters
        spool = self.publisher.spool
        log.info("agent stopping: last seq %d; %d frames sent, %d heartbeats, %d spooled (%d still "
                 "in the spool), %d replayed, %d dropped", self.publisher.seq, c["frames_sent"],
                 c["heartbeats_sent"],
                 c["spooled"], spool.pending if spool else 0, c["replayed"],
                 c["dropped_hwm"] + (spool.dropped if spool else 0))

    # -- stream sensors -------------------------------------------------------
    def _start_streams(self) -> None:
        for st in self.states:
            if st.kind.streaming:
                st.thread = threading.Thread(
                    target=self._stream_reader, args=(st,), name=f"sensor-{st.name}", daemon=True
                )
                st.thread.start()

    def _stream_reader(self, st: SensorState) -> None:
        sensor: StreamSensor = st.sensor  # type: ignore[assignment]
        stop = self._threads_stop
        while not stop.is_set():
            if not st.opened:
                try:
                    sensor.open()
                    st.opened = True
                    if st.failing:
                        log.info("sensor %s: open again", st.name)
                except Exception as exc:  # noqa: BLE001
                    st.failed("open", exc)
                    stop.wait(st.next_backoff())
                    continue
            try:
                readings = sensor.read_next(0.5)
            except Exception as exc:  # noqa: BLE001 - e.g. the device was unplugged
                st.failed("read", exc)
                _close_quietly(st)
                stop.wait(st.next_backoff())
                continue
            if readings:
                t = time.time_ns()
                st.succeeded()
                with self._stream_lock:
                    if len(self._stream_q) >= STREAM_QUEUE_MAX:
                        self._stream_q.popleft()
                        self.stream_dropped += 1
                    self._stream_q.append((st, t, readings))
                self._waker.wake()

    def _publish_stream_readings(self) -> None:
        while True:
            with self._stream_lock:
                if not self._stream_q:
                    return
                st, t, readings = self._stream_q.popleft()
            self._publish(st.name, readings, t)


def _close_quietly(st: SensorState) -> None:
    try:
        st.sensor.close()
    except Exception as exc:  # noqa: BLE001
        log.debug("sensor %s: close failed: %s", st.name, exc)
    st.opened = False
