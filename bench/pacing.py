"""Sending on a schedule: as fast as possible, or paced at a frame rate.

A :class:`Pace` says how long to send, at what rate (``None``: as fast as the
sender can) and at most how many frames.  :func:`drive` runs it with a
sender's ``send(n)``; :func:`adrive` is the same loop for asyncio clients.

Paced sending is by schedule, not by sleeping per frame: frame ``i`` is due at
``start + i / rate``; whatever is due is sent in a burst of at most
``burst`` frames, and the loop sleeps only when it is ahead, for at least
one tick of 1 ms.  The tick is the same for every transport: an asyncio
client cannot sleep for less (the event loop waits in whole milliseconds),
and a blocking client is held to it so that no row pays for more wake-ups
than another.  At 5,000 frames/s that is about 5 frames per wake-up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

BURST = 64  # frames per send() call at most; also the Redis pipeline depth
TICK_S = 0.001  # the shortest sleep of a paced sender


@dataclass(frozen=True)
class Pace:
    duration_s: float
    rate: float | None = None  # frames/s; None = as fast as possible
    max_count: int = 10_000_000
    burst: int = BURST


@dataclass
class SendStats:
    attempted: int = 0  # frames built and offered (each consumed a seq)
    accepted: int = 0  # of those, handed to the transport (not refused by it)
    first_ns: int = 0  # wall clock of the first send
    last_ns: int = 0  # wall clock when the send loop ended (before any flush)

    def rate(self) -> float:
        span = (self.last_ns - self.first_ns) / 1e9
        return self.attempted / span if span > 0 else 0.0


def _due(pace: Pace, start: float, now: float, sent: int) -> tuple[int, float]:
    """(frames to send now, seconds to sleep if none)."""
    left = pace.max_count - sent
    if pace.rate is None:
        return min(pace.burst, left), 0.0
    due = int((now - start) * pace.rate) + 1 - sent
    if due > 0:
        return min(due, pace.burst, left), 0.0
    return 0, max(TICK_S, start + sent / pace.rate - now)


def drive(pace: Pace, send: Callable[[int], int], sleep: Callable[[float], None] = time.sleep,
          should_stop: Callable[[], bool] | None = None) -> SendStats:
    """Run ``pace`` with ``send(n)`` (builds and sends n frames, returns how many it accepted)."""
    stats = SendStats(first_ns=time.time_ns())
    start = time.perf_counter()
    end = start + pace.duration_s
    while stats.attempted < pace.max_count:
        now = time.perf_counter()
        if now >= end or (should_stop is not None and should_stop()):
            break
        n, wait = _due(pace, start, now, stats.attempted)
        if n:
            stats.accepted += send(n)
            stats.attempted += n
        else:
            sleep(min(wait, end - now))
    stats.last_ns = time.time_ns()
    return stats


async def adrive(pace: Pace, send: Callable[[int], Awaitable[int]],
                 should_stop: Callable[[], bool] | None = None) -> SendStats:
    """:func:`drive` for asyncio clients; yields to the loop after every burst."""
    stats = SendStats(first_ns=time.time_ns())
    start = time.perf_counter()
    end = start + pace.duration_s
    while stats.attempted < pace.max_count:
        now = time.perf_counter()
        if now >= end or (should_stop is not None and should_stop()):
            break
        n, wait = _due(pace, start, now, stats.attempted)
        if n:
            stats.accepted += await send(n)
            stats.attempted += n
            await asyncio.sleep(0)  # let the client's flusher and reader run
        else:
            await asyncio.sleep(min(wait, end - now))
    stats.last_ns = time.time_ns()
    return stats
