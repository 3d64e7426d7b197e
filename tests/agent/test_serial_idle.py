"""A real ``sensorwire agent`` with serial devices that say nothing: silent, missing,
unplugged, polled and mute.  It must use no CPU meanwhile and stop at once on SIGTERM."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from support import Proc, tcp, wait_until, write

from sensorwire.serialsim import Pty, point

pytestmark = pytest.mark.slow


def cpu_seconds(proc: Proc) -> float:
    times = psutil.Process(proc.popen.pid).cpu_times()
    return float(times.user + times.system)


def test_silent_missing_unplugged_and_mute_devices_cost_no_cpu_and_stop_is_prompt(
        tmp_path: Path, procs: Callable[..., Proc]) -> None:
    silent, unplugged, mute = Pty(), Pty(), Pty()
    try:
        link = tmp_path / "ttyUSB-unplugged"
        point(link, unplugged.path)
        config = write(tmp_path / "agent.toml", f"""\
site = "lab"
device_id = "pi-01"
[publish]
bind = ["{tcp()}"]
[spool]
enabled = false
[[sensors]]
name = "silent"
kind = "serial"
port = "{silent.path}"
format = "csv"
fields = ["a"]
[[sensors]]
name = "missing"
kind = "serial"
port = "{tmp_path / 'ttyUSB9'}"
format = "nmea"
[[sensors]]
name = "unplugged"
kind = "serial"
port = "{link}"
format = "json"
[[sensors]]
name = "mute"
kind = "serial"
port = "{mute.path}"
format = "kv"
poll = "READ\\r\\n"
interval_s = 0.2
""")
        agent = procs("agent", "agent", "-c", str(config))
        unplugged.close()  # after the agent opened it, or before: gone either way
        wait_until(lambda: re.search("sensor unplugged: (read|open) failed", agent.log())
                   and "sensor missing: open failed" in agent.log()
                   and "sensor mute: no answer to the poll" in agent.log(),
                   timeout_s=15, what="the unplug, the missing port and the mute device logged")
        before, started = cpu_seconds(agent), time.monotonic()
        wait_until(lambda: time.monotonic() - started >= 1.5, timeout_s=5, interval_s=0.1,
                   what="1.5 s to measure over")
        used = (cpu_seconds(agent) - before) / (time.monotonic() - started)
        assert used < 0.1, f"the agent used {used:.0%} of a core with nothing to read"
        stopping = time.monotonic()
        assert agent.terminate(timeout_s=5) == 0
        assert time.monotonic() - stopping < 2.0
    finally:
        for p in (silent, unplugged, mute):
            p.close()
