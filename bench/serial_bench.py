"""One serial sensor at 115200 baud receiving 200 CSV lines per second: loss and CPU cost.

A real ``sensorwire agent`` process reads a pseudo-terminal that this script
writes numbered CSV lines to at a steady rate; the script subscribes to the
agent's bound endpoint with a ZeroMQ SUB socket and counts which numbers come
back.  It reports lines written, received and lost, the delay from a line's
write to the agent's time stamp, and the agent process's CPU time as a share
of one core (psutil), idle and under load.  Not a test: it prints figures::

    .venv/bin/python bench/serial_bench.py --duration 20 --rate 200
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import zmq

from sensorwire.proto import wire
from sensorwire.sdnotify import NotifyListener
from sensorwire.serialsim import Pty

SITE, DEVICE, SENSOR = "bench", "pi", "uart"


@dataclass
class Tally:
    received: dict[int, int] = field(default_factory=dict)  # line number -> agent's time_ns
    duplicates: int = 0
    counters: dict[str, int] = field(default_factory=dict)  # from the last heartbeat


def free_endpoint() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def agent_toml(endpoint: str, port: str) -> str:
    return f"""\
site = "{SITE}"
device_id = "{DEVICE}"
log_level = "warning"
[publish]
bind = ["{endpoint}"]
heartbeat_s = 1.0
[[sensors]]
name = "{SENSOR}"
kind = "serial"
port = "{port}"
baudrate = 115200
format = "csv"
fields = ["n", "temperature", "humidity"]
"""


def start_agent(workdir: Path, config: Path) -> subprocess.Popen[bytes]:
    notify = str(workdir / "notify")
    listener = NotifyListener(notify)
    env = dict(os.environ, NOTIFY_SOCKET=notify)
    env.pop("JOURNAL_STREAM", None)
    with open(workdir / "agent.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sensorwire", "agent", "-c", str(config)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        if not listener.wait_for("READY=1", 30, alive=lambda: proc.poll() is None):
            proc.kill()
            raise SystemExit(f"the agent did not start:\n{(workdir / 'agent.log').read_text()}")
    finally:
        listener.close()
    return proc


def receive(sub: zmq.Socket[bytes], decoder: wire.Decoder, tally: Tally, timeout_ms: float) -> None:
    """Take what arrives within ``timeout_ms`` (at least what is already waiting)."""
    if not sub.poll(max(0, int(timeout_ms))):
        return
    while True:
        try:
            msg = sub.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        frame = decoder.decode(msg)
        if frame.seq == 0:
            tally.counters = dict(frame.heartbeat.counters)
            continue
        n = int(next(s.value for s in frame.samples if s.metric == "n"))
        if n in tally.received:
            tally.duplicates += 1
        tally.received[n] = frame.time_unix_nano


def line(n: int) -> bytes:
    return f"{n},{21.0 + (n % 100) / 100:.2f},{45.0 + (n % 50) / 10:.1f}\r\n".encode()


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def thread_cpu_s(proc: psutil.Process) -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in proc.threads()}


def run(duration_s: float, rate_hz: float, idle_s: float) -> int:
    with tempfile.TemporaryDirectory(prefix="sw-bench-") as tmp, Pty() as pty:
        workdir = Path(tmp)
        endpoint = free_endpoint()
        config = workdir / "agent.toml"
        config.write_text(agent_toml(endpoint, pty.path))
        agent = start_agent(workdir, config)
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(endpoint)
        decoder = wire.Decoder()
        tally = Tally()
        try:
            proc = psutil.Process(agent.pid)
            # warm up: until the subscription has reached the agent and line 0 comes back
            deadline = time.monotonic() + 30
            while 0 not in tally.received:
                if time.monotonic() > deadline:
                    raise SystemExit("no frame from the agent in 30 s; see its log")
                pty.write(line(0))
                receive(sub, decoder, tally, 50)

            # idle: the sensor blocked in its read, nothing arriving
            receive(sub, decoder, tally, 200)
            c0, w0 = cpu_s(proc), time.monotonic()
            end = w0 + idle_s
            while time.monotonic() < end:
                receive(sub, decoder, tally, (end - time.monotonic()) * 1000)
            idle_cpu = (cpu_s(proc) - c0) / (time.monotonic() - w0) * 100

            # load: numbered lines at a steady rate
            total = int(duration_s * rate_hz)
            written_ns: dict[int, int] = {}
            c0, w0, t0 = cpu_s(proc), time.monotonic(), thread_cpu_s(proc)
            for n in range(1, total + 1):
                due = w0 + (n - 1) / rate_hz
                while (left := due - time.monotonic()) > 0:
                    receive(sub, decoder, tally, left * 1000)
                written_ns[n] = time.time_ns()
                pty.write(line(n))
            write_end = time.monotonic()
            grace = write_end + 3.0
            while time.monotonic() < grace and not all(n in tally.received for n in (total,)):
                receive(sub, decoder, tally, 50)
            w1 = time.monotonic()
            load_cpu = (cpu_s(proc) - c0) / (w1 - w0) * 100
            t1 = thread_cpu_s(proc)
            per_thread = sorted(((t1[i] - t0.get(i, 0.0)) / (w1 - w0) * 100 for i in t1),
                                reverse=True)
            receive(sub, decoder, tally, 1500)  # one more heartbeat for the counters
        finally:
            sub.close()
            ctx.term()
            agent.terminate()
            try:
                agent.wait(10)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()

        got = [n for n in range(1, total + 1) if n in tally.received]
        delays_ms = sorted((tally.received[n] - written_ns[n]) / 1e6 for n in got)
        lost = total - len(got)
        c = tally.counters
        print(f"serial bench: 1 serial sensor, 115200 baud, {rate_hz:g} CSV lines/s for "
              f"{duration_s:g} s over a pty; agent pid {agent.pid}")
        print(f"  lines written          {total}")
        print(f"  lines received         {len(got)}  (duplicates {tally.duplicates})")
        print(f"  lines lost             {lost}")
        print(f"  agent counters         frames_sent {c.get('frames_sent', '?')}, "
              f"bad_lines {c.get(f'bad_lines.{SENSOR}', '?')}, "
              f"stream_dropped {c.get('stream_dropped', '?')}, "
              f"dropped_hwm {c.get('dropped_hwm', '?')}")
        if delays_ms:
            p99 = delays_ms[min(len(delays_ms) - 1, int(len(delays_ms) * 0.99))]
            print(f"  write -> agent stamp   median {statistics.median(delays_ms):.2f} ms, "
                  f"p99 {p99:.2f} ms, max {delays_ms[-1]:.2f} ms")
        print(f"  agent CPU, idle        {idle_cpu:.2f} % of one core ({idle_s:g} s)")
        print(f"  agent CPU, under load  {load_cpu:.2f} % of one core ({w1 - w0:.1f} s); "
              f"busiest threads {', '.join(f'{p:.2f} %' for p in per_thread[:3])}")
        ok = lost == 0 and load_cpu < 5.0
        print(f"  target (no loss, < 5 % of a core): {'met' if ok else 'NOT met'}")
        return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--duration", type=float, default=20.0, metavar="S", help="default 20")
    p.add_argument("--rate", type=float, default=200.0, metavar="HZ", help="default 200")
    p.add_argument("--idle", type=float, default=3.0, metavar="S",
                   help="seconds of idle measurement first (default 3)")
    args = p.parse_args()
    return run(args.duration, args.rate, args.idle)


if __name__ == "__main__":
    sys.exit(main())
