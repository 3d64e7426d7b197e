"""``sensorwire demo``: the whole data path on one machine, in one command.

Starts a proxy, a collector, three simulated agents and one agent reading a
simulated serial device (``sensorwire serial-sim`` on a pty) as real
processes on free loopback ports, lets them run, stops them with SIGTERM and
prints what was stored per device, then the ``sensorwire query`` command to
look closer.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from sensorwire import render
from sensorwire.sdnotify import NotifyListener

AGENTS = [
    ("greenhouse", "pi-01", 1),
    ("greenhouse", "pi-02", 2),
    ("cold-store", "pi-03", 3),
]
SERIAL_AGENT = ("workshop", "pi-04")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agent_toml(site: str, device: str, seed: int, frontend: str, spool_dir: Path) -> str:
    # E501: a TOML inline table (one metric) must stay on one line
    return f"""\
site = "{site}"
device_id = "{device}"
[publish]
connect = ["{frontend}"]
heartbeat_s = 2.0
[[sensors]]
name = "env"
kind = "simulated"
interval_s = 0.5
seed = {seed}
metrics = [
  {{ name = "temperature", unit = "C", signal = "sine", mean = 21.0, amplitude = 4.0, period_s = 30.0, noise = 0.1 }},
  {{ name = "humidity", unit = "%", signal = "random_walk", start = 55.0, step = 0.5, min = 20.0, max = 95.0 }},
  {{ name = "door", signal = "step", values = [0.0, 1.0], every_s = 10.0 }},
]
[[sensors]]
name = "health"
kind = "system"
interval_s = 5.0
[spool]
dir = "{spool_dir}"
"""  # noqa: E501


def serial_agent_toml(site: str, device: str, port: str, frontend: str, spool_dir: Path) -> str:
    return f"""\
site = "{site}"
device_id = "{device}"
[publish]
connect = ["{frontend}"]
heartbeat_s = 2.0
[[sensors]]
name = "bench"
kind = "serial"
port = "{port}"
baudrate = 115200
format = "csv"
fields = ["temperature", "humidity", "pressure"]
units = {{ temperature = "C", humidity = "%", pressure = "hPa" }}
[spool]
dir = "{spool_dir}"
"""


class Procs:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, *argv: str, timeout_s: float = 15.0) -> None:
        sock_path = str(self.workdir / f".{name}.notify")
        if os.path.exists(sock_path):
            os.unlink(sock_path)
        listener = NotifyListener(sock_path)
        env = dict(os.environ, NOTIFY_SOCKET=sock_path)
        env.pop("JOURNAL_STREAM", None)
        logf = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen([sys.executable, "-m", "sensorwire", *argv],
                                stdout=logf, stderr=subprocess.STDOUT, env=env)
        logf.close()
        self.procs.append((name, proc))
        try:
            if not listener.wait_for("READY=1", timeout_s, alive=lambda: proc.poll() is None):
                raise RuntimeError(f"{name} did not become ready; see {self.workdir / (name + '.log')}")
        finally:
            listener.close()

    def start_serial_sim(self, name: str, *argv: str, timeout_s: float = 15.0) -> str:
        """Start ``sensorwire serial-sim``; returns the pty path it prints first."""
        logf = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen([sys.executable, "-m", "sensorwire", "serial-sim", *argv],
                                stdout=subprocess.PIPE, stderr=logf)
        logf.close()
        self.procs.append((name, proc))
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        path = proc.stdout.readline().decode().strip() if ready else ""
        proc.stdout.close()
        if not path:
            raise RuntimeError(f"{name} gave no pty path; see {self.workdir / (name + '.log')}")
        return path

    def stop(self, timeout_s: float = 5.0) -> list[tuple[str, int | None]]:
        out: list[tuple[str, int | None]] = []
        # agents first, then collector, then proxy: inputs stop before storage closes
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            out.append((name, proc.returncode))
        return out


def run(duration_s: float = 20.0, workdir: str = "sensorwire-demo") -> int:
    wd = Path(workdir).resolve()
    wd.mkdir(parents=True, exist_ok=True)
    db = wd / "telemetry.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    front, back = free_port(), free_port()
    (wd / "proxy.toml").write_text(
        f'frontend = "tcp://127.0.0.1:{front}"\nbackend = "tcp://127.0.0.1:{back}"\n')
    (wd / "collector.toml").write_text(
        f'[subscribe]\nconnect = ["tcp://127.0.0.1:{back}"]\n'
        f'[storage]\nkind = "sqlite"\npath = "{db}"\n')
    procs = Procs(wd)
    print(f"sensorwire demo: proxy on ports {front}/{back}, {len(AGENTS) + 1} agents, "
          f"{duration_s:.0f} s; files in {wd}", flush=True)
    try:
        procs.start("proxy", "proxy", "-c", str(wd / "proxy.toml"))
        procs.start("collector", "collector", "-c", str(wd / "collector.toml"))
        for site, device, seed in AGENTS:
            cfg = wd / f"agent-{device}.toml"
            cfg.write_text(agent_toml(site, device, seed, f"tcp://127.0.0.1:{front}",
                                    wd / "spool" / device))
            procs.start(f"agent-{device}", "agent", "-c", str(cfg))
        site, device = SERIAL_AGENT
        port = procs.start_serial_sim("serial-sim", "--format", "csv", "--rate", "2",
                                      "--garbage", "0.05")
        cfg = wd / f"agent-{device}.toml"
        cfg.write_text(serial_agent_toml(site, device, port, f"tcp://127.0.0.1:{front}",
                                         wd / "spool" / device))
        procs.start(f"agent-{device}", "agent", "-c", str(cfg))
        print("running; try in another terminal:  sensorwire tail --connect "
              f"tcp://127.0.0.1:{back}", flush=True)
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        print(f"sensorwire demo: {exc}", file=sys.stderr)
        procs.stop()
        return 1
    finally:
        results = procs.stop()
    bad = [f"{n} exited {rc}" for n, rc in results if rc not in (0, -signal.SIGTERM)]
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT d.site, d.device, count(DISTINCT f.id), count(v.frame_id), min(f.seq), max(f.seq) "
            "FROM devices d LEFT JOIN frames f ON f.device_key = d.id "
            "LEFT JOIN samples v ON v.frame_id = f.id GROUP BY d.id ORDER BY d.site, d.device"
        ).fetchall()
    finally:
        conn.close()
    print()
    print(render.table(["site", "device", "frames", "samples", "first seq", "last seq"], rows))
    print()
    print("Look at them with:")
    print(f"  sensorwire query --db {db} --device pi-01 --sensor env --limit 20")
    if bad:
        print("problems: " + "; ".join(bad) + f" (logs in {wd})", file=sys.stderr)
        return 1
    return 0
