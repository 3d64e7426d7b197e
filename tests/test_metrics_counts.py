"""What each role counts as dropped, refused, spooled or alerted is on /metrics too.

Real processes on loopback, scraped over HTTP: the agent's spool (bytes written
to flash, frames dropped when full), the proxy's drops and refused connections,
a binding collector's refused connections, and the collector's alert counts,
each compared with what the role stored, logged or put in its heartbeat.
"""

from __future__ import annotations

import ast
import datetime as dt
import re
import signal
import sqlite3
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families
from securestack import KeyRing, agent_toml, collector_toml, proxy_toml, security_block, stored
from support import free_port, tcp, wait_until, write

from sensorwire.agent.spool import Spool
from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import Frame

ROOT = Path(__file__).resolve().parents[1]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def scrape_until(port: int, check: Callable[[Samples], bool], what: str,
                 timeout_s: float = 15.0) -> Samples:
    """Scrape until ``check`` holds for a scrape; that scrape."""
    def once() -> Samples | None:
        m = scrape(port)
        return m if check(m) else None
    return wait_until(once, timeout_s=timeout_s, what=what)


def utc_day() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")


def with_metrics(toml: str, port: int) -> str:
    """``toml`` with ``[metrics] listen`` on ``port`` (appended: the last table of the file)."""
    return f'{toml}\n[metrics]\nlisten = "127.0.0.1:{port}"\n'


# -- the agent's spool ----------------------------------------------------------------------
def spool_agent_toml(ep: str, spool: Path, port: int) -> str:
    return f"""\
site = "gh"
device_id = "pi-1"
[publish]
bind = ["{ep}"]
heartbeat_s = 0.2
[spool]
dir = "{spool}"
max_mb = 0.02
overflow = "drop_newest"
fsync = "never"
[metrics]
listen = "127.0.0.1:{port}"
[[sensors]]
name = "env"
kind = "simulated"
interval_s = 0.005
metrics = [{{ name = "t", unit = "C", signal = "constant", value = 1.0 }}]
"""


def on_disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("seg-*.spool"))


@pytest.mark.slow
def test_the_agent_exports_what_its_spool_wrote_to_flash_and_dropped(
        tmp_path: Path, procs: Any) -> None:
    ep, port, folder = tcp(), free_port(), tmp_path / "spool"
    day = utc_day()
    agent = procs("agent", "agent", "-c", str(write(tmp_path / "agent.toml",
                                                      spool_agent_toml(ep, folder, port))))

    # nobody listens: every frame goes to the spool, which fills up and then refuses
    m = scrape_until(port, lambda m: (
        value(m, "sensorwire_frames_dropped_total", reason="spool_full") > 0
        and value(m, "sensorwire_spool_bytes_written_total") == on_disk(folder)),
        timeout_s=20, what="a full spool, every byte written on disk")
    written = value(m, "sensorwire_spool_bytes_written_total")
    assert 0 < written <= 0.02 * 2**20
    if utc_day() == day:
        assert value(m, "sensorwire_spool_bytes_written_today") == written
    assert value(m, "sensorwire_spool_frames") > 0
    assert value(m, "sensorwire_frames_dropped_total", reason="spool_corrupt") == 0
    assert value(m, "sensorwire_frames_dropped_total", reason="send_queue_full") == 0

    # the heartbeat says the same (a subscriber for heartbeats only: data is still spooled)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sub = ctx.socket(zmq.XSUB)
    sub.setsockopt(zmq.LINGER, 0)
    try:
        sub.connect(ep)
        sub.send(b"\x01" + wire.heartbeat_topic("gh", "pi-1") + wire.DELIM)

        def counters() -> dict[str, int]:
            def got() -> dict[str, int] | None:
                while sub.poll(100):
                    msg = sub.recv()
                    hb = Frame.FromString(msg.split(wire.DELIM, 1)[1]).heartbeat
                    if "spool_bytes_written_total" in hb.counters:
                        return dict(hb.counters)
                return None
            return wait_until(got, what="a heartbeat with the spool's counters")

        def agree() -> tuple[dict[str, int], Samples, dict[str, int]] | None:
            before = counters()
            m = scrape(port)
            after = counters()
            same = (before["spool_bytes_written_total"]
                    == value(m, "sensorwire_spool_bytes_written_total")
                    == after["spool_bytes_written_total"])
            return (before, m, after) if same else None

        before, m, after = wait_until(agree, timeout_s=15, what="heartbeat and metrics to agree")
    finally:
        sub.close()
        ctx.term()
    dropped = value(m, "sensorwire_frames_dropped_total", reason="spool_full")
    assert before["spool_dropped"] <= dropped <= after["spool_dropped"]
    if utc_day() == day:
        assert (before["spool_bytes_written_today"]
                == value(m, "sensorwire_spool_bytes_written_today")
                == before["spool_bytes_written_total"])
    assert agent.terminate() == 0


def test_bytes_written_today_start_again_from_zero_on_a_new_day(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool", max_bytes=1 << 20) as s:
        s.append(1, 1, b"x" * 100)
        s.flush()
        first = s.bytes_written_total
        assert s.written_today() == first > 100
        s._day = "2000-01-01"  # what was counted was counted on another day
        assert s.written_today() == 0 and s.stats()["spool_bytes_written_today"] == 0
        s.append(1, 2, b"x" * 100)
        s.flush()
        assert s.written_today() == s.bytes_written_total - first == 24 + 100
        assert s.stats()["spool_bytes_written_total"] == s.bytes_written_total


# -- the proxy's drops and the connection guard ---------------------------------------------
def last_count(log: str, pattern: str) -> int | None:
    found = re.findall(pattern, log)
    return int(found[-1]) if found else None


@pytest.mark.slow
def test_the_proxy_exports_its_drops_and_refused_connections(tmp_path: Path, procs: Any) -> None:
    k = KeyRing(tmp_path)
    k.make("proxy", "collector-1", "pi-1", "intruder")
    k.allow(k.collectors, "collector-1")
    k.allow(k.agents, "pi-1")
    front, back, db, pm, cm = tcp(), tcp(), tmp_path / "telemetry.db", free_port(), free_port()
    proxy = procs("proxy", "proxy", "-c", str(write(tmp_path / "proxy.toml", with_metrics(
        proxy_toml(front, back, security_block(
            secret_key=k.secret("proxy"), authorized_keys=k.agents,
            authorized_collectors=k.collectors)), pm))))
    procs("collector", "collector", "-c", str(write(tmp_path / "collector.toml", with_metrics(
        collector_toml(db, connect=[back], security=security_block(
            secret_key=k.secret("collector-1"), server_key=k.public("proxy"))), cm))))

    def agent(name: str, device: str, key: str | None) -> Any:
        sec = security_block(secret_key=k.secret(key), server_key=k.public("proxy")) if key else ""
        return procs(name, "agent", "-c", str(write(tmp_path / f"{name}.toml", agent_toml(
            device, front, tmp_path / f"spool-{name}", sec))))

    agent("agent-pi-1", "pi-1", "pi-1")
    impostor = agent("agent-impostor", "pi-2", "pi-1")   # pi-1's key, claiming to be pi-2
    intruder = agent("agent-intruder", "pi-3", "intruder")  # a key not in the allow-list
    plain = agent("agent-plain", "pi-4", None)            # no CURVE at all
    wait_until(lambda: stored(db, "pi-1") >= 20, timeout_s=20, what="pi-1 stored")
    scrape_until(pm, lambda m: (
        value(m, "sensorwire_frames_dropped_total", reason="device_mismatch") > 0
        and value(m, "sensorwire_connections_refused_total", socket="frontend",
                  reason="unknown_key") > 0
        and value(m, "sensorwire_handshakes_failed_total", socket="frontend") >= 2),
        what="the proxy's drops and refusals on /metrics")
    for a in (impostor, intruder, plain):
        assert a.terminate() == 0, a.log()

    # quiet now: /metrics and the proxy's summary line give the same numbers
    def as_logged(m: Samples) -> bool:
        log = proxy.log()
        return all(shown == last_count(log, logged) for shown, logged in (
            (value(m, "sensorwire_frames_dropped_total", reason="device_mismatch"),
             r"dropped: device_mismatch (\d+)"),
            (value(m, "sensorwire_connections_refused_total", socket="frontend",
                   reason="unknown_key"), r"agents\.refused_keys (\d+)"),
            (value(m, "sensorwire_handshakes_failed_total", socket="frontend"),
             r"frontend\.handshake_failed (\d+)")))

    p = scrape_until(pm, as_logged, what="the summary line to show what /metrics shows")
    for reason in ("multipart", "too_many_samples", "no_identity", "revoked_key"):
        assert value(p, "sensorwire_frames_dropped_total", reason=reason) == 0
    assert value(p, "sensorwire_connections_refused_total", socket="frontend",
                 reason="not_curve") == 0
    assert value(p, "sensorwire_connections_refused_total", socket="backend",
                 reason="unknown_key") == 0
    assert value(p, "sensorwire_connections_accepted_total", socket="frontend") >= 2
    assert value(p, "sensorwire_connections_accepted_total", socket="backend") >= 1
    assert value(p, "sensorwire_handshakes_failed_total", socket="backend") == 0
    assert value(p, "sensorwire_connections_closed_total", socket="frontend") >= 1  # impostor
    assert stored(db, "pi-2") == stored(db, "pi-3") == stored(db, "pi-4") == 0
    # the collector connects: its socket is a client, and nothing failed there
    c = scrape(cm)
    assert value(c, "sensorwire_handshakes_failed_total", socket="subscribe") == 0
    assert value(c, "sensorwire_connections_refused_total", socket="subscribe",
                 reason="unknown_key") == 0


@pytest.mark.slow
def test_a_collector_that_binds_exports_refused_connections(tmp_path: Path, procs: Any) -> None:
    k = KeyRing(tmp_path)
    k.make("collector-1", "pi-1", "intruder")
    k.allow(k.agents, "pi-1")
    ep, db, cm = tcp(), tmp_path / "telemetry.db", free_port()
    procs("collector", "collector", "-c", str(write(tmp_path / "collector.toml", with_metrics(
        collector_toml(db, bind=[ep], security=security_block(
            secret_key=k.secret("collector-1"), authorized_keys=k.agents)), cm))))
    for name, key in (("pi-1", "pi-1"), ("pi-2", "intruder")):
        procs(f"agent-{name}", "agent", "-c", str(write(tmp_path / f"{name}.toml", agent_toml(
            name, ep, tmp_path / f"spool-{name}", security_block(
                secret_key=k.secret(key), server_key=k.public("collector-1"))))))
    wait_until(lambda: stored(db, "pi-1") >= 10, timeout_s=20, what="pi-1 stored")
    c = scrape_until(cm, lambda m: value(m, "sensorwire_connections_refused_total",
                                         socket="subscribe", reason="unknown_key") > 0,
                     what="the intruder refused on /metrics")
    assert value(c, "sensorwire_connections_accepted_total", socket="subscribe") >= 1
    assert value(c, "sensorwire_handshakes_failed_total", socket="subscribe") >= 1
    assert stored(db, "pi-2") == 0


def test_every_reason_the_proxy_drops_for_is_exported_from_the_start() -> None:
    from sensorwire.rolemetrics import PROXY_DROP_REASONS

    found: dict[str, str] = {}
    for rel, calls in (("sensorwire/proxyfilter.py", {"_drop"}),
                       ("sensorwire/security.py", {"Refused"})):
        path = ROOT / rel
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and node.args:
                f = node.func
                name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", None)
                arg = node.args[0]
                if name in calls and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.setdefault(arg.value, f"{rel}:{node.lineno}")
    assert {"multipart", "device_mismatch"} <= set(found)  # the scan sees both ways of dropping
    missing = {r: where for r, where in found.items() if r not in PROXY_DROP_REASONS}
    assert missing == {}, f"add to sensorwire.rolemetrics.PROXY_DROP_REASONS: {missing}"


# -- the collector's alerts -----------------------------------------------------------------
def alerting_collector_toml(ep: str, db: Path, port: int) -> str:
    return f"""\
[subscribe]
bind = ["{ep}"]
[storage]
path = "{db}"
flush_interval_s = 0.05
[metrics]
listen = "127.0.0.1:{port}"

[[alerts]]
name = "hot"
match = "gh/*/env"
metric = "temperature"
above = 20.0
severity = "critical"
notify = ["ok", "broken"]

[[alerts]]
name = "frozen"
match = "gh/*/env"
metric = "temperature"
below = -100.0
severity = "info"

[[notifiers]]
name = "ok"
kind = "exec"
command = ["true"]

[[notifiers]]
name = "broken"
kind = "exec"
command = ["false"]
"""


def history(db: Path, rule: str, state: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM alert_history WHERE rule = ? AND state = ?",
                                (rule, state)).fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def firing_now(db: Path, rule: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM alert_instances WHERE rule = ?",
                                (rule,)).fetchone()[0])
    finally:
        conn.close()


def alert_counts_match_storage(db: Path) -> Callable[[Samples], bool]:
    """A check: every alert count on /metrics equals what the collector stored."""
    def check(m: Samples) -> bool:
        fired, resolved = history(db, "hot", "firing"), history(db, "hot", "resolved")
        sent = fired + resolved
        return (value(m, "sensorwire_alert_notifications_total", rule="hot", state="firing") == fired
              and value(m, "sensorwire_alert_notifications_total", rule="hot",
                        state="resolved") == resolved
              and value(m, "sensorwire_alerts_firing", rule="hot", severity="critical")
              == firing_now(db, "hot")
              and value(m, "sensorwire_alert_deliveries_total", notifier="ok",
                        result="delivered") == sent
              and value(m, "sensorwire_alert_deliveries_total", notifier="broken",
                        result="failed") == sent
              and value(m, "sensorwire_alert_delivery_queue_notifications", notifier="ok") == 0)
    return check


@pytest.mark.slow
def test_alert_counts_on_metrics_match_the_stored_history_and_survive_a_reload(
        tmp_path: Path, procs: Any) -> None:
    ep, db, port = tcp(), tmp_path / "telemetry.db", free_port()
    collector = procs("collector", "collector", "-c", str(write(
        tmp_path / "collector.toml", alerting_collector_toml(ep, db, port))))
    # a sine around 20 with a period of 1 s: "hot" fires and resolves every second
    agent = procs("agent", "agent", "-c", str(write(tmp_path / "agent.toml", agent_toml(
        "pi-1", ep, tmp_path / "spool").replace("period_s = 10.0", "period_s = 1.0"))))
    wait_until(lambda: history(db, "hot", "resolved") >= 2, timeout_s=20,
               what="two incidents of 'hot'")
    assert agent.terminate() == 0
    m = scrape_until(port, alert_counts_match_storage(db), what="the alert counts to settle")
    sent = value(m, "sensorwire_alert_deliveries_total", notifier="ok", result="delivered")
    assert sent >= 4
    assert value(m, "sensorwire_alert_deliveries_total", notifier="ok", result="failed") == 0
    assert value(m, "sensorwire_alert_deliveries_total", notifier="broken", result="dropped") == 0
    assert value(m, "sensorwire_alert_delivery_retries_total", notifier="broken") == 0  # exec: 0
    assert value(m, "sensorwire_alerts_firing", rule="frozen", severity="info") == 0
    assert value(m, "sensorwire_alert_notifications_total", rule="frozen", state="firing") == 0
    assert value(m, "sensorwire_alert_store_errors_total") == 0
    assert ("sensorwire_alert_deliveries_total",
            (("notifier", "log"), ("result", "delivered"))) in m  # "frozen" notifies the log

    # a reload replaces the notifiers' couriers: what they counted is kept
    collector.popen.send_signal(signal.SIGHUP)
    wait_until(lambda: "alerting: reloaded" in collector.log(), what="the reload")
    after = scrape_until(port, alert_counts_match_storage(db), what="the counts after the reload")
    assert value(after, "sensorwire_alert_deliveries_total", notifier="ok",
                 result="delivered") == sent
    assert collector.terminate() == 0
