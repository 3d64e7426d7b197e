"""SIGHUP re-reads the configuration: what changed applies, a broken file changes nothing."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import zmq
from support import Proc, free_port, tcp, wait_until, write

from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import Frame


def sensor(name: str, interval_s: float = 0.05, value: float = 1.0) -> str:
    return (f'[[sensors]]\nname = "{name}"\nkind = "simulated"\ninterval_s = {interval_s}\n'
            f'metrics = [{{ name = "v", signal = "constant", value = {value} }}]\n')


def agent_toml(ep: str, *sensors: str, device: str = "pi-1") -> str:
    return (f'site = "gh"\ndevice_id = "{device}"\n[publish]\nbind = ["{ep}"]\nheartbeat_s = 0.5\n'
            + "".join(sensors))


class Sub:
    """A SUB socket on an agent's bound endpoint; collects every frame."""

    def __init__(self, ep: str) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(ep)
        self.frames: list[Frame] = []
        self._decoder = wire.Decoder()

    def pump(self) -> list[Frame]:
        if self.sock.poll(50):
            while True:
                try:
                    self.frames.append(self._decoder.decode(self.sock.recv(zmq.NOBLOCK)))
                except zmq.Again:
                    break
        return self.frames

    def data(self, sensor: str | None = None) -> list[Frame]:
        return [f for f in self.pump() if f.seq and (sensor is None or f.sensor == sensor)]

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def hup(p: Proc) -> None:
    p.popen.send_signal(signal.SIGHUP)


@pytest.mark.slow
def test_agent_reload_adds_removes_and_changes_sensors_without_a_gap(tmp_path: Path,
                                                                     procs: Any) -> None:
    ep = tcp()
    cfg = write(tmp_path / "agent.toml",
                agent_toml(ep, sensor("env"), sensor("door"), sensor("old")))
    p = procs("agent", "agent", "-c", str(cfg))
    sub = Sub(ep)
    try:
        wait_until(lambda: len(sub.data("env")) >= 5 and sub.data("old"), what="frames before")
        write(cfg, agent_toml(ep, sensor("env"), sensor("door", value=2.0), sensor("new")))
        n_ready = sum("READY=1" in m for m in p.listener.messages)
        hup(p)
        assert p.listener.wait_for("RELOADING=1", 10)
        wait_until(lambda: sum("READY=1" in m for m in p.listener.messages) > n_ready
                   or p.listener.wait_for("\0never", 0.05), what="READY=1 after the reload")
        wait_until(lambda: len(sub.data("new")) >= 5, what="frames of the new sensor")
        wait_until(lambda: any(f.samples[0].value == 2.0 for f in sub.data("door")),
                   what="the changed sensor's new value")
        last_old = max(f.seq for f in sub.data("old"))
        seen_after = [f for f in sub.data() if f.seq > last_old]
        assert len(seen_after) > 10
        # one publisher all along: the same boot_id and one gap-free seq for the device
        data = sub.data()
        seqs = sorted(f.seq for f in data)  # a replay of frames spooled at start comes late
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
        assert len({f.boot_id for f in sub.pump()}) == 1
        # the untouched sensor went on throughout, the removed one stopped
        assert len([f for f in sub.data("env") if f.seq > last_old]) >= 5
        assert "reload: 3 sensors; added ['new'], changed ['door'], removed ['old']" in p.log()
    finally:
        sub.close()
    assert p.terminate() == 0, p.log()


@pytest.mark.slow
def test_agent_reload_with_a_broken_file_keeps_the_running_configuration(
        tmp_path: Path, procs: Any) -> None:
    ep = tcp()
    cfg = write(tmp_path / "agent.toml", agent_toml(ep, sensor("env")))
    p = procs("agent", "agent", "-c", str(cfg))
    sub = Sub(ep)
    try:
        wait_until(lambda: len(sub.data("env")) >= 3, what="frames")
        write(cfg, agent_toml(ep, sensor("env"), sensor("bad", interval_s=-1)))
        hup(p)
        expected = ("reload failed, still running the previous configuration: "
                    "agent.toml: sensors[1].interval_s: expected a number > 0, got -1")
        wait_until(lambda: expected in p.log(), what="the error in the log")
        assert "ERROR" in next(line for line in p.log().splitlines() if expected in line)
        write(cfg, 'site = "gh"\n[publish\n')  # not even TOML
        hup(p)
        wait_until(lambda: "agent.toml: TOML syntax error" in p.log(), what="the syntax error")
        n = len(sub.data("env"))
        wait_until(lambda: len(sub.data("env")) >= n + 5, what="frames after the failed reloads")
        assert not sub.data("bad")
        seqs = sorted(f.seq for f in sub.data())
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    finally:
        sub.close()
    assert p.terminate() == 0, p.log()


@pytest.mark.slow
def test_collector_reload_changes_its_prefixes(tmp_path: Path, procs: Any) -> None:
    import sqlite3

    eps = {d: tcp() for d in ("pi-1", "pi-2")}
    for d, ep in eps.items():
        procs(f"agent-{d}", "agent", "-c",
              str(write(tmp_path / f"agent-{d}.toml", agent_toml(ep, sensor("env"), device=d))))
    db = tmp_path / "telemetry.db"

    def collector_toml(prefix: str) -> str:
        return (f'[subscribe]\nconnect = ["{eps["pi-1"]}", "{eps["pi-2"]}"]\n'
                f'prefixes = ["{prefix}"]\n'
                f'[storage]\npath = "{db}"\nflush_interval_s = 0.05\n[metrics]\nlisten = ""\n')

    def count(device: str) -> int:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT count(*) FROM frames f JOIN devices d "
                                    "ON d.id = f.device_key WHERE d.device = ?",
                                    (device,)).fetchone()[0])

    cfg = write(tmp_path / "collector.toml", collector_toml("gh/pi-1"))
    c = procs("collector", "collector", "-c", str(cfg))
    wait_until(lambda: count("pi-1") >= 5, what="pi-1 stored")
    assert count("pi-2") == 0
    write(cfg, collector_toml("gh/pi-2"))
    hup(c)
    wait_until(lambda: count("pi-2") >= 5, what="pi-2 stored after the reload")
    n1 = count("pi-1")
    wait_until(lambda: count("pi-2") >= 15, what="more pi-2")
    assert count("pi-1") <= n1 + 2  # at most what was in flight
    assert c.terminate() == 0, c.log()


@pytest.mark.slow
def test_proxy_reload_applies_the_log_level(tmp_path: Path, procs: Any) -> None:
    front, back = free_port(), free_port()
    text = (f'frontend = "tcp://127.0.0.1:{front}"\nbackend = "tcp://127.0.0.1:{back}"\n'
            '[metrics]\nlisten = ""\n')
    cfg = write(tmp_path / "proxy.toml", text)
    p = procs("proxy", "proxy", "-c", str(cfg))
    write(cfg, 'log_level = "warning"\n' + text)
    hup(p)
    assert p.listener.wait_for("RELOADING=1", 10)
    wait_until(lambda: sum("READY=1" in m for m in p.listener.messages) >= 2
               or p.listener.wait_for("\0never", 0.05), what="READY=1 after the reload")
    assert p.terminate() == 0
    assert "reload failed" not in p.log()
    assert "proxy stopping" not in p.log()  # an INFO line: no longer logged


@pytest.mark.slow
def test_proxy_without_a_file_says_there_is_nothing_to_reload(tmp_path: Path, procs: Any) -> None:
    p = procs("proxy", "proxy", "--frontend", tcp(), "--backend", tcp())
    hup(p)
    wait_until(lambda: "no configuration file to reload" in p.log(), what="the warning")
    assert p.popen.poll() is None
    assert p.terminate() == 0


def test_proxy_reload_keeps_and_names_what_needs_a_restart(caplog: pytest.LogCaptureFixture) -> None:
    """Only summary_s and log_level apply while running; every other change is named in a
    WARNING and the running value is kept, instead of a reload that silently does nothing."""
    from sensorwire.proxy import Proxy, ProxyConfig, ProxyLimits

    old = ProxyConfig(frontend="tcp://127.0.0.1:1", backend="tcp://127.0.0.1:2")
    proxy = Proxy(old)
    new = ProxyConfig(frontend="tcp://127.0.0.1:1", backend="tcp://127.0.0.1:2", summary_s=5.0,
                      hwm=10, limits=ProxyLimits(max_message_bytes=100))
    proxy.reload(new)
    assert proxy.config.summary_s == 5.0
    assert (proxy.config.hwm, proxy.config.limits) == (old.hwm, old.limits)
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith("reload: hwm, limits changed but take effect only after a restart")
