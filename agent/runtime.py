"""The agent's main loop: schedules sensors, publishes frames and heartbeats.

One thread owns the ZeroMQ sockets and runs polled sensors on their intervals
(due times are fixed multiples of ``interval_s`` from the start, so they do
not drift).  Stream sensors (a serial line) each get a thread of their own that
opens them (retrying with backoff) and reads them, handing readings to the
main loop through a bounded queue and a self-pipe; a stream sensor that
offers a descriptor (``fileno()``: a native serial port) is read by the main
loop itself once open, its thread waiting until the port is lost.  The loop
blocks in ``zmq.Poller.poll`` until the next due time, a reading, a
subscription message or a signal: no busy polling.

The host owns reliability: a sensor that raises is counted and logged once
when it starts failing and once when it recovers; ``open`` is retried with
capped exponential backoff; the other sensors go on.

On SIGHUP (:meth:`Agent.reload`) sensors are added, removed or changed while
the others go on untouched, on their schedules; the publisher, its sockets,
its ``boot_id`` and its ``seq`` stay, so no stream has a gap.
"""

from __future__ import annotations

import collections
import heapq
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import cast

import msgspec
import zmq

from sensorwire import heaptrim
from sensorwire.agent.clock import ClockState
from sensorwire.agent.config import AgentConfig
from sensorwire.agent.publisher import Publisher
from sensorwire.agent.sensors import (
    LoopReadable,
    Reading,
    Sensor,
    SensorConfig,
    SensorKind,
    StreamSensor,
)
from sensorwire.lifecycle import StopSignal
from sensorwire.service import NO_SERVICE, Rate, Service
from sensorwire.waker import Waker

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
STREAM_QUEUE_MAX = 1000
READERS_JOIN_S = 2.0  # at stop and reload: for the reader threads of streaming sensors, all of them
TRIM_AFTER_S = 3.0  # after start and reloads: sensors are open and read, the heap is trimmed
# no subscriber for its frames for two heartbeats after start (10 s by default), or this if
# longer: said once (a subscription takes a moment to come through a proxy)
NOBODY_MIN_S = 3.0


class SensorState(msgspec.Struct):
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
    thread: threading.Thread | None = None
    stop: threading.Event = msgspec.field(default_factory=threading.Event)  # stream thread
    # a stream sensor read by the main loop: its descriptor there, and what its thread waits on
    fd: int | None = None
    resume: threading.Event = msgspec.field(default_factory=threading.Event)

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
            log.info("sensor %s: recovered after %d errors (last: %s)",
                     self.name, self.errors, self.last_error)
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
                                   replay_rate=config.spool.replay_rate, clock=ClockState(),
                                   security=config.security)
        self.states = create_sensors(config)
        self._stream_q: collections.deque[tuple[SensorState, int, Sequence[Reading]]] = (
            collections.deque()
        )
        self._stream_lock = threading.Lock()
        self.stream_dropped = 0
        self._handed: list[SensorState] = []  # stream sensors opened, for the loop to read
        self._polled: dict[int, SensorState] = {}  # descriptor -> sensor the loop reads
        self._poller: zmq.Poller | None = None
        self._waker = Waker()
        self._replan: set[int] | None = None  # after a reload: ids of the new states
        self._rate = Rate()
        self._trim_at: float | None = None  # monotonic time of the next heap trim

    # -- the loop -------------------------------------------------------------
    def run(self, stop: StopSignal, ready: Callable[[], None] | None = None,
            service: Service | None = None) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            self.publisher.open(ctx)
            poller = zmq.Poller()
            for sock in self.publisher.socks:
                poller.register(sock, zmq.POLLIN)
            poller.register(stop.fd, zmq.POLLIN)
            poller.register(self._waker.fd, zmq.POLLIN)
            self._poller = poller
            self._start_streams()
            log.info(
                "agent %s/%s started: boot_id %d, %d sensors, publishing to %s",
                self.config.site, self.config.device_id, self.publisher.boot_id,
                len(self.states), ", ".join(self.config.publish.connect + self.config.publish.bind),
            )
            if ready is not None:
                ready()
            self._loop(stop, poller, service or NO_SERVICE)
            self._shutdown()
        finally:
            self._stop_streams(self.states)
            until = time.monotonic() + READERS_JOIN_S  # one wait for them all, not one each
            for st in self.states:
                if st.thread is not None:  # it closes its sensor as it ends (_stream_reader)
                    st.thread.join(timeout=max(0.0, until - time.monotonic()))
                else:
                    _close_quietly(st)
            self.publisher.close()
            self._waker.close()
            ctx.term()

    def _loop(self, stop: StopSignal, poller: zmq.Poller, svc: Service = NO_SERVICE) -> None:
        start = time.monotonic()
        due, periods, nth = self._plan(start, start, None)
        self._trim_at = start + TRIM_AFTER_S
        publisher = self.publisher
        socks = publisher.socks
        replay_in: float | None = None
        unheard = True  # nobody listening has not been said (or found untrue) yet
        while not stop.is_set():
            now = time.monotonic()
            wait = (due[0][0] - now) if due else 3600.0
            if replay_in is not None:
                wait = min(wait, replay_in)
            events = dict(poller.poll(svc.timeout_ms(max(0.0, wait) * 1000.0)))
            if stop.is_set():
                break
            svc.tick()
            if self._replan is not None:  # a reload changed the sensors
                due, periods, nth = self._plan(start, time.monotonic(), self._replan)
                self._replan = None
            if any(sock in events for sock in socks):
                publisher.handle_incoming()
                unavailable = publisher.take_unavailable()
                if unavailable:
                    self._heartbeat(False, unavailable)
            if self._waker.fd in events:
                self._waker.drain()
                self._take_handed()
            if self._polled:
                for fd in [fd for fd in self._polled if fd in events]:
                    self._read_polled(self._polled[fd])
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
            if unheard and now - start >= self._unheard_after():
                unheard = False  # looked at once: said, or found untrue
                self._tell_unheard()
            replay_in = publisher.replay()
            publisher.flush()
            if self._trim_at is not None and now >= self._trim_at:
                self._trim_at = None
                heaptrim.trim()  # what start-up (or the reload) freed goes back to the system

    def _unheard_after(self) -> float:
        return max(NOBODY_MIN_S, 2 * self.config.publish.heartbeat_s)

    def _tell_unheard(self) -> None:
        """Warn when no subscriber listens for any of its sensors."""
        pub = self.publisher
        if not self.states or any(pub.listened(pub.topic(st.name)) for st in self.states):
            return
        c = self.config
        where = (f"Is a proxy running at {', '.join(c.publish.connect)}, is that its frontend (agents "
                 "connect to the proxy's frontend, collectors to its backend)"
                 if c.publish.connect else
                 f"Does a collector connect to {', '.join(c.publish.bind)} ([subscribe] connect)")
        log.warning("no collector has subscribed to %s/%s within %g s: its frames %s until one "
                    "does. %s, and do a collector's [subscribe] prefixes cover %s/%s?",
                    c.site, c.device_id, self._unheard_after(),
                    "are kept in the spool" if pub.spool is not None
                    else "are sent to nobody and lost ([spool] is off)", where, c.site, c.device_id)

    def _plan(self, start: float, now: float, fresh: set[int] | None
              ) -> tuple[list[tuple[float, int, int]], dict[int, float], dict[int, int]]:
        """The schedule: a heap of (due, order, index into states; -1 the heartbeat).

        Due times are whole multiples of each period from ``start``.  On a
        re-plan (``fresh`` holds the ids of new sensors) the others keep their
        phase: their next slot after ``now``; new sensors are due at once.
        """
        due: list[tuple[float, int, int]] = []
        periods: dict[int, float] = {}
        nth: dict[int, int] = {}
        polled = [(-1, self.config.publish.heartbeat_s, False)] + [
            (i, st.config.interval_s, fresh is None or id(st) in fresh)
            for i, st in enumerate(self.states) if not st.kind.streaming]
        for i, period, at_once in polled:
            periods[i] = period
            if fresh is None:
                nth[i] = 0
                due.append((start, i, i))
            elif at_once:
                nth[i] = int((now - start) / period)
                due.append((now, i, i))
            else:
                nth[i] = math.ceil((now - start) / period)
                due.append((start + nth[i] * period, i, i))
        heapq.heapify(due)
        return due, periods, nth

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

    def _heartbeat(self, stopping: bool, unavailable: Sequence[tuple[int, int, int]] = ()) -> None:
        msg = self.publisher.build_heartbeat(self.config.publish.heartbeat_s, stopping,
                                             self._counters(), unavailable)
        self.publisher.send_heartbeat(msg)

    def _counters(self) -> list[tuple[str, int]]:
        out = [("sensor_errors", sum(s.errors for s in self.states)),
               ("stream_dropped", self.stream_dropped)]
        out += [(f"sensor_errors.{s.name}", s.errors) for s in self.states if s.errors]
        for s in self.states:
            out += _sensor_counters(s)
        return out

    def _shutdown(self) -> None:
        self._stop_streams(self.states)
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
    def _start_streams(self, states: Sequence[SensorState] | None = None) -> None:
        for st in self.states if states is None else states:
            if st.kind.streaming:
                st.thread = threading.Thread(
                    target=self._stream_reader, args=(st,), name=f"sensor-{st.name}", daemon=True
                )
                st.thread.start()

    def _stop_streams(self, states: Sequence[SensorState]) -> None:
        """Ask the reader threads of ``states`` to stop (they notice within 0.5 s); the loop
        stops reading those it read itself (the caller closes them)."""
        for st in states:
            st.stop.set()
            if st.fd is not None:
                self._unpoll(st)
            st.resume.set()

    def _take_handed(self) -> None:
        """Start reading the stream sensors their threads opened and handed over."""
        with self._stream_lock:
            handed, self._handed = self._handed, []
        poller = self._poller
        for st in handed:
            fd = cast(LoopReadable, st.sensor).fileno() if not st.stop.is_set() else None
            if fd is None or poller is None:
                st.resume.set()  # stopped (a reload removed it) or no longer readable here
                continue
            poller.register(fd, zmq.POLLIN)
            self._polled[fd] = st
            st.fd = fd

    def _read_polled(self, st: SensorState) -> None:
        """Publish what a stream sensor read by the loop has ready; when its device is lost,
        close it and hand it back to its thread, which reopens it with backoff."""
        try:
            batch = cast(LoopReadable, st.sensor).read_ready()
        except Exception as exc:  # noqa: BLE001 - e.g. the device was unplugged
            st.failed("read", exc)
            self._unpoll(st)
            _close_quietly(st)
            st.resume.set()
            return
        t = time.time_ns()
        for readings in batch:
            st.succeeded()
            self._publish(st.name, readings, t)

    def _unpoll(self, st: SensorState) -> None:
        fd, st.fd = st.fd, None
        if fd is not None and self._polled.pop(fd, None) is not None and self._poller is not None:
            self._poller.unregister(fd)

    def _hand_over(self, st: SensorState) -> bool:
        """In the sensor's thread, after it opened: when the sensor can be read from the loop,
        hand it over and wait until the loop gives it back (lost) or the agent stops it."""
        fileno = getattr(st.sensor, "fileno", None)
        if fileno is None or not hasattr(st.sensor, "read_ready") or fileno() is None:
            return False
        st.resume.clear()
        if st.stop.is_set():  # stopped before the clear: nobody would set it again
            return True
        with self._stream_lock:
            self._handed.append(st)
        self._waker.wake()
        st.resume.wait()
        if not st.stop.is_set():
            st.stop.wait(st.next_backoff())  # given back after a failure: reopen after a while
        return True

    def _stream_reader(self, st: SensorState) -> None:
        sensor: StreamSensor = st.sensor  # type: ignore[assignment]
        stop = st.stop
        while not stop.is_set():
            if not st.opened:
                try:
                    sensor.open()
                    st.opened = True  # recovery is logged at its first reading (succeeded)
                except Exception as exc:  # noqa: BLE001
                    st.failed("open", exc)
                    stop.wait(st.next_backoff())
                    continue
            if self._hand_over(st):
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
        # stopped: the thread closes its sensor, whether the stopper waited for it or gave up (a
        # reload whose READERS_JOIN_S an open outlasted: the port it brings is closed here, not left
        # open until the agent stops); the loop no longer reads it (_stop_streams)
        _close_quietly(st)

    def _publish_stream_readings(self) -> None:
        while True:
            with self._stream_lock:
                if not self._stream_q:
                    return
                st, t, readings = self._stream_q.popleft()
            self._publish(st.name, readings, t)


    # -- reload and status (sensorwire.service) -----------------------------------------------
    def reload(self, config: AgentConfig) -> None:
        """Apply a new configuration: sensors added, removed or changed; others untouched.

        Called from the loop (SIGHUP).  New sensor objects are made first, so an
        error leaves everything as it was; ``publish.heartbeat_s`` and
        ``log_level`` apply too; the names, endpoints and the rest of
        ``[publish]`` need a restart (a warning says so).
        """
        plan = _Reloading(self.states, config)
        fixed = _restart_only(self.config, config)
        if fixed:
            log.warning("reload: %s changed but take effect only after a restart", ", ".join(fixed))
        publish = msgspec.structs.replace(self.config.publish,
                                          heartbeat_s=config.publish.heartbeat_s)
        self._stop_streams(plan.retired)
        until = time.monotonic() + READERS_JOIN_S
        for st in plan.retired:
            if st.thread is None:
                _close_quietly(st)
                continue
            # a reader thread closes its sensor as it ends (_stream_reader)
            st.thread.join(timeout=max(0.0, until - time.monotonic()))
            if st.thread.is_alive():
                log.warning("sensor %s: its reader did not stop within %g s; left to finish "
                            "(it closes the port when it does)", st.name, READERS_JOIN_S)
        self.states = plan.states
        # what the removed sensors' readers queued goes out first, then what is kept for them
        self._publish_stream_readings()
        self.publisher.forget(plan.removed)
        self.config = msgspec.structs.replace(self.config, sensors=config.sensors, publish=publish,
                                             log_level=config.log_level)
        self._start_streams(plan.fresh)
        self._replan = {id(st) for st in plan.fresh}
        self._trim_at = time.monotonic() + TRIM_AFTER_S
        log.info("reload: %d sensors; added %s, changed %s, removed %s", len(plan.states),
                 plan.added or "none", plan.changed or "none", plan.removed or "none")

    def status(self) -> str:
        """The one-line STATUS= for systemd."""
        failing = [st.name for st in self.states if st.failing]
        rate = self._rate.per_s(self.publisher.counters.get("frames_sent", 0))
        text = f"publishing {rate:.1f} frames/s; {len(self.states)} sensors"
        if failing:
            text += f", {len(failing)} failing ({', '.join(failing[:5])})"
        return text + f"; last seq {self.publisher.seq}"


def _sensor_counters(st: SensorState) -> list[tuple[str, int]]:
    """A sensor's own counters, when it has a ``counters()`` method (optional).

    The sensor's name goes after the counter's first segment: a serial
    sensor ``gps`` reporting ``bad_lines`` and ``bad_lines.checksum`` gives
    ``bad_lines.gps`` and ``bad_lines.gps.checksum``.
    """
    counters = getattr(st.sensor, "counters", None)
    if counters is None:
        return []
    try:
        items = list(counters().items())
    except Exception as exc:  # noqa: BLE001 - a sensor's bug must not stop the heartbeat
        log.debug("sensor %s: counters() failed: %s", st.name, exc)
        return []
    out: list[tuple[str, int]] = []
    for key, value in items:
        head, dot, tail = key.partition(".")
        out.append((f"{head}.{st.name}{dot}{tail}", value))
    return out


def _close_quietly(st: SensorState) -> None:
    try:
        st.sensor.close()
    except Exception as exc:  # noqa: BLE001
        log.debug("sensor %s: close failed: %s", st.name, exc)
    st.opened = False


# -- reload helpers ---------------------------------------------------------------------------
def _sensor_key(kind: SensorKind, cfg: SensorConfig) -> tuple[str, SensorConfig]:
    return kind.name, cfg


class _Reloading:
    """What a reload changes, worked out before anything is touched."""

    def __init__(self, old: list[SensorState], config: AgentConfig) -> None:
        by_name = {st.name: st for st in old}
        self.states: list[SensorState] = []
        self.fresh: list[SensorState] = []
        self.added: list[str] = []
        self.changed: list[str] = []
        for kind, cfg in config.sensors:
            st = by_name.get(cfg.name)
            if st is not None and _sensor_key(st.kind, st.config) == _sensor_key(kind, cfg):
                self.states.append(st)
                continue
            new = SensorState(kind, cfg, kind.factory(cfg))  # may raise: nothing changed yet
            self.states.append(new)
            self.fresh.append(new)
            (self.changed if st is not None else self.added).append(cfg.name)
        kept = {id(st) for st in self.states}
        self.retired = [st for st in old if id(st) not in kept]
        self.removed = [st.name for st in self.retired if st.name not in self.changed]


def _restart_only(old: AgentConfig, new: AgentConfig) -> list[str]:
    """Keys that changed but apply only at the next start."""
    out = []
    for f in msgspec.structs.fields(old):
        if f.name in ("sensors", "log_level", "publish"):
            continue
        if getattr(old, f.name) != getattr(new, f.name):
            out.append(f.name)
    for key in (f.name for f in msgspec.structs.fields(old.publish)):
        if key != "heartbeat_s" and getattr(old.publish, key) != getattr(new.publish, key):
            out.append(f"publish.{key}")
    return out
