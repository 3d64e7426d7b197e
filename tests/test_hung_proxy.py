"""Two proxies: one that hangs with its connection open does not stop delivery through the other.

A stopped process (SIGSTOP) keeps its sockets: the agent's connection to it
stays up, its subscriptions stay, and its queue fills.  The agent then sends
through the other proxy, says which one is not taking frames and counts it.
"""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import frames_stored, run_cli, wait_until, write

pytestmark = pytest.mark.slow


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder for ipc:// endpoints (a Unix socket path holds at most 107 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="sw-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_stopped_proxy_does_not_stop_frames_through_the_other(
        tmp_path: Path, short_dir: Path, procs: Any) -> None:
    # ipc: the kernel buffers far less than loopback TCP, so the stopped proxy's queue fills
    # within a second or two of frames of 100 samples
    pairs = [(f"ipc://{short_dir}/f{i}", f"ipc://{short_dir}/b{i}") for i in range(2)]
    proxies = [procs(f"proxy{i}", "proxy", "--frontend", f, "--backend", b)
               for i, (f, b) in enumerate(pairs)]
    dbs = [tmp_path / f"c{i}.db" for i in range(2)]
    for i, (_, back) in enumerate(pairs):
        procs(f"collector{i}", "collector", "-c", str(write(tmp_path / f"collector{i}.toml",
              f'[subscribe]\nconnect = ["{back}"]\n[storage]\npath = "{dbs[i]}"\n'
              "flush_interval_s = 0.05\n")))
    metrics = ", ".join(f'{{ name = "t{k}", signal = "constant", value = 1.0 }}' for k in range(100))
    agent = procs("agent", "agent", "-c", str(write(tmp_path / "agent.toml", f"""\
site = "gh"
device_id = "pi-1"
[publish]
connect = ["{pairs[0][0]}", "{pairs[1][0]}"]
sndhwm = 100
heartbeat_s = 0.5
[[sensors]]
name = "env"
kind = "simulated"
interval_s = 0.005
metrics = [{metrics}]
[spool]
dir = "{tmp_path / 'spool'}"
""")))
    wait_until(lambda: all(frames_stored(db) >= 50 for db in dbs), timeout_s=30, what="flow through both")
    proxies[0].popen.send_signal(signal.SIGSTOP)
    try:
        # frames of 1.6 kB: the stopped proxy's queue and buffers are full within a second or two
        wait_until(lambda: (f"proxy {pairs[0][0]} is not taking frames: its queue of 100 is full; "
                            "sending through the others") in agent.log(), timeout_s=30,
                   what="the agent to say the stopped proxy's queue is full")
        # and from then on frames go on through the healthy one: 500 (2.5 s of them), more
        # than the stopped proxy's queue and buffers hold
        n0 = frames_stored(dbs[1])
        wait_until(lambda: frames_stored(dbs[1]) >= n0 + 500, timeout_s=30,
                   what="frames through the healthy proxy while the other is stopped")
        # and the heartbeats say so: a sensor no one has, to receive the device's heartbeats only
        tail = run_cli("tail", "--connect", pairs[1][1], "--count", "1", "gh/pi-1/none", timeout=30)
        assert json.loads(tail.stdout)["heartbeat"]["counters"]["send_refused"] > 0, tail.stderr
    finally:
        proxies[0].popen.send_signal(signal.SIGCONT)
    assert agent.terminate() == 0
