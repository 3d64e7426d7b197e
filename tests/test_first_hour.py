"""A new user's wiring mistakes are said, not met with silence: a collector or tail pointed where
no proxy answers (nothing there, or the proxy's frontend), a collector whose prefixes match no
agent, an agent that nobody subscribes to (pointed at the proxy's backend), two agents given one
device_id."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from support import frames_stored, run_cli, simulated_agent_toml, tcp, wait_until, write

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


def test_roles_on_the_wrong_socket_say_nobody_answers(tmp_path: Path, procs: Any) -> None:
    """At once (the warnings wait seconds): a collector on the proxy's frontend, tail where no
    proxy is, an agent on the proxy's backend (a collector rightly on it)."""
    front, back, nowhere = tcp(), tcp(), tcp()
    procs("proxy", "proxy", "--frontend", front, "--backend", back)
    (tmp_path / "wrong").mkdir()
    wrong = procs("wrong", "collector", "-c", str(collector_toml(tmp_path / "wrong", front)))
    procs("right", "collector", "-c", str(collector_toml(tmp_path, back)))
    agent = procs("pi-1", "agent", "-c", str(write(tmp_path / "pi-1.toml",
                                                     simulated_agent_toml("pi-1", back, tmp_path))))
    bound = tcp()  # an agent that binds, and no collector connects to it
    alone = procs("pi-2", "agent", "-c", str(write(tmp_path / "pi-2.toml", f"""\
site = "gh"
device_id = "pi-2"
[publish]
bind = ["{bound}"]
heartbeat_s = 0.3
[[sensors]]
name = "env"
kind = "simulated"
interval_s = 0.1
metrics = [{{ name = "t", signal = "constant", value = 1.0 }}]
[spool]
enabled = false
""")))
    tail = procs("tail", "tail", "--connect", nowhere, "gh", ready=False)
    wait_until(lambda: "no collector has subscribed" in alone.log(), timeout_s=30,
               what="the agent that binds saying nobody listens")
    wait_until(lambda: "no answer from upstream" in wrong.log(), timeout_s=30,
               what="the collector saying nobody answers")
    wait_until(lambda: "no collector has subscribed" in agent.log(), timeout_s=30,
               what="the agent saying nobody listens")
    wait_until(lambda: "no answer" in tail.log(), timeout_s=30, what="tail saying so")
    log = wrong.log()
    assert f"no answer from upstream {front} within 5 s: is a proxy running there, and is that its " \
           "backend" in log, log
    assert f"; storing into {tmp_path / 'wrong' / 't.db'}" in log  # where the data goes, said at start
    assert f"Is a proxy running at {back}, is that its frontend" in agent.log(), agent.log()
    assert "within 3 s" in agent.log()  # two heartbeats of 0.3 s, or 3 s if longer
    assert f"no answer from {nowhere} within 5 s: is a proxy running there" in tail.log(), tail.log()
    assert (f"its frames are sent to nobody and lost ([spool] is off) until one does. Does a "
            f"collector connect to {bound} ([subscribe] connect)") in alone.log(), alone.log()
    for p in (wrong, agent, alone):
        assert "Traceback" not in p.log()
        assert p.terminate() == 0


def test_prefixes_that_match_no_agent_are_said_by_the_collector_tail_and_the_agent(
        tmp_path: Path, procs: Any) -> None:
    front, back = tcp(), tcp()
    procs("proxy", "proxy", "--frontend", front, "--backend", back)
    agent = procs("pi-1", "agent", "-c", str(write(tmp_path / "pi-1.toml",
                                                     simulated_agent_toml("pi-1", front, tmp_path))))
    # a typo in the site: "gx/" for "gh/"
    collector = procs("collector", "collector", "-c",
                      str(collector_toml(tmp_path, back, prefixes='["gx/"]')))
    tail = procs("tail", "tail", "--connect", back, "gx", ready=False)
    wait_until(lambda: "nothing received in" in collector.log(), timeout_s=40,
               what="the collector saying it receives nothing")
    wait_until(lambda: "nothing received" in tail.log(), timeout_s=40,
               what="tail saying nothing arrives")
    log = collector.log()
    assert "subscriptions are live upstream" in log
    assert "filters ['gx/']: no agent publishes under them" in log, log
    assert f"sensorwire tail --connect {back}" in log
    assert "no answer from upstream" not in log  # the proxy answered: no false alarm
    said = tail.log()
    assert "subscribed: gx" in said and "no answer" not in said, said
    assert "nothing received in 15 s: no agent publishes under gx, or none is connected" in said, said
    assert "no collector has subscribed to gh/pi-1" in agent.log()
    assert "its frames are kept in the spool until one does" in agent.log()
    assert collector.terminate() == 0
    assert agent.terminate() == 0


def test_two_agents_with_one_device_id_are_named_and_a_restart_is_not(tmp_path: Path,
                                                                       procs: Any) -> None:
    front, back = tcp(), tcp()
    procs("proxy", "proxy", "--frontend", front, "--backend", back)
    collector = procs("collector", "collector", "-c", str(collector_toml(tmp_path, back)))
    db = tmp_path / "t.db"

    def agent(name: str) -> Any:
        cfg = write(tmp_path / f"{name}.toml", simulated_agent_toml("pi-1", front, tmp_path / name))
        return procs(name, "agent", "-c", str(cfg))

    def boot_of(p: Any) -> str:
        return str(wait_until(lambda: re.search(r"boot_id (\d+)", p.log()), what="boot_id")[1])

    first = agent("first")
    old_boot = boot_of(first)
    wait_until(lambda: frames_stored(db) >= 5, timeout_s=20, what="frames of the first boot stored")
    assert first.terminate() == 0
    again = agent("again")  # a restart: the same device, a new boot, the old one silent
    wait_until(lambda: frames_stored(db) >= 30, timeout_s=20,
               what="frames of the restarted agent (heartbeats every 0.3 s) stored")
    assert "two agents publish" not in collector.log()
    twin = agent("twin")  # a copied configuration: a second device calling itself pi-1
    wait_until(lambda: "two agents publish with this device_id" in collector.log(), timeout_s=20,
               what="the collector naming the two agents")
    line = next(ln for ln in collector.log().splitlines() if "two agents publish" in ln)
    assert "device gh/pi-1:" in line and "give each agent its own device_id" in line, line
    assert boot_of(again) in line and boot_of(twin) in line and old_boot not in line, line
    assert collector.terminate() == 0


def test_query_that_matches_nothing_says_why_on_stderr(tmp_path: Path, procs: Any) -> None:
    front, back = tcp(), tcp()
    db = tmp_path / "t.db"
    collector = procs("collector", "collector", "-c", str(collector_toml(tmp_path, back)))
    r = run_cli("query", "--db", str(db))  # the collector made it; nothing stored yet
    assert (r.returncode, r.stderr) == (0, "sensorwire: query: nothing is stored yet\n")
    procs("proxy", "proxy", "--frontend", front, "--backend", back)
    procs("pi-1", "agent", "-c", str(write(tmp_path / "pi-1.toml",
                                             simulated_agent_toml("pi-1", front, tmp_path))))
    wait_until(lambda: frames_stored(db) >= 3, timeout_s=20, what="frames stored")
    r = run_cli("query", "--db", str(db), "--device", "gh/pi-1", "--format", "csv")
    assert (r.returncode, r.stdout) == (0, "time,device,sensor,metric,value,unit\n")
    assert r.stderr == ("sensorwire: query: no device 'gh/pi-1' is stored; devices: pi-1 (--device "
                        "takes the device_id alone, without the site)\n")
    r = run_cli("query", "--db", str(db), "--device", "pi-1", "--sensor", "t")  # t is a metric
    assert r.returncode == 0 and r.stderr.startswith("sensorwire: query: no rows match"), r.stderr
    r = run_cli("query", "--db", str(db), "--device", "pi-1", "--metric", "t", "--format", "json")
    assert r.returncode == 0 and r.stdout and r.stderr == ""
    assert collector.terminate() == 0


def test_a_command_given_bad_arguments_shows_its_own_usage() -> None:
    # it showed the top-level one ("usage: sensorwire [-h] [--version] ... COMMAND ..."), which
    # says nothing of what the command takes
    r = run_cli("proxy", "--frontend", tcp())
    assert r.returncode == 2
    assert r.stderr.startswith("usage: sensorwire proxy [-h] [-c FILE] [--frontend EP] [--backend EP]\n")
    assert r.stderr.endswith("sensorwire: proxy: give -c FILE, or both --frontend EP and --backend EP\n")
    r = run_cli("query", "--db", "t.db", "--since", "yesterday")
    assert r.returncode == 2 and r.stderr.startswith("usage: sensorwire query "), r.stderr


def test_the_same_agent_started_twice_is_told_why_it_cannot_run(tmp_path: Path, procs: Any) -> None:
    # no [spool] dir: both take the default folder named after the device_id
    cfg = write(tmp_path / "pi-1.toml", f"""\
site = "gh"
device_id = "pi-1"
[publish]
connect = ["{tcp()}"]
[[sensors]]
name = "env"
kind = "simulated"
interval_s = 1.0
metrics = [{{ name = "t", signal = "constant", value = 1.0 }}]
""")
    first = procs("first", "agent", "-c", str(cfg))
    r = run_cli("agent", "-c", str(cfg), timeout=30)
    assert r.returncode == 1
    assert "is in use by another agent: is this one running already? Two agents need each their " \
           "own device_id (the default spool folder is named after it) or [spool] dir" in r.stderr
    assert "Traceback" not in r.stderr
    assert first.terminate() == 0


def test_log_level_after_the_command_says_where_it_goes() -> None:
    for argv in (["agent", "-c", "agent.toml", "--log-level", "debug"],
                 ["collector", "-c", "c.toml", "--log-level=debug"]):
        r = run_cli(*argv)
        assert r.returncode == 2
        assert r.stderr.endswith(" (--log-level goes before the command: sensorwire --log-level "
                                 "debug agent ...)\n"), r.stderr
