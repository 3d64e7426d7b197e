"""Frames and rows as JSON lines, tables and CSV for the command line."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sensorwire.proto.v1.telemetry_pb2 import Frame
from sensorwire.timefmt import iso_from_ns


def _num(v: float) -> float | str:
    # JSON has no NaN/Infinity; print them as strings rather than invalid JSON
    return v if math.isfinite(v) else str(v)


def _finite(v: Any) -> Any:
    """``v`` with every float that is not finite, however deep, as its string."""
    if isinstance(v, float):
        return _num(v)
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v


def frame_dict(frame: Frame, topic: str | None = None) -> dict[str, Any]:
    """The JSON object ``tail`` prints for one frame."""
    is_hb = frame.seq == 0
    out: dict[str, Any] = {
        "topic": topic or f"{frame.site}/{frame.device_id}/{frame.sensor if not is_hb else '$hb'}",
        "type": "heartbeat" if is_hb else "data",
        "site": frame.site,
        "device": frame.device_id,
        "sensor": None if is_hb else frame.sensor,
        "boot_id": frame.boot_id,
        "seq": frame.seq,
        "time": iso_from_ns(frame.time_unix_nano),
        "samples": [
            {"metric": s.metric, "value": _num(s.value), "unit": s.unit or None} for s in frame.samples
        ],
        "cached": bool(frame.flags & 8),
    }
    if is_hb:
        hb = frame.heartbeat
        out["heartbeat"] = {
            "agent_version": hb.agent_version,
            "uptime_s": round(hb.uptime_s, 3),
            "interval_s": hb.interval_s,
            "last_seq": hb.last_seq,
            "stopping": hb.stopping,
            "clock_synced": hb.clock_synced,
            "counters": dict(sorted(hb.counters.items())),
        }
    return out


def printable(text: str) -> str:
    """``text`` with every character a terminal would not simply show (C0 and C1 controls,
    bidi overrides, zero-width and other invisible characters: ``str.isprintable``) written
    as a Python escape: ``\\x9b``, ``\\u202e``.  What intake rejects today may be in older
    databases; printing it must not drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def _json_escape(c: str) -> str:
    n = ord(c)
    if n < 0x10000:
        return f"\\u{n:04x}"
    n -= 0x10000
    return f"\\u{0xD800 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}"


def json_line(obj: dict[str, Any]) -> str:
    """One JSON object on one line, UTF-8 as it is, but every character that is not printable
    escaped (``\\u009b``): valid JSON that decodes to the same strings."""
    try:
        text = json.dumps(obj, separators=(", ", ": "), ensure_ascii=False, allow_nan=False)
    except ValueError:  # NaN or ±inf (an alert's value, a reading): JSON has none, see _num
        text = json.dumps(_finite(obj), separators=(", ", ": "), ensure_ascii=False)
    if text.isprintable():
        return text
    # outside strings JSON is ASCII: what is not printable is inside a string, where \u escapes are
    return "".join(c if c.isprintable() else _json_escape(c) for c in text)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain aligned text table; cells are shown with :func:`printable`."""
    return "\n".join(table_lines(headers, rows, measure=None))


def table_lines(headers: Sequence[str], rows: Iterable[Sequence[Any]],
                measure: int | None = 1000) -> Iterator[str]:
    """:func:`table`'s lines, given as the rows come: the columns are as wide as their cells
    in the first ``measure`` rows (all of them for None), and a wider cell after those widens
    its column from its row on.  A table of any length in bounded memory."""
    it = iter(rows)
    first = [_cells(r) for r in (it if measure is None else itertools.islice(it, measure))]
    widths = [len(h) for h in headers]
    for r in first:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    yield "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    yield "  ".join("-" * w for w in widths)
    for r in first:
        yield "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
    del first
    for row in it:
        r = _cells(row)
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
        yield "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()


def _cells(row: Sequence[Any]) -> list[str]:
    return [("" if c is None else printable(str(c))) for c in row]
