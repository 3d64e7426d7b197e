"""How long a real agent takes to publish its first serial reading after it starts.

Starts ``sensorwire agent`` ``--starts`` times, each with a serial sensor on a
fresh pseudo-terminal (plus a simulated sensor, and a system sensor unless
``--no-system``), writes a CSV line every 100 ms, and prints the seconds
until the first ``uart`` frame arrives (``None``: none within ``--timeout``).
A healthy start takes about 0.2 s (the first line after an open is discarded).

Written to chase a stall (2026-11-28) that turned out to be in the harness, not
the agent: a reader that drained with ``while poll(100)`` never went back to
write the next line while the other sensors' 25 frames/s kept arriving within
100 ms of each other.  This loop waits at most once per line written::

    python -m bench.serial_start [--starts 30] [--timeout 15] [--no-system]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from bench.procs import LOOPBACK, free_port
from sensorwire.proto import wire
from sensorwire.serialsim import Pty


def agent_toml(ep: str, spool: Path, port: str, system: bool) -> str:
    text = (f'site = "gh"\ndevice_id = "pi-1"\nlog_level = "debug"\n[spool]\ndir = "{spool}"\n'
            f'[publish]\nbind = ["{ep}"]\nheartbeat_s = 0.2\n'
            '[[sensors]]\nname = "env"\nkind = "simulated"\ninterval_s = 0.1\n'
            'metrics = [{ name = "t", unit = "C", signal = "sine", noise = 0.1 }]\n')
    if system:
        text += '[[sensors]]\nname = "health"\nkind = "system"\ninterval_s = 0.1\n'
    return text + (f'[[sensors]]\nname = "uart"\nkind = "serial"\nport = "{port}"\n'
                   'format = "csv"\nfields = ["a", "b"]\n')


def first_reading_s(tmp: Path, system: bool, timeout_s: float) -> float | None:
    """Seconds from the agent's start to its first serial frame; None after ``timeout_s``."""
    with Pty() as pty:
        ep = f"tcp://{LOOPBACK}:{free_port()}"
        cfg = tmp / "agent.toml"
        cfg.write_text(agent_toml(ep, tmp / "spool", pty.path, system))
        with open(tmp / "agent.log", "w") as log:
            agent = subprocess.Popen([sys.executable, "-m", "sensorwire", "agent", "-c", str(cfg)],
                                     stderr=log)
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sub = ctx.socket(zmq.XSUB)
        sub.setsockopt(zmq.LINGER, 0)
        try:
            sub.connect(ep)
            sub.send(b"\x01")  # everything
            decoder = wire.Decoder()
            started = time.monotonic()
            while time.monotonic() - started < timeout_s:
                pty.write(b"1.5,2.5\n")
                if not sub.poll(100):
                    continue
                while sub.poll(0):  # what has come, then the next line
                    if decoder.decode(sub.recv()).sensor == "uart":
                        return time.monotonic() - started
            return None
        finally:
            agent.terminate()
            agent.wait()
            sub.close()
            ctx.term()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starts", type=int, default=30)
    ap.add_argument("--timeout", type=float, default=15.0, help="seconds to wait per start")
    ap.add_argument("--no-system", action="store_true", help="leave the system sensor out")
    a = ap.parse_args()
    results: list[float | None] = []
    for i in range(a.starts):
        tmp = Path(tempfile.mkdtemp(prefix="sw-serial-start-"))
        s = first_reading_s(tmp, not a.no_system, a.timeout)
        results.append(s)
        if s is None or s > 3.0:
            print(f"start {i + 1}: {'nothing' if s is None else f'{s:.2f} s'}; "
                  f"the agent's log: {tmp / 'agent.log'}", file=sys.stderr)
    slow = [s for s in results if s is None or s > 3.0]
    print("seconds to the first serial frame:",
          ", ".join("none" if s is None else f"{s:.2f}" for s in results))
    print(f"{len(slow)} of {len(results)} starts took over 3 s "
          f"({sum(s is None for s in results)} never, within {a.timeout:g} s)")


if __name__ == "__main__":
    main()
