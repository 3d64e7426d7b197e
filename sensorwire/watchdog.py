"""The systemd watchdog, kept by a role's main loop.

With ``WatchdogSec=`` in its unit, systemd starts the process with
``WATCHDOG_USEC`` (and ``WATCHDOG_PID``) set and kills and restarts it when no
``WATCHDOG=1`` arrives within that time.  The main loop sends it, not a thread
of its own: a loop that hangs stops the pings, so a hung process is restarted,
not only a dead one.

The loop asks :meth:`Watchdog.due_in` how long it may block at most and calls
:meth:`Watchdog.kick` after every wake-up; ``kick`` pings at most once per half
period (``WATCHDOG_USEC / 2``), so there is no timer and no busy loop.

Work done in other threads (the collector's sinks) is covered by *checks*
(:meth:`Watchdog.watching`): when a ping is due each check is asked, and while
one names something stuck the ping is withheld, logged once at ERROR with the
reason, so systemd restarts the process as it would a hung loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping

from sensorwire import sdnotify

log = logging.getLogger(__name__)

Check = Callable[[], str | None]  # None: all is well; else what is stuck


class Watchdog:
    def __init__(self, interval_s: float | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``interval_s``: seconds between pings; None when there is no watchdog."""
        self.interval_s = interval_s
        self.pings = 0
        self.withheld = 0  # pings not sent because a check named something stuck
        self._clock = clock
        self._next = clock()  # the first kick pings at once
        self._checks: list[Check] = []
        self._stuck: str | None = None  # what the last check named, while pings are withheld
        self._stuck_pings = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Watchdog:
        """The watchdog systemd asked for, or a disabled one."""
        environ = os.environ if env is None else env
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        if not environ.get("NOTIFY_SOCKET") or not usec.isdigit() or int(usec) <= 0:
            return cls(None)
        if pid and pid != str(os.getpid()):
            return cls(None)  # meant for another process (we were started by a wrapper)
        return cls(int(usec) / 1e6 / 2)

    @property
    def enabled(self) -> bool:
        return self.interval_s is not None

    def due_in(self) -> float | None:
        """Seconds until the next ping is due (0 when overdue); None without a watchdog."""
        if self.interval_s is None:
            return None
        return max(0.0, self._next - self._clock())

    @contextlib.contextmanager
    def watching(self, check: Check) -> Iterator[None]:
        """While inside, a ping is withheld whenever ``check()`` returns what is stuck.

        ``check`` is called only when a ping is due (every half period), in the loop's thread.
        """
        self._checks.append(check)
        try:
            yield
        finally:
            self._checks.remove(check)

    def kick(self) -> bool:
        """Ping when due and no check names something stuck; True when a ping was sent."""
        if self.interval_s is None:
            return False
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self.interval_s
        stuck = "; ".join(filter(None, (check() for check in self._checks)))
        if stuck:
            self.withheld += 1
            self._stuck_pings += 1
            if self._stuck is None:
                log.error("watchdog: no longer telling systemd that all is well: %s. systemd "
                          "restarts the process when WatchdogSec passes without a ping", stuck)
            self._stuck = stuck
            return False
        if self._stuck is not None:
            log.warning("watchdog: pinging systemd again, %d pings were withheld (%s)",
                        self._stuck_pings, self._stuck)
            self._stuck, self._stuck_pings = None, 0
        sdnotify.notify("WATCHDOG=1")
        self.pings += 1
        return True
