"""The alerting sink: frames and presence in, alert transitions stored and delivered.

It runs like every sink, in a thread of its own behind a bounded queue
(:class:`sensorwire.collector.sinks.SinkRunner`), so rule evaluation never
slows reception or storage.  Beside ``write`` and ``event`` it has ``tick``,
which the runner calls at least every ``flush_interval_s``, so stale data
and ``for_s`` deadlines are noticed when no frames arrive at all.

Transitions are stored first (state and history, one transaction), then
handed to the notifiers' couriers, which deliver them in threads of their
own: a slow notifier never holds this thread.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

from sensorwire.collector.alerting.delivery import Dispatcher
from sensorwire.collector.alerting.engine import Engine
from sensorwire.collector.alerting.notification import Notification
from sensorwire.collector.alerting.notifiers import BUILTIN_LOG, AnyNotifierConfig
from sensorwire.collector.alerting.rules import AlertRule
from sensorwire.collector.alerting.store import AlertStore
from sensorwire.collector.events import Event, Presence
from sensorwire.collector.sinks import Item

log = logging.getLogger(__name__)

# Ticks look this far behind the wall clock, so a frame received just before a
# tick but still in the queue is never overtaken by a stale alert.
TICK_LAG_NS = 1_000_000_000
UNSAVED_MAX = 10_000


class AlertSink:
    name = "alerting"

    def __init__(self, rules: Sequence[AlertRule], notifiers: Sequence[AnyNotifierConfig],
                 db_path: str | None) -> None:
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

    def reload(self, config: Any) -> None:
        """SIGHUP: new rules and notifiers (already validated); firing alerts carry over.

        Called by the sink runner in this sink's thread, in order with the frames.
        Pending alerts start again; a firing alert whose rule is gone is forgotten.
        """
        fresh = AlertSink(config.alerts, config.notifiers, None)
        self._save([])
        self.rules, self._notify = fresh.rules, fresh._notify
        self.notifier_configs, self.engine = fresh.notifier_configs, fresh.engine
        carried = self._restore() if self.store is not None else 0
        old, self.dispatcher = self.dispatcher, Dispatcher(self.notifier_configs)
        self.dispatcher.start()
        if old is not None:
            old.close()
        log.info("alerting: reloaded: %d rules, notifiers %s, %d firing alerts carried over",
                 len(self.rules), [c.name for c in self.notifier_configs], carried)

    def _restore(self) -> int:
        """Firing alerts from the store into the engine; stale rules seeded from storage."""
        assert self.store is not None
        active = self.store.active()
        gone = self.engine.restore(active)
        if gone:
            log.info("alerting: forgetting %d firing alerts of rules no longer configured (%s)",
                     len(gone), ", ".join(sorted({a.rule for a in gone})))
            self.store.forget(gone)
        for site, device, sensor, metrics, seen in self.store.known_series():
            self.engine.seed(site, device, sensor, metrics, seen)
        return len(active) - len(gone)

    def open(self) -> None:
        carried = 0
        if self.store is not None:
            self.store.open()
            carried = self._restore()
        else:
            log.warning("alerting: [storage] kind = \"none\": alert state is not kept across "
                        "restarts (a firing alert fires again after one)")
        self.dispatcher = Dispatcher(self.notifier_configs)
        self.dispatcher.start()
        log.info("alerting: %d rules, notifiers %s, %d firing alerts carried over",
                 len(self.rules), [c.name for c in self.notifier_configs], carried)

    def write(self, batch: Sequence[Item]) -> None:
        observe = self.engine.observe
        out: list[Notification] = []
        for frame, received_ns in batch:
            out += observe(frame, received_ns)
        self._handle(out)

    def event(self, ev: Event) -> None:
        if isinstance(ev, Presence):
            self._handle(self.engine.presence(ev))

    def tick(self, now_ns: int) -> None:
        self._handle(self.engine.tick(now_ns - TICK_LAG_NS))

    def close(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.close()
            log.info("alerting: %d notifications; %s", self.notifications, self.dispatcher.stats())
            self.dispatcher = None
        if self.store is not None:
            self._save([])
            self.store.close()

    def _handle(self, notes: list[Notification]) -> None:
        if not notes and not self._unsaved:
            return
        self._save(notes)
        assert self.dispatcher is not None
        for n in notes:
            self.notifications += 1
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
