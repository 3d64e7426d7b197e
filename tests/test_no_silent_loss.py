"""Fault tests: killed proxies, collectors and agents lose nothing, or say so.

Real processes on loopback.  Each test checks the database against what the
agents say they numbered (``last seq`` in their stop log line).
"""

from __future__ import annotations

import functools
import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from support import free_port, run_cli, wait_until, write

pytestmark = pytest.mark.slow


def agent_toml(device: str, frontend: str, spool: Path, interval_s: float = 0.1, extra: str = "",
               spool_extra: str = "", heartbeat_s: float = 0.5) -> str:
    return f"""\
site = "gh"
device_id = "{device}"
[publish]
connect = ["{frontend}"]
heartbeat_s = {heartbeat_s}
{extra}
[[sensors]]
name = "env"
kind = "simulated"
interval_s = {interval_s}
metrics = [{{ name = "t", unit = "C", signal = "sine", mean = 20.0, amplitude = 2.0, period_s = 10.0 }},
           {{ name = "h", signal = "constant", value = 50.0 }}]
[spool]
dir = "{spool}"
{spool_extra}
"""


class Stack:
    def __init__(self, tmp: Path, procs: Any, devices: list[str], collector_extra: str = "",
                 agent_kw: dict[str, Any] | None = None) -> None:
        self.tmp, self.procs = tmp, procs
        self.front = f"tcp://127.0.0.1:{free_port()}"
        self.back = f"tcp://127.0.0.1:{free_port()}"
        self.db = tmp / "telemetry.db"
        self.collector_cfg = write(tmp / "collector.toml",
            f'[subscribe]\nconnect = ["{self.back}"]\n[storage]\npath = "{self.db}"\n'
            f'flush_interval_s = 0.05\n{collector_extra}')
        self.proxy = self.start_proxy()
        self.collector = self.start_collector()
        self.agents = {d: self.start_agent(d, **(agent_kw or {})) for d in devices}

    def start_proxy(self, n: int = 0) -> Any:
        return self.procs(f"proxy{n}", "proxy", "--frontend", self.front, "--backend", self.back)

    def start_collector(self, n: int = 0) -> Any:
        return self.procs(f"collector{n}", "collector", "-c", str(self.collector_cfg))

    def start_agent(self, device: str, n: int = 0, **kw: Any) -> Any:
        cfg = write(self.tmp / f"agent-{device}.toml",
                    agent_toml(device, self.front, self.tmp / f"spool-{device}", **kw))
        return self.procs(f"agent-{device}-{n}", "agent", "-c", str(cfg))

    def procs_started(self) -> list[Any]:
        return [p for p in self.procs.started if not p.name.startswith("agent")]

    def seqs(self, device: str) -> list[tuple[int, int]]:
        """(boot_id, seq) stored for ``device``, in order."""
        if not self.db.exists():
            return []
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute("SELECT f.boot_id, f.seq FROM frames f JOIN devices d ON d.id = f.device_key "
                                "WHERE d.device = ? ORDER BY f.boot_id, f.seq", (device,)).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            conn.close()

    def count(self, device: str) -> int:
        return len(self.seqs(device))

    def status(self) -> dict[str, dict[str, Any]]:
        r = run_cli("status", "--db", str(self.db), "--format", "json")
        assert r.returncode == 0, r.stderr
        return {o["device"]: o for o in map(json.loads, r.stdout.splitlines())}


def spool_bytes(folder: Path) -> int:
    """Bytes in a spool's segments now; a segment the agent deletes meanwhile counts 0."""
    total = 0
    for p in folder.glob("seg-*"):
        try:
            total += p.stat().st_size
        except FileNotFoundError:
            pass
    return total


def last_seq(agent: Any) -> int:
    m = re.search(r"agent stopping: last seq (\d+);", agent.log())
    assert m, agent.log()
    return int(m.group(1))


def complete(stack: Stack, device: str, upto: int) -> bool:
    return [s for _, s in stack.seqs(device)] == list(range(1, upto + 1))


def stop_agents_and_check_every_seq(stack: Stack) -> None:
    # frames lost in flight are repaired from the agents' rings while they run
    wait_until(lambda: all(s["gaps"] == 0 for s in stack.status().values()), timeout_s=20,
               what="gaps repaired")
    for device, agent in stack.agents.items():
        assert agent.terminate() == 0, agent.log()
        n = last_seq(agent)
        try:
            wait_until(functools.partial(complete, stack, device, n), timeout_s=20,
                       what=f"{device}: seqs 1..{n} stored")
        except AssertionError:
            have = {s for _, s in stack.seqs(device)}
            missing = sorted(set(range(1, n + 1)) - have)
            logs = "\n".join(f"--- {p.name}\n{p.log()[-3000:]}" for p in [agent, *stack.procs_started()])
            raise AssertionError(f"{device}: missing {missing[:50]} of 1..{n}\n{logs}") from None
    wait_until(lambda: all(s["gaps"] == 0 for s in stack.status().values()), timeout_s=10,
               what="no gaps in status")


def test_proxy_killed_for_10_s_loses_nothing(tmp_path: Path, procs: Any) -> None:
    devices = ["pi-1", "pi-2", "pi-3"]
    stack = Stack(tmp_path, procs, devices)
    wait_until(lambda: all(stack.count(d) >= 10 for d in devices), timeout_s=20, what="flow")
    stack.proxy.kill()
    time.sleep(10)  # the outage itself: the time the fault lasts, not a synchronisation
    before = {d: stack.count(d) for d in devices}
    stack.proxy = stack.start_proxy(1)
    wait_until(lambda: all(stack.count(d) >= before[d] + 110 for d in devices), timeout_s=30,
               what="spooled frames replayed and new ones flowing")
    stop_agents_and_check_every_seq(stack)
    assert "replaying" in stack.agents["pi-1"].log()


def test_collector_killed_for_10_s_loses_nothing(tmp_path: Path, procs: Any) -> None:
    devices = ["pi-1", "pi-2", "pi-3"]
    stack = Stack(tmp_path, procs, devices)
    wait_until(lambda: all(stack.count(d) >= 10 for d in devices), timeout_s=20, what="flow")
    stack.collector.kill()
    time.sleep(10)  # the outage
    before = {d: stack.count(d) for d in devices}
    stack.collector = stack.start_collector(1)
    wait_until(lambda: all(stack.count(d) >= before[d] + 110 for d in devices), timeout_s=30,
               what="spooled frames replayed")
    stop_agents_and_check_every_seq(stack)


def test_agent_killed_with_a_full_spool_delivers_it_after_restart(tmp_path: Path, procs: Any) -> None:
    stack = Stack(tmp_path, procs, ["pi-1"], agent_kw={"interval_s": 0.05})
    wait_until(lambda: stack.count("pi-1") >= 5, timeout_s=20, what="flow")
    first_boot = stack.seqs("pi-1")[0][0]
    stack.collector.kill()
    stored_before = max(s for _, s in stack.seqs("pi-1"))
    spool = tmp_path / "spool-pi-1"
    wait_until(lambda: spool_bytes(spool) > 3000, timeout_s=20,
               what="frames in the spool")
    stack.agents["pi-1"].kill()
    spooled_bytes = spool_bytes(spool)
    assert spooled_bytes > 3000
    stack.agents["pi-1"] = stack.start_agent("pi-1", n=1, interval_s=0.05)
    stack.collector = stack.start_collector(1)

    def old_boot_seqs() -> list[int]:
        return [s for b, s in stack.seqs("pi-1") if b == first_boot]
    # everything numbered before the kill that reached the spool arrives with its original seq
    wait_until(lambda: (len({b for b, _ in stack.seqs("pi-1")}) == 2
                        and not list(spool.glob("seg-*0001.spool"))),
               timeout_s=30, what="the new boot and the old spool replayed")
    old = old_boot_seqs()
    # only frames in flight when the collector died (and so never spooled) may be missing,
    # and they are counted as gaps
    missing = set(range(1, max(old) + 1)) - set(old)
    assert all(stored_before < m <= stored_before + 10 for m in missing), (stored_before, missing)
    assert max(old) - stored_before >= 3000 // 120  # the spooled frames arrived
    wait_until(lambda: stack.status()["pi-1"]["gaps"] == len(missing), timeout_s=10, what="gaps counted")
    assert stack.status()["pi-1"]["restarts"] == 1


def test_a_clean_restart_after_a_replay_sends_nothing_twice(tmp_path: Path, procs: Any) -> None:
    stack = Stack(tmp_path, procs, ["pi-1"])
    wait_until(lambda: stack.count("pi-1") >= 5, timeout_s=20, what="flow")
    stack.collector.kill()
    spool = tmp_path / "spool-pi-1"
    wait_until(lambda: spool_bytes(spool) > 1000, timeout_s=20,
               what="frames in the spool")
    stack.collector = stack.start_collector(1)
    wait_until(lambda: not list(spool.glob("seg-*")), timeout_s=30,
               what="the spool replayed and its segments deleted")
    assert stack.agents["pi-1"].terminate() == 0
    stack.agents["pi-1"] = stack.start_agent("pi-1", n=1)
    wait_until(lambda: len({b for b, _ in stack.seqs("pi-1")}) == 2, timeout_s=20,
               what="the new boot stored")
    again = stack.agents["pi-1"].log()
    assert "waiting for replay" not in again, again  # the old boot's frames are not sent again
    assert stack.status()["pi-1"]["duplicates"] == 0


def test_with_the_spool_off_the_gap_count_is_exactly_what_is_missing(tmp_path: Path, procs: Any) -> None:
    stack = Stack(tmp_path, procs, ["pi-1", "pi-2"],
                  agent_kw={"spool_extra": "enabled = false", "extra": "ring_frames = 0"})
    wait_until(lambda: all(stack.count(d) >= 10 for d in ("pi-1", "pi-2")), timeout_s=20, what="flow")
    stack.proxy.kill()
    time.sleep(2)  # the outage: frames sent now are lost, and must be counted
    stack.proxy = stack.start_proxy(1)
    wait_until(lambda: all(stack.count(d) >= 30 for d in ("pi-1", "pi-2")), timeout_s=30, what="flow again")
    for device, agent in stack.agents.items():
        assert agent.terminate() == 0
        n = last_seq(agent)
        # the stopping heartbeat tells the collector the last seq, so the tail is counted too
        def gaps_counted(d: str = device, n: int = n) -> bool:
            return (stack.status().get(d, {}).get("gaps") == n - stack.count(d)
                    and stack.status()[d]["state"] == "stopped")
        wait_until(gaps_counted, timeout_s=10, what=f"{device} gaps")
        assert n - stack.count(device) > 0


def test_presence_offline_online_and_clean_stop(tmp_path: Path, procs: Any) -> None:
    stack = Stack(tmp_path, procs, ["pi-1"], collector_extra="[presence]\noffline_after_s = 1.0\n",
                  agent_kw={"heartbeat_s": 0.5})
    wait_until(lambda: stack.status().get("pi-1", {}).get("state") == "online", timeout_s=20, what="online")
    stack.agents["pi-1"].kill()
    t0 = time.monotonic()
    wait_until(lambda: stack.status()["pi-1"]["state"] == "offline", timeout_s=10, what="offline")
    assert time.monotonic() - t0 < 1.0 + 0.5 + 1.5  # offline_after_s + a heartbeat + tick and polling
    stack.agents["pi-1"] = stack.start_agent("pi-1", n=1, heartbeat_s=0.5)
    wait_until(lambda: stack.status()["pi-1"]["state"] == "online", timeout_s=10, what="online again")
    assert stack.agents["pi-1"].terminate() == 0
    wait_until(lambda: stack.status()["pi-1"]["state"] == "stopped", timeout_s=10, what="stopped")
    conn = sqlite3.connect(stack.db)
    states = [s for (s,) in conn.execute("SELECT state FROM presence ORDER BY time_ns")]
    conn.close()
    assert states == ["online", "offline", "online", "stopped"]


def test_the_spool_bound_holds_and_drops_are_counted(tmp_path: Path, procs: Any) -> None:
    max_mb = 0.05
    stack = Stack(tmp_path, procs, [], agent_kw={})
    stack.collector.kill()
    agent = stack.start_agent("pi-1", interval_s=0.005, spool_extra=f"max_mb = {max_mb}")
    spool = tmp_path / "spool-pi-1"
    limit = max_mb * 1024 * 1024

    def size() -> int:
        return spool_bytes(spool)
    deadline = time.monotonic() + 4
    biggest = 0
    while time.monotonic() < deadline:  # sample the size while the agent writes
        biggest = max(biggest, size())
        time.sleep(0.05)
    assert biggest <= limit
    assert agent.terminate() == 0
    m = re.search(r"(\d+) spooled \((\d+) still in the spool\), \d+ replayed, (\d+) dropped", agent.log())
    assert m, agent.log()
    assert int(m.group(3)) > 0 and int(m.group(2)) > 0
