"""Spool: the cost of spooling a frame, and replay of a 100,000-frame spool.

1. Appends N real frames (about 130 bytes each) to a Spool with
   ``fsync = "interval"``, flushing every 10 frames as the agent's loop would,
   and reports microseconds per frame.
2. Runs a real ``sensorwire agent`` whose spool folder already holds those N
   frames, with a SUB socket of this process bound where the agent connects;
   once the subscription reaches it the agent replays at ``replay_rate``.
   Reports the achieved replay rate and whether every seq arrived.

    python -m bench.spool_replay [--frames 100000] [--rate 1000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from bench.procs import free_port
from sensorwire.agent.spool import Spool
from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import Frame


def fill(folder: Path, frames: int) -> float:
    f = Frame(site="bench", device_id="pi-bench", boot_id=99, sensor="env", time_unix_nano=1)
    f.samples.add(metric="temperature", value=21.5, unit="C")
    f.samples.add(metric="humidity", value=40.0, unit="%")
    topic = wire.data_topic("bench", "pi-bench", "env")
    msgs = []
    for i in range(1, frames + 1):
        f.seq = i
        msgs.append(topic + wire.DELIM + f.SerializeToString())
    s = Spool(folder, max_bytes=256 << 20, fsync="interval")
    s.open()
    t0 = time.perf_counter()
    for i, m in enumerate(msgs, 1):
        s.append(99, i, m)
        if i % 10 == 0:
            s.flush()
    s.close()
    return (time.perf_counter() - t0) / frames * 1e6


def replay(folder: Path, frames: int, rate: float) -> tuple[float, int, int]:
    ep = f"tcp://127.0.0.1:{free_port()}"
    cfg = folder.parent / "agent.toml"
    cfg.write_text(f'site = "bench"\ndevice_id = "pi-bench"\n'
                   f'[publish]\nconnect = ["{ep}"]\nheartbeat_s = 60\n'
                   f'[spool]\ndir = "{folder}"\nreplay_rate = {rate}\nmax_mb = 256\n')
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"bench/pi-bench/env\x00")
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.bind(ep)
    p = subprocess.Popen([sys.executable, "-m", "sensorwire", "--log-level", "warning",
                          "agent", "-c", str(cfg)])
    seqs: set[int] = set()
    first = last = 0.0
    try:
        deadline = time.monotonic() + frames / rate * 3 + 30
        while len(seqs) < frames and time.monotonic() < deadline:
            if sub.poll(1000):
                msg = sub.recv()
                now = time.monotonic()
                first = first or now
                last = now
                seqs.add(Frame.FromString(msg[msg.index(0) + 1:]).seq)
    finally:
        p.terminate()
        p.wait(10)
        sub.close(linger=0)
        ctx.term()
    achieved = (len(seqs) - 1) / (last - first) if last > first else 0.0
    return achieved, len(seqs), frames - len(seqs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=1000.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "spool"
        us = fill(folder, a.frames)
        print(f"spooling: {us:.2f} us per frame (fsync=interval, flush every 10 frames)")
        achieved, got, lost = replay(folder, a.frames, a.rate)
        print(f"replay of {a.frames:,} frames at replay_rate={a.rate:,.0f}: {achieved:,.0f} frames/s "
              f"achieved, {got:,} received, {lost:,} missing")


if __name__ == "__main__":
    main()
