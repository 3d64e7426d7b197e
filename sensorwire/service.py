"""What a role's main loop tells systemd, and the SIGHUP reload it runs.

A role's loop does three things with a :class:`Service`::

    timeout_ms = svc.timeout_ms(timeout_ms)   # never sleep past a watchdog ping or status
    events = dict(poller.poll(timeout_ms))
    svc.tick()                                # WATCHDOG=1, STATUS=, reload on SIGHUP

and calls :meth:`Service.ready` once its sockets are bound or connected and its
sinks are open.  The messages (one datagram each, see :mod:`sensorwire.sdnotify`):

- ``READY=1`` with a first ``STATUS=``, from :meth:`ready`;
- ``WATCHDOG=1`` at half of ``$WATCHDOG_USEC`` (:mod:`sensorwire.watchdog`), withheld
  while a check the role installed names something stuck (the collector's sinks);
- ``STATUS=<one line>`` every ``status_s``, from the role's own ``status()``;
- ``RELOADING=1`` before and ``READY=1`` after a reload (SIGHUP);
- ``STOPPING=1`` as soon as SIGTERM/SIGINT arrives (:meth:`stopping`).

A reload that fails (a bad file) keeps the running configuration and logs the
precise configuration message at ERROR; it is counted for the metrics.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable

from sensorwire import sdnotify
from sensorwire.configload import ConfigError
from sensorwire.lifecycle import StopSignal
from sensorwire.watchdog import Watchdog

log = logging.getLogger(__name__)

STATUS_S = 10.0


class Rate:
    """Events per second between two readings of an ever-growing counter."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._t = clock()
        self._n = 0

    def per_s(self, total: int) -> float:
        now = self._clock()
        dt = now - self._t
        rate = (total - self._n) / dt if dt > 0 else 0.0
        self._t, self._n = now, total
        return rate


class Service:
    def __init__(self, stop: StopSignal | None = None, status: Callable[[], str] | None = None,
                 reload: Callable[[], None] | None = None, status_s: float = STATUS_S,
                 watchdog: Watchdog | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``reload`` re-reads the file and applies it (raises ConfigError for a bad one)."""
        self._clock = clock
        self._stop = stop
        self._status = status
        self._reload = reload
        self.status_s = status_s
        self.watchdog = watchdog or Watchdog(None)
        self._notifying = bool(os.environ.get("NOTIFY_SOCKET"))
        self._next_status = math.inf
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.last_reload_ok = True

    @classmethod
    def for_systemd(cls, stop: StopSignal, status: Callable[[], str] | None = None,
                    reload: Callable[[], None] | None = None) -> Service:
        """The usual set-up: watchdog from the environment, STOPPING=1 on SIGTERM."""
        svc = cls(stop, status, reload, watchdog=Watchdog.from_env())
        stop.on_stop(svc.stopping)
        return svc

    # -- systemd messages --------------------------------------------------
    def ready(self) -> None:
        sdnotify.notify("READY=1" + self._status_field())
        self._next_status = self._clock() + self.status_s

    def stopping(self) -> None:
        sdnotify.notify("STOPPING=1\nSTATUS=stopping")

    def _status_field(self) -> str:
        if self._status is None or not self._notifying:
            return ""
        try:
            line = self._status()
        except Exception:  # noqa: BLE001 - a status bug must not stop the loop
            log.exception("status line failed")
            return ""
        return "\nSTATUS=" + line.replace("\n", " ")

    # -- called by the loop ------------------------------------------------
    def timeout_ms(self, timeout_ms: float | None) -> int | None:
        """``timeout_ms`` (None: forever) capped at the next ping or status, in whole ms.

        Rounded up: a poll timeout truncated to 0 ms would spin until the deadline.
        """
        due = self.watchdog.due_in()
        if self._notifying and self._status is not None:
            s = max(0.0, self._next_status - self._clock())
            due = s if due is None else min(due, s)
        if due is not None:
            cap = due * 1000.0
            timeout_ms = cap if timeout_ms is None else min(timeout_ms, cap)
        return None if timeout_ms is None else math.ceil(timeout_ms)

    def tick(self) -> None:
        """After each wake-up: ping, status, and a reload if SIGHUP came."""
        if self._stop is not None and self._stop.hup.is_set():
            self._stop.hup.clear()
            self._stop.drain()  # the wake-up byte, or the poll would return at once forever
            self.reload()
        self.watchdog.kick()
        if self._notifying and self._status is not None and self._clock() >= self._next_status:
            sdnotify.notify(self._status_field().lstrip("\n"))
            self._next_status = self._clock() + self.status_s

    def reload(self) -> bool:
        """Re-read the configuration; on any error keep the running one. True when applied."""
        if self._reload is None:
            log.warning("SIGHUP: there is no configuration file to reload (started without -c)")
            return False
        # MONOTONIC_USEC: systemd 253+ wants it with RELOADING=1 (Type=notify-reload)
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        sdnotify.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")
        ok = False
        try:
            self._reload()
            ok = True
        except ConfigError as exc:
            log.error("reload failed, still running the previous configuration: %s", exc)
        except Exception:  # noqa: BLE001 - a failed reload must not stop the service
            log.exception("reload failed, still running the previous configuration")
        if ok:
            self.reloads_ok += 1
            log.info("configuration reloaded")
        else:
            self.reloads_failed += 1
        self.last_reload_ok = ok
        if self._stop is None or not self._stop.is_set():  # a SIGTERM meanwhile: STOPPING=1 stands
            sdnotify.notify("READY=1" + self._status_field())
        return ok


NO_SERVICE = Service()
"""For loops run without systemd (tests, embedding): passes timeouts through, does nothing."""
