"""Real processes: a proxy, a collector with alert rules, an agent with a step signal,
a webhook receiver on loopback."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from alerting_support import Hook
from support import free_port, run_cli, wait_until, write

AGENT = """\
site = "gh"
device_id = "pi-1"
[publish]
connect = ["{front}"]
heartbeat_s = 0.5
[[sensors]]
name = "env"
kind = "simulated"
interval_s = 0.1
metrics = [{{ name = "temperature", unit = "C", signal = "step", values = [30.0, 40.0], every_s = 1.0 }}]
"""

COLLECTOR = """\
[subscribe]
connect = ["{back}"]
[storage]
path = "{db}"
flush_interval_s = 0.05

[[alerts]]
name = "hot"
match = "gh/*/env"
metric = "temperature"
above = 35.0
clear = 33.0
notify = ["hook"]

[[alerts]]
name = "hot-held"
match = "gh/**"
metric = "temperature"
above = 35.0
for_s = 0.45
severity = "critical"
notify = ["hook"]

[[alerts]]
name = "pi-offline"
match = "gh/**"
device_offline = true
notify = ["hook"]

[[notifiers]]
name = "hook"
kind = "webhook"
url = "{url}"
timeout_s = 5.0
retries = 3
backoff_s = 0.1
"""


def last_received_ns(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT max(received_ns) FROM frames").fetchone()[0] or 0)
    finally:
        conn.close()


def heartbeat_s(db: Path) -> float | None:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT heartbeat_s FROM devices WHERE device = 'pi-1'").fetchone()
        return None if row is None else row[0]
    except sqlite3.OperationalError:  # no table yet
        return None
    finally:
        conn.close()


def history(db: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT rule, state FROM alert_history ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


@pytest.fixture
def stack(tmp_path: Path, procs: Any) -> Any:
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    db = tmp_path / "telemetry.db"
    hook = Hook()
    config = write(tmp_path / "collector.toml", COLLECTOR.format(back=back, db=db, url=hook.url))
    procs("proxy", "proxy", "--frontend", front, "--backend", back)
    collector = procs("collector", "collector", "-c", str(config))
    agent = procs("agent", "agent", "-c", str(write(tmp_path / "agent.toml", AGENT.format(front=front))))
    yield {"db": db, "hook": hook, "config": config, "collector": collector, "agent": agent}
    hook.close()


@pytest.mark.slow
def test_live_alerts_and_alerts_test_replay_agree(stack: Any) -> None:
    db, hook = stack["db"], stack["hook"]
    wait_until(lambda: sum(1 for r, s in history(db) if (r, s) == ("hot-held", "resolved")) >= 3,
               timeout_s=40, what="three hot-held incidents")
    assert stack["agent"].terminate() == 0
    # let the collector's clock pass the last for_s deadline (0.45 s, plus its 1 s tick lag)
    end = last_received_ns(db) + 2_500_000_000
    wait_until(lambda: time.time_ns() > end, timeout_s=10, what="the last deadline to pass")
    assert stack["collector"].terminate() == 0, stack["collector"].log()

    live = run_cli("alerts", "--db", str(db), "--format", "json")
    assert live.returncode == 0, live.stderr
    live_objs = [json.loads(line) for line in live.stdout.splitlines()]
    assert {o["rule"] for o in live_objs} == {"hot", "hot-held"}
    assert [o["state"] for o in live_objs if o["rule"] == "hot"][:4] == ["firing", "resolved"] * 2
    for o in live_objs:
        assert set(o) == {"rule", "severity", "state", "site", "device", "sensor", "metric", "value",
                          "threshold", "started", "resolved", "summary"}
        assert (o["site"], o["device"], o["sensor"], o["metric"]) == ("gh", "pi-1", "env", "temperature")
    # every notification was POSTed once, in order
    wait_until(lambda: len(hook.delivered()) == len(live_objs), what="all webhooks delivered")
    assert hook.delivered() == live_objs

    replay = run_cli("alerts", "test", "-c", str(stack["config"]), "--db", str(db), "--since", "1h",
                     "--format", "json")
    assert replay.returncode == 0, replay.stderr
    assert [json.loads(line) for line in replay.stdout.splitlines()] == live_objs
    assert replay.stderr == ""  # every rule replayed, device_offline too (presence is stored)
    table = run_cli("alerts", "test", "-c", str(stack["config"]), "--db", str(db))
    assert table.returncode == 0
    assert table.stdout.splitlines()[-1].startswith(f"{len(live_objs)} notifications would have been sent")
    assert len(hook.requests) == len(live_objs)  # the replay notified nobody


@pytest.mark.slow
def test_an_agent_killed_with_sigkill_fires_pi_offline(stack: Any, procs: Any, tmp_path: Path) -> None:
    db, hook = stack["db"], stack["hook"]
    # the collector knows the agent's heartbeat_s (0.5 s) once a heartbeat came: killed before,
    # it would wait three of the default 5 s before calling the device offline
    wait_until(lambda: heartbeat_s(db) == 0.5, timeout_s=20, what="a heartbeat stored")
    stack["agent"].kill()  # SIGKILL: no goodbye
    wait_until(lambda: any(d["rule"] == "pi-offline" and d["state"] == "firing" for d in hook.delivered()),
               timeout_s=20, what="pi-offline firing")
    [fired] = [d for d in hook.delivered() if d["rule"] == "pi-offline"]
    assert (fired["site"], fired["device"], fired["sensor"], fired["metric"]) == ("gh", "pi-1", None, None)
    # the agent comes back: resolved
    procs("agent2", "agent", "-c", str(tmp_path / "agent.toml"))
    wait_until(lambda: any(d["rule"] == "pi-offline" and d["state"] == "resolved" for d in hook.delivered()),
               timeout_s=20, what="pi-offline resolved")
