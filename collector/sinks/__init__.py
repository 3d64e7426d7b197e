"""The sink interface, and the host that runs every sink reliably.

A sink is told these things, in one thread of its own: ``open()``,
``write(batch)`` and, if it has the method, ``event(ev)`` any number of times,
in arrival order, then ``close()``.  A sink that sets
``events_with_batches = True`` gets its events with the next batch instead,
just before its ``write``, maybe ahead of frames that were queued before
them: for a store that writes events in the batch's transaction, where their
order among the batch's frames makes no difference (SQLite).  ``close`` is
called only after the last ``write`` has returned, so a sink needs no locks.  A sink that has the method
``tick(now_ns)`` is also called at least every ``flush_interval_s`` (when
frames flow and when none arrive at all), with the wall clock in Unix ns: for
sinks that act on time passing, such as alerting on stale data, or a
database sink writing what it held while its database was down.  A sink that has
``interrupt()`` gets that call from another thread when a stop has waited
``close``'s ``timeout_s`` for it: it makes the running call return soon (a
database sink cancels its statement), and keeps or counts what it then does
not write.  A batch is a list of
``(frame, received_ns)`` tuples holding data frames (``seq >= 1``) and
heartbeats (``seq == 0``), in arrival order, each a
:class:`~sensorwire.collector.frames.CheckedFrame`; events are
:mod:`sensorwire.collector.events` (device presence, frames lost for good).

:class:`SinkRunner` owns what makes delivery reliable, once for every sink: a
bounded queue between reception and the sink (reception never waits on a
sink), batching (a sink that falls behind gets bigger batches, and after a
full one, what is queued at once, without waiting for the interval), retry with
capped backoff for errors marked retryable (for as long as an outage of the
store lasts), a batch refused for good written
again in halves (so one frame the store cannot take costs that frame, not
the good frames of other devices beside it), and counting of everything
dropped, per device.  It also notes which call into the sink is running and
since when, so that the collector can tell a sink that hangs (a write that
never returns) from one that is slow but moving (:meth:`SinkRunner.stalled`).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sensorwire.collector.events import Event
from sensorwire.collector.frames import CheckedFrame
from sensorwire.logs import RateLimited
from sensorwire.metrics import Histogram

log = logging.getLogger(__name__)
_full = RateLimited(log, period_s=10.0)  # "queue full": per sink, with the count in all
# an outage retried for as long as it lasts: a line a minute, not one every 5 s for an hour
_outage = RateLimited(log, period_s=60.0)

Item = tuple[CheckedFrame, int]  # (frame, received at, Unix ns)

DROPS_BY_DEVICE_MAX = 10_000  # devices whose dropped frames are counted one by one
BATCH_MAX = 160_000  # samples per write by default ([storage] batch_max): 20,000 frames of 8
HALVING_BUDGET = 32  # failed writes of a refused batch's halves before what fails is dropped whole
INTERRUPT_WAIT_S = 5.0  # at close, after the sink's interrupt(), for it to finish
TRACE_EVERY_S = 10.0  # a sink's unexpected errors: one trace in the log per this many seconds


def count_samples(items: Iterable[Item]) -> int:
    """What frames count against ``batch_max``: their samples, and at least 1 per frame (a
    heartbeat has none)."""
    return sum([len(f.values) or 1 for f, _ in items])


def take_samples(items: list[Item], budget: int) -> int:
    """How many of ``items``, from the first, fit in ``budget`` samples (maybe none)."""
    used = 0
    for k, (frame, _) in enumerate(items):
        used += len(frame.values) or 1
        if used > budget:
            return k
    return len(items)


def count_by_device(counter: collections.Counter[str], items: Iterable[Item]) -> None:
    """Count dropped frames per device, for at most DROPS_BY_DEVICE_MAX devices: made-up device
    ids must not grow memory, so a full counter starts again (the totals are kept beside)."""
    for frame, _ in items:
        key = frame.device_id
        if key not in counter and len(counter) >= DROPS_BY_DEVICE_MAX:
            counter.clear()
        counter[key] += 1


class SinkError(Exception):
    """A sink could not write; ``retryable`` says whether trying again may help, ``outage``
    that the store, not the batch, is at fault (locked by another process, a full disk): the
    runner then tries again for as long as that lasts instead of dropping the batch."""

    def __init__(self, message: str, retryable: bool, outage: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.outage = outage


class Sink(Protocol):
    name: str

    def open(self) -> None: ...

    def write(self, batch: Sequence[Item]) -> None: ...

    def close(self) -> None: ...


class EventSink(Sink, Protocol):
    def event(self, ev: Event) -> None: ...


class TickSink(Sink, Protocol):
    def tick(self, now_ns: int) -> None: ...


class ReloadableSink(Sink, Protocol):
    """A sink whose settings can change on SIGHUP (alert rules, say).

    ``reload`` gets the whole new, already validated collector configuration,
    in the sink's own thread, after the frames queued before the reload.  It
    should check what it needs first and change nothing if it raises.
    """

    def reload(self, config: object) -> None: ...


WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class _Reload:
    config: object


class _Frames:
    """Frames queued together, with their samples counted once."""

    __slots__ = ("items", "samples")

    def __init__(self, items: list[Item], samples: int) -> None:
        self.items = items
        self.samples = samples


class SinkRunner:
    """Runs one sink in its own thread behind a bounded queue.

    ``queue_max`` counts frames; ``batch_max`` counts samples (a frame's samples, at least 1
    per frame), as ``[storage] batch_max`` does: a write gets at most that many, and at least
    one frame.
    """

    def __init__(self, sink: Sink, queue_max: int = 200_000, batch_max: int = BATCH_MAX,
                 flush_interval_s: float = 0.2, retries: int = 5) -> None:
        self.sink = sink
        self.queue_max = queue_max
        self.batch_max = batch_max
        self.flush_interval_s = flush_interval_s
        self.retries = retries
        self._q: collections.deque[_Frames | Event | _Reload] = collections.deque()
        self._depth = 0     # frames queued
        self._samples = 0   # their samples, as batch_max counts them
        self._cond = threading.Condition()
        self._closing = False
        self._behind = False  # the last batch taken was a full one: more is waiting
        self._marks = 0  # events and reloads in the queue
        # a sink that writes events in its next batch's transaction takes them with the batch
        self._ride = bool(getattr(sink, "events_with_batches", False))
        self._riders: list[Event] = []
        self._thread: threading.Thread | None = None
        self._opened = threading.Event()
        self._open_error: BaseException | None = None
        self.written = 0
        self.batches = 0
        self.dropped = 0
        self._traced_at = -TRACE_EVERY_S
        self.dropped_by_device: collections.Counter[str] = collections.Counter()
        self.write_seconds = 0.0
        self.write_latency = Histogram(WRITE_BUCKETS)  # seconds per batch written
        self._in_call: tuple[str, float] | None = None  # the call into the sink running, since

    @property
    def depth(self) -> int:
        return self._depth

    def start(self) -> None:
        """Start the thread and wait until the sink is open (its error is raised here)."""
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.sink.name}", daemon=True)
        self._thread.start()
        self._opened.wait()
        if self._open_error is not None:
            self._thread.join()
            raise self._open_error

    def stalled(self, now: float, limit_s: float) -> str | None:
        """Why the sink is stuck, or None: a call into it (``write``, ``event``, ``reload``,
        ``tick``) running for longer than ``limit_s`` (monotonic ``now``), or its thread gone.

        Waiting between retries is not a call: a sink that keeps failing and being retried, or
        that holds what it cannot write (the PostgreSQL sink during an outage), is moving.
        Any thread may ask.
        """
        call = self._in_call
        if call is not None and now - call[1] > limit_s:
            return (f"sink {self.sink.name}: a {call[0]} into it has been running for "
                    f"{now - call[1]:.1f} s")
        thread = self._thread
        if thread is not None and not thread.is_alive() and not self._closing:
            return f"sink {self.sink.name}: its thread has ended"
        return None

    def offer(self, batch: list[Item], samples: int | None = None) -> list[Item]:
        """Queue a batch (``samples``: its samples as :func:`count_samples` counts them, if the
        caller has counted them); what does not fit is dropped, counted per device and
        returned."""
        lost: list[Item] = []
        with self._cond:
            room = self.queue_max - self._depth
            if room < len(batch):
                lost = batch[max(room, 0):]
                batch = batch[: max(room, 0)]
                samples = None
                self.dropped += len(lost)
                count_by_device(self.dropped_by_device, lost)
                _full.warning(self.sink.name, "sink %s: queue full (%d frames): %d frames "
                              "dropped (%d in all)", self.sink.name, self.queue_max, len(lost),
                              self.dropped)
            if batch:
                n = count_samples(batch) if samples is None else samples
                self._q.append(_Frames(batch, n))
                self._depth += len(batch)
                self._samples += n
                if self._samples >= self.batch_max:
                    self._cond.notify()
        return lost

    def offer_event(self, ev: Event) -> None:
        """Queue an event after the frames already queued (events are never dropped)."""
        if not hasattr(self.sink, "event"):
            return
        with self._cond:
            if self._ride:
                self._riders.append(ev)  # handed over with the next batch
                return
            self._q.append(ev)
            self._marks += 1
            self._cond.notify()

    def offer_reload(self, config: object) -> None:
        """Queue a new configuration for the sink's ``reload``, after the frames already queued."""
        if not hasattr(self.sink, "reload"):
            return
        with self._cond:
            self._q.append(_Reload(config))
            self._marks += 1
            self._cond.notify()

    def close(self, timeout_s: float = 10.0) -> None:
        """Drain the queue, flush, close the sink. Idempotent."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
            interrupt: Callable[[], None] | None = getattr(self.sink, "interrupt", None)
            if self._thread.is_alive() and interrupt is not None:
                call = self._in_call
                log.warning("sink %s: still busy after %.0f s%s; interrupting it (what it has not "
                            "written is kept or counted as the sink says)", self.sink.name, timeout_s,
                            f" (in {call[0]})" if call is not None else "")
                interrupt()
                self._thread.join(INTERRUPT_WAIT_S)
            if self._thread.is_alive():
                log.error("sink %s: did not finish within %.0f s; %d frames still queued",
                          self.sink.name, timeout_s, self._depth)
            self._thread = None

    def _take(self) -> tuple[list[Item], list[Event]] | Event | _Reload | None:
        with self._cond:
            # behind, take what is there now; else wait for a batch to fill, or the interval,
            # but not while an event waits (behind frames or not): it is due in order, now
            deadline = time.monotonic() + (0.0 if self._behind else self.flush_interval_s)
            while self._samples < self.batch_max and not self._closing and not self._marks:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            riders, self._riders = self._riders, []
            if not self._q:
                self._behind = False
                return None if self._closing and not riders else ([], riders)
            head = self._q[0]
            if not isinstance(head, _Frames):
                if riders:  # events that came before a reload go first
                    return [], riders
                self._marks -= 1
                self._q.popleft()
                return head
            out: list[Item] = []
            taken = 0
            self._behind = False
            while self._q and isinstance(head := self._q[0], _Frames):
                room = self.batch_max - taken
                if head.samples <= room:
                    out.extend(head.items)
                    taken += head.samples
                    self._q.popleft()
                    continue
                k = take_samples(head.items, room) or (0 if out else 1)  # a write has a frame
                if k:
                    part = count_samples(head.items[:k])
                    out.extend(head.items[:k])
                    taken += part
                    head.items, head.samples = head.items[k:], head.samples - part
                self._behind = True  # a full batch: more is waiting
                break
            self._depth -= len(out)
            self._samples -= taken
            return out, riders

    def _run(self) -> None:
        try:
            self.sink.open()
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._open_error = exc
            self._opened.set()
            return
        self._opened.set()
        tick = getattr(self.sink, "tick", None)
        next_tick = time.monotonic() + self.flush_interval_s
        try:
            while True:
                work = self._take()
                if work is None:
                    break
                if isinstance(work, tuple):
                    frames, riders = work
                    for ev in riders:
                        self._event(ev)
                    if frames:
                        self._write(frames)
                else:
                    self._event(work)
                if tick is not None and time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.flush_interval_s
                    self._tick(tick)
        finally:
            try:
                self.sink.close()
            except Exception:  # noqa: BLE001
                log.exception("sink %s: close failed", self.sink.name)

    def _call(self, what: str, fn: Callable[..., None], *args: object) -> None:
        """Call into the sink, noting what and since when for :meth:`stalled`."""
        self._in_call = (what, time.monotonic())
        try:
            fn(*args)
        finally:
            self._in_call = None

    def _write(self, batch: list[Item]) -> None:
        """Write ``batch``, retrying what may pass later.  A batch refused for good (not an
        outage: a frame the store cannot take, a bug) is written again in halves, so that only
        the frames at fault are dropped, not the good frames of other devices beside them."""
        failed = self._attempt(batch, self.retries)
        if failed is None:
            return
        why, retryable = failed
        if retryable or len(batch) == 1:
            self._drop(batch, why)
            return
        log.warning("sink %s: a batch of %d frames was refused (%s); writing it again in halves, "
                    "so that only the frames at fault are dropped", self.sink.name, len(batch), why)
        self._bisect(batch)

    def _bisect(self, batch: list[Item]) -> None:
        """Write ``batch`` in ever smaller halves until what fails is single frames, or the
        halves have failed :data:`HALVING_BUDGET` times (a sink that refuses everything): then
        each part that still fails is dropped whole."""
        mid = len(batch) // 2
        todo, failures = [batch[mid:], batch[:mid]], 0
        while todo:
            part = todo.pop()
            failed = self._attempt(part, 0)
            if failed is None:
                continue
            failures += 1
            if len(part) == 1 or failures > HALVING_BUDGET:
                self._drop(part, failed[0])
            else:
                mid = len(part) // 2
                todo += [part[mid:], part[:mid]]

    def _attempt(self, batch: list[Item], retries: int) -> tuple[str, bool] | None:
        """One write of ``batch``, with up to ``retries`` retries of retryable errors: None
        when written, else (why, whether it was retryable).  An outage is retried until it
        ends or the runner closes: dropping the batch at the head of the queue would lose good
        frames for good, while the bounded queue behind it takes what comes meanwhile (and what
        overflows it is counted and asked for again by gap repair)."""
        delay = 0.1
        attempt = 0
        while True:
            t0 = time.perf_counter()
            try:
                self._call("write", self.sink.write, batch)
            except SinkError as exc:
                if exc.retryable and (attempt < retries or (exc.outage and not self._closing)):
                    if exc.outage and attempt >= retries:
                        _outage.warning(self.sink.name, "sink %s: write failed (%s); still "
                                        "retrying, every %.1f s", self.sink.name, exc, delay)
                    else:
                        log.warning("sink %s: write failed (%s); retrying in %.1f s",
                                    self.sink.name, exc, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    attempt += 1
                    continue
                return str(exc), exc.retryable
            except Exception as exc:  # noqa: BLE001 - a sink bug must not stop the others
                now = time.monotonic()
                if now - self._traced_at >= TRACE_EVERY_S:  # a batch in halves: not one each
                    self._traced_at = now
                    log.exception("sink %s: unexpected error (a bug: please report it with "
                                  "this trace)", self.sink.name)
                return repr(exc), False
            took = time.perf_counter() - t0
            self.write_seconds += took
            self.write_latency.observe(took)
            self.written += len(batch)
            self.batches += 1
            if attempt > retries:
                log.warning("sink %s: writing again, after %d failed attempts", self.sink.name,
                            attempt)
            return None

    def _event(self, ev: Event | _Reload) -> None:
        if isinstance(ev, _Reload):
            try:
                self._call("reload", self.sink.reload, ev.config)  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - the sink keeps its previous settings
                log.exception("sink %s: reload failed; it keeps its previous settings",
                              self.sink.name)
            return
        try:
            self._call("event", self.sink.event, ev)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - a sink bug must not stop the others
            log.exception("sink %s: event %r failed", self.sink.name, ev)

    def _tick(self, tick: Callable[[int], None]) -> None:
        try:
            self._call("tick", tick, time.time_ns())
        except Exception:  # noqa: BLE001 - a sink bug must not stop the others
            log.exception("sink %s: tick failed", self.sink.name)

    @property
    def dropped_total(self) -> int:
        """Frames dropped here, and by the sink itself (a database sink's backlog full, or
        frames held through an outage that the database then refused)."""
        return self.dropped + int(getattr(self.sink, "lost", 0))

    @property
    def held(self) -> int:
        """Frames the sink holds for a database that is unreachable (memory and disk)."""
        return int(getattr(self.sink, "held", 0))

    def _drop(self, batch: list[Item], why: str) -> None:
        self.dropped += len(batch)
        count_by_device(self.dropped_by_device, batch)
        log.error("sink %s: %d frames dropped: %s", self.sink.name, len(batch), why)
