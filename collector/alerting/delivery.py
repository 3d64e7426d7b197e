"""The host that delivers notifications reliably, once for every notifier.

Each notifier runs in a thread of its own behind a bounded queue (a
:class:`Courier`), so a dead or hanging endpoint delays only its own
notifications: never the receive path, never storage, never the other
notifiers.  The courier opens the notifier, retries retryable failures with
capped exponential backoff (``backoff_s``, doubling, at most 60 s; longer when
the endpoint asks so with ``retry_after_s``, still at most 60 s), gives up
after ``retries`` more attempts, and counts and logs what was delivered,
what failed and what was dropped because the queue was full.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterable, Sequence

from sensorwire.collector.alerting.notification import Notification
from sensorwire.collector.alerting.notifiers import (
    AnyNotifierConfig,
    Notifier,
    NotifyError,
    build,
)
from sensorwire.logs import RateLimited

log = logging.getLogger(__name__)
_full = RateLimited(log, period_s=10.0)  # "queue full": per notifier, the count in all in each line

BACKOFF_MAX_S = 60.0
UNEXPECTED_LOG_S = 600.0  # a notifier bug's traceback is logged at most this often


class Courier:
    """One notifier in its own thread behind a bounded queue."""

    def __init__(self, notifier: Notifier, retries: int = 3, backoff_s: float = 1.0,
                 queue_max: int = 1000) -> None:
        self.notifier = notifier
        self.name = notifier.name
        self.retries = retries
        self.backoff_s = backoff_s
        self.queue_max = queue_max
        self._q: collections.deque[Notification] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._abort = threading.Event()
        self._thread: threading.Thread | None = None
        self._open = False
        self._busy = False
        self._abandoned = False  # given up on by close(): late outcomes are not counted
        self._traceback_at: float | None = None  # the last "unexpected error" traceback
        self._unexpected_hidden = 0
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.retried = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"notify-{self.name}", daemon=True)
        self._thread.start()

    def offer(self, n: Notification) -> None:
        """Queue ``n``; never blocks.  When the queue is full, ``n`` is dropped and counted."""
        with self._cond:
            if self._closing or len(self._q) >= self.queue_max:
                self.dropped += 1
                _full.warning(self.name, "notifier %s: queue full (%d): dropped %s %s of %s (%d "
                              "dropped in all)", self.name, self.queue_max, n.rule, n.state,
                              n.topic_name(), self.dropped)
                return
            self._q.append(n)
            self._cond.notify()

    @property
    def depth(self) -> int:
        return len(self._q)

    def idle(self) -> bool:
        """Nothing queued and nothing being delivered."""
        with self._cond:
            return not self._q and not self._busy

    def stop_accepting(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued within ``timeout_s``, then give up on the rest. Idempotent."""
        self.stop_accepting()
        t = self._thread
        if t is None:
            return
        t.join(timeout_s)
        if t.is_alive():
            self._abort.set()  # stop waiting between attempts
            t.join(1.0)
        if t.is_alive():
            self._abandon(timeout_s)
        self._thread = None

    def _abandon(self, timeout_s: float) -> None:
        """Give up on a notifier stuck in ``send``: what is queued is dropped, the one in
        flight failed (counted now; its outcome, if it ever has one, is not counted)."""
        with self._cond:
            queued, in_flight = len(self._q), self._busy
            self._q.clear()
            self.dropped += queued
            self.failed += in_flight
            self._abandoned = True
        log.error("notifier %s: not finished within %.0f s (shutdown or reload); %d not "
                  "delivered (%d in flight counted failed, %d queued counted dropped)",
                  self.name, timeout_s, queued + in_flight, in_flight, queued)

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._q and not self._closing:
                        self._cond.wait()
                    if not self._q or self._abort.is_set():
                        self.dropped += len(self._q)
                        self._q.clear()
                        return
                    n = self._q.popleft()
                    self._busy = True
                try:
                    self._deliver(n)
                finally:
                    with self._cond:
                        self._busy = False
        finally:
            if self._open:
                try:
                    self.notifier.close()
                except Exception:  # noqa: BLE001
                    log.exception("notifier %s: close failed", self.name)

    def _deliver(self, n: Notification) -> None:
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                if not self._open:
                    self._open_notifier()
                self.notifier.send(n)
            except NotifyError as exc:
                if not exc.retryable or attempt == self.retries or self._abort.is_set():
                    failed = self._count("failed")
                    log.error("notifier %s: %s %s of %s not delivered after %d attempt(s): %s "
                              "(%d failed in all)", self.name, n.rule, n.state, n.topic_name(),
                              attempt + 1, exc, failed)
                    return
                self._count("retried")
                wait = delay
                if exc.retry_after_s is not None:  # the endpoint's wish, within our bound
                    wait = min(max(delay, exc.retry_after_s), BACKOFF_MAX_S)
                log.warning("notifier %s: %s; retrying in %.1f s", self.name, exc, wait)
                if self._abort.wait(wait):
                    self._count("failed")
                    log.error("notifier %s: %s %s of %s not delivered: shutting down",
                              self.name, n.rule, n.state, n.topic_name())
                    return
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            except Exception as exc:  # noqa: BLE001 - a notifier bug must not stop the others
                self._count("failed")
                self._unexpected(n, exc)
                return
            self._count("delivered")
            if attempt:
                log.info("notifier %s: delivered %s %s of %s at attempt %d", self.name, n.rule,
                         n.state, n.topic_name(), attempt + 1)
            return

    def _unexpected(self, n: Notification, exc: Exception) -> None:
        """A notifier bug: the traceback at most once every UNEXPECTED_LOG_S, one line else."""
        now = time.monotonic()
        if self._traceback_at is not None and now - self._traceback_at < UNEXPECTED_LOG_S:
            self._unexpected_hidden += 1
            log.error("notifier %s: %s %s of %s not delivered: unexpected %s: %s", self.name,
                      n.rule, n.state, n.topic_name(), type(exc).__name__, str(exc)[:200])
            return
        self._traceback_at = now
        hidden, self._unexpected_hidden = self._unexpected_hidden, 0
        log.error("notifier %s: %s %s of %s not delivered: unexpected error (a bug: please "
                  "report it with this traceback; %d more since the last traceback)", self.name,
                  n.rule, n.state, n.topic_name(), hidden, exc_info=exc)

    def _count(self, result: str) -> int:
        """Count one ``result`` (unless close() gave up on this courier); the count in all."""
        with self._cond:
            if not self._abandoned:
                setattr(self, result, getattr(self, result) + 1)
            total: int = getattr(self, result)
            return total

    def _open_notifier(self) -> None:
        try:
            self.notifier.open()
        except NotifyError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. an endpoint that cannot be bound
            raise NotifyError(f"cannot open: {exc}", retryable=True) from exc
        self._open = True


class Dispatcher:
    """A courier per notifier; ``deliver`` hands a notification to the named ones."""

    def __init__(self, configs: Iterable[AnyNotifierConfig]) -> None:
        self.couriers: dict[str, Courier] = {}
        for c in configs:
            self.couriers[c.name] = Courier(build(c), retries=c.retries, backoff_s=c.backoff_s,
                                            queue_max=c.queue_max)

    def start(self) -> None:
        for c in self.couriers.values():
            c.start()

    def deliver(self, n: Notification, to: Sequence[str]) -> None:
        for name in to:
            self.couriers[name].offer(n)

    def idle(self) -> bool:
        return all(c.idle() for c in self.couriers.values())

    def close(self, timeout_s: float = 5.0) -> None:
        for c in self.couriers.values():
            c.stop_accepting()  # every courier drains at the same time
        deadline = time.monotonic() + timeout_s
        for c in self.couriers.values():
            c.close(max(0.0, deadline - time.monotonic()))

    def stats(self) -> str:
        return ", ".join(f"{c.name}: {c.delivered} delivered, {c.failed} failed, "
                         f"{c.dropped} dropped" for c in self.couriers.values())
