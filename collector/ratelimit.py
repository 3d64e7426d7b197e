"""``[limits] max_frames_per_s_per_device``: a per-device budget of frames per second.

A token bucket per device, keyed by the ``<site>/<device>`` at the start of
the topic and looked at before a message is decoded, so a flood costs a
dictionary look-up and a little arithmetic per message.  Frames over the
budget are dropped and counted per device; once a second every device that
went over is logged (rate-limited) with its count.

The bucket holds ``BURST_S`` seconds' worth of frames: an agent catching up
(a spool replay, the answer to a gap-repair request, which resends up to a
ring of frames at once) is not cut short, while a sustained flood is held
to the budget.  Keep an agent's ``[spool] replay_rate`` plus its live rate
below the budget.

A reload (SIGHUP) changes the budget at once: a device keeps its bucket, so a
device flooding at the time gets no fresh burst; 0 turns the limit off.
"""

from __future__ import annotations

import collections
import logging

from sensorwire.logs import RateLimited
from sensorwire.proto import wire

log = logging.getLogger(__name__)
_over = RateLimited(log, period_s=10.0)

BURST_S = 10.0        # the bucket's size, in seconds at the budget
REPORT_S = 1.0
MAX_DEVICES = 10_000  # per-device drop totals kept at most


class DeviceRateLimit:
    def __init__(self, per_s: int, burst_s: float = BURST_S) -> None:
        self.per_s = float(per_s)
        self._burst_s = burst_s
        self.capacity = max(1.0, per_s * burst_s)
        self.total = 0                                                 # frames dropped in all
        self.dropped: collections.Counter[bytes] = collections.Counter()  # per device, in all
        self._buckets: dict[bytes, list[float]] = {}                  # key -> [tokens, time]
        self._recent: collections.Counter[bytes] = collections.Counter()
        self._now = 0.0
        self._next_report = 0.0

    def set_rate(self, per_s: int) -> None:
        """A new budget (``[limits]`` reloaded), from the next message on; devices keep their
        buckets, with no more in them than the new depth."""
        self.per_s = float(per_s)
        self.capacity = max(1.0, per_s * self._burst_s)
        for b in self._buckets.values():
            if b[0] > self.capacity:
                b[0] = self.capacity

    def roll(self, now: float) -> None:
        """Set the time for the next messages (once per drained batch); report and prune
        about once a second."""
        self._now = now
        if now < self._next_report:
            return
        self._next_report = now + REPORT_S
        for dev, n in self._recent.items():
            name = dev.decode("ascii", "replace")
            _over.warning(name, "device %s sent more than %d frames/s: %d dropped in the last "
                          "second, %d in all ([limits] max_frames_per_s_per_device)", name,
                          self.per_s, n, self.dropped[dev])
        self._recent.clear()
        # a full bucket is the same as none: forget idle devices, so made-up names cost nothing
        cap, rate = self.capacity, self.per_s
        full = [k for k, (tokens, t) in self._buckets.items() if tokens + (now - t) * rate >= cap]
        for k in full:
            del self._buckets[k]

    def admit(self, msg: bytes) -> bool:
        """Count ``msg`` against its device; False when it is over the budget (drop it)."""
        first = msg.find(b"/", 0, wire.MAX_TOPIC_BYTES)
        end = msg.find(b"/", first + 1, wire.MAX_TOPIC_BYTES) if first >= 0 else -1
        key = msg[:end] if end > 0 else b""  # not a topic: one shared budget; decoding rejects it
        now = self._now
        b = self._buckets.get(key)
        if b is None:
            self._buckets[key] = [self.capacity - 1.0, now]
            return True
        tokens = b[0] + (now - b[1]) * self.per_s
        if tokens > self.capacity:
            tokens = self.capacity
        b[1] = now
        if tokens >= 1.0:
            b[0] = tokens - 1.0
            return True
        b[0] = tokens
        self.total += 1
        if len(self.dropped) >= MAX_DEVICES and key not in self.dropped:
            self.dropped.clear()  # made-up device names must not grow memory without bound
        self.dropped[key] += 1
        self._recent[key] += 1
        return False
