"""Real processes: a proxy, a collector and two agents, stopped with SIGTERM."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import free_port, run_cli, wait_until, write


def agent_toml(device: str, frontend: str, site: str = "gh", spool_dir: str = "") -> str:
    return f"""\
site = "{site}"
device_id = "{device}"
[publish]
connect = ["{frontend}"]
heartbeat_s = 0.5
[[sensors]]
name = "env"
kind = "simulated"
interval_s = 0.05
metrics = [
  {{ name = "temperature", unit = "C", signal = "sine", mean = 20.0, amplitude = 2.0, period_s = 10.0 }},
  {{ name = "door", signal = "constant", value = 0.0 }},
]
[[sensors]]
name = "health"
kind = "system"
interval_s = 0.5
[spool]
dir = "{spool_dir}"
"""


def rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def seqs(db: Path, device: str) -> list[int]:
    return [s for (s,) in rows(db, "SELECT f.seq FROM frames f JOIN devices d ON d.id = f.device_key "
                                   "WHERE d.device = ? ORDER BY f.seq", device)]


@pytest.fixture
def stack(tmp_path: Path, procs: Any) -> dict[str, Any]:
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    db = tmp_path / "telemetry.db"
    proxy = procs("proxy", "proxy", "--frontend", front, "--backend", back)
    collector = procs("collector", "collector", "-c", str(write(tmp_path / "collector.toml",
        f'[subscribe]\nconnect = ["{back}"]\n[storage]\npath = "{db}"\nflush_interval_s = 0.05\n')))
    agents = [procs(f"agent-{d}", "agent", "-c", str(write(tmp_path / f"agent-{d}.toml",
                    agent_toml(d, front, spool_dir=str(tmp_path / f"spool-{d}")))))
              for d in ("pi-1", "pi-2")]
    return {"front": front, "back": back, "db": db, "proxy": proxy, "collector": collector, "agents": agents}


@pytest.mark.slow
def test_two_agents_through_proxy_into_sqlite_with_contiguous_seq(stack: dict[str, Any]) -> None:
    db = stack["db"]
    wait_until(lambda: len(seqs(db, "pi-1")) >= 20 and len(seqs(db, "pi-2")) >= 20,
               timeout_s=30, what="20 frames per device")
    for a in stack["agents"]:
        t0 = time.monotonic()
        assert a.terminate() == 0, a.log()
        assert time.monotonic() - t0 < 2.0
    t0 = time.monotonic()
    assert stack["collector"].terminate() == 0, stack["collector"].log()
    assert time.monotonic() - t0 < 2.0
    t0 = time.monotonic()
    assert stack["proxy"].terminate() == 0
    assert time.monotonic() - t0 < 2.0
    for device in ("pi-1", "pi-2"):
        s = seqs(db, device)
        assert s == list(range(1, s[-1] + 1)), f"{device}: holes in {s}"
        metrics = {m for (m,) in rows(db, "SELECT DISTINCT metric FROM readings WHERE device = ?", device)}
        assert {"temperature", "door", "cpu.percent", "memory.used_percent"} <= metrics
    # SIGTERM loses nothing the collector had received: the agents' own counts match
    for a in stack["agents"]:
        sent = int(a.log().split("agent stopping: last seq ")[1].split(";")[0])
        device = a.name.split("-", 1)[1]
        s = seqs(db, device)
        assert s[-1] == sent, f"{device}: sent {sent}, last stored {s[-1]}"


@pytest.mark.slow
def test_tail_prints_one_flushed_json_line_per_frame_into_a_pipe(stack: dict[str, Any]) -> None:
    p = subprocess.Popen([sys.executable, "-m", "sensorwire", "tail", "--connect", stack["back"], "gh/pi-1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines: list[dict[str, Any]] = []
        kinds: set[str] = set()
        assert p.stdout is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not ({"data", "heartbeat"} <= kinds and len(lines) > 5):
            line = p.stdout.readline()  # arrives although stdout is a pipe: tail flushes
            obj = json.loads(line)
            lines.append(obj)
            kinds.add(obj["type"])
        assert {"data", "heartbeat"} <= kinds
        data = next(o for o in lines if o["type"] == "data" and o["sensor"] == "env")
        assert data["device"] == "pi-1" and data["topic"] == "gh/pi-1/env"
        assert isinstance(data["boot_id"], int) and data["seq"] >= 1
        assert data["time"].endswith("Z") and len(data["time"]) == len("2026-11-28T01:02:03.456789Z")
        assert {"metric": "temperature", "unit": "C"}.items() <= data["samples"][0].items()
        assert all(o["device"] == "pi-1" for o in lines)
    finally:
        p.terminate()
        p.wait(5)


@pytest.mark.slow
def test_query_formats(stack: dict[str, Any]) -> None:
    db = stack["db"]
    wait_until(lambda: len(seqs(db, "pi-1")) >= 10, timeout_s=30, what="10 frames")
    r = run_cli("query", "--db", str(db), "--device", "pi-1", "--sensor", "env", "--metric",
                "temperature", "--since", "1h", "--limit", "5", "--format", "json")
    assert r.returncode == 0, r.stderr
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(objs) == 5
    assert set(objs[0]) == {"time", "device", "sensor", "metric", "value", "unit", "boot_id", "seq"}
    assert [o["time"] for o in objs] == sorted(o["time"] for o in objs)
    assert ({(o["device"], o["sensor"], o["metric"], o["unit"]) for o in objs}
            == {("pi-1", "env", "temperature", "C")})
    r = run_cli("query", "--db", str(db), "--device", "pi-1", "--metric", "door", "--limit", "3",
                "--format", "csv")
    lines = r.stdout.splitlines()
    assert lines[0] == "time,device,sensor,metric,value,unit" and len(lines) == 4
    assert lines[1].endswith(",pi-1,env,door,0.0,")
    r = run_cli("query", "--db", str(db), "--until", "2000-01-01T00:00:00Z", "--format", "json")
    assert r.returncode == 0 and r.stdout == ""
    r = run_cli("query", "--db", str(db), "--since", "yesterday")
    assert r.returncode == 2 and "neither a duration" in r.stderr


def test_a_port_in_use_is_a_clear_error(tmp_path: Path, procs: Any) -> None:
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    procs("proxy", "proxy", "--frontend", front, "--backend", back)
    r = run_cli("proxy", "--frontend", front, "--backend", f"tcp://127.0.0.1:{free_port()}", timeout=30)
    assert r.returncode == 1
    assert f"cannot bind {front}: Address already in use" in r.stderr


def test_query_of_a_missing_database_says_so(tmp_path: Path) -> None:
    r = run_cli("query", "--db", str(tmp_path / "nope.db"))
    assert r.returncode == 1 and "no such database" in r.stderr


@pytest.mark.slow
def test_query_into_a_reader_that_stops_early_ends_quietly(tmp_path: Path) -> None:
    """``sensorwire query ... | head -1``: no "Broken pipe" message, as other tools."""
    from sensorwire.collector.frames import CheckedFrame, Layout
    from sensorwire.collector.sqlite_store import SqliteWriter

    db = tmp_path / "big.db"
    w = SqliteWriter(db)
    w.open()
    layout, now = Layout([(f"m{i}", "C") for i in range(8)]), time.time_ns()
    w.write([(CheckedFrame("gh", "pi-1", 1, seq, now + seq, "env", 0, layout,
                           tuple(float(i) for i in range(8))), now) for seq in range(1, 3001)])
    w.close()
    p = subprocess.Popen([sys.executable, "-m", "sensorwire", "query", "--db", str(db),
                          "--format", "csv"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    assert p.stdout.readline().startswith(b"time,")  # 24,000 rows would follow: far more than
    p.stdout.close()                                  # a pipe holds, so the writer meets EPIPE
    err = p.stderr.read().decode()
    assert p.wait(timeout=30) == 1 and err == "", err


def test_a_file_that_is_not_a_database_and_a_bad_tail_prefix_are_explained(tmp_path: Path) -> None:
    text = write(tmp_path / "notes.txt", "not a database\n")
    for cmd in ("query", "status"):
        r = run_cli(cmd, "--db", str(text))
        assert r.returncode == 1 and "is it a sensorwire database?" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    r = run_cli("tail", "bad prefix")
    assert r.returncode == 2 and "tail: prefix 'bad prefix'" in r.stderr, r.stderr


def test_a_collector_whose_storage_path_is_a_folder_or_not_a_database_names_the_key(
        tmp_path: Path) -> None:
    folder, text = tmp_path / "data", write(tmp_path / "notes.txt", "not a database\n")
    folder.mkdir()
    back = f"tcp://127.0.0.1:{free_port()}"
    for path, says in ((folder, f"a folder, not a database file (name a file, e.g. {folder}/"),
                       (text, "file is not a database (is it a sensorwire database?")):
        cfg = write(tmp_path / "collector.toml",
                    f'[subscribe]\nconnect = ["{back}"]\n[storage]\npath = "{path}"\n')
        r = run_cli("collector", "-c", str(cfg), timeout=30)
        assert r.returncode == 1, r.stderr
        assert f"[storage] path: {path}: {says}" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert text.read_text() == "not a database\n"  # left as it was
    r = run_cli("query", "--db", str(folder))
    assert r.returncode == 1 and f"{folder}: a folder, not a database file" in r.stderr, r.stderr


def test_an_agent_whose_spool_folder_is_a_file_says_so_without_a_traceback(tmp_path: Path) -> None:
    afile = write(tmp_path / "afile", "x")
    cfg = write(tmp_path / "agent.toml", agent_toml("pi-1", f"tcp://127.0.0.1:{free_port()}",
                                                    spool_dir=str(afile)))
    r = run_cli("agent", "-c", str(cfg), timeout=30)
    assert r.returncode == 1, r.stderr
    assert f"spool folder {afile}" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_query_shows_a_nan_reading_in_every_format(tmp_path: Path) -> None:
    """SQLite stores NaN as NULL; one such reading once made every query of the file fail."""
    import math

    from sensorwire.collector.frames import CheckedFrame, Layout
    from sensorwire.collector.sqlite_store import SqliteWriter

    db = tmp_path / "nan.db"
    w = SqliteWriter(db)
    w.open()
    now = time.time_ns()
    w.write([(CheckedFrame("gh", "pi-1", 1, 1, now, "env", 0, Layout([("t", "C")]), (math.nan,)),
              now)])
    w.close()
    for fmt, shown in (("table", " nan "), ("csv", ",nan,"), ("json", '"value": "nan"')):
        r = run_cli("query", "--db", str(db), "--format", fmt)
        assert r.returncode == 0 and shown in r.stdout, (fmt, r.stdout, r.stderr)


def test_demo_runs_and_prints_a_table_and_a_query_command(tmp_path: Path) -> None:
    r = run_cli("demo", "--duration", "3", "--dir", str(tmp_path / "demo"), timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pi-01" in r.stdout and "pi-03" in r.stdout
    cmd = [line for line in r.stdout.splitlines() if "sensorwire query --db" in line][0].split()
    q = run_cli(*cmd[1:], "--format", "json")
    assert q.returncode == 0 and len(q.stdout.splitlines()) > 0
