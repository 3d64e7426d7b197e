"""A serial sensor's troubles in the agent's log: the loss and the recovery once each.

A real ``sensorwire agent`` process reads a pseudo-terminal through a symlink
(the ``/dev/serial/by-id/`` way): missing at start, then there, then
unplugged, then back under the same link.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path

import pytest
from support import Proc, tcp, wait_until, write

from sensorwire.serialsim import Pty, point

pytestmark = pytest.mark.slow


@pytest.fixture
def ptys() -> Iterator[Callable[[], Pty]]:
    made: list[Pty] = []

    def make() -> Pty:
        made.append(Pty())
        return made[-1]

    yield make
    for p in made:
        p.close()


def sensor_lines(agent: Proc) -> list[str]:
    """What the agent logged about the serial sensor, without the logging prefix."""
    return [line[line.index("sensor arduino: "):] for line in agent.log().splitlines()
            if "sensor arduino: " in line]


def talk_until_recovered(agent: Proc, dev: Pty, recoveries: int) -> None:
    n = count()

    def step() -> bool:
        dev.write(f"21.5,{next(n)}\r\n".encode())
        return sum("recovered" in line for line in sensor_lines(agent)) >= recoveries

    wait_until(step, timeout_s=60, interval_s=0.1, what=f"recovery number {recoveries} logged")


def test_missing_unplugged_and_back_logs_each_loss_and_each_recovery_once(
        tmp_path: Path, procs: Callable[..., Proc], ptys: Callable[[], Pty]) -> None:
    link = tmp_path / "ttyUSB-arduino"
    config = write(tmp_path / "agent.toml", f"""\
site = "lab"
device_id = "pi-01"
[publish]
bind = ["{tcp()}"]
[spool]
enabled = false
[[sensors]]
name = "arduino"
kind = "serial"
port = "{link}"
format = "csv"
fields = ["temperature", "n"]
""")
    agent = procs("agent", "agent", "-c", str(config))
    wait_until(lambda: sensor_lines(agent), timeout_s=15, what="the missing port to be logged")

    first = ptys()
    point(link, first.path)
    talk_until_recovered(agent, first, 1)
    first.close()  # unplugged
    wait_until(lambda: len(sensor_lines(agent)) == 3, timeout_s=15, what="the loss to be logged")

    second = ptys()
    point(link, second.path)
    talk_until_recovered(agent, second, 2)

    lines = sensor_lines(agent)
    assert [line.split(":")[1].strip().split()[0] for line in lines] == \
        ["open", "recovered", "read", "recovered"], lines
    assert "open failed" in lines[0] and "read failed" in lines[2]
    # the recovery line says how many errors there were and the last one
    assert lines[3].startswith("sensor arduino: recovered after ") and "(last: " in lines[3]
    assert agent.terminate() == 0
