"""Collector into PostgreSQL: samples/s with binary COPY, raw and end to end.

1. Raw writer: :class:`~sensorwire.collector.pg_store.PgWriter` alone in this
   process writes frames of 8 samples from 1,000 devices in batches of 5,000
   frames (40,000 samples), several rounds; reports
   each round's samples/s and the median.
2. End to end: a real ``sensorwire collector`` process (``kind = "postgres"``)
   fed by the load generator (``bench/loadgen.py``) at a fixed rate; waits
   until everything sent is stored and reports samples/s stored and loss.

Each run uses a schema of its own (``sw_bench_<random>``), dropped at the end.

    python -m bench.postgres_ingest [--dsn DSN] [--frames N] [--rounds R]
                                    [--rate FRAMES_PER_S] [--seconds S]

The DSN defaults to $SENSORWIRE_TEST_PG_DSN, else
postgresql://postgres@127.0.0.1:5432/test.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import psycopg

from bench.loadgen import wait_stored
from bench.procs import free_port
from sensorwire.collector.frames import CheckedFrame
from sensorwire.collector.pg_store import PgWriter
from sensorwire.proto.v1.telemetry_pb2 import Frame

METRICS = ("temperature", "humidity", "pressure", "co2", "pm25", "voc", "light", "noise")


def make_frames(frames: int, devices: int, first_seq: int) -> list[tuple[CheckedFrame, int]]:
    out = []
    for i in range(frames):
        f = Frame(site="bench", device_id=f"dev-{i % devices:05d}", boot_id=1,
                  seq=first_seq + i // devices, time_unix_nano=time.time_ns(), sensor="env")
        for k, m in enumerate(METRICS):
            f.samples.add(metric=m, value=float(i + k), unit="u")
        out.append((CheckedFrame.from_pb(f), time.time_ns()))
    return out


def raw(dsn: str, schema: str, frames: int, rounds: int, batch: int = 5000,
        devices: int = 1000) -> list[float]:
    """Samples/s of each round; every round writes new frames into the same tables."""
    w = PgWriter(dsn, schema)
    w.open()
    w.write(make_frames(devices, devices, 1))  # devices and series known, as in steady state
    results = []
    seq = 2
    for _ in range(rounds):
        data = make_frames(frames, devices, seq)
        seq += frames // devices + 1
        t0 = time.perf_counter()
        for i in range(0, frames, batch):
            w.write(data[i:i + batch])
        results.append(frames * len(METRICS) / (time.perf_counter() - t0))
    w.close()
    return results


def count(dsn: str, schema: str) -> int:
    try:
        with psycopg.connect(dsn, options=f"-csearch_path={schema}") as conn:
            row = conn.execute("SELECT count(*) FROM frames").fetchone()
            return int(row[0]) if row else 0
    except psycopg.Error:
        return 0


def ingest(dsn: str, schema: str, tmp: Path, rate: float, seconds: float,
           devices: int) -> dict[str, float]:
    ep = f"tcp://127.0.0.1:{free_port()}"
    cfg = tmp / "collector.toml"
    cfg.write_text(f'[subscribe]\nconnect = ["{ep}"]\n[storage]\nkind = "postgres"\n'
                   f'dsn = "{dsn}"\nschema = "{schema}"\n')
    frames = int(rate * seconds)
    col = subprocess.Popen([sys.executable, "-m", "sensorwire", "--log-level", "warning",
                            "collector", "-c", str(cfg)])
    gen = subprocess.Popen([sys.executable, "-m", "bench.loadgen", ep, "--frames", str(frames),
                            "--devices", str(devices), "--rate", str(rate)],
                           stdout=subprocess.PIPE, text=True)
    pcol = psutil.Process(col.pid)
    try:
        out, _ = gen.communicate(timeout=seconds * 5 + 60)
        sent = json.loads(out)
        drain_s = wait_stored(lambda: count(dsn, schema), frames)
        cpu = pcol.cpu_times()
        col.terminate()
        col.wait(15)
    finally:
        for p in (gen, col):
            if p.poll() is None:
                p.kill()
    stored = count(dsn, schema)
    total_s = sent["seconds"] + drain_s
    return {
        "target_frames_per_s": rate,
        "frames_sent": frames,
        "frames_stored": stored,
        "lost": frames - stored,
        "samples_per_s_stored": stored * len(METRICS) / total_s,
        "send_seconds": sent["seconds"],
        "drain_after_send_s": drain_s,
        "collector_cpu_percent_of_one_core": 100 * (cpu.user + cpu.system) / total_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", default=os.environ.get("SENSORWIRE_TEST_PG_DSN")
                    or "postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--frames", type=int, default=100_000, help="frames per raw round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rate", type=float, default=15_000, help="end to end: frames/s sent")
    ap.add_argument("--seconds", type=float, default=10, help="end to end: 0 skips it")
    ap.add_argument("--devices", type=int, default=1000)
    a = ap.parse_args()
    schemas = [f"sw_bench_{secrets.token_hex(4)}" for _ in range(2)]
    try:
        rounds = raw(a.dsn, schemas[0], a.frames, a.rounds, devices=a.devices)
        print("raw PgWriter, binary COPY, batches of 5,000 frames x 8 samples: "
              + ", ".join(f"{r:,.0f}" for r in rounds) + " samples/s")
        print(f"raw median: {statistics.median(rounds):,.0f} samples/s, best {max(rounds):,.0f}")
        if a.seconds > 0:
            with tempfile.TemporaryDirectory() as d:
                r = ingest(a.dsn, schemas[1], Path(d), a.rate, a.seconds, a.devices)
            for k, v in r.items():
                print(f"{k}: {v:,.2f}" if isinstance(v, float) else f"{k}: {v:,}")
    finally:
        with psycopg.connect(a.dsn, autocommit=True) as conn:
            for s in schemas:
                conn.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
