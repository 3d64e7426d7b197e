"""A soak: every role running for a while under churn, its resources sampled; what grows?

Real ``sensorwire`` processes on loopback, in one temporary folder:

- **two proxies**: ``proxy-a`` runs for the whole soak and is measured;
  ``proxy-b`` is restarted every ``--proxy-restart-s``.  Both forward in
  libzmq (the default), or in Python with ``--lvc`` (``last_value_cache =
  true``, with small bounds so that they are reached) and/or ``--curve``
  (CURVE on every link: keys made with ``sensorwire keygen``, the proxies'
  allow-lists, the agents' identity checked on every frame);
- **agent-a**, never restarted: 10 ``simulated`` sensors at 20 Hz, a
  ``system`` sensor at 1 Hz and a ``serial`` sensor on a pty this script feeds
  10 lines a second.  Every ``--reload-s`` its file is rewritten with three
  sensors renamed (new topics) and it gets SIGHUP.  The serial device is
  unplugged (pty closed) and plugged back (a new pty behind the same symlink)
  every ``--unplug-s``.  Connected to both proxies;
- **agent-b**, restarted every ``--agent-restart-s``, one simulated sensor at
  10 Hz, with a new sensor name at each start; connected to both proxies;
- **collector-a**, never restarted, into SQLite, with alert rules (a threshold
  per topic, a stale rule, device_offline), ``export_values`` and
  ``max_devices`` small enough to be reached (``--max-devices``); connected to
  both proxies;
- **collector-b** into its own SQLite file, restarted every
  ``--collector-restart-s``; a third collector (storage ``none``) and
  ``sensorwire tail`` subscribers (a random prefix each) connecting for a few
  seconds and leaving;
- a load generator (``bench/loadgen.py``) sending, every ``--loadgen-s``, for
  100 devices never seen before (new device ids all the time), through
  proxy-a (with ``--curve`` it has no key: its handshakes are refused, and it
  gives up after 30 s, churn of another kind);
- ``/metrics`` of every long-lived role scraped every 10 s,
  ``sensorwire status`` and ``sensorwire query`` on collector-a's file every
  15 s; collector-a gets SIGHUP with agent-a.

Every ``--sample-s`` it records, for each process: RSS (``VmRSS``), open file
descriptors and threads, and the sizes of the spools and of the SQLite files
(with their ``-wal``).  At the end it prints, for the long-lived processes and
the files, the value after the warm-up and at the end, the least-squares
slope per hour over the samples after the warm-up, and flags a series whose
slope is above a threshold *and* whose last quarter sits above its second
quarter (steady growth, not a step).  Processes that were restarted are
listed per run (their peak).  Run it from the repository root::

    .venv/bin/python -m bench.soak --minutes 15 [--lvc] [--curve] [--csv FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.loadgen import wait_growth
from bench.procs import free_port, tail, terminate, wait_port
from sensorwire.serialsim import Pty

SW = [sys.executable, "-m", "sensorwire"]


@dataclass
class Role:
    """One sensorwire process that may be started again; its samples by run."""

    name: str
    argv: list[str]
    logdir: Path
    ports: list[int] = field(default_factory=list)
    popen: subprocess.Popen[bytes] | None = None
    runs: int = 0
    peaks: list[tuple[int, int, int]] = field(default_factory=list)  # per run: rss KiB, fds, threads

    def start(self) -> None:
        self.runs += 1
        log = open(self.logdir / f"{self.name}.log", "ab")  # noqa: SIM115 - handed to the child
        self.popen = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
        log.close()
        self.peaks.append((0, 0, 0))
        for port in self.ports:
            wait_port(port, 30.0, alive=lambda: self.popen is not None and self.popen.poll() is None)

    def stop(self) -> None:
        if self.popen is None:
            return
        if not terminate(self.popen, 40.0):
            print(f"soak: {self.name} did not stop within 40 s of SIGTERM; killed", file=sys.stderr)
        if self.popen.returncode not in (0, -signal.SIGTERM):
            print(f"soak: {self.name} exited with status {self.popen.returncode}; its log:\n"
                  f"{tail(self.logdir / f'{self.name}.log')}", file=sys.stderr)
        self.popen = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pid(self) -> int | None:
        if self.popen is None or self.popen.poll() is not None:
            return None
        return self.popen.pid


def proc_sample(pid: int) -> tuple[int, int, int] | None:
    """(VmRSS KiB, open fds, threads) of a process; None when it is gone."""
    try:
        rss = threads = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        return None
    return rss, fds, threads


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file():
                total += p.stat().st_size
    return total


def simulated(name: str, interval_s: float, seed: int) -> str:
    return (f'[[sensors]]\nname = "{name}"\nkind = "simulated"\ninterval_s = {interval_s}\nseed = {seed}\n'
            'metrics = [{ name = "temperature", unit = "C", signal = "sine", mean = 22.0, amplitude = 6.0, '
            'period_s = 30.0, noise = 0.5 }, { name = "humidity", unit = "%", signal = "random_walk", '
            'start = 50.0, step = 1.0, min = 0.0, max = 100.0 }]\n')


def curve_client(keys: Path | None, name: str) -> str:
    if keys is None:
        return ""
    return (f'[security]\nmode = "curve"\nsecret_key = "{keys / name}.key_secret"\n'
            f'server_key = "{keys / "proxy"}.key"\n')


def agent_toml(device: str, fronts: list[str], spool: Path, names: list[str], interval_s: float,
               serial: str | None, metrics_port: int | None, keys: Path | None = None) -> str:
    text = (f'site = "soak"\ndevice_id = "{device}"\nlog_level = "info"\n'
            f'[publish]\nconnect = [{", ".join(repr(f) for f in fronts)}]\nheartbeat_s = 1.0\n'
            f'[spool]\ndir = "{spool}"\nmax_mb = 8\n').replace("'", '"')
    text += curve_client(keys, device)
    if metrics_port is not None:
        text += f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
    for i, name in enumerate(names):
        text += simulated(name, interval_s, i)
    if serial is not None:
        text += '[[sensors]]\nname = "health"\nkind = "system"\ninterval_s = 1.0\n'
        text += (f'[[sensors]]\nname = "uart"\nkind = "serial"\nport = "{serial}"\nbaudrate = 115200\n'
                 'format = "csv"\nfields = ["n", "temperature", "humidity"]\n')
    return text


def collector_toml(backs: list[str], storage: str, metrics_port: int | None, max_devices: int,
                   alerts: bool, keys: Path | None = None) -> str:
    text = (f'log_level = "info"\nsummary_s = 30.0\n[subscribe]\n'
            f'connect = [{", ".join(repr(b) for b in backs)}]\n'.replace("'", '"'))
    text += curve_client(keys, "collector")
    text += f'[storage]\n{storage}\n[presence]\noffline_after_s = 5.0\n'
    text += f'[limits]\nmax_devices = {max_devices}\n'
    text += (f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\nexport_values = true\nvalues_max = 2000\n'
             if metrics_port is not None else '[metrics]\nlisten = ""\n')
    if alerts:
        text += ('[[alerts]]\nname = "hot"\nmatch = "**"\nmetric = "temperature"\nabove = 26.0\n'
                 'clear = 25.0\nmax_instances = 500\n'
                 '[[alerts]]\nname = "stale"\nmatch = "**"\nstale_s = 20.0\nmax_instances = 500\n'
                 '[[alerts]]\nname = "offline"\nmatch = "**"\ndevice_offline = true\n')
    return text


def proxy_toml(front: str, back: str, metrics_port: int, lvc: bool, keys: Path | None = None) -> str:
    text = f'frontend = "{front}"\nbackend = "{back}"\nsummary_s = 30.0\n'
    if lvc:
        text += 'last_value_cache = true\nlast_value_topics = 2000\nlast_value_bytes = 1000000\n'
    if keys is not None:
        text += (f'[security]\nmode = "curve"\nsecret_key = "{keys / "proxy"}.key_secret"\n'
                 f'authorized_keys = "{keys / "agents"}"\nauthorized_collectors = "{keys / "collectors"}"\n')
    text += f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
    return text


class SerialDevice:
    """A pty behind a fixed symlink, fed lines; unplug() closes it, plug() opens a new one."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.pty: Pty | None = None
        self.lock = threading.Lock()
        self.n = 0

    def plug(self) -> None:
        with self.lock:
            self.pty = Pty()
            self.pty.__enter__()
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
            self.link.symlink_to(self.pty.path)

    def unplug(self) -> None:
        with self.lock:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
            if self.pty is not None:
                self.pty.__exit__(None, None, None)
                self.pty = None

    def feed(self, stop: threading.Event) -> None:
        while not stop.wait(0.1):
            with self.lock:
                if self.pty is not None:
                    self.n += 1
                    with contextlib.suppress(OSError):
                        self.pty.write(f"{self.n},{20 + self.n % 10},{40 + self.n % 7}\n".encode())


class Churn:
    """Things that come and go: each is started by ``tick`` and reaped when its time is up."""

    def __init__(self) -> None:
        self.live: list[tuple[float, subprocess.Popen[bytes]]] = []
        self.started = 0
        self.failed = 0

    def spawn(self, argv: list[str], for_s: float, log: Path) -> None:
        with open(log, "ab") as f:
            self.live.append((time.monotonic() + for_s, subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=f, stdin=subprocess.DEVNULL)))
        self.started += 1

    def reap(self, force: bool = False) -> None:
        keep = []
        for due, p in self.live:
            if p.poll() is not None:
                if p.returncode not in (0, -signal.SIGTERM):
                    self.failed += 1
                continue
            if force or time.monotonic() >= due:
                if not terminate(p, 15.0):
                    self.failed += 1
                if p.returncode not in (0, -signal.SIGTERM):
                    self.failed += 1
                continue
            keep.append((due, p))
        self.live = keep


def every(period_s: float, offset_s: float = 0.0) -> Callable[[float], bool]:
    nxt = [offset_s]

    def due(t: float) -> bool:
        if t >= nxt[0]:
            nxt[0] += period_s
            return True
        return False
    return due


def slope_per_hour(ts: list[float], ys: list[float]) -> float:
    if len(ts) < 3:
        return 0.0
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    den = sum((t - mt) ** 2 for t in ts)
    return 0.0 if den == 0 else sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / den * 3600


def grows(ys: list[float], slope_h: float, threshold_h: float) -> bool:
    """A slope above the threshold, and the last quarter above the second (not one step early on)."""
    n = len(ys)
    if n < 8 or slope_h <= threshold_h:
        return False
    q = n // 4
    return statistics.fmean(ys[-q:]) > statistics.fmean(ys[q:2 * q])


@dataclass
class Series:
    unit: str
    threshold_h: float  # slope per hour above which steady growth is flagged
    ts: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)


@contextlib.contextmanager
def stopping(roles: list[Role]) -> Iterator[None]:
    try:
        yield
    finally:
        for r in reversed(roles):
            r.stop()


def make_keys(d: Path) -> Path:
    """CURVE key pairs: the proxy's, the agents' (pi-a, pi-b), the collectors' and tail's."""
    keys = d / "keys"
    for sub in ("agents", "collectors"):
        (keys / sub).mkdir(parents=True)
    for name in ("proxy", "pi-a", "pi-b", "collector"):
        subprocess.run([*SW, "keygen", name, "--dir", str(keys)], check=True, capture_output=True)
    for name, sub in (("pi-a", "agents"), ("pi-b", "agents"), ("collector", "collectors")):
        (keys / sub / f"{name}.key").write_bytes((keys / f"{name}.key").read_bytes())
    return keys


def mode_name(lvc: bool, curve: bool) -> str:
    if not lvc and not curve:
        return "in libzmq (default)"
    on = [w for w, yes in (("last_value_cache", lvc), ("CURVE", curve)) if yes]
    return f"in Python ({' + '.join(on)})"


def run(minutes: float, lvc: bool, warm_s: float, sample_s: float, max_devices: int,
        csv_path: Path | None, a: argparse.Namespace) -> int:
    d = Path(tempfile.mkdtemp(prefix="sw-soak-"))
    logs = d / "logs"
    logs.mkdir()
    keys = make_keys(d) if a.curve else None
    print(f"soak: folder {d} (logs in {logs}); {minutes:g} min, proxies {mode_name(lvc, a.curve)}",
          file=sys.stderr)
    fa, ba, fb, bb = (f"tcp://127.0.0.1:{free_port()}" for _ in range(4))
    port = {k: free_port() for k in ("proxy-a", "proxy-b", "collector-a", "agent-a")}
    for name, (f, b) in {"proxy-a": (fa, ba), "proxy-b": (fb, bb)}.items():
        (d / f"{name}.toml").write_text(proxy_toml(f.replace("127.0.0.1", "*"), b.replace("127.0.0.1", "*"),
                                                    port[name], lvc, keys))
    serial = SerialDevice(d / "ttySOAK")
    serial.plug()
    gen = [0]

    def agent_a_names() -> list[str]:
        return [f"env{i}" if i >= 3 else f"env{i}-g{gen[0]}" for i in range(10)]

    def write_agent_a() -> None:
        (d / "agent-a.toml").write_text(agent_toml("pi-a", [fa, fb], d / "spool-a", agent_a_names(), 0.05,
                                                   str(serial.link), port["agent-a"], keys))

    def write_agent_b() -> None:
        (d / "agent-b.toml").write_text(agent_toml("pi-b", [fa, fb], d / "spool-b", [f"run{gen[0]}"], 0.1,
                                                   None, None, keys))

    write_agent_a()
    write_agent_b()
    (d / "collector-a.toml").write_text(collector_toml(
        [ba, bb], f'kind = "sqlite"\npath = "{d / "a.db"}"', port["collector-a"], max_devices, True, keys))
    (d / "collector-b.toml").write_text(collector_toml(
        [ba, bb], f'kind = "sqlite"\npath = "{d / "b.db"}"', None, max_devices, False, keys))
    (d / "collector-c.toml").write_text(collector_toml([ba, bb], 'kind = "none"', None, max_devices, False,
                                                       keys))

    def role(name: str, *args: str, ports: list[int] | None = None) -> Role:
        return Role(name, [*SW, *args], logs, ports or [])

    pa = role("proxy-a", "proxy", "-c", str(d / "proxy-a.toml"), ports=[port["proxy-a"]])
    pb = role("proxy-b", "proxy", "-c", str(d / "proxy-b.toml"), ports=[port["proxy-b"]])
    ca = role("collector-a", "collector", "-c", str(d / "collector-a.toml"), ports=[port["collector-a"]])
    cb = role("collector-b", "collector", "-c", str(d / "collector-b.toml"))
    aa = role("agent-a", "agent", "-c", str(d / "agent-a.toml"), ports=[port["agent-a"]])
    ab = role("agent-b", "agent", "-c", str(d / "agent-b.toml"))
    roles = [pa, pb, ca, cb, aa, ab]
    long_lived = [pa, ca, aa]
    files = {"spool-a": d / "spool-a", "spool-b": d / "spool-b", "a.db": d / "a.db",
             "a.db-wal": d / "a.db-wal", "b.db": d / "b.db", "b.db-wal": d / "b.db-wal"}
    series: dict[str, Series] = {}
    for r in long_lived:
        series[f"{r.name} RSS"] = Series("KiB", 2048)       # 2 MiB an hour
        series[f"{r.name} fds"] = Series("", 2)
        series[f"{r.name} threads"] = Series("", 1)
    for k in files:
        series[k] = Series("KiB", 1024 if "wal" in k or "spool" in k else float("inf"))
    churn = Churn()
    stop = threading.Event()
    feeder = threading.Thread(target=serial.feed, args=(stop,), daemon=True)
    feeder.start()
    rng = random.Random(1)
    scrape_fail = 0
    scrapes = 0
    loadgen: subprocess.Popen[bytes] | None = None
    loadgen_rounds = 0
    reloads = unplugs = 0
    t_end = minutes * 60
    with stopping(roles):
        for r in roles:
            r.start()
        t0 = time.monotonic()
        due = {"sample": every(sample_s), "scrape": every(10, 3), "read": every(15, 5),
               "tail": every(20, 7), "side-collector": every(60, 11), "reload": every(a.reload_s, a.reload_s),
               "unplug": every(a.unplug_s, 13), "agent-b": every(a.agent_restart_s, a.agent_restart_s),
               "proxy-b": every(a.proxy_restart_s, a.proxy_restart_s),
               "collector-b": every(a.collector_restart_s, a.collector_restart_s),
               "loadgen": every(a.loadgen_s, 2)}
        replug_at: float | None = None
        while (t := time.monotonic() - t0) < t_end:
            for r in long_lived:
                if r.popen is not None and r.popen.poll() is not None:
                    print(f"soak: {r.name} exited (status {r.popen.returncode}); its log:\n"
                          f"{tail(logs / f'{r.name}.log')}", file=sys.stderr)
                    return 1
            if due["sample"](t):
                for r in roles:
                    pid = r.pid()
                    got = proc_sample(pid) if pid is not None else None
                    if got is None:
                        continue
                    r.peaks[-1] = tuple(max(x, y) for x, y in zip(r.peaks[-1], got, strict=True))  # type: ignore[assignment]
                    if r in long_lived and t >= warm_s:
                        for key, v in zip(("RSS", "fds", "threads"), got, strict=True):
                            series[f"{r.name} {key}"].ts.append(t)
                            series[f"{r.name} {key}"].ys.append(v)
                if t >= warm_s:
                    for k, p in files.items():
                        series[k].ts.append(t)
                        series[k].ys.append(tree_size(p) / 1024 if p.exists() else 0)
            if due["scrape"](t):
                for name in ("proxy-a", "collector-a", "agent-a"):
                    scrapes += 1
                    try:
                        url = f"http://127.0.0.1:{port[name]}/metrics"
                        with urllib.request.urlopen(url, timeout=5) as resp:
                            resp.read()
                    except OSError:
                        scrape_fail += 1
            if due["read"](t):
                churn.spawn([*SW, "status", "--db", str(d / "a.db")], 30, logs / "readers.log")
                churn.spawn([*SW, "query", "--db", str(d / "a.db"), "--since", "30s", "--limit", "2000",
                             "--format", "csv"], 30, logs / "readers.log")
            if due["tail"](t):
                prefix = rng.choice(["", "soak/", "soak/pi-a", "soak/pi-a/env5", "soak/dev-", "nothing/"])
                tail_keys = ([] if keys is None else ["--secret-key", str(keys / "collector.key_secret"),
                                                      "--server-key", str(keys / "proxy.key")])
                churn.spawn([*SW, "tail", "--connect", rng.choice([ba, bb]), *tail_keys,
                             *([prefix] if prefix else [])],
                            rng.uniform(2, 8), logs / "tail.log")
            if due["side-collector"](t):
                churn.spawn([*SW, "collector", "-c", str(d / "collector-c.toml")], 15,
                            logs / "collector-c.log")
            if due["reload"](t) and aa.popen is not None:
                gen[0] += 1
                write_agent_a()
                aa.popen.send_signal(signal.SIGHUP)
                if ca.popen is not None:
                    ca.popen.send_signal(signal.SIGHUP)
                reloads += 1
            if due["unplug"](t):
                serial.unplug()
                unplugs += 1
                replug_at = t + 5
            if replug_at is not None and t >= replug_at:
                serial.plug()
                replug_at = None
            if due["agent-b"](t):
                gen[0] += 1
                write_agent_b()
                ab.restart()
            if due["proxy-b"](t):
                pb.restart()
            if due["collector-b"](t):
                cb.restart()
            if due["loadgen"](t) and (loadgen is None or loadgen.poll() is not None):
                loadgen = subprocess.Popen(
                    [sys.executable, "-m", "bench.loadgen", fa, "--connect", "--devices", "100",
                     "--frames", str(a.loadgen_frames), "--rate", "100", "--samples", "4",
                     "--first-device", str(loadgen_rounds * 100)],
                    stdout=subprocess.DEVNULL, stderr=open(logs / "loadgen.log", "ab"))  # noqa: SIM115
                loadgen_rounds += 1
            churn.reap()
            time.sleep(0.2)
        elapsed = time.monotonic() - t0
        churn.reap(force=True)
        if loadgen is not None and loadgen.poll() is None:
            loadgen.terminate()
            loadgen.wait()
    stop.set()
    serial.unplug()
    print(f"\n{elapsed / 60:.1f} min (warm-up {warm_s:.0f} s, a sample every {sample_s:g} s), proxies "
          f"{mode_name(lvc, a.curve)}; {reloads} SIGHUP reloads (agent-a and collector-a), "
          f"{unplugs} serial unplugs, restarts: agent-b {ab.runs}, proxy-b {pb.runs}, collector-b {cb.runs}; "
          f"{churn.started} short-lived tail/status/query/collector processes ({churn.failed} failed); "
          f"{loadgen_rounds} load-generator rounds ({loadgen_rounds * 100} device ids); "
          f"{scrapes} /metrics scrapes ({scrape_fail} failed)\n")
    print("| series | after warm-up | end | min | max | slope per hour | steady growth? |")
    print("|---|---:|---:|---:|---:|---:|---|")
    flagged = 0
    for name, s in series.items():
        if not s.ys:
            continue
        sl = slope_per_hour(s.ts, s.ys)
        g = grows(s.ys, sl, s.threshold_h)
        flagged += g
        u = f" {s.unit}" if s.unit else ""
        print(f"| {name} | {s.ys[0]:,.0f}{u} | {s.ys[-1]:,.0f}{u} | {min(s.ys):,.0f} | {max(s.ys):,.0f} | "
              f"{sl:+,.0f}{u}/h | {'**GROWS**' if g else 'no'} |")
    print("\nRestarted processes, per run (peak RSS KiB / fds / threads):\n")
    for r in (pb, cb, ab):
        print(f"- {r.name}: " + ", ".join(f"{p[0]:,}/{p[1]}/{p[2]}" for p in r.peaks))
    if csv_path is not None:
        with open(csv_path, "w") as out:
            out.write("series,t_s,value\n")
            for name, s in series.items():
                for tt, y in zip(s.ts, s.ys, strict=True):
                    out.write(f"{name},{tt:.1f},{y}\n")
    print(f"\nlogs kept in {logs}", file=sys.stderr)
    return 1 if flagged else 0


def stored_frames(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            return int(conn.execute("SELECT count(*) FROM frames").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return -1


def flood(rounds: int, per_round: int, storage: str, max_devices: int) -> int:
    """New device ids only: a proxy and a collector (SQLite, default limits, /metrics with
    export_values, a stale alert on every topic), and ``rounds`` load-generator runs of
    ``per_round`` devices never seen before, 2 frames each.  The collector's RSS after each
    round (once SQLite has stored the round) shows whether what it keeps per device is bounded
    (it should level off once its bounds, 65,536-100,000 devices or topics, are reached)."""
    d = Path(tempfile.mkdtemp(prefix="sw-flood-"))
    front, back = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    mport, pport = free_port(), free_port()
    (d / "proxy.toml").write_text(proxy_toml(front.replace("127.0.0.1", "*"), back.replace("127.0.0.1", "*"),
                                             pport, False))
    (d / "collector.toml").write_text(
        f'log_level = "warning"\n[subscribe]\nconnect = ["{back}"]\n[storage]\n'
        + (f'kind = "sqlite"\npath = "{d / "f.db"}"\n' if storage == "sqlite" else 'kind = "none"\n')
        + f'[limits]\nmax_devices = {max_devices}\n'
        + f'[metrics]\nlisten = "127.0.0.1:{mport}"\nexport_values = true\n'
        '[[alerts]]\nname = "stale"\nmatch = "**"\nstale_s = 3600.0\n')
    proxy = Role("proxy", [*SW, "proxy", "-c", str(d / "proxy.toml")], d, [pport])
    coll = Role("collector", [*SW, "collector", "-c", str(d / "collector.toml")], d, [mport])
    print(f"soak --flood: folder {d}, storage {storage}, max_devices {max_devices}", file=sys.stderr)
    print("| device ids sent | collector RSS | fds | threads | seconds for the round |")
    print("|---:|---:|---:|---:|---:|")
    with stopping([proxy, coll]):
        proxy.start()
        coll.start()
        for r in range(rounds):
            t = time.monotonic()
            subprocess.run([sys.executable, "-m", "bench.loadgen", front, "--connect", "--devices",
                            str(per_round), "--frames", str(2 * per_round), "--rate", "20000",
                            "--samples", "4", "--first-device", str(r * per_round)],
                           check=True, stdout=subprocess.DEVNULL)
            if storage == "sqlite":  # all stored, or none for 10 s (beyond max_devices: refused)
                wait_growth(lambda: stored_frames(d / "f.db"), 2 * per_round * (r + 1), 10.0, 1.0)
            time.sleep(3)  # the collector's other sinks: within 0.2 s
            pid = coll.pid()
            if pid is None:
                print(f"soak: the collector exited; its log:\n{tail(d / 'collector.log')}", file=sys.stderr)
                return 1
            rss, fds, threads = proc_sample(pid) or (0, 0, 0)
            print(f"| {(r + 1) * per_round:,} | {rss / 1024:,.1f} MiB | {fds} | {threads} | "
                  f"{time.monotonic() - t:.0f} |", flush=True)
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=15)
    ap.add_argument("--lvc", action="store_true", help="proxies forward in Python with last_value_cache")
    ap.add_argument("--curve", action="store_true",
                    help="CURVE on every link (the proxies forward in Python); the load generator, "
                         "which has no key, is then refused at each attempt")
    ap.add_argument("--warm-up-s", type=float, default=120)
    ap.add_argument("--sample-s", type=float, default=5)
    ap.add_argument("--max-devices", type=int, default=300, help="collectors' [limits] max_devices")
    ap.add_argument("--reload-s", type=float, default=60)
    ap.add_argument("--unplug-s", type=float, default=45)
    ap.add_argument("--agent-restart-s", type=float, default=120)
    ap.add_argument("--proxy-restart-s", type=float, default=180)
    ap.add_argument("--collector-restart-s", type=float, default=150)
    ap.add_argument("--loadgen-s", type=float, default=30)
    ap.add_argument("--loadgen-frames", type=int, default=1000)
    ap.add_argument("--csv", type=Path, help="also write every sample")
    ap.add_argument("--flood", type=int, metavar="ROUNDS",
                    help="instead: ROUNDS rounds of --flood-devices new device ids into one collector")
    ap.add_argument("--flood-devices", type=int, default=50_000)
    ap.add_argument("--flood-storage", choices=["sqlite", "none"], default="sqlite")
    ap.add_argument("--flood-max-devices", type=int, default=100_000, help="the collector's max_devices")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the children on the way out
    if a.flood:
        sys.exit(flood(a.flood, a.flood_devices, a.flood_storage, a.flood_max_devices))
    sys.exit(run(a.minutes, a.lvc, a.warm_up_s, a.sample_s, a.max_devices, a.csv, a))


if __name__ == "__main__":
    main()
