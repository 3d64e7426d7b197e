"""The agent publishes numbered frames and heartbeats; a failing sensor stops nothing."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import zmq
from support import tcp, wait_until

from sensorwire.agent import config as agent_config
from sensorwire.agent import sensors
from sensorwire.agent.runtime import Agent
from sensorwire.agent.sensors import Reading, SensorConfig, SensorKind
from sensorwire.lifecycle import StopSignal
from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import Frame


class FlakyConfig(SensorConfig, kw_only=True):
    fail_between: list[int] = []


class FlakySensor:
    """Fails reads number fail_between[0] .. fail_between[1]-1."""

    def __init__(self, config: FlakyConfig) -> None:
        self.config = config
        self.n = 0

    def open(self) -> None:
        pass

    def read(self) -> Sequence[Reading]:
        self.n += 1
        lo, hi = self.config.fail_between or (0, 0)
        if lo <= self.n < hi:
            raise OSError("sensor unplugged")
        return [("x", float(self.n), "")]

    def close(self) -> None:
        pass


sensors.register(SensorKind("flaky", FlakyConfig, FlakySensor))


def agent_cfg(ep: str, spool_dir: Path, **extra: Any) -> agent_config.AgentConfig:
    raw = {
        "site": "gh", "device_id": "pi-1", "spool": {"dir": str(spool_dir)},
        "publish": {"bind": [ep], "heartbeat_s": 0.2},
        "sensors": [
            {"name": "env", "kind": "simulated", "interval_s": 0.02,
             "metrics": [{"name": "t", "signal": "constant", "value": 1.0}]},
            {"name": "flaky", "kind": "flaky", "interval_s": 0.02, "fail_between": [3, 8]},
        ],
        **extra,
    }
    return agent_config.from_raw(raw, "agent.toml")


class Listener:
    def __init__(self, ep: str) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(ep)
        self.frames: list[Frame] = []

    def pump(self) -> list[Frame]:
        d = wire.Decoder()
        if self.sub.poll(50):
            while True:
                try:
                    self.frames.append(d.decode(self.sub.recv(zmq.NOBLOCK)))
                except zmq.Again:
                    break
        return self.frames

    def close(self) -> None:
        self.sub.close()
        self.ctx.term()


@pytest.fixture
def run_agent(caplog: pytest.LogCaptureFixture,
              tmp_path: Path) -> Iterator[tuple[Agent, Listener, StopSignal]]:
    caplog.set_level(logging.INFO)
    ep = tcp()
    agent = Agent(agent_cfg(ep, tmp_path / "spool"))
    listener = Listener(ep)
    stop = StopSignal()
    ready = threading.Event()
    t = threading.Thread(target=agent.run, args=(stop, ready.set))
    t.start()
    assert ready.wait(10)
    yield agent, listener, stop
    stop.set()
    t.join(10)
    assert not t.is_alive()
    listener.close()
    stop.close()


def test_frames_are_numbered_without_holes_and_heartbeats_take_no_seq(run_agent: Any) -> None:
    agent, listener, _ = run_agent

    def whole() -> bool:
        """Two heartbeats, and the data frames so far without a hole.  Not in order: frames
        sent before the listener's subscription reached the agent were spooled, and are
        replayed among the live ones."""
        frames = listener.pump()  # every frame received so far
        seqs = sorted(f.seq for f in frames if f.seq)
        return (sum(1 for f in frames if f.seq == 0) >= 2 and bool(seqs)
                and seqs == list(range(seqs[0], seqs[0] + len(seqs))))
    wait_until(whole, what="two heartbeats and the data frames without a hole")
    frames = listener.frames
    seqs = [f.seq for f in frames if f.seq]
    assert len(set(seqs)) == len(seqs)  # none twice
    hb = [f for f in frames if f.seq == 0][-1]
    assert hb.heartbeat.interval_s == 0.2
    assert 0 < hb.heartbeat.last_seq <= agent.publisher.seq
    assert {f.boot_id for f in frames} == {agent.publisher.boot_id}


def test_a_failing_sensor_does_not_stop_the_others_and_recovers(run_agent: Any,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    agent, listener, _ = run_agent
    wait_until(lambda: sum(1 for f in listener.pump() if f.sensor == "flaky") >= 5, what="flaky back")
    flaky = next(s for s in agent.states if s.name == "flaky")
    assert flaky.errors == 5 and not flaky.failing
    env = [f for f in listener.pump() if f.sensor == "env"]
    assert len(env) >= 5
    failing_logs = [r for r in caplog.records if "flaky" in r.getMessage() and "failed" in r.getMessage()]
    recovered_logs = [r for r in caplog.records if "recovered after 5 errors" in r.getMessage()]
    assert len(failing_logs) == 1 and len(recovered_logs) == 1
    wait_until(lambda: any(f.heartbeat.counters.get("sensor_errors.flaky") == 5
                           for f in listener.pump() if f.seq == 0), what="error count in a heartbeat")


def test_the_last_heartbeat_of_a_clean_stop_says_so(run_agent: Any) -> None:
    agent, listener, stop = run_agent
    wait_until(lambda: any(f.seq == 0 for f in listener.pump()), what="a heartbeat")
    stop.set()
    wait_until(lambda: any(f.heartbeat.stopping for f in listener.pump() if f.seq == 0),
               what="the stopping heartbeat")


def test_a_native_serial_port_is_read_by_the_loop_and_handed_back_to_its_thread_when_lost(
        tmp_path: Path) -> None:
    """Its thread opens it and waits; the loop reads it; a loss closes it and the thread
    opens it again (after its backoff) once the device is back."""
    from sensorwire.serialsim import Pty, point

    link = tmp_path / "ttyUSB0"
    first, second = Pty(), Pty()
    point(link, first.path)
    ep = tcp()
    cfg = agent_cfg(ep, tmp_path / "spool", sensors=[
        {"name": "uart", "kind": "serial", "port": str(link), "format": "csv", "fields": ["a"]}])
    agent = Agent(cfg)
    listener = Listener(ep)
    stop = StopSignal()
    ready = threading.Event()
    t = threading.Thread(target=agent.run, args=(stop, ready.set))
    t.start()
    try:
        assert ready.wait(10)
        uart = agent.states[0]
        wait_until(lambda: uart.fd is not None, timeout_s=10, what="the loop to take the port")
        assert uart.thread is not None and uart.thread.is_alive()  # waiting, not reading

        def values() -> list[float]:
            return [s.value for f in listener.pump() if f.sensor == "uart" for s in f.samples]

        first.write(b"\n1\n")  # up to the first line end is discarded after an open
        wait_until(lambda: 1.0 in values(), timeout_s=10, what="a reading read by the loop")
        first.close()  # unplugged
        wait_until(lambda: uart.fd is None and uart.failing, timeout_s=10, what="the loss")
        assert uart.errors == 1
        point(link, second.path)
        wait_until(lambda: uart.fd is not None, timeout_s=10, what="the port taken again")
        second.write(b"\n41\n42\n")
        wait_until(lambda: 42.0 in values(), timeout_s=10, what="a reading after the replug")
        assert not uart.failing
    finally:
        stop.set()
        t.join(10)
        listener.close()
        stop.close()
        first.close()
        second.close()
    assert not t.is_alive()
    assert uart.thread is not None and not uart.thread.is_alive()
