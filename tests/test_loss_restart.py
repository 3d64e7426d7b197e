"""Loss accounting across collector restarts: a frame counted lost is counted once."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from support import free_port, simulated_agent_toml, status_by_device, wait_until, write

pytestmark = pytest.mark.slow


def agent_toml(device: str, front: str, tmp: Path) -> str:
    """No ring and no spool: a frame the proxy loses is gone."""
    return simulated_agent_toml(device, front, tmp, interval_s=0.05, heartbeat_s=0.5,
                                publish="ring_frames = 0", spool="enabled = false")


def first_seq(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT min(seq) FROM frames").fetchone()[0])
    finally:
        conn.close()


def test_frames_lost_before_a_collector_restart_are_not_counted_again(tmp_path: Path, procs: Any) -> None:
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    proxy = procs("proxy0", "proxy", "--frontend", front, "--backend", back)
    db = tmp_path / "t.db"
    cfg = write(tmp_path / "collector.toml",
                f'[subscribe]\nconnect = ["{back}"]\n[storage]\npath = "{db}"\nflush_interval_s = 0.05\n'
                '[repair]\ndelay_s = 0.1\n')
    collector = procs("collector0", "collector", "-c", str(cfg))
    procs("pi-1", "agent", "-c", str(write(tmp_path / "pi-1.toml", agent_toml("pi-1", front, tmp_path))))
    wait_until(lambda: status_by_device(db).get("pi-1", {}).get("frames", 0) >= 10, timeout_s=20, what="flow")
    proxy.kill()
    time.sleep(1)  # the outage: what the agent sends now is gone (no ring, no spool)
    procs("proxy1", "proxy", "--frontend", front, "--backend", back)
    # missing but never said gone: what the agent sent before the collector listened
    before_joining = first_seq(db) - 1

    def answered() -> bool:
        s = status_by_device(db)["pi-1"]
        return bool(s["lost"] > 0 and s["gaps"] - s["lost"] == before_joining)
    wait_until(answered, timeout_s=20, what="the loss counted")
    lost = status_by_device(db)["pi-1"]["lost"]
    assert collector.terminate() == 0
    collector = procs("collector1", "collector", "-c", str(cfg))
    # it asks again for every seq storage misses (the agent may still have some), hears they
    # are gone, and counts as lost only what it had not counted before: the frames the agent
    # sent to nobody while no collector was up
    wait_until(lambda: "asked for" in collector.log(), timeout_s=10, what="a repair request")

    def every_gap_answered() -> bool:
        s = status_by_device(db)["pi-1"]
        assert s["lost"] + before_joining <= s["gaps"], s  # never counted twice
        return bool(s["lost"] + before_joining == s["gaps"] and s["lost"] > lost)
    wait_until(every_gap_answered, timeout_s=10, what="every gap answered")


def test_after_a_sigkill_every_frame_is_stored_or_counted_lost_never_both(
        tmp_path: Path, procs: Any) -> None:
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    procs("proxy", "proxy", "--frontend", front, "--backend", back)
    db = tmp_path / "t.db"
    cfg = write(tmp_path / "collector.toml",
                f'[subscribe]\nconnect = ["{back}"]\n[storage]\npath = "{db}"\nflush_interval_s = 0.05\n'
                '[repair]\ndelay_s = 0.1\n')
    collector = procs("collector0", "collector", "-c", str(cfg))
    # no ring, no spool: whatever does not arrive at once is gone, and must be counted
    agent_cfg = write(tmp_path / "pi-1.toml", agent_toml("pi-1", front, tmp_path))
    agent = procs("pi-1", "agent", "-c", str(agent_cfg))
    wait_until(lambda: status_by_device(db).get("pi-1", {}).get("frames", 0) >= 20, timeout_s=20, what="flow")
    collector.kill()  # mid-stream: what it held unwritten is gone with it
    collector = procs("collector1", "collector", "-c", str(cfg))
    n = status_by_device(db)["pi-1"]["frames"]
    wait_until(lambda: status_by_device(db)["pi-1"]["frames"] >= n + 20, timeout_s=20, what="flow again")
    assert agent.terminate() == 0
    last = int(re.search(r"last seq (\d+);", agent.log()).group(1))  # type: ignore[union-attr]
    sent = int(re.search(r"; (\d+) frames sent,", agent.log()).group(1))  # type: ignore[union-attr]
    assert sent == last  # numbered and handed to ZeroMQ: each one is stored or counted
    before_joining = first_seq(db) - 1  # sent before the first collector listened: gaps only

    def settled() -> bool:
        s = status_by_device(db)["pi-1"]
        return bool(s["state"] == "stopped" and s["frames"] + s["lost"] + before_joining == last)
    wait_until(settled, timeout_s=10, what="every frame stored or counted lost")
    s = status_by_device(db)["pi-1"]
    assert s["frames"] + s["gaps"] == last and s["lost"] > 0 and s["duplicates"] == 0, s
