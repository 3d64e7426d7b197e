"""Two proxies: either can die without loss, and nothing is stored twice."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from support import free_port, wait_until, write

pytestmark = pytest.mark.slow


def test_one_of_two_proxies_killed_mid_stream_loses_nothing_and_doubles_nothing(
        tmp_path: Path, procs: Any) -> None:
    pairs = [(f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}") for _ in range(2)]
    proxies = [procs(f"proxy{i}", "proxy", "--frontend", f, "--backend", b) for i, (f, b) in enumerate(pairs)]
    db = tmp_path / "t.db"
    backs = ", ".join(f'"{b}"' for _, b in pairs)
    collector = procs("collector", "collector", "-c", str(write(tmp_path / "collector.toml",
                      f'[subscribe]\nconnect = [{backs}]\n[storage]\npath = "{db}"\nflush_interval_s = 0.05\n'
                      '[[alerts]]\nname = "t-high"\nmatch = "gh/*/env"\nmetric = "t"\nabove = 0.5\n')))
    fronts = ", ".join(f'"{f}"' for f, _ in pairs)
    agents = {}
    for d in ("pi-1", "pi-2"):
        agents[d] = procs(d, "agent", "-c", str(write(tmp_path / f"{d}.toml", f"""\
site = "gh"
device_id = "{d}"
[publish]
connect = [{fronts}]
heartbeat_s = 0.5
[[sensors]]
name = "env"
kind = "simulated"
interval_s = 0.02
metrics = [{{ name = "t", signal = "constant", value = 1.0 }},
           {{ name = "u", signal = "constant", value = 2.0 }}]
[spool]
dir = "{tmp_path / ('spool-' + d)}"
""")))

    def stored(device: str) -> list[int]:
        conn = sqlite3.connect(db)
        try:
            return [s for (s,) in conn.execute(
                "SELECT f.seq FROM frames f JOIN devices d ON d.id = f.device_key WHERE d.device = ? "
                "ORDER BY f.seq", (device,))]
        except sqlite3.OperationalError:
            return []
        finally:
            conn.close()
    wait_until(lambda: all(len(stored(d)) >= 50 for d in agents), timeout_s=30, what="flow through both")
    proxies[0].kill()  # SIGKILL, and it stays dead
    n0 = {d: len(stored(d)) for d in agents}
    wait_until(lambda: all(len(stored(d)) >= n0[d] + 100 for d in agents), timeout_s=30,
               what="flow through the survivor")
    for d, a in agents.items():
        assert a.terminate() == 0
        last = int(re.search(r"last seq (\d+);", a.log()).group(1))  # type: ignore[union-attr]
        def every_seq_once(d: str = d, last: int = last) -> bool:
            return stored(d) == list(range(1, last + 1))
        wait_until(every_seq_once, timeout_s=20, what=f"{d}: every seq once")
    conn = sqlite3.connect(db)
    samples = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
    frames = conn.execute("SELECT count(*) FROM frames").fetchone()[0]
    dups = conn.execute("SELECT sum(duplicates) FROM devices").fetchone()[0]
    conn.close()
    assert samples == 2 * frames  # no sample stored twice either
    assert collector.terminate() == 0
    # the collector dropped the second copies itself, before any sink saw them
    assert dups > 0
    assert "duplicates" in collector.log()
    # and the alert each device raised was notified once, not once per proxy
    fired = [line for line in collector.log().splitlines() if "alert t-high firing" in line]
    assert len(fired) == 2 and {"gh/pi-1/env" in fired[0], "gh/pi-1/env" in fired[1]} == {True, False}
