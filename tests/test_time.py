"""Devices with wrong clocks are flagged, and a clock that never set is never stored as true."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from support import (
    LIBFAKETIME,
    free_port,
    needs_faketime,
    simulated_agent_toml,
    status_by_device,
    wait_until,
    write,
)

pytestmark = pytest.mark.slow

@needs_faketime
def test_wrong_clocks_are_flagged_and_a_clock_before_2020_is_replaced(tmp_path: Path, procs: Any) -> None:
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    db = tmp_path / "t.db"
    procs("proxy", "proxy", "--frontend", front, "--backend", back)
    procs("collector", "collector", "-c", str(write(tmp_path / "collector.toml",
          f'[subscribe]\nconnect = ["{back}"]\n[storage]\npath = "{db}"\nflush_interval_s = 0.05\n'
          '[time]\nmax_skew_s = 60\n')))
    assert LIBFAKETIME, "libfaketime is not installed (apt-get install faketime)"
    for device, fake in (("pi-late", "-2h"), ("pi-1999", "@1999-12-31 23:00:00"), ("pi-ok", None)):
        # libfaketime preloaded into the agent itself (not the faketime wrapper, which would
        # stand between the test and the process it must be able to kill)
        env = {"LD_PRELOAD": LIBFAKETIME, "FAKETIME": fake, "FAKETIME_DONT_FAKE_MONOTONIC": "1",
               "FAKETIME_NO_CACHE": "1"} if fake else {}
        procs(device, "agent", "-c",
              str(write(tmp_path / f"{device}.toml", simulated_agent_toml(device, front, tmp_path))), env=env)

    def rows(device: str) -> list[tuple[int, int, int]]:
        conn = sqlite3.connect(db)
        try:
            return conn.execute("SELECT f.time_ns, f.received_ns, f.flags FROM frames f JOIN devices d "
                                "ON d.id = f.device_key WHERE d.device = ? ORDER BY f.seq",
                                (device,)).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            conn.close()
    wait_until(lambda: all(len(rows(d)) >= 20 for d in ("pi-late", "pi-1999", "pi-ok")), timeout_s=30,
               what="frames from all three")

    s = status_by_device(db)
    assert -7300 < s["pi-late"]["clock_offset_s"] < -7100
    assert abs(s["pi-ok"]["clock_offset_s"]) < 5
    assert s["pi-1999"]["clock_offset_s"] < -600_000_000
    # after the first heartbeat told the collector about the skew, every frame is flagged 2
    late = rows("pi-late")[5:]
    assert all(flags & 2 for _, _, flags in late)
    assert all(t < r - 7000e9 for t, r, _ in late)  # the device's own time is kept, marked
    # a time before 2020 is never stored as if it were true: receive time, flag 4
    for t, r, flags in rows("pi-1999"):
        assert flags & 4 and t == r and t > time.time_ns() - 3600e9
    assert not any(flags & 6 for _, _, flags in rows("pi-ok"))
