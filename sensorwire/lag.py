"""Is a subscriber falling behind?  The ZeroMQ guide's "suicidal snail" check, for telemetry.

A subscriber that cannot keep up with what it is sent does not fail: its
frames queue, first in its own socket, then at the proxy (up to the proxy's
``hwm``), and only then are they dropped.  Until then nothing looks wrong
except that everything arrives later.  So a subscriber watches its *lag*:
receive time minus the time the agent stamped.

It watches heartbeats, not data frames.  A data frame may be old by design:
a spool replay, the answer to a gap-repair request, a proxy's last-value
copy.  A heartbeat never is: it is stamped when it is sent and never
spooled or replayed (a proxy's cached copy of one is flagged, and left out),
and every agent sends one every ``heartbeat_s`` (5 s by default).  So
:class:`LagWatch` is given the time of each heartbeat read (:meth:`saw`),
and every tick (:meth:`check`) it takes the lag of the newest one read
since the last tick.  Past ``max_lag_s`` the subscriber is
*behind*: a WARNING says by how much and what to do, repeated every
``REPEAT_S`` while it lasts, and :attr:`fell_behind` counts the times it
happened.  Below half the bound it has caught up again (an INFO says so).
A subscriber that sees no heartbeats (none of its agents is up) has nothing
to measure, and says nothing; a prefix naming one sensor gets its device's
heartbeats too (:func:`sensorwire.proto.wire.subscriptions`).

Heartbeats from agents whose clocks are known to be synchronised are
trusted (good to tens of milliseconds, far below any sensible bound).  The
others are used only while no trusted heartbeat has been seen (a fleet of
laptops or VMs whose kernels do not report NTP's state), and the warning
then says that the agents' clocks may be what is wrong.  A time before 2020
(a clock that never set) is never used.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

REPEAT_S = 30.0  # while behind, the warning is repeated this often (with the lag then)
MIN_VALID_NS = 1_577_836_800_000_000_000  # 2020-01-01: anything earlier is a clock that never set


class LagWatch:
    def __init__(self, max_lag_s: float, who: str, key: str) -> None:
        """``who`` names the subscriber in messages ("collector", "tail"); ``key`` is the
        setting of the bound ("[subscribe] max_lag_s", "--max-lag-s")."""
        self.max_lag_s = max_lag_s
        self.who = who
        self.key = key
        self.lag_s: float | None = None  # the newest heartbeat's lag at the last check; None: none
        self.behind = False
        self.fell_behind = 0  # times the lag went past the bound
        self._newest_ns = 0   # the newest trusted heartbeat time read since the last check
        self._newest_untrusted_ns = 0  # the same from clocks not known to be synchronised
        self.trusted_seen = False  # a heartbeat from a synchronised clock was ever read
        self.untrusted = False  # the last measurement came from clocks not known to be right
        self._since = 0.0     # monotonic: behind since
        self._warned = 0.0    # monotonic: last warning

    def saw(self, time_ns: int, synced: bool = True) -> None:
        """A heartbeat read now, stamped ``time_ns`` by an agent whose clock is ``synced``
        (known to be synchronised) or not."""
        if synced:
            self.trusted_seen = True
            if time_ns > self._newest_ns:
                self._newest_ns = time_ns
        elif time_ns > self._newest_untrusted_ns and time_ns >= MIN_VALID_NS:
            self._newest_untrusted_ns = time_ns

    def check(self, now_ns: int, now: float) -> None:
        """Once per tick: the lag of the newest heartbeat read since the last check (wall clock
        ``now_ns``, monotonic ``now``).  None read since: nothing changes."""
        newest, self._newest_ns = self._newest_ns, 0
        untrusted, self._newest_untrusted_ns = self._newest_untrusted_ns, 0
        self.untrusted = not newest and not self.trusted_seen
        if self.untrusted:
            newest = untrusted
        if not newest:
            return
        lag = self.lag_s = max(0.0, (now_ns - newest) / 1e9)
        if not self.behind:
            if lag > self.max_lag_s:
                self.behind = True
                self.fell_behind += 1
                self._since = self._warned = now
                log.warning("%s is falling behind: the newest heartbeat it read is %.1f s old (%s = "
                            "%g). It cannot keep up with what it receives: frames queue at the "
                            "proxy (up to its hwm) and are then dropped there. Look at its CPU "
                            "and its sinks, or share the fleet between more subscribers "
                            "(prefixes)%s", self.who, lag, self.key, self.max_lag_s,
                            ". (The agents' clocks are not known to be synchronised: if they are "
                            "off, that is the lag seen)" if self.untrusted else "")
        elif lag <= self.max_lag_s / 2:
            self.behind = False
            log.info("%s has caught up: the newest heartbeat it read is %.1f s old, after %.0f s "
                     "behind", self.who, lag, now - self._since)
        elif now - self._warned >= REPEAT_S:
            self._warned = now
            log.warning("%s is still behind: the newest heartbeat it read is %.1f s old (%s = %g), "
                        "for %.0f s now", self.who, lag, self.key, self.max_lag_s, now - self._since)

    def status(self) -> str | None:
        """``behind by 12.3 s`` while behind, else None (for STATUS= and summaries)."""
        if not self.behind or self.lag_s is None:
            return None
        return f"behind by {self.lag_s:.1f} s"
