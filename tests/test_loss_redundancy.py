"""An agent on two proxies: each frame is taken once, also the frames it replays from before
the collector joined its stream, and a clean stop is a stop, whatever comes late through the
slower proxy."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from support import free_port, status_by_device, wait_until, write

pytestmark = pytest.mark.slow


def seqs(db: Path) -> list[tuple[int, int]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT boot_id, seq FROM frames ORDER BY boot_id, seq").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def test_a_spool_replayed_through_two_proxies_is_taken_once(tmp_path: Path, procs: Any) -> None:
    pairs = [(f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}") for _ in range(2)]
    for i, (f, b) in enumerate(pairs):
        procs(f"proxy{i}", "proxy", "--frontend", f, "--backend", b)
    db = tmp_path / "t.db"
    backs = ", ".join(f'"{b}"' for _, b in pairs)
    fronts = ", ".join(f'"{f}"' for f, _ in pairs)
    cfg = write(tmp_path / "collector.toml", f'[subscribe]\nconnect = [{backs}]\n[storage]\n'
                f'path = "{db}"\nflush_interval_s = 0.05\n[metrics]\nlisten = ""\n')
    agent_cfg = write(tmp_path / "pi-1.toml", f"""\
site = "gh"
device_id = "pi-1"
[publish]
connect = [{fronts}]
heartbeat_s = 0.5
[[sensors]]
name = "env"
kind = "simulated"
interval_s = 0.02
metrics = [{{ name = "t", signal = "constant", value = 1.0 }}]
[spool]
dir = "{tmp_path / 'spool'}"
replay_rate = 100
""")
    # the agent starts with no collector up: it spools, and replays once one listens, through
    # both proxies, while its live frames go on; the collector joins its stream late
    agent = procs("pi-1", "agent", "-c", str(agent_cfg))
    wait_until(lambda: list((tmp_path / "spool").glob("seg-*")), timeout_s=10, what="a spool")
    wait_until(lambda: sum(p.stat().st_size for p in (tmp_path / "spool").glob("seg-*")) > 2000,
               timeout_s=10, what="frames spooled")
    collector = procs("collector", "collector", "-c", str(cfg))
    wait_until(lambda: "replay done" in agent.log(), timeout_s=30, what="the replay")
    assert agent.terminate() == 0
    last = int(re.search(r"last seq (\d+);", agent.log()).group(1))  # type: ignore[union-attr]
    wait_until(lambda: [s for _, s in seqs(db)] == list(range(1, last + 1)), timeout_s=20,
               what="every seq stored once")
    wait_until(lambda: status_by_device(db)["pi-1"]["state"] == "stopped", timeout_s=10, what="stopped")
    assert collector.terminate() == 0
    # each frame went to the sinks once: every copy after the first is a duplicate, also of the
    # frames replayed from before the collector joined the stream
    s = status_by_device(db)["pi-1"]
    assert (s["gaps"], s["lost"], s["restarts"]) == (0, 0, 0), s
    replayed = int(re.search(r"(\d+) replayed,", agent.log()).group(1))  # type: ignore[union-attr]
    assert 0 < s["out_of_order"] <= replayed, s
    # the second copy of the stopping heartbeat, and the frames behind it, left it stopped
    conn = sqlite3.connect(db)
    states = [st for (st,) in conn.execute("SELECT state FROM presence ORDER BY time_ns")]
    conn.close()
    assert states == ["online", "stopped"]
