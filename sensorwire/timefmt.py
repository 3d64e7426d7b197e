"""Time formats used everywhere on the command line and in output.

Times are printed as ISO 8601 in UTC with microseconds
(``2026-11-28T01:02:03.456789Z``); durations are written ``90s``, ``15m``,
``2h``, ``7d``.
"""

from __future__ import annotations

import datetime as _dt
import re
import time

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")


def iso_from_ns(ns: int) -> str:
    """``2026-11-28T01:02:03.456789Z`` for a Unix time in nanoseconds."""
    secs, rem = divmod(ns, 1_000_000_000)
    dt = _dt.datetime.fromtimestamp(secs, tz=_dt.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{rem // 1000:06d}Z"


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``15m``, ``2h``, ``7d`` (ValueError otherwise)."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(
            f"{text!r} is not a duration; write a number and a unit, e.g. 90s, 15m, 2h, 7d"
        )
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_time_ns(text: str, now_ns: int | None = None) -> int:
    """A point in time from a duration before now (``2h``) or an ISO 8601 time.

    An ISO time without a zone is taken as UTC.
    """
    if now_ns is None:
        now_ns = time.time_ns()
    try:
        return now_ns - int(parse_duration(text) * 1e9)
    except ValueError:
        pass
    iso = text.strip()
    if iso.endswith(("Z", "z")):
        iso = iso[:-1] + "+00:00"
    try:
        dt = _dt.datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (90s, 15m, 2h, 7d) nor an ISO 8601 time "
            "(2026-11-28T01:02:03Z)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=_dt.UTC)
    delta = dt - _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
