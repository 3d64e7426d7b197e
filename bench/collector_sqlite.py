"""Collector into SQLite: many devices -> proxy -> collector -> SQLite, against SQLite's own ceiling.

Three runs, each with fresh processes: a real ``sensorwire proxy``, a real
``sensorwire collector`` (default configuration, ``[storage] kind =
"sqlite"``) connected to it, and ``--generators`` load-generator processes
(``bench/loadgen.py``) that connect to the proxy as agents do and multiplex
the devices between them, each device encoding its frames of 8 samples as an
agent does:

1. 1,000 devices at 1 Hz;
2. 10,000 devices at 1 Hz (80,000 samples/s);
3. as fast as the collector stores (1,000 devices, the generators unpaced,
   ``XPUB_NODROP``: they wait when the collector's queues are full).  The
   burst is stored in about two seconds, so this run is made
   ``--unpaced-runs`` times (5) and the median is reported too.

Each run reports frames sent and stored (loss), samples/s stored and the
collector's and the proxy's CPU as % of one core, measured from the first
frame stored to the last (start-up is not counted).  In the unpaced runs the
proxy has usually forwarded the whole burst into the collector's queues
before the first frame is stored, so its CPU there reads about 0 %.

The **ceiling** is SQLite's own insert rate for the same schema in this
Python, measured in the same run: rows built beforehand, 5,000 frames per
transaction (no decoding, no checks, no id look-ups), the faster of two
ways: one ``executemany`` per table, and the writer's own statements of many
rows each (``collector/multirow.py``) with their parameters built
beforehand.  ``SqliteWriter`` alone (the collector's writer, in this
process, without sockets) is reported beside it.  Each is the best of three
rounds (interleaved), on a fresh file.

    python -m bench.collector_sqlite [--seconds S] [--generators N] [--only 1k,10k,max]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.loadgen import BOOT_ID, METRICS, wait_growth
from bench.procs import free_port
from sensorwire.collector.frames import CheckedFrame, Layout
from sensorwire.collector.multirow import MultiRow, fan_out, param_limit, plain
from sensorwire.collector.sqlite_store import SqliteWriter, connect

SAMPLES = len(METRICS)


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    devices: int
    rate: float      # frames/s in all; 0 = as fast as it goes
    frames: int


def scenarios(seconds: float, max_frames: int) -> list[Scenario]:
    return [
        Scenario("1k", "1,000 devices at 1 Hz", 1000, 1000.0, int(1000 * seconds)),
        Scenario("10k", "10,000 devices at 1 Hz", 10_000, 10_000.0, int(10_000 * seconds)),
        Scenario("max", "1,000 devices, unpaced", 1000, 0.0, max_frames),
    ]


def raw_ceiling(tmp: Path, frames: int = 100_000, devices: int = 1000, batch: int = 5000,
                multi_row: bool = False) -> float:
    """Samples/s SQLite itself takes for this schema: prebuilt rows, one ``executemany`` per
    table, or (``multi_row``) the writer's statements of many rows each, parameters prebuilt."""
    (tmp / "raw.db").unlink(missing_ok=True)
    conn = connect(tmp / "raw.db")
    cur = conn.cursor()
    cur.execute("BEGIN")
    for d in range(devices):
        cur.execute("INSERT INTO devices(id, device, site, first_seen_ns, last_seen_ns) "
                    "VALUES (?,?,?,0,0)", (d + 1, f"dev-{d:05d}", "bench"))
        cur.executemany("INSERT INTO series(id, device_key, sensor, metric, unit) VALUES (?,?,?,?,?)",
                        [(d * SAMPLES + k + 1, d + 1, "env", m, u) for k, (m, u) in enumerate(METRICS)])
    cur.execute("COMMIT")
    now = time.time_ns()
    head_f = "INSERT INTO frames(id, device_key, boot_id, seq, sensor, time_ns, received_ns, flags) VALUES "
    head_s = "INSERT INTO samples(frame_id, series_id, value) VALUES "
    rows_f = [(i + 1, i % devices + 1, BOOT_ID, i // devices + 1, "env", now + i, now + i, 0)
              for i in range(frames)]
    if multi_row:  # the parameters of whole statements, built beforehand
        limit = param_limit(conn)
        mf = MultiRow(head_f, plain(8), 8, max_params=limit)
        ms = MultiRow(head_s, fan_out(1, 2, SAMPLES), 1 + 2 * SAMPLES, max_params=limit)
        rows_s = [(i + 1, *[(i % devices) * SAMPLES + k + 1 for k in range(SAMPLES)],
                   *[float(i + k) for k in range(SAMPLES)]) for i in range(frames)]
        batches = [mf.statements(rows_f[b:b + batch]) + ms.statements(rows_s[b:b + batch])
                   for b in range(0, frames, batch)]
        t0 = time.perf_counter()
        for statements in batches:
            cur.execute("BEGIN")
            for sql, params in statements:
                cur.executemany(sql, params)
            cur.execute("COMMIT")
        dt = time.perf_counter() - t0
    else:
        rows_s1 = [(i + 1, (i % devices) * SAMPLES + k + 1, float(i + k))
                   for i in range(frames) for k in range(SAMPLES)]
        t0 = time.perf_counter()
        for b in range(0, frames, batch):
            cur.execute("BEGIN")
            cur.executemany(head_f + "(?,?,?,?,?,?,?,?)", rows_f[b:b + batch])
            cur.executemany(head_s + "(?,?,?)", rows_s1[b * SAMPLES:(b + batch) * SAMPLES])
            cur.execute("COMMIT")
        dt = time.perf_counter() - t0
    conn.close()
    return frames * SAMPLES / dt


def writer_alone(tmp: Path, frames: int = 100_000, devices: int = 1000, batch: int = 5000) -> float:
    """Samples/s of the collector's SqliteWriter fed checked frames in this process."""
    (tmp / "writer.db").unlink(missing_ok=True)
    w = SqliteWriter(tmp / "writer.db")
    w.open()
    layout = Layout(METRICS)
    now = time.time_ns()
    items = [(CheckedFrame("bench", f"dev-{i % devices:05d}", BOOT_ID, i // devices + 1, now + i,
                           "env", 0, layout, tuple(float(i + k) for k in range(SAMPLES))), now)
             for i in range(frames)]
    w.write(items[:devices])  # devices and series created: not what is measured
    t0 = time.perf_counter()
    for b in range(devices, frames, batch):
        w.write(items[b:b + batch])
    dt = time.perf_counter() - t0
    w.close()
    return (frames - devices) * SAMPLES / dt


def cpu_s(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


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


def collector_account(log: Path) -> str:
    """What the collector's last summary line (``collector stopping: ...``) says it received,
    rejected, found missing and stored; or why there is none."""
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if "collector stopping:" in ln]
    if not lines:
        return f"no final summary in {log} (did it crash?)"
    return lines[-1].split("collector stopping: ", 1)[1]


def run(tmp: Path, sc: Scenario, generators: int, quiet_s: float = 5.0,
        storage: str = "") -> dict[str, float]:
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    db = tmp / f"{sc.key}.db"
    for f in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        f.unlink(missing_ok=True)  # each run on a fresh file
    cfg = tmp / f"{sc.key}.toml"
    cfg.write_text(f'[subscribe]\nconnect = ["{back}"]\n[storage]\npath = "{db}"\n{storage}'
                   '[metrics]\nlisten = ""\n')
    proxy_cfg = tmp / f"{sc.key}-proxy.toml"
    proxy_cfg.write_text(f'frontend = "{front}"\nbackend = "{back}"\n[metrics]\nlisten = ""\n')
    py = [sys.executable, "-m", "sensorwire"]
    procs: list[subprocess.Popen[str]] = []
    col_log = tmp / f"{sc.key}-collector.log"
    try:
        proxy = subprocess.Popen([*py, "--log-level", "warning", "proxy", "-c", str(proxy_cfg)],
                                 text=True)
        procs.append(proxy)
        # its log at INFO goes to a file: its last summary says what it counted (gaps, lost...)
        with col_log.open("w") as out:
            col = subprocess.Popen([*py, "collector", "-c", str(cfg)], text=True, stderr=out)
        procs.append(col)
        gens = []
        per_gen = sc.devices // generators
        for g in range(generators):
            gens.append(subprocess.Popen(
                [sys.executable, "-m", "bench.loadgen", front, "--connect",
                 "--frames", str(sc.frames // generators), "--devices", str(per_gen),
                 "--first-device", str(g * per_gen), "--rate", str(sc.rate / generators)],
                stdout=subprocess.PIPE, text=True))
        procs += gens
        pcol, pproxy = psutil.Process(col.pid), psutil.Process(proxy.pid)
        target = (sc.frames // generators) * generators
        # the window starts with the first frame stored: start-up is not counted
        deadline = time.monotonic() + 60
        while (first := count(db)) == 0:
            if time.monotonic() > deadline:
                raise SystemExit(f"{sc.label}: nothing stored within 60 s")
            time.sleep(0.05)
        c0, p0 = cpu_s(pcol), cpu_s(pproxy)
        _, window, last = wait_growth(lambda: count(db), target, quiet_s, interval_s=0.02)
        c1, p1 = cpu_s(pcol), cpu_s(pproxy)
        sent = [json.loads(g.communicate(timeout=60)[0]) for g in gens]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    stored = count(db)
    window = max(window, 1e-9)
    lost = sum(s["frames"] for s in sent) - stored
    for line in col_log.read_text(errors="replace").splitlines():
        if " WARNING " in line or " ERROR " in line or " CRITICAL " in line:
            print(f"  {sc.key}: collector: {line}", file=sys.stderr)
    if lost:
        print(f"  {sc.key}: {lost} frames not stored; the collector's own account: "
              f"{collector_account(col_log)}", file=sys.stderr)
    return {
        "frames_sent": sum(s["frames"] for s in sent),
        "frames_stored": stored,
        "lost": lost,
        "samples_per_s_stored": (last - first) * SAMPLES / window,
        "window_s": window,
        "collector_cpu_percent": 100 * (c1 - c0) / window,
        "proxy_cpu_percent": 100 * (p1 - p0) / window,
        "send_seconds": max(s["seconds"] for s in sent),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20, help="length of the 1 Hz runs")
    ap.add_argument("--max-frames", type=int, default=150_000,
                    help="frames in the unpaced run "
                         "(below the collector's queue_max: they wait in its queue)")
    ap.add_argument("--generators", type=int, default=2, help="load-generator processes")
    ap.add_argument("--only", default="1k,10k,max", help="which runs: 1k, 10k, max")
    ap.add_argument("--unpaced-runs", type=int, default=5,
                    help="times the unpaced run is made (each a short burst: the median is reported)")
    a = ap.parse_args()
    wanted = set(a.only.split(","))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        # the best of 3 rounds each, interleaved: a noisy machine only ever makes a round slower
        many = multi = alone = 0.0
        for _ in range(3):
            many = max(many, raw_ceiling(tmp))
            multi = max(multi, raw_ceiling(tmp, multi_row=True))
            alone = max(alone, writer_alone(tmp))
        ceiling = max(many, multi)
        print(f"SQLite ceiling (same schema, prebuilt rows): {ceiling:,.0f} samples/s, the faster of "
              f"executemany ({many:,.0f}) and statements of many rows ({multi:,.0f})")
        print(f"SqliteWriter alone (checked frames in, no sockets): {alone:,.0f} samples/s "
              f"({alone / ceiling:.2f} x ceiling)")
        print()
        print("| run | frames sent | stored | lost | samples/s stored | ÷ ceiling "
              "| collector CPU | proxy CPU |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        unpaced: list[float] = []
        for sc in scenarios(a.seconds, a.max_frames):
            if sc.key not in wanted:
                continue
            runs = a.unpaced_runs if sc.rate == 0 else 1
            for i in range(runs):
                r = run(tmp, sc, a.generators)
                label = sc.label if runs == 1 else f"{sc.label}, run {i + 1} of {runs}"
                print(f"| {label} | {r['frames_sent']:,} | {r['frames_stored']:,} | {r['lost']:,} | "
                      f"{r['samples_per_s_stored']:,.0f} | {r['samples_per_s_stored'] / ceiling:.2f} | "
                      f"{r['collector_cpu_percent']:.0f} % | {r['proxy_cpu_percent']:.0f} % |", flush=True)
                print(f"  {sc.key}: stored over {r['window_s']:.2f} s; the generators sent for "
                      f"{r['send_seconds']:.2f} s", file=sys.stderr)
                if sc.rate == 0:
                    unpaced.append(r["samples_per_s_stored"])
        if unpaced:
            mid = statistics.median(unpaced)
            print(f"\nUnpaced, median of {len(unpaced)}: {mid:,.0f} samples/s stored, "
                  f"{mid / ceiling:.2f} x the ceiling")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
