"""The /metrics endpoints: counters that match what was stored, and the endpoint's rules."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import free_port, run_cli, tcp, wait_until, write

from sensorwire.collector.frames import CheckedFrame
from sensorwire.collector.sinks.metrics import MetricsSink
from sensorwire.metrics import Histogram, MetricsConfig
from sensorwire.proto.v1.telemetry_pb2 import Frame

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def agent_toml(device: str, frontend: str, metrics_port: int) -> str:
    return f"""\
site = "gh"
device_id = "{device}"
[publish]
connect = ["{frontend}"]
heartbeat_s = 0.3
[metrics]
listen = "127.0.0.1:{metrics_port}"
[[sensors]]
name = "env"
kind = "simulated"
interval_s = 0.02
metrics = [{{ name = "temperature", unit = "C", signal = "sine", period_s = 10.0 }},
           {{ name = "door", signal = "constant", value = 1.5 }}]
"""


def db_frames(db: Path, device: str | None = None) -> int:
    conn = sqlite3.connect(db)
    try:
        sql = "SELECT count(*) FROM frames f JOIN devices d ON d.id = f.device_key"
        args: tuple[str, ...] = ()
        if device:
            sql, args = sql + " WHERE d.device = ?", (device,)
        return int(conn.execute(sql, args).fetchone()[0])
    finally:
        conn.close()


ACK_BYTES = len(b"$ack/") + 16  # the collector's nonce: 8 random bytes in hex


def answers_to_pings(p: Samples, c: Samples) -> int | None:
    """The messages the proxy forwarded that the collector did not count as received.

    Only agents' answers to the collector's ping may be among them (it pings
    through the proxy until the proxy answers, and the agents connected by then
    answer too); None when anything else differs.
    """
    frames = value(p, "sensorwire_frames_forwarded_total") - value(c, "sensorwire_messages_received_total")
    nbytes = value(p, "sensorwire_bytes_forwarded_total") - value(c, "sensorwire_bytes_received_total")
    return int(frames) if frames >= 0 and nbytes == frames * ACK_BYTES else None


@pytest.mark.slow
def test_metrics_during_an_end_to_end_run_match_what_was_stored(tmp_path: Path, procs: Any) -> None:
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    pm, cm = free_port(), free_port()
    db = tmp_path / "telemetry.db"
    proxy = procs("proxy", "proxy", "-c", str(write(tmp_path / "proxy.toml",
                  f'frontend = "{front}"\nbackend = "{back}"\n'
                  f'[metrics]\nlisten = "127.0.0.1:{pm}"\n')))
    collector = procs("collector", "collector", "-c", str(write(tmp_path / "collector.toml",
        f'[subscribe]\nconnect = ["{back}"]\n[storage]\npath = "{db}"\nflush_interval_s = 0.05\n'
        f'[metrics]\nlisten = "127.0.0.1:{cm}"\nexport_values = true\n')))
    ams = {d: free_port() for d in ("pi-1", "pi-2")}
    agents = [procs(f"agent-{d}", "agent", "-c", str(write(tmp_path / f"agent-{d}.toml",
                                                             agent_toml(d, front, port))))
              for d, port in ams.items()]
    wait_until(lambda: db_frames(db, "pi-1") >= 30 and db_frames(db, "pi-2") >= 30,
               timeout_s=30, what="30 frames per device")

    running = scrape(cm)
    assert value(running, "sensorwire_devices_online") == 2
    assert value(running, "sensorwire_sensor_value", site="gh", device="pi-1", sensor="env",
                 metric="door") == 1.5
    sent = {}
    for d, port in ams.items():
        a = scrape(port)
        sent[d] = value(a, "sensorwire_frames_sent_total")
        assert sent[d] > 0
        assert value(a, "sensorwire_bytes_sent_total") >= 50 * sent[d]  # a frame is 50+ bytes
        assert value(a, "sensorwire_sensor_readings_total", sensor="env") >= sent[d]
        assert value(a, "sensorwire_sensor_errors_total", sensor="env") == 0
        assert value(a, "sensorwire_frames_dropped_total", reason="send_queue_full") == 0

    for a in agents:
        assert a.terminate() == 0, a.log()
    # quiet now: what the proxy forwarded, the collector received, accepted and stored
    def settled() -> tuple[Samples, Samples] | None:
        c, p = scrape(cm), scrape(pm)
        hb = value(c, "sensorwire_heartbeats_received_total")
        if (value(c, "sensorwire_sink_frames_written_total", sink="sqlite")
                == value(c, "sensorwire_frames_accepted_total")
                and value(c, "sensorwire_frames_accepted_total") - hb == db_frames(db)
                and answers_to_pings(p, c) is not None):
            return c, p
        return None

    c, p = wait_until(settled, timeout_s=15, what="counters to settle")
    stored = db_frames(db)
    for d in ams:
        assert db_frames(db, d) >= sent[d]  # everything sent before the scrape was stored
    # data frames received: what was stored (nothing came twice); messages: heartbeats too
    assert value(c, "sensorwire_frames_received_total") == stored
    assert value(c, "sensorwire_messages_received_total") == value(c, "sensorwire_frames_accepted_total")
    assert value(c, "sensorwire_subscriber_lag_seconds") < 5
    assert value(c, "sensorwire_subscriber_fell_behind_total") == 0
    assert value(c, "sensorwire_decode_errors_total", reason="decode") == 0
    # loss accounting, live: what `sensorwire status` shows from storage
    assert value(c, "sensorwire_devices_known") == 2
    assert value(c, "sensorwire_frames_missing") == 0
    assert value(c, "sensorwire_frames_lost_total") == 0
    assert value(c, "sensorwire_sink_frames_dropped_total", sink="sqlite") == 0
    assert value(c, "sensorwire_sink_queue_frames", sink="sqlite") == 0
    assert value(c, "sensorwire_end_to_end_latency_seconds_count") == stored
    assert value(c, "sensorwire_end_to_end_latency_seconds_bucket", le="+Inf") == stored
    assert value(c, "sensorwire_end_to_end_latency_seconds_sum") >= 0
    assert value(c, "sensorwire_sink_write_duration_seconds_count", sink="sqlite") > 0
    nbytes = value(c, "sensorwire_bytes_received_total")
    assert 0 < nbytes <= value(p, "sensorwire_bytes_forwarded_total")
    assert answers_to_pings(p, c) in range(len(ams) + 1)
    # both said "stopping" in their last heartbeat
    assert value(c, "sensorwire_devices_online") == 0
    assert value(c, "sensorwire_build_info", role="collector", version="0.1.0") == 1
    assert collector.terminate() == 0 and proxy.terminate() == 0


def test_metrics_sink_keeps_values_within_values_max() -> None:
    sink = MetricsSink(export_values=True, values_max=3, clock_ns=lambda: 10**18)
    frames = []
    for i, sensor in enumerate(["a", "b"]):
        f = Frame(site="s", device_id="d", boot_id=1, seq=i + 1, sensor=sensor,
                  time_unix_nano=10**18 - 5 * 10**6)
        f.samples.add(metric="x", value=float(i))
        f.samples.add(metric="y", value=float(i))
        frames.append((CheckedFrame.from_pb(f), 10**18))
    sink.write(frames)
    assert len(sink.values()) == 3 and sink.values_dropped == 1
    assert sink.values()[("s", "d", "a", "x")] == 0.0
    assert sink.latency.count == 2 and sink.latency.sum == pytest.approx(0.01)
    assert sink.devices_online() == 1


def test_metrics_sink_keeps_at_most_devices_max_devices_forgetting_offline_ones_first() -> None:
    now = 10**18
    sink = MetricsSink(devices_max=16, clock_ns=lambda: now)

    def seen(device: str, at_ns: int) -> None:
        f = Frame(site="s", device_id=device, boot_id=1, seq=1, sensor="env", time_unix_nano=at_ns)
        f.samples.add(metric="x", value=1.0)
        sink.write([(CheckedFrame.from_pb(f), at_ns)])

    for i in range(4):                      # silent for a minute: offline
        seen(f"old-{i}", now - 60 * 10**9)
    for i in range(12):                     # online
        seen(f"live-{i}", now - 10**9 + i)
    assert sink.devices_seen() == 16 and sink.devices_online() == 12
    seen("new", now)                        # full: the offline ones go, the online ones stay
    assert sink.devices_seen() == 13 and sink.devices_online() == 13
    for i in range(3):
        seen(f"more-{i}", now)
    seen("one-too-many", now)               # all online: the two silent longest (16 / 8) go
    assert sink.devices_seen() == 15 and sink.devices_online() == 15
    assert not {("s", "live-0"), ("s", "live-1")} & set(sink._devices)


def test_histogram_buckets_are_cumulative_and_le_inclusive() -> None:
    h = Histogram([0.1, 1.0])
    for v in (0.05, 0.1, 0.5, 7.0):
        h.observe(v)
    assert h.cumulative() == [("0.1", 2.0), ("1.0", 3.0), ("+Inf", 4.0)]
    assert h.count == 4 and h.sum == pytest.approx(7.65)


def test_listen_is_checked_and_defaults_per_role(tmp_path: Path) -> None:
    assert MetricsConfig().endpoint("agent") == ("", False)
    assert MetricsConfig().endpoint("proxy") == ("127.0.0.1:9109", False)
    assert MetricsConfig().endpoint("collector") == ("127.0.0.1:9108", False)
    assert MetricsConfig(listen="").endpoint("collector") == ("", True)
    p = write(tmp_path / "proxy.toml", 'frontend = "tcp://*:1"\nbackend = "tcp://*:2"\n'
              '[metrics]\nlisten = "9108"\n')
    r = run_cli("check-config", str(p))
    assert r.returncode == 2
    assert "proxy.toml: metrics.listen: '9108' is not host:port" in r.stderr


@pytest.mark.slow
def test_a_taken_port_stops_the_start_only_when_the_file_set_it(tmp_path: Path, procs: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        cfg = write(tmp_path / "proxy.toml", f'frontend = "{front}"\nbackend = "{back}"\n'
                    f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
        r = run_cli("proxy", "-c", str(cfg), timeout=30)
        assert r.returncode == 1
        assert (f"cannot serve metrics on 127.0.0.1:{port}: Address already in use "
                "([metrics] listen)") in r.stderr


def test_a_default_endpoint_on_a_taken_port_warns_and_runs_without(
        caplog: pytest.LogCaptureFixture) -> None:
    from sensorwire.metrics import MetricsServer

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        with MetricsServer(listen, [], explicit=False) as server:
            assert not server.start()
    assert "running without metrics" in caplog.text
    with MetricsServer(f"127.0.0.1:{free_port()}", []) as server:
        assert server.start() and server.port


def test_the_agent_does_not_load_prometheus_client_with_metrics_off(tmp_path: Path) -> None:
    cfg = write(tmp_path / "agent.toml", f'site = "gh"\n[publish]\nbind = ["{tcp()}"]\n'
                '[[sensors]]\nname = "env"\nkind = "simulated"\n'
                'metrics = [{ name = "t", signal = "constant", value = 1.0 }]\n')
    code = ("import os, signal, sys, threading\n"
            "from sensorwire import cli\n"
            "threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()\n"
            f"rc = cli.main(['agent', '-c', {str(cfg)!r}])\n"
            "print(rc, 'prometheus_client' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == "0 False", r.stderr


def _rejection_reasons_in_the_code() -> dict[str, str]:
    """Every reason the collector's receive path can reject a message for, found in the source:
    ``WireError("x", ...)``, ``Refused("x", ...)``, ``_reject("x", ...)`` and
    ``rejected["x"] += ...``; reason -> where."""
    import ast

    root = Path(__file__).resolve().parents[1]
    found: dict[str, str] = {}
    for folder in ("collector", "proto", "sensorwire"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                reason, line = None, 0
                if isinstance(node, ast.Call) and node.args:
                    f = node.func
                    name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", None)
                    if name in ("WireError", "Refused", "_reject"):
                        reason, line = node.args[0], node.lineno
                elif (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
                      and node.value.attr == "rejected"):
                    reason, line = node.slice, node.lineno
                if isinstance(reason, ast.Constant) and isinstance(reason.value, str):
                    found.setdefault(reason.value, f"{path.relative_to(root)}:{line}")
    return found


def test_every_rejection_reason_the_collector_can_count_is_exported_from_the_start() -> None:
    from sensorwire.rolemetrics import DECODE_REASONS

    found = _rejection_reasons_in_the_code()
    # the scan sees each way of rejecting (else it would pass for finding nothing)
    assert {"decode", "no_identity", "oversized", "rate_limited"} <= set(found)
    missing = {reason: where for reason, where in found.items() if reason not in DECODE_REASONS}
    assert missing == {}, f"add to sensorwire.rolemetrics.DECODE_REASONS: {missing}"
    assert len(set(DECODE_REASONS)) == len(DECODE_REASONS)
