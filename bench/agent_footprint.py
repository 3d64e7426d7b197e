"""Agent footprint: RSS and CPU of a real agent at 10 sensors x 1 Hz, beside a paho-mqtt publisher.

Two processes run at the same time for ``--seconds`` (after a 5 s warm-up):

- ``sensorwire agent`` with 10 sensors at 1 Hz: 8 ``simulated`` sensors of 8
  readings each (sine plus noise, or a random walk), 1 ``system`` sensor
  (psutil: CPU, load, memory, the root disk, network; temperatures where the
  machine has them) and 1 ``serial`` sensor reading a real pseudo-terminal
  (``os.openpty()``) at 115,200 baud, to which this script writes one CSV line
  of 8 numbers a second; the spool is on (its default) and the agent binds a
  TCP endpoint that a SUB socket here reads and counts;
- ``bench.paho_publisher``: the ordinary paho-mqtt publisher doing the same
  (the same 10 sensors' frames, 10 topics at 1 Hz, its own pty fed the same
  lines, psutil for the system sensor, protobuf ``Frame`` payloads, QoS 0,
  ``loop_start()``; its docstring says exactly what it does) to Mosquitto at
  127.0.0.1:1883, counted here by a paho subscriber.  Skipped, with the
  reason, when nothing listens there.

For each: the largest RSS seen (sampled every second, MiB), CPU time over the
window as a share of one core (on-CPU time of its threads, from
``/proc/<pid>/task/*/schedstat``; psutil's ``cpu_times`` elsewhere) and
frames received per second.  Prints a markdown table::

    python -m bench.agent_footprint [--seconds 60]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import zmq

from bench.paho_publisher import METRICS as SIM_METRICS
from bench.paho_publisher import SERIAL_FIELDS
from bench.procs import free_port
from sensorwire.proto import wire
from sensorwire.serialsim import Pty

WARM_S = 5.0
MQTT_HOST, MQTT_PORT = "127.0.0.1", 1883


def agent_toml(ep: str, spool: Path, serial_port: str) -> str:
    text = (f'site = "bench"\ndevice_id = "pi-bench"\nlog_level = "warning"\n'
            f'[publish]\nbind = ["{ep}"]\n[spool]\ndir = "{spool}"\n')
    for i in range(8):
        metrics = ", ".join(
            f'{{ name = "{m}", unit = "{u}", signal = "sine", mean = 20.0, amplitude = 2.0, '
            'period_s = 60.0, noise = 0.1 }' if s == "sine" else
            f'{{ name = "{m}", unit = "{u}", signal = "random_walk", start = 50.0 }}'
            for m, u, s in SIM_METRICS).replace('unit = "", ', "")
        text += (f'[[sensors]]\nname = "sim{i}"\nkind = "simulated"\ninterval_s = 1.0\nseed = {i}\n'
                 f"metrics = [{metrics}]\n")
    text += '[[sensors]]\nname = "health"\nkind = "system"\ninterval_s = 1.0\n'
    text += (f'[[sensors]]\nname = "uart"\nkind = "serial"\nport = "{serial_port}"\nbaudrate = 115200\n'
             f'format = "csv"\nfields = [{", ".join(f"{f!r}" for f in SERIAL_FIELDS)}]\n').replace("'", '"')
    return text


def csv_line(n: int) -> bytes:
    return (f"{n},{21.0 + (n % 100) / 100:.2f},{45.0 + (n % 50) / 10:.1f},101325.0,12034.0,"
            f"10.14,35.2,{600 + n % 40}\n").encode()


def feed(ptys: list[Pty], stop: threading.Event) -> None:
    """One CSV line a second to every pty, as a serial sensor would send it."""
    n = 0
    next_t = time.monotonic()
    while not stop.is_set():
        n += 1
        for p in ptys:
            p.write(csv_line(n))
        next_t += 1.0
        stop.wait(max(0.0, next_t - time.monotonic()))


def mosquitto_listening() -> bool:
    import socket

    try:
        with socket.create_connection((MQTT_HOST, MQTT_PORT), timeout=1.0):
            return True
    except OSError:
        return False


@dataclass
class Watched:
    """A process measured over the window, and how frames from it are counted."""

    name: str
    proc: subprocess.Popen[bytes]
    received: Callable[[], int]
    rss_peak: int = 0
    cpu0: float = 0.0
    cpu1: float = 0.0
    n0: int = 0
    n1: int = 0

    def cpu_s(self) -> float:
        """CPU time of the process's threads: nanoseconds from /proc (``cpu_times`` counts
        10 ms ticks, too coarse for 3 ms a second), else psutil's."""
        tasks = Path(f"/proc/{self.proc.pid}/task")
        if not (tasks.parent / "schedstat").exists():
            t = psutil.Process(self.proc.pid).cpu_times()
            return float(t.user + t.system)
        ns = 0
        for task in tasks.iterdir():
            try:
                ns += int((task / "schedstat").read_text().split()[0])
            except FileNotFoundError:  # a thread that has just ended
                pass
        return ns / 1e9

    def sample_rss(self) -> None:
        self.rss_peak = max(self.rss_peak, psutil.Process(self.proc.pid).memory_info().rss)


class ZmqCounter:
    """Data frames (not heartbeats) arriving from the agent's bound endpoint."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], ep: str) -> None:
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(ep)
        self.decoder = wire.Decoder()
        self.frames = 0

    def drain(self, timeout_ms: int) -> None:
        if not self.sub.poll(timeout_ms):
            return
        while True:
            try:
                msg = self.sub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if self.decoder.decode(msg).seq:
                self.frames += 1


class MqttCounter:
    """Messages arriving from the paho publisher, through Mosquitto."""

    def __init__(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.frames = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-paho-counter")
        self.client.on_message = lambda _c, _u, _m: self._one()
        self.client.connect(MQTT_HOST, MQTT_PORT)
        self.client.subscribe("bench/pi-paho/#", qos=0)
        self.client.loop_start()

    def _one(self) -> None:
        self.frames += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run(seconds: float) -> tuple[list[Watched], str]:
    ep = f"tcp://127.0.0.1:{free_port()}"
    stop = threading.Event()
    with tempfile.TemporaryDirectory(prefix="sw-footprint-") as d, Pty() as agent_pty, Pty() as paho_pty:
        cfg = Path(d) / "agent.toml"
        cfg.write_text(agent_toml(ep, Path(d) / "spool", agent_pty.path))
        feeder = threading.Thread(target=feed, args=([agent_pty, paho_pty], stop), daemon=True)
        feeder.start()
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        zc = ZmqCounter(ctx, ep)
        watched = [Watched("sensorwire agent", subprocess.Popen(
            [sys.executable, "-m", "sensorwire", "agent", "-c", str(cfg)]), lambda: zc.frames)]
        skipped = ""
        mc: MqttCounter | None = None
        if mosquitto_listening():
            mc = MqttCounter()
            counter = mc
            watched.append(Watched("paho-mqtt publisher", subprocess.Popen(
                [sys.executable, "-m", "bench.paho_publisher", "--host", MQTT_HOST, "--port",
                 str(MQTT_PORT), "--serial", paho_pty.path, "--seconds", str(seconds + WARM_S + 30)]),
                lambda: counter.frames))
        else:
            skipped = f"paho-mqtt publisher skipped: nothing listens on {MQTT_HOST}:{MQTT_PORT} (Mosquitto)"
        try:
            t_end = time.monotonic() + WARM_S
            while time.monotonic() < t_end:
                zc.drain(100)
            for w in watched:
                if w.proc.poll() is not None:
                    raise SystemExit(f"{w.name} exited during the warm-up (status {w.proc.returncode})")
                w.cpu0, w.n0 = w.cpu_s(), w.received()
            t0 = time.monotonic()
            next_sample = t0
            while (now := time.monotonic()) < t0 + seconds:
                if now >= next_sample:
                    for w in watched:
                        w.sample_rss()
                    next_sample += 1.0
                zc.drain(100)
            dt = time.monotonic() - t0
            for w in watched:
                w.cpu1, w.n1 = w.cpu_s(), w.received()
                w.sample_rss()
                w.cpu1 = (w.cpu1 - w.cpu0) / dt
                w.n1 = int(round((w.n1 - w.n0) / dt * 10))  # tenths of frames/s
        finally:
            stop.set()
            for w in watched:
                w.proc.terminate()
            for w in watched:
                w.proc.wait(10)
            if mc is not None:
                mc.close()
            zc.sub.close()
            ctx.term()
    return watched, skipped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    a = ap.parse_args()
    watched, skipped = run(a.seconds)
    print(f"10 sensors at 1 Hz, {a.seconds:.0f} s after a {WARM_S:.0f} s warm-up:\n")
    print("| publisher | RSS (peak) | CPU, % of one core | frames/s received |")
    print("|---|---:|---:|---:|")
    for w in watched:
        print(f"| {w.name} | {w.rss_peak / 2**20:.1f} MiB | {100 * w.cpu1:.2f} % | {w.n1 / 10:.1f} |")
    if skipped:
        print(f"\n{skipped}")


if __name__ == "__main__":
    main()
