"""Events the collector hands to sinks beside frames, in arrival order.

Sinks that care implement ``event(ev)``; others never see them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

State = Literal["online", "offline", "stopped"]


@dataclass(frozen=True)
class Presence:
    """A device changed state: first frame, silence past ``offline_after_s``, clean stop."""

    site: str
    device: str
    state: State
    previous: State | None
    time_ns: int          # when the transition was decided (collector clock)
    last_seen_ns: int     # the last frame received from the device before it


@dataclass(frozen=True)
class Lost:
    """The agent said it no longer has these frames: lost for good."""

    site: str
    device: str
    boot_id: int
    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class Counts:
    """Frames the collector dropped as duplicates or saw out of order, since the last Counts."""

    site: str
    device: str
    duplicates: int
    out_of_order: int


Event = Presence | Lost | Counts
