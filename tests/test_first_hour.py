"""A new user's wiring mistakes are said, not met with silence: a collector or tail pointed where
no proxy answers (nothing there, or the proxy's frontend), a collector whose prefixes match no
agent, an agent that nobody subscribes to (pointed at the proxy's backend)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import simulated_agent_toml, tcp, wait_until, write

pytestmark = pytest.mark.slow


def collector_toml(tmp: Path, connect: str, prefixes: str = '["gh/"]') -> Path:
    return write(tmp / "collector.toml", f"""\
[subscribe]
connect = ["{connect}"]
prefixes = {prefixes}
[storage]
path = "{tmp / 't.db'}"
[metrics]
listen = ""
""")


def test_a_collector_pointed_at_the_proxys_frontend_says_nobody_answers(tmp_path: Path,
                                                                         procs: Any) -> None:
    front, back = tcp(), tcp()
    procs("proxy", "proxy", "--frontend", front, "--backend", back)
    collector = procs("collector", "collector", "-c", str(collector_toml(tmp_path, front)))
    wait_until(lambda: "no answer from upstream" in collector.log(), timeout_s=30,
               what="the collector saying nobody answers")
    log = collector.log()
    assert f"no answer from upstream {front} within 5 s: is a proxy running there, and is that its " \
           "backend" in log, log
    assert "Traceback" not in log
    assert collector.terminate() == 0


def test_a_collector_whose_prefixes_match_no_agent_says_so_and_so_does_the_agent(
        tmp_path: Path, procs: Any) -> None:
    front, back = tcp(), tcp()
    procs("proxy", "proxy", "--frontend", front, "--backend", back)
    agent = procs("pi-1", "agent", "-c", str(write(tmp_path / "pi-1.toml",
                                                     simulated_agent_toml("pi-1", front, tmp_path))))
    # a typo in the site: "gx/" for "gh/"
    collector = procs("collector", "collector", "-c",
                      str(collector_toml(tmp_path, back, prefixes='["gx/"]')))
    wait_until(lambda: "nothing received in" in collector.log(), timeout_s=40,
               what="the collector saying it receives nothing")
    log = collector.log()
    assert "subscriptions are live upstream" in log
    assert "filters ['gx/']: no agent publishes under them" in log, log
    assert f"sensorwire tail --connect {back}" in log
    assert "no answer from upstream" not in log  # the proxy answered: no false alarm
    wait_until(lambda: "no collector has subscribed to gh/pi-1" in agent.log(), timeout_s=30,
               what="the agent saying nobody listens")
    assert "its frames are kept in the spool until one does" in agent.log()
    assert collector.terminate() == 0
    assert agent.terminate() == 0


def test_an_agent_pointed_at_the_proxys_backend_says_nobody_subscribes(tmp_path: Path,
                                                                       procs: Any) -> None:
    front, back = tcp(), tcp()
    procs("proxy", "proxy", "--frontend", front, "--backend", back)
    procs("collector", "collector", "-c", str(collector_toml(tmp_path, back)))
    agent = procs("pi-1", "agent", "-c", str(write(tmp_path / "pi-1.toml",
                                                     simulated_agent_toml("pi-1", back, tmp_path))))
    wait_until(lambda: "no collector has subscribed" in agent.log(), timeout_s=30,
               what="the agent saying nobody listens")
    log = agent.log()
    assert f"Is a proxy running at {back}, is that its frontend" in log, log
    assert "Traceback" not in log
    assert agent.terminate() == 0


def test_tail_with_no_proxy_says_nobody_answers(tmp_path: Path) -> None:
    nowhere = tcp()
    err = tmp_path / "tail.err"
    with open(err, "wb") as f:
        p = subprocess.Popen([sys.executable, "-m", "sensorwire", "tail", "--connect", nowhere, "gh"],
                             stdout=subprocess.DEVNULL, stderr=f)
    try:
        said = wait_until(lambda: err.read_text(), timeout_s=30, what="tail saying something")
    finally:
        p.terminate()
        p.wait(5)
    assert f"no answer from {nowhere} within 5 s: is a proxy running there" in said, said
