"""Collector into SQLite: sustained samples/s with zero loss.

Runs a real ``sensorwire collector`` process connected to a load generator
process (``bench/loadgen.py``) beside it, sends frames of 8 samples at a fixed
pace, waits until everything is stored, and reports samples/s stored, loss and
the collector's CPU.  Also measures the raw insert ceiling: the same schema
written directly by ``SqliteWriter`` in one process.

    python -m bench.collector_sqlite [--rate FRAMES_PER_S] [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.loadgen import wait_stored
from bench.procs import free_port
from sensorwire.collector.sqlite_store import SqliteWriter
from sensorwire.proto.v1.telemetry_pb2 import Frame



def raw_ceiling(tmp: Path, frames: int = 50_000) -> float:
    """Samples/s that SqliteWriter alone reaches, batches of 5,000 frames."""
    w = SqliteWriter(tmp / "raw.db")
    w.open()
    batch = []
    for i in range(frames):
        f = Frame(site="bench", device_id=f"dev-{i % 100:05d}", boot_id=1, seq=i // 100 + 1,
                  time_unix_nano=time.time_ns(), sensor="env")
        for k, m in enumerate(("temperature", "humidity", "pressure", "co2", "pm25", "voc", "light", "noise")):
            f.samples.add(metric=m, value=float(i + k), unit="u")
        batch.append((f, time.time_ns()))
    t0 = time.perf_counter()
    for i in range(0, frames, 5000):
        w.write(batch[i:i + 5000])
    dt = time.perf_counter() - t0
    w.close()
    return frames * 8 / dt


def ingest(tmp: Path, rate: float, seconds: float, devices: int) -> dict[str, float]:
    ep = f"tcp://127.0.0.1:{free_port()}"
    db = tmp / "ingest.db"
    cfg = tmp / "collector.toml"
    cfg.write_text(f'[subscribe]\nconnect = ["{ep}"]\n[storage]\npath = "{db}"\n')
    frames = int(rate * seconds)
    gen = subprocess.Popen([sys.executable, "-m", "bench.loadgen", ep, "--frames", str(frames),
                            "--devices", str(devices), "--rate", str(rate)],
                           stdout=subprocess.PIPE, text=True)
    col = subprocess.Popen([sys.executable, "-m", "sensorwire", "--log-level", "warning", "collector",
                            "-c", str(cfg)])
    pcol = psutil.Process(col.pid)
    try:
        out, _ = gen.communicate(timeout=seconds * 5 + 60)
        sent = json.loads(out)
        cpu0 = pcol.cpu_times()
        # wait until everything sent is stored (or nothing more arrives for 5 s)
        drain_s = wait_stored(lambda: count(db), frames)
        cpu1 = pcol.cpu_times()
        col.terminate()
        col.wait(10)
    finally:
        for p in (gen, col):
            if p.poll() is None:
                p.kill()
    stored = count(db)
    total_s = sent["seconds"] + drain_s
    return {
        "target_frames_per_s": rate,
        "frames_sent": frames,
        "frames_stored": stored,
        "lost": frames - stored,
        "samples_per_s_stored": stored * 8 / total_s,
        "send_seconds": sent["seconds"],
        "drain_after_send_s": drain_s,
        "collector_cpu_s_during_drain": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
        "collector_cpu_percent_of_one_core": 100 * (cpu1.user + cpu1.system) / total_s,
    }


def count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(db, timeout=1)
        try:
            return int(conn.execute("SELECT count(*) FROM frames").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=15_000, help="frames/s sent (8 samples each)")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--devices", type=int, default=1000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ceiling = raw_ceiling(tmp)
        print(f"raw SqliteWriter ceiling: {ceiling:,.0f} samples/s")
        r = ingest(tmp, a.rate, a.seconds, a.devices)
        for k, v in r.items():
            print(f"{k}: {v:,.2f}" if isinstance(v, float) else f"{k}: {v:,}")
        print(f"ratio stored/raw ceiling: {r['samples_per_s_stored'] / ceiling:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
