"""Real processes into PostgreSQL: agents -> proxy -> collectors -> one database.

- SQLite and PostgreSQL collectors on the same proxy store the same rows, and
  ``sensorwire query``/``status`` print the same answers from either;
- redundant collectors (same prefixes, same database) store every frame once;
- sharded collectors (disjoint prefixes, same database) store the whole fleet;
- PostgreSQL stopped for 10 s during a stream: zero loss, no duplicates.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from pgsupport import PgSchema, pg_ctl
from support import free_port, run_cli, wait_until, write

pytestmark = pytest.mark.slow


def agent_toml(site: str, device: str, frontend: str, spool: Path) -> str:
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
metrics = [{{ name = "t", unit = "C", signal = "sine", mean = 20.0, amplitude = 2.0, period_s = 10.0 }},
           {{ name = "h", signal = "constant", value = 50.0 }}]
[spool]
dir = "{spool}"
"""


class Fleet:
    """A proxy, collectors added by name, agents added by site/device."""

    def __init__(self, tmp: Path, procs: Any) -> None:
        self.tmp, self.procs = tmp, procs
        self.front = f"tcp://127.0.0.1:{free_port()}"
        self.back = f"tcp://127.0.0.1:{free_port()}"
        self.proxy = procs("proxy", "proxy", "--frontend", self.front, "--backend", self.back)
        self.collectors: dict[str, Any] = {}
        self.agents: dict[str, Any] = {}

    def collector(self, name: str, storage: str, prefixes: list[str] | None = None) -> Any:
        cfg = write(self.tmp / f"{name}.toml",
                    f'[subscribe]\nconnect = ["{self.back}"]\nprefixes = {json.dumps(prefixes or [])}\n'
                    f"{storage}")
        self.collectors[name] = self.procs(name, "collector", "-c", str(cfg))
        return self.collectors[name]

    def agent(self, site: str, device: str) -> Any:
        cfg = write(self.tmp / f"agent-{device}.toml",
                    agent_toml(site, device, self.front, self.tmp / f"spool-{device}"))
        self.agents[device] = self.procs(f"agent-{device}", "agent", "-c", str(cfg))
        return self.agents[device]

    def stop_agents(self) -> dict[str, int]:
        """Stop every agent cleanly; the last seq each numbered."""
        last = {}
        for device, agent in self.agents.items():
            assert agent.terminate() == 0, agent.log()
            m = re.search(r"agent stopping: last seq (\d+);", agent.log())
            assert m, agent.log()
            last[device] = int(m.group(1))
        return last


def sqlite_seqs(db: Path, device: str) -> list[tuple[int, int]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT f.boot_id, f.seq FROM frames f JOIN devices d ON d.id = "
                            "f.device_key WHERE d.device = ? ORDER BY 1, 2", (device,)).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def complete(seqs: list[tuple[int, int]], last: int) -> bool:
    return [s for _, s in seqs] == list(range(1, last + 1))


def cli_json(*argv: str) -> list[dict[str, Any]]:
    r = run_cli(*argv, "--format", "json")
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def no_duplicates(pg: PgSchema) -> None:
    [(rows, distinct)] = pg.rows("SELECT count(*), count(DISTINCT (device_key, boot_id, seq)) "
                                 "FROM frames")
    assert rows == distinct
    [(stored,)] = pg.rows("SELECT coalesce(sum(stored), 0)::bigint FROM boots")
    assert stored == rows  # boots accounting counted each frame once


def test_query_and_status_from_postgres_match_sqlite_for_the_same_run(
        tmp_path: Path, procs: Any, pg: PgSchema) -> None:
    fleet = Fleet(tmp_path, procs)
    db = tmp_path / "telemetry.db"
    fleet.collector("collector-sqlite", f'[storage]\npath = "{db}"\nflush_interval_s = 0.05\n')
    fleet.collector("collector-pg", pg.storage_toml())
    for d in ("pi-1", "pi-2"):
        fleet.agent("gh", d)
    wait_until(lambda: all(len(pg.seqs(d)) >= 20 and len(sqlite_seqs(db, d)) >= 20
                           for d in ("pi-1", "pi-2")), timeout_s=30, what="frames in both stores")
    last = fleet.stop_agents()
    for d, n in last.items():
        def in_both(d: str = d, n: int = n) -> bool:
            return complete(pg.seqs(d), n) and complete(sqlite_seqs(db, d), n)
        wait_until(in_both, timeout_s=30, what=f"{d}: seqs 1..{n} in both stores")
    from_pg = cli_json("query", "--db", pg.dsn)
    from_sqlite = cli_json("query", "--db", str(db))
    assert len(from_pg) == 2 * sum(last.values())
    key = json.dumps
    assert sorted(from_pg, key=key) == sorted(from_sqlite, key=key)
    assert cli_json("query", "--db", pg.dsn, "--device", "pi-1", "--metric", "t", "--limit", "5") \
        == cli_json("query", "--db", str(db), "--device", "pi-1", "--metric", "t", "--limit", "5")

    def status_pair() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        cols = ("site", "device", "state", "frames", "gaps", "restarts", "lost")
        return ([{c: r[c] for c in cols} for r in cli_json("status", "--db", pg.dsn)],
                [{c: r[c] for c in cols} for r in cli_json("status", "--db", str(db))])
    def same_status_all_stopped() -> bool:
        a, b = status_pair()
        return a == b and all(r["state"] == "stopped" for r in a)
    wait_until(same_status_all_stopped, timeout_s=10, what="the same status from both stores")
    no_duplicates(pg)


def test_redundant_collectors_store_every_frame_once(tmp_path: Path, procs: Any, pg: PgSchema) -> None:
    fleet = Fleet(tmp_path, procs)
    for name in ("collector-a", "collector-b"):
        fleet.collector(name, pg.storage_toml(), prefixes=["gh/"])
    devices = ["pi-1", "pi-2", "pi-3"]
    for d in devices:
        fleet.agent("gh", d)
    wait_until(lambda: all(len(pg.seqs(d)) >= 40 for d in devices), timeout_s=30, what="flow")
    last = fleet.stop_agents()
    for d, n in last.items():
        def all_stored(d: str = d, n: int = n) -> bool:
            return complete(pg.seqs(d), n)
        wait_until(all_stored, timeout_s=30, what=f"{d}: 1..{n}")
    no_duplicates(pg)
    stored = already = 0
    for c in fleet.collectors.values():
        assert c.terminate() == 0, c.log()
        m = re.search(r"postgres: (\d+) frames stored \(\d+ samples\), (\d+) already stored", c.log())
        assert m, c.log()
        stored, already = stored + int(m.group(1)), already + int(m.group(2))
    # each frame went in once, by whichever collector came first (batch by batch a race: either
    # may store them all), and the other found it there
    assert stored == sum(last.values()) and already > 0, (stored, already, last)
    status = {r["device"]: r for r in cli_json("status", "--db", pg.dsn)}
    assert all(status[d]["frames"] == last[d] and status[d]["gaps"] == 0 for d in devices), status


def test_sharded_collectors_store_the_whole_fleet_once(tmp_path: Path, procs: Any, pg: PgSchema) -> None:
    fleet = Fleet(tmp_path, procs)
    fleet.collector("collector-gh", pg.storage_toml(), prefixes=["gh/"])
    fleet.collector("collector-lab", pg.storage_toml(), prefixes=["lab/"])
    sites = {"pi-1": "gh", "pi-2": "gh", "lab-1": "lab", "lab-2": "lab"}
    for d, site in sites.items():
        fleet.agent(site, d)
    wait_until(lambda: all(len(pg.seqs(d)) >= 20 for d in sites), timeout_s=30, what="flow")
    last = fleet.stop_agents()
    for d, n in last.items():
        def all_stored(d: str = d, n: int = n) -> bool:
            return complete(pg.seqs(d), n)
        wait_until(all_stored, timeout_s=30, what=f"{d}: 1..{n}")
    no_duplicates(pg)
    for name, c in fleet.collectors.items():
        assert c.terminate() == 0, c.log()
        m = re.search(r"postgres: (\d+) frames stored \(\d+ samples\), (\d+) already stored", c.log())
        assert m, c.log()
        mine = sum(n for d, n in last.items() if name.endswith(sites[d]))
        # each collector stored its own shard, and nothing of the other's
        assert (int(m.group(1)), int(m.group(2))) == (mine, 0), c.log()
    assert sorted(pg.rows("SELECT site, count(*) FROM devices GROUP BY site")) == [("gh", 2), ("lab", 2)]


def test_postgres_stopped_for_10_s_loses_nothing_and_duplicates_nothing(
        tmp_path: Path, procs: Any, pg: PgSchema) -> None:
    fleet = Fleet(tmp_path, procs)
    # a small memory buffer, so that the outage also goes through the disk spool
    collector = fleet.collector("collector-pg", pg.storage_toml(
        f'buffer_max = 100\nspool_dir = "{tmp_path / "pgspool"}"\n'))
    devices = ["pi-1", "pi-2", "pi-3"]
    for d in devices:
        fleet.agent("gh", d)
    wait_until(lambda: all(len(pg.seqs(d)) >= 20 for d in devices), timeout_s=30, what="flow")
    pg_ctl("stop", "-m", "fast")
    try:
        time.sleep(10)  # the outage itself: the time the fault lasts, not a synchronisation
        assert collector.popen.poll() is None, collector.log()
    finally:
        pg_ctl("start")  # always: other tests on this machine use the same server
    wait_until(lambda: "postgres: reconnected" in collector.log(), timeout_s=30, what="reconnect")
    last = fleet.stop_agents()
    for d, n in last.items():
        def all_stored(d: str = d, n: int = n) -> bool:
            return complete(pg.seqs(d), n)
        wait_until(all_stored, timeout_s=60, what=f"{d}: 1..{n}")
    no_duplicates(pg)
    assert collector.terminate() == 0, collector.log()
    log = collector.log()
    assert "lost the database" in log and "everything held during the outage is written" in log
    m = re.search(r"(\d+) dropped while the database was unreachable", log)
    assert m and m.group(1) == "0", log
