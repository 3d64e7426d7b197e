"""Agent footprint: resident memory and CPU of a real agent process.

Runs ``sensorwire agent`` with 2 sensors (1 simulated, 1 system), then with
10 (9 simulated, 1 system), all at 1 Hz, publishing to a SUB socket in this
process for ``--seconds`` each, and prints RSS (MiB) and CPU % of one core.

    python -m bench.agent_footprint [--seconds 60]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import zmq

from bench.procs import free_port



def config(ep: str, simulated: int, spool: Path) -> str:
    text = f'site = "bench"\ndevice_id = "pi-bench"\n[publish]\nbind = ["{ep}"]\n[spool]\ndir = "{spool}"\n'
    for i in range(simulated):
        text += (f'[[sensors]]\nname = "sim{i}"\nkind = "simulated"\ninterval_s = 1.0\nseed = {i}\n'
                 'metrics = [{ name = "t", unit = "C", signal = "sine", mean = 20.0, amplitude = 2.0, '
                 'period_s = 60.0, noise = 0.1 }, { name = "h", signal = "random_walk", start = 50.0 }]\n')
    text += '[[sensors]]\nname = "health"\nkind = "system"\ninterval_s = 1.0\n'
    return text


def measure(simulated: int, seconds: float) -> dict[str, float]:
    ep = f"tcp://127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "agent.toml"
        cfg.write_text(config(ep, simulated, Path(d) / "spool"))
        p = subprocess.Popen([sys.executable, "-m", "sensorwire", "--log-level", "warning", "agent", "-c", str(cfg)])
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(ep)
        try:
            proc = psutil.Process(p.pid)
            received = 0
            warm_end = time.monotonic() + 3
            while time.monotonic() < warm_end:
                if sub.poll(100):
                    sub.recv()
            c0 = proc.cpu_times()
            t0 = time.monotonic()
            end = t0 + seconds
            while time.monotonic() < end:
                if sub.poll(100):
                    sub.recv()
                    received += 1
            c1 = proc.cpu_times()
            dt = time.monotonic() - t0
            rss = proc.memory_info().rss
        finally:
            p.terminate()
            p.wait(10)
            sub.close(linger=0)
            ctx.term()
    cpu = (c1.user + c1.system) - (c0.user + c0.system)
    return {"sensors": simulated + 1, "rss_mib": rss / 2**20, "cpu_percent_one_core": 100 * cpu / dt,
            "frames_per_s": received / dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    a = ap.parse_args()
    for sim in (1, 9):
        r = measure(sim, a.seconds)
        print(f"{r['sensors']:>2} sensors at 1 Hz: RSS {r['rss_mib']:.1f} MiB, "
              f"CPU {r['cpu_percent_one_core']:.2f}% of one core, {r['frames_per_s']:.1f} frames/s received")


if __name__ == "__main__":
    main()
