"""Agent.reload in the loop's thread: kept sensors are the same objects, the others are
closed (stream threads stopped first), and a reload that fails changes nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from support import tcp, wait_until

from sensorwire.agent import config as agent_config
from sensorwire.agent import sensors
from sensorwire.agent.runtime import Agent
from sensorwire.agent.sensors import Reading, SensorConfig, SensorKind
from sensorwire.lifecycle import StopSignal
from sensorwire.service import Service

CLOSED: list[str] = []


class TickConfig(SensorConfig, kw_only=True):
    explode: bool = False


class TickSensor:
    """A stream sensor: one reading every 20 ms."""

    def __init__(self, config: TickConfig) -> None:
        if config.explode:
            raise RuntimeError("cannot make this sensor")
        self.config = config

    def open(self) -> None:
        pass

    def read_next(self, timeout_s: float) -> Sequence[Reading] | None:
        time.sleep(min(timeout_s, 0.02))
        return [("tick", 1.0, "")]

    def close(self) -> None:
        CLOSED.append(self.config.name)


sensors.register(SensorKind("tick", TickConfig, TickSensor, streaming=True))


def cfg(*extra: dict[str, Any]) -> agent_config.AgentConfig:
    return agent_config.from_raw({
        "site": "gh", "device_id": "pi-1", "publish": {"bind": [tcp()], "heartbeat_s": 0.2},
        "sensors": [{"name": "env", "kind": "simulated", "interval_s": 0.02,
                     "metrics": [{"name": "t", "signal": "constant", "value": 1.0}]},
                    *extra],
    }, "agent.toml")


@pytest.fixture
def running() -> Iterator[tuple[Agent, StopSignal, list[agent_config.AgentConfig]]]:
    CLOSED.clear()
    agent = Agent(cfg({"name": "stream", "kind": "tick"}))
    stop = StopSignal()
    pending: list[agent_config.AgentConfig] = []
    def apply() -> None:
        # taken off the list only once the reload is over: the tests wait for an empty list
        try:
            agent.reload(pending[-1])
        finally:
            pending.pop()

    svc = Service(stop, reload=apply)
    ready = threading.Event()
    t = threading.Thread(target=agent.run, args=(stop, ready.set, svc))
    t.start()
    assert ready.wait(10)
    yield agent, stop, pending
    stop.set()
    t.join(10)
    assert not t.is_alive()
    stop.close()


def reload(stop: StopSignal, pending: list[agent_config.AgentConfig],
           new: agent_config.AgentConfig) -> None:
    pending.append(new)
    stop.request_reload()
    wait_until(lambda: not pending and not stop.hup.is_set(), what="the reload")


def test_reload_keeps_unchanged_sensors_and_retires_the_others(running: Any) -> None:
    agent, stop, pending = running
    env, stream = agent.states
    wait_until(lambda: stream.readings >= 3 and env.readings >= 3, what="readings")
    wait_until(lambda: "stream" in agent.publisher._topics, what="a frame of stream's sent")
    reload(stop, pending, cfg({"name": "other", "kind": "tick"}))
    assert agent.states[0] is env and [s.name for s in agent.states] == ["env", "other"]
    # nothing kept for the sensor gone (an agent reloaded with renamed sensors grew for ever)
    assert "stream" not in agent.publisher._topics and "stream" not in agent.publisher._encoders
    assert stream.thread is not None and not stream.thread.is_alive()
    assert CLOSED == ["stream"]
    n = env.readings
    wait_until(lambda: agent.states[1].readings >= 3 and env.readings >= n + 3,
               what="readings after the reload")


def test_a_reload_that_cannot_make_a_sensor_changes_nothing(running: Any) -> None:
    agent, stop, pending = running
    before = list(agent.states)
    reload(stop, pending, cfg({"name": "bad", "kind": "tick", "explode": True}))
    assert agent.states == before and CLOSED == []
    assert all(s.thread is None or s.thread.is_alive() for s in before)


def test_a_serial_port_the_loop_reads_is_let_go_when_a_reload_removes_it(running: Any) -> None:
    from sensorwire.serialsim import Pty

    agent, stop, pending = running
    with Pty() as pty:
        uart = {"name": "uart", "kind": "serial", "port": pty.path, "format": "csv", "fields": ["a"]}
        reload(stop, pending, cfg({"name": "stream", "kind": "tick"}, uart))
        st = agent.states[2]
        wait_until(lambda: st.fd is not None, what="the loop to read the port")
        pty.write(b"\n7\n")
        wait_until(lambda: st.readings == 1, what="a line read by the loop")
        reload(stop, pending, cfg({"name": "stream", "kind": "tick"}))
        assert st.fd is None and not agent._polled
        assert st.thread is not None and not st.thread.is_alive()
        assert not st.opened and st.sensor._port is None
        env = agent.states[0]
        n = env.readings
        wait_until(lambda: env.readings >= n + 3, what="the loop going on")
