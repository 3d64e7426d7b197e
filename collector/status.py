"""``sensorwire status``: one row per device with presence and loss counters.

Everything comes from storage, so it works while the collector runs and after
it stopped.  ``frames`` are the frames stored, ``gaps`` the frames missing
from storage (holes in each boot's ``seq`` and the tail its heartbeats
announced), ``duplicates`` frames received more than once, ``restarts`` new
``boot_id``\\s after the first, ``lost`` frames the agent said it no longer has,
``clock_offset_s`` the device's clock minus the collector's (from its last
heartbeat: transit time included) and ``clock_synced`` what the device says.
A device recorded ``online`` whose last frame is older than three heartbeat
intervals is shown ``offline`` (the collector that recorded it may be down).
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from sensorwire import render
from sensorwire.collector import storage
from sensorwire.timefmt import iso_from_ns

DEFAULT_HEARTBEAT_S = 5.0


def rows(db: str, now_ns: int | None = None) -> list[dict[str, Any]]:
    now_ns = time.time_ns() if now_ns is None else now_ns
    reader = storage.connect_reader(db)  # a SQLite path or a PostgreSQL DSN
    try:
        found = reader.status()
    finally:
        reader.close()
    out = []
    for r in found:
        state = r["state"] or "unknown"
        limit_ns = 3 * (r["heartbeat_s"] or DEFAULT_HEARTBEAT_S) * 1e9
        if state == "online" and now_ns - r["last_seen_ns"] > limit_ns:
            state = "offline"
        out.append({
            "site": r["site"], "device": r["device"], "state": state,
            "last_seen": iso_from_ns(r["last_seen_ns"]),
            "frames": r["frames"], "gaps": r["gaps"], "duplicates": r["duplicates"],
            "restarts": r["restarts"], "out_of_order": r["out_of_order"], "lost": r["lost"],
            "heartbeat_s": r["heartbeat_s"],
            # + 0.0: an offset that rounds to zero from below shows 0.0, not -0.0
            "clock_offset_s": None if r["clock_offset_s"] is None else round(r["clock_offset_s"], 3) + 0.0,
            "clock_synced": None if r["clock_synced"] is None else bool(r["clock_synced"]),
        })
    return out


def run(db: str, fmt: str, out: TextIO = sys.stdout) -> int:
    found = rows(db)
    if fmt == "json":
        for r in found:
            out.write(render.json_line(r) + "\n")
    else:
        cols = ["site", "device", "state", "last_seen", "frames", "gaps", "duplicates", "restarts",
                "out_of_order", "lost", "clock_offset_s", "clock_synced"]
        out.write(render.table(cols, ([r[c] for c in cols] for r in found)) + "\n")
    out.flush()
    return 0
