"""The alerting sink: frames and presence in, alert transitions stored and delivered.

It runs like every sink, in a thread of its own behind a bounded queue
(:class:`sensorwire.collector.sinks.SinkRunner`), so rule evaluation never
slows reception or storage.  Beside ``write`` and ``event`` it has ``tick``,
which the runner calls at least every ``flush_interval_s``, so stale data
and ``for_s`` deadlines are noticed when no frames arrive at all.

Transitions are stored first (state and history, one transaction), then
handed to the notifiers' couriers, which deliver them in threads of their
own: a slow notifier never holds this thread.

A rule at its ``max_instances`` (see :mod:`.engine`) is logged at WARNING,
at most once a minute per rule and kind, naming the rule and the series; the
counts (:meth:`AlertSink.limited`) go to the collector's summary line and to
``/metrics``, and carry over a reload.  So do the counts of notifications per
rule and state and of deliveries per notifier (:meth:`AlertSink.notified_by_rule`,
:meth:`AlertSink.deliveries`), which ``/metrics`` reads from another thread.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any

from sensorwire.collector.alerting.delivery import Courier, Dispatcher
from sensorwire.collector.alerting.engine import ActiveAlert, Engine
from sensorwire.collector.alerting.notification import Notification
from sensorwire.collector.alerting.notifiers import BUILTIN_LOG, AnyNotifierConfig
from sensorwire.collector.alerting.rules import AlertRule
from sensorwire.collector.alerting.store import AlertStore
from sensorwire.collector.events import Event, Presence
from sensorwire.collector.frames import CheckedFrame
from sensorwire.collector.sinks import Item
from sensorwire.logs import RateLimited

log = logging.getLogger(__name__)
_limited = RateLimited(log, period_s=60.0)

# Ticks look this far behind the wall clock, so a frame received just before a
# tick but still in the queue is never overtaken by a stale alert.
TICK_LAG_NS = 1_000_000_000
UNSAVED_MAX = 10_000
DELIVERY_RESULTS = ("delivered", "failed", "dropped", "retried")


class AlertSink:
    name = "alerting"

    def __init__(self, rules: Sequence[AlertRule], notifiers: Sequence[AnyNotifierConfig],
                 db_path: str | None, *, storage_kind: str = "") -> None:
        """``db_path``: the SQLite file for alert state and history (None: memory only);
        ``storage_kind``: the ``[storage] kind``, named in the warning when there is none."""
        self.storage_kind = storage_kind
        self.rules = list(rules)
        self._notify = {r.name: r.notify for r in self.rules}
        used = {n for r in self.rules for n in r.notify}
        declared = {c.name: c for c in notifiers}
        declared.setdefault("log", BUILTIN_LOG)
        self.notifier_configs = [c for name, c in declared.items() if name in used]
        self.store = AlertStore(db_path) if db_path else None
        self.engine = Engine(self.rules)
        self.dispatcher: Dispatcher | None = None
        self._unsaved: list[Notification] = []
        self.notifications = 0
        self.store_errors = 0
        # (rule, state) -> notifications handed to the notifiers
        self.notified: collections.Counter[tuple[str, str]] = collections.Counter()
        # deliveries of the dispatchers replaced by reloads, by (notifier, result); the lock
        # keeps a scrape from seeing a replaced dispatcher twice or not at all
        self._delivered_before: collections.Counter[tuple[str, str]] = collections.Counter()
        self._retired: list[Dispatcher] = []  # replaced by reloads, still draining
        self._closers: list[threading.Thread] = []
        self._counts_lock = threading.Lock()
        # max_instances counts of the engines replaced by reloads, by rule
        self._evicted_before: collections.Counter[str] = collections.Counter()
        self._refused_before: collections.Counter[str] = collections.Counter()
        self._limited_before = (0, 0)
        self._window_reset_logged: float | None = None  # monotonic
        self.engine_errors = 0  # frames the rules failed on (a bug), logged once a minute
        self._engine_error_logged: float | None = None  # monotonic

    def reload(self, config: Any) -> None:
        """SIGHUP: new rules and notifiers (already validated); firing alerts carry over.

        Called by the sink runner in this sink's thread, in order with the frames.
        Pending alerts start again; a firing alert whose rule is gone is forgotten.  Firing
        alerts carry over from the store, or, without one, from the replaced engine.
        """
        fresh = AlertSink(config.alerts, config.notifiers, None)
        self._save([])
        self._evicted_before.update(self.engine.evicted)
        self._refused_before.update(self.engine.refused)
        self._limited_before = self.limited()
        firing = _firing(self.engine)  # without a store, the old engine is the only record
        self.engine.discard()
        self.rules, self._notify = fresh.rules, fresh._notify
        self.notifier_configs, self.engine = fresh.notifier_configs, fresh.engine
        carried = self._restore(firing)
        new = Dispatcher(self.notifier_configs)
        new.start()
        with self._counts_lock:
            old, self.dispatcher = self.dispatcher, new
            if old is not None:
                self._retired.append(old)
        if old is not None:  # drained in the background: evaluation goes on meanwhile
            closer = threading.Thread(target=self._retire, args=(old,), daemon=True,
                                      name="alerting-retire")
            closer.start()
            self._closers = [t for t in self._closers if t.is_alive()] + [closer]
        log.info("alerting: reloaded: %d rules, notifiers %s, %d firing alerts carried over",
                 len(self.rules), [c.name for c in self.notifier_configs], carried)

    def _retire(self, old: Dispatcher) -> None:
        """Let a replaced dispatcher deliver what it holds, then keep only its counts."""
        old.close()
        with self._counts_lock:
            for c in old.couriers.values():
                self._delivered_before.update(_courier_counts(c))
            self._retired.remove(old)

    def _restore(self, firing: list[ActiveAlert]) -> int:
        """Firing alerts into the engine: from the store, else ``firing`` (the alerts the
        replaced engine held in memory); stale rules seeded from storage."""
        active = self.store.active() if self.store is not None else firing
        gone = self.engine.restore(active)
        over = [f"{r.name} ({r.live} > {r.max_instances})" for r in self.engine.rules
                if r.live > r.max_instances]
        if over:
            log.warning("alerting: more firing alerts carried over than max_instances allows: "
                        "%s; they are kept until they resolve, and new series of these rules "
                        "are not watched until then", ", ".join(over))
        if gone:
            log.info("alerting: forgetting %d firing alerts of rules no longer configured (%s)",
                     len(gone), ", ".join(sorted({a.rule for a in gone})))
            if self.store is not None:
                self.store.forget(gone)
        if self.store is None:
            self._warn_limited()
            return len(active) - len(gone)
        # the series seen longest ago first: a rule at max_instances keeps the latest ones
        for site, device, sensor, metrics, seen in sorted(self.store.known_series(),
                                                          key=lambda series: series[4] or 0):
            self.engine.seed(site, device, sensor, metrics, seen)
        self._warn_limited()
        return len(active) - len(gone)

    def open(self) -> None:
        carried = 0
        if self.store is not None:
            self.store.open()
            carried = self._restore([])
        else:
            kind = f'= "{self.storage_kind}"' if self.storage_kind else 'is not "sqlite"'
            log.warning("alerting: [storage] kind %s: alert state and history are kept in memory "
                        "only (only kind = \"sqlite\" stores them, in its file): after a restart "
                        "firing alerts are forgotten, so one whose condition still holds notifies "
                        "\"firing\" again, and `sensorwire alerts` has nothing to list", kind)
        self.dispatcher = Dispatcher(self.notifier_configs)
        self.dispatcher.start()
        log.info("alerting: %d rules, notifiers %s, %d firing alerts carried over",
                 len(self.rules), [c.name for c in self.notifier_configs], carried)

    def write(self, batch: Sequence[Item]) -> None:
        observe = self.engine.observe
        out: list[Notification] = []
        for frame, received_ns in batch:
            try:
                observe(frame, received_ns, out)
            except Exception as exc:  # noqa: BLE001 - a bug costs this frame, not the batch
                self._engine_failed(frame, exc)
        self._handle(out)

    def _engine_failed(self, frame: CheckedFrame, exc: Exception) -> None:
        """Count a frame the rules could not be applied to; its traceback once a minute."""
        self.engine_errors += 1
        now = time.monotonic()
        where = f"{frame.site}/{frame.device_id}/{frame.sensor} seq {frame.seq}"
        if self._engine_error_logged is None or now - self._engine_error_logged >= 60:
            self._engine_error_logged = now
            log.error("alerting: rules not applied to the frame of %s (a bug: please report it "
                      "with this traceback); %d frames so far", where, self.engine_errors,
                      exc_info=exc)

    def event(self, ev: Event) -> None:
        if isinstance(ev, Presence):
            self._handle(self.engine.presence(ev))

    def tick(self, now_ns: int) -> None:
        self._handle(self.engine.tick(now_ns - TICK_LAG_NS))

    def close(self) -> None:
        for t in self._closers:  # replaced dispatchers first get their time (5 s at most)
            t.join(7.0)
        if self.dispatcher is not None:
            self.dispatcher.close()
            stats = ", ".join(f"{name}: {d['delivered']} delivered, {d['failed']} failed, "
                              f"{d['dropped']} dropped" for name, d in self.deliveries().items())
            log.info("alerting: %d notifications; %s", self.notifications, stats)
            self.dispatcher = None
        if self.store is not None:
            self._save([])
            self.store.close()

    def limited(self) -> tuple[int, int]:
        """(series forgotten to make room, new series not watched) in all, every rule: plain
        reads, for other threads (the summary line)."""
        e, (evicted, refused) = self.engine, self._limited_before
        return e.evicted_total + evicted, e.refused_total + refused

    def instances(self) -> int:
        """Alert instances followed now, every rule."""
        return self.engine.instances()

    def firing_by_rule(self) -> dict[str, tuple[str, int]]:
        """Per rule configured now, (severity, instances firing now): for ``/metrics``."""
        firing = self.engine.firing_by_rule()
        return {r.name: (r.severity, firing.get(r.name, 0)) for r in list(self.rules)}

    def notified_by_rule(self) -> dict[tuple[str, str], int]:
        """Per rule configured now and state (``firing``, ``resolved``), notifications in all
        (a ``repeat_s`` reminder is one more ``firing``): for ``/metrics``."""
        counts = dict(self.notified)  # a copy: the sink's thread counts
        return {(r.name, state): counts.get((r.name, state), 0)
                for r in list(self.rules) for state in ("firing", "resolved")}

    def deliveries(self) -> dict[str, dict[str, int]]:
        """Per notifier in use now: ``delivered``, ``failed``, ``dropped`` and ``retried`` in
        all (over reloads too), and ``queued`` now: for ``/metrics``."""
        with self._counts_lock:
            total = collections.Counter(self._delivered_before)
            for d in [*self._retired, self.dispatcher]:
                for c in d.couriers.values() if d is not None else ():
                    total.update(_courier_counts(c))
            current = dict(self.dispatcher.couriers) if self.dispatcher is not None else {}
        return {name: {"queued": c.depth, **{r: total[name, r] for r in DELIVERY_RESULTS}}
                for name, c in current.items()}

    def limited_by_rule(self) -> dict[str, tuple[int, int]]:
        """Per rule configured now, (forgotten, not watched) in all: for ``/metrics``."""
        e = self.engine
        evicted, refused = dict(e.evicted), dict(e.refused)  # copies: another thread counts
        return {r.name: (evicted.get(r.name, 0) + self._evicted_before[r.name],
                         refused.get(r.name, 0) + self._refused_before[r.name])
                for r in list(self.rules)}

    def _warn_limited(self) -> None:
        """Warn (rate-limited per rule) about rules that hit max_instances since last time."""
        e = self.engine
        for name, (what, key) in e.last_limited.items():
            r = next(r for r in e.rules if r.name == name)
            series = "/".join(p for p in key[1:4] if p) + (f" {key[4]}" if key[4] else "")
            if what == "refused":
                _limited.warning(f"refused {name}", "alerting: rule %r has max_instances = %d "
                                 "alert instances, all pending or firing: series %s is not "
                                 "watched; %d series not watched so far; raise max_instances of "
                                 "the rule or narrow its match", name, r.max_instances, series,
                                 e.refused[name] + self._refused_before[name])
            else:
                _limited.warning(f"evicted {name}", "alerting: rule %r has max_instances = %d "
                                 "alert instances: forgot series %s, idle longest, to watch a "
                                 "new one; %d forgotten so far; raise max_instances of the rule "
                                 "or narrow its match", name, r.max_instances, series,
                                 e.evicted[name] + self._evicted_before[name])
        e.last_limited.clear()

    def _log_window_reset(self) -> None:
        """INFO, at most once a minute: a rate window started again (a clock stepped back)."""
        e = self.engine
        assert e.last_window_reset is not None
        key, back_s = e.last_window_reset
        e.last_window_reset = None
        now = time.monotonic()
        if self._window_reset_logged is not None and now - self._window_reset_logged < 60:
            return
        self._window_reset_logged = now
        series = "/".join(p for p in key[1:4] if p) + f" {key[4]}"
        log.info("alerting: rule %r: a sample of %s is %d s older than the newest one: the "
                 "device's clock stepped back (or a frame came from the future), so its rate "
                 "window starts again; %d windows started again so far", key[0], series, back_s,
                 e.window_resets)

    def _handle(self, notes: list[Notification]) -> None:
        if self.engine.last_limited:
            self._warn_limited()
        if self.engine.last_window_reset is not None:
            self._log_window_reset()
        if not notes and not self._unsaved:
            return
        self._save(notes)
        assert self.dispatcher is not None
        for n in notes:
            self.notifications += 1
            self.notified[n.rule, n.state] += 1
            self.dispatcher.deliver(n, self._notify[n.rule])

    def _save(self, notes: list[Notification]) -> None:
        """Store transitions; on a database error keep them (bounded) for the next call."""
        if self.store is None:
            return
        todo = self._unsaved + notes
        if not todo:
            return
        try:
            self.store.record(todo)
        except sqlite3.Error as exc:
            self.store_errors += 1
            if len(todo) > UNSAVED_MAX:
                log.error("alerting: %d alert transitions not stored and dropped",
                          len(todo) - UNSAVED_MAX)
                todo = todo[-UNSAVED_MAX:]
            self._unsaved = todo
            log.error("alerting: cannot store %d alert transitions (%s); trying again later",
                      len(todo), exc)
            return
        self._unsaved = []


def _firing(engine: Engine) -> list[ActiveAlert]:
    """The alerts ``engine`` holds firing, as a store would give them back."""
    return [ActiveAlert(i.rule.name, i.site, i.device, i.sensor, i.metric, i.started_ns,
                        i.notified_ns, i.value, i.threshold) for i in engine.firing()]


def _courier_counts(c: Courier) -> dict[tuple[str, str], int]:
    return {(c.name, result): getattr(c, result) for result in DELIVERY_RESULTS}
