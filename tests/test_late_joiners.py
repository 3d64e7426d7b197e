"""Late joiners get the current value at once; a restarted collector knows when it listens."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import frames_stored, free_port, run_cli, wait_until, write

pytestmark = pytest.mark.slow


def agent_toml(device: str, front: str, tmp: Path, interval_s: float) -> str:
    return f"""\
site = "gh"
device_id = "{device}"
[publish]
connect = ["{front}"]
heartbeat_s = 5.0
[[sensors]]
name = "env"
kind = "simulated"
interval_s = {interval_s}
metrics = [{{ name = "t", signal = "constant", value = 1.0 }}]
[[sensors]]
name = "door"
kind = "simulated"
interval_s = {interval_s}
metrics = [{{ name = "open", signal = "constant", value = 0.0 }}]
[spool]
dir = "{tmp / ('spool-' + device)}"
"""


def test_a_late_tail_gets_the_last_value_of_every_topic_at_once(tmp_path: Path, procs: Any) -> None:
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    procs("proxy", "proxy", "-c", str(write(tmp_path / "proxy.toml",
          f'frontend = "{front}"\nbackend = "{back}"\nlast_value_cache = true\n')))
    db = tmp_path / "t.db"
    collector = procs("collector", "collector", "-c", str(write(tmp_path / "collector.toml",
        f'[subscribe]\nconnect = ["{back}"]\n[storage]\npath = "{db}"\nflush_interval_s = 0.05\n')))
    for d in ("pi-1", "pi-2"):
        procs(d, "agent", "-c", str(write(tmp_path / f"{d}.toml", agent_toml(d, front, tmp_path, 30.0))))
    # each sensor reads once at start, then not for 30 s: anything tail prints soon is cached
    wait_until(lambda: frames_stored(db) >= 4, timeout_s=20, what="one frame per sensor stored")
    stored_before = frames_stored(db)
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "sensorwire", "tail", "--connect", back, "gh"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        got: dict[str, dict[str, Any]] = {}
        assert p.stdout is not None
        while len([t for t in got if not t.endswith("$hb")]) < 4:
            obj = json.loads(p.stdout.readline())
            got[obj["topic"]] = obj
        elapsed = time.monotonic() - t0
    finally:
        p.terminate()
        p.wait(5)
    data_topics = {t for t in got if not t.endswith("$hb")}
    assert data_topics == {"gh/pi-1/env", "gh/pi-1/door", "gh/pi-2/env", "gh/pi-2/door"}
    assert all(got[t]["cached"] for t in data_topics)
    assert elapsed < 1.0 + 1.5  # within a second of subscribing (+ the start of a Python process)
    # the cached copies reached the collector too, and were neither stored nor counted
    assert frames_stored(db) == stored_before
    r = run_cli("status", "--db", str(db), "--format", "json")
    for o in map(json.loads, r.stdout.splitlines()):
        assert o["duplicates"] == 0 and o["gaps"] == 0, o
    assert collector.terminate() == 0


def test_a_restarted_collector_says_when_it_listens_and_misses_nothing_after(
        tmp_path: Path, procs: Any) -> None:
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    procs("proxy", "proxy", "--frontend", front, "--backend", back)
    db = tmp_path / "t.db"
    cfg = write(tmp_path / "collector.toml",
                f'[subscribe]\nconnect = ["{back}"]\n[storage]\npath = "{db}"\nflush_interval_s = 0.05\n')
    collector = procs("collector0", "collector", "-c", str(cfg))
    agent = procs("pi-1", "agent", "-c",
                  str(write(tmp_path / "pi-1.toml", agent_toml("pi-1", front, tmp_path, 0.05))))
    wait_until(lambda: frames_stored(db) >= 20, timeout_s=20, what="flow")
    assert collector.terminate() == 0
    collector = procs("collector1", "collector", "-c", str(cfg))
    wait_until(lambda: "subscriptions are live upstream" in collector.log(), timeout_s=10,
               what="the log line saying subscriptions are live")
    n = frames_stored(db)
    wait_until(lambda: frames_stored(db) >= n + 20, timeout_s=20, what="flow again")
    assert agent.terminate() == 0
    last = int(re.search(r"last seq (\d+);", agent.log()).group(1))  # type: ignore[union-attr]

    def seqs() -> list[int]:
        conn = sqlite3.connect(db)
        try:
            return [s for (s,) in conn.execute("SELECT seq FROM frames ORDER BY seq")]
        finally:
            conn.close()
    wait_until(lambda: seqs() == list(range(1, last + 1)), timeout_s=20, what="every seq")
