"""The subscriber's accounting: which frames of a trial arrived, and how late.

The harness arms a :class:`Trial` before the publisher starts sending: frames
with ``seq`` in ``[floor, floor + capacity)`` belong to it.  Frames from
before (warm-up, the tail of an earlier trial) are seen but not counted.  A
bitmap finds duplicates, so "received" means distinct frames.

``Recorder.__call__`` is the handler every receiver calls once per decoded
frame; it reads two fields of the frame, as a real subscriber would.
"""

from __future__ import annotations

import time
from array import array

from bench.transports.base import Received


class Trial:
    __slots__ = ("floor", "got", "count", "dups", "last_ns", "latency_ns")

    def __init__(self, floor: int, capacity: int) -> None:
        self.floor = floor
        self.got = bytearray(capacity)
        self.count = 0
        self.dups = 0
        self.last_ns = 0
        self.latency_ns = array("q")

    def percentiles(self, *qs: float) -> list[float]:
        """Latency percentiles in microseconds (nearest rank); NaN without samples."""
        if not self.latency_ns:
            return [float("nan")] * len(qs)
        s = sorted(self.latency_ns)
        return [s[min(len(s) - 1, int(q * len(s)))] / 1000.0 for q in qs]


class Recorder:
    def __init__(self) -> None:
        self.trial = Trial(1 << 62, 0)  # counts nothing until armed
        self.seen = 0  # every frame, counted or not
        self.last_seen_ns = 0

    def arm(self, floor: int, capacity: int) -> Trial:
        trial = Trial(floor, capacity)
        self.trial = trial  # one assignment: the receive thread sees the old or the new trial
        return trial

    def __call__(self, frame: Received) -> None:
        now = time.time_ns()
        self.seen += 1
        self.last_seen_ns = now
        t = self.trial
        i = frame.seq - t.floor
        if 0 <= i < len(t.got):
            if t.got[i]:
                t.dups += 1
                return
            t.got[i] = 1
            t.count += 1
            t.last_ns = now
            t.latency_ns.append(now - frame.time_unix_nano)
