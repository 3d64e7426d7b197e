"""An agent whose clock jumps mid-stream: nothing lost, nothing counted twice, flagged."""

from __future__ import annotations

import re
import sqlite3
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
def test_a_clock_jumping_a_year_ahead_then_an_hour_behind_loses_and_doubles_nothing(
        tmp_path: Path, procs: Any) -> None:
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    db = tmp_path / "t.db"
    procs("proxy", "proxy", "--frontend", front, "--backend", back)
    collector = procs("collector", "collector", "-c", str(write(tmp_path / "collector.toml",
          f'[subscribe]\nconnect = ["{back}"]\n[storage]\npath = "{db}"\nflush_interval_s = 0.05\n'
          '[time]\nmax_skew_s = 60\n')))
    assert LIBFAKETIME
    clock = write(tmp_path / "clock", "+0\n")
    env = {"LD_PRELOAD": LIBFAKETIME, "FAKETIME_TIMESTAMP_FILE": str(clock),
           "FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKETIME_NO_CACHE": "1"}
    cfg = write(tmp_path / "pi-1.toml", simulated_agent_toml("pi-1", front, tmp_path, interval_s=0.05))
    agent = procs("pi-1", "agent", "-c", str(cfg), env=env)

    def rows() -> list[tuple[int, int, int, int]]:
        conn = sqlite3.connect(db)
        try:
            return conn.execute("SELECT f.seq, f.time_ns, f.received_ns, f.flags FROM frames f "
                                "ORDER BY f.seq").fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            conn.close()

    # the clock jumps a year ahead, back to an hour behind, then right again; each phase lasts
    # a few heartbeats (0.3 s): a phase is over when its frames are stored
    phases = ["+0", "+365d", "-1h", "+0"]
    for n, fake in enumerate(phases, 1):
        clock.write_text(fake + "\n")

        def stored(want: int = 30 * n) -> bool:
            return len(rows()) >= want
        wait_until(stored, timeout_s=20, what=f"flow at {fake}")
    assert agent.terminate() == 0
    last = int(re.search(r"last seq (\d+);", agent.log()).group(1))  # type: ignore[union-attr]
    wait_until(lambda: len(rows()) == last and status_by_device(db)["pi-1"]["state"] == "stopped",
               timeout_s=10, what="every frame stored")
    assert [r[0] for r in rows()] == list(range(1, last + 1))  # each once, whatever the clock
    s = status_by_device(db)["pi-1"]
    assert (s["gaps"], s["duplicates"], s["lost"], s["out_of_order"], s["restarts"]) == (0, 0, 0, 0, 0)
    assert abs(s["clock_offset_s"]) < 5  # right again at the end
    offsets = [(t - r) / 1e9 for _, t, r, _ in rows()]
    assert all(-3700 < o < 5 or 365 * 86400 - 5 < o < 365 * 86400 + 5 for o in offsets), offsets
    # a time in the future is flagged from the first frame: no frame is from the future
    assert all(flags & 2 for (_, t, r, flags) in rows() if t - r > 60e9)
    # a time in the past may be an old frame (a replay): flagged once a heartbeat shows the
    # clock is off, so at most the frames of a heartbeat interval after the jump are not
    behind = [flags & 2 for (_, t, r, flags) in rows() if t - r < -60e9]
    assert len(behind) >= 20 and all(behind[10:]), behind
    assert not any(flags & 2 for (_, t, r, flags) in rows()[-10:])  # the clock is right again
    assert "Traceback" not in collector.log() + agent.log()
