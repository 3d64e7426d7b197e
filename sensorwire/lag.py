"""Is a subscriber falling behind?  The ZeroMQ guide's "suicidal snail" check, for telemetry.

A subscriber that cannot keep up with what it is sent does not fail: its
frames queue, first in its own socket, then at the proxy (up to the proxy's
``hwm``), and only then are they dropped.  Until then nothing looks wrong
except that every frame arrives later.  So a subscriber watches its *lag*:
receive time minus the time the agent stamped on the frame.

One late frame proves nothing: a spool replay, the answer to a gap-repair
request and a proxy's last-value copy are old by design.  What a subscriber
that falls behind shows is that *even the newest frame it reads* is old.  So
:class:`LagWatch` is given the newest sample time of each batch it reads
(:meth:`saw`), and every tick (:meth:`check`) it takes the lag of the newest
frame read since the last tick.  Past ``max_lag_s`` the subscriber is
*behind*: a WARNING says by how much and what to do, repeated every
``REPEAT_S`` while it lasts, and :attr:`fell_behind` counts the times it
happened.  Below half the bound it has caught up again (an INFO says so).

Frames whose time cannot be trusted are left out by the caller: an agent
whose clock was not known to be synchronised (``flags & 1``), a proxy's
cached copy (``flags & 8``).  A synchronised clock is good to tens of
milliseconds, far below any sensible bound.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

REPEAT_S = 30.0  # while behind, the warning is repeated this often (with the lag then)


class LagWatch:
    def __init__(self, max_lag_s: float, who: str, key: str) -> None:
        """``who`` names the subscriber in messages ("collector", "tail"); ``key`` is the
        setting of the bound ("[subscribe] max_lag_s", "--max-lag-s")."""
        self.max_lag_s = max_lag_s
        self.who = who
        self.key = key
        self.lag_s: float | None = None  # the newest frame's lag at the last check; None: none read
        self.behind = False
        self.fell_behind = 0  # times the lag went past the bound
        self._newest_ns = 0   # the newest trusted sample time read since the last check
        self._since = 0.0     # monotonic: behind since
        self._warned = 0.0    # monotonic: last warning

    def saw(self, time_ns: int) -> None:
        """A trusted sample time read now (the newest of a batch is enough)."""
        if time_ns > self._newest_ns:
            self._newest_ns = time_ns

    def check(self, now_ns: int, now: float) -> None:
        """Once per tick: the lag of the newest frame read since the last check (wall clock
        ``now_ns``, monotonic ``now``).  Nothing read since: nothing changes."""
        newest, self._newest_ns = self._newest_ns, 0
        if not newest:
            return
        lag = self.lag_s = max(0.0, (now_ns - newest) / 1e9)
        if not self.behind:
            if lag > self.max_lag_s:
                self.behind = True
                self.fell_behind += 1
                self._since = self._warned = now
                log.warning("%s is falling behind: the newest frame it read is %.1f s old (%s = "
                            "%g). It cannot keep up with what it receives: frames queue at the "
                            "proxy (up to its hwm) and are then dropped there. Look at its CPU "
                            "and its sinks, or share the fleet between more subscribers "
                            "(prefixes)", self.who, lag, self.key, self.max_lag_s)
        elif lag <= self.max_lag_s / 2:
            self.behind = False
            log.info("%s has caught up: the newest frame it read is %.1f s old, after %.0f s "
                     "behind", self.who, lag, now - self._since)
        elif now - self._warned >= REPEAT_S:
            self._warned = now
            log.warning("%s is still behind: the newest frame it read is %.1f s old (%s = %g), "
                        "for %.0f s now", self.who, lag, self.key, self.max_lag_s, now - self._since)

    def status(self) -> str | None:
        """``behind by 12.3 s`` while behind, else None (for STATUS= and summaries)."""
        if not self.behind or self.lag_s is None:
            return None
        return f"behind by {self.lag_s:.1f} s"
