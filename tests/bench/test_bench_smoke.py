"""The benchmark suite imports and its ceilings run; no benchmark runs here.

``python -m bench`` itself is never run by the test suite: it takes minutes
and its figures depend on the machine.  This only checks, in about a
second, that the package imports without its optional client libraries and
that the ceiling measurements (one of them in a second process) work.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from support import wait_until  # noqa: E402

from bench import ceilings, report, transports, workload  # noqa: E402
from bench import lastvalue as lastvalue_bench  # noqa: E402
from bench.harness import QUICK, TransportResult  # noqa: E402
from bench.transports.base import Received, SyncSender, Transport  # noqa: E402


def test_the_workload_frame_is_about_217_bytes() -> None:
    assert 200 <= workload.frame_size() <= 230
    frame = workload.decode(workload.FrameBuilder().build())
    assert (frame.seq, len(frame.samples)) == (1, 8)


def test_the_last_value_bench_runs_its_three_tables(capsys: pytest.CaptureFixture[str]) -> None:
    """At 100 topics; it checks each prefix's matches against the linear scan as it goes."""
    lastvalue_bench.main(1, [100])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 100 |")]
    assert len(rows) == 2 + 3 + 2  # two kinds of traffic, three kinds of prefix, cache off and on
    assert all(cell.strip() for row in rows for cell in row.strip("|").split("|"))


def test_ceilings_measure_in_about_a_second() -> None:
    c = ceilings.measure(duration_s=0.2)
    assert c.encode_per_s > 1_000
    assert c.decode_per_s > 1_000
    assert c.zmq_per_s > 1_000


def test_every_transport_has_a_unique_name_and_a_practice() -> None:
    rows = transports.ALL + transports.EXTRA
    names = [t.name for t in rows]
    assert len(names) == len(set(names))
    assert "sensorwire" in names
    assert all(t.label and t.practice for t in rows)
    assert set(transports.BY_NAME) == set(names)


@pytest.mark.parametrize("name", ["zmq-hosted-proxy", "sensorwire-hosted-proxy"])
def test_the_hosted_proxy_rows_deliver_frames(name: str) -> None:
    """The extra rows (proxy inside the subscriber's process) move frames end to end."""
    transport: Transport = transports.get(name)
    got: list[int] = []
    stop, ready, arrived = threading.Event(), threading.Event(), threading.Event()

    def handle(frame: Received) -> None:
        got.append(frame.seq)
        arrived.set()

    with transport.services() as env:
        receiver = transport.receiver(env)
        thread = threading.Thread(target=receiver.run, args=(handle, stop, ready.set))
        thread.start()
        sender = transport.sender(env)
        assert isinstance(sender, SyncSender)  # both rows' senders send in the calling thread
        try:
            assert ready.wait(10)
            sender.open()

            def delivered() -> bool:
                sender.send(10)  # PUB drops until the subscription has reached it
                return arrived.wait(0.2)

            wait_until(delivered, what="frames through the hosted proxy")
        finally:
            stop.set()
            thread.join(5)
            sender.close()
    assert not thread.is_alive()
    assert got == sorted(got), "frames out of order"


def test_a_skipped_row_is_reported_not_failed() -> None:
    c = ceilings.Ceilings(frame_bytes=218, encode_per_s=1.0, decode_per_s=1.0, zmq_per_s=1.0)
    row = TransportResult(transports.get("redis"), status="skipped",
                          reason="no server on 127.0.0.1:6379")
    text = report.table([row], c, QUICK)
    assert "skipped (no server on 127.0.0.1:6379)" in text


def test_the_footprint_agent_has_the_10_sensors_the_paho_publisher_imitates(tmp_path: Path) -> None:
    import tomllib

    from bench import agent_footprint, paho_publisher
    from sensorwire.agent.config import from_raw

    cfg = from_raw(tomllib.loads(agent_footprint.agent_toml("tcp://127.0.0.1:1", tmp_path, "/dev/null")),
                   "footprint.toml")
    kinds = [k.name for k, _ in cfg.sensors]
    assert kinds == ["simulated"] * 8 + ["system", "serial"]
    assert all(c.interval_s == 1.0 for _, c in cfg.sensors if not hasattr(c, "port"))
    sim = cfg.sensors[0][1]
    assert [(m.name, m.unit) for m in sim.metrics] == [(m, u) for m, u, _ in paho_publisher.METRICS]  # type: ignore[attr-defined]
    assert cfg.sensors[9][1].fields == list(paho_publisher.SERIAL_FIELDS)  # type: ignore[attr-defined]
    assert len(agent_footprint.csv_line(7).split(b",")) == len(paho_publisher.SERIAL_FIELDS)


def test_the_storage_ceiling_and_the_writer_alone_store_every_frame(tmp_path: Path) -> None:
    import sqlite3

    from bench import collector_sqlite

    assert collector_sqlite.raw_ceiling(tmp_path, frames=2000, devices=10, batch=500) > 1_000
    assert collector_sqlite.writer_alone(tmp_path, frames=2000, devices=10, batch=500) > 1_000
    for db, frames in (("raw.db", 2000), ("writer.db", 2000)):
        conn = sqlite3.connect(tmp_path / db)
        assert conn.execute("SELECT count(*), count(DISTINCT seq) FROM frames").fetchone() == (
            frames, frames // 10)
        assert conn.execute("SELECT count(*) FROM samples").fetchone()[0] == frames * 8
        conn.close()


def _row(name: str, lossless: float, p99s: list[float]) -> TransportResult:
    from bench.harness import RunResult, TrialResult

    def trial(p99: float) -> TrialResult:
        return TrialResult(target=5000.0, attempted=10, accepted=10, received=10, dups=0,
                           send_rate=5000.0, recv_rate=5000.0, behind_s=0.0, pub_cpu_s=0.0,
                           sub_cpu_s=0.0, p50_us=p99 / 2, p99_us=p99, details={})

    runs = [RunResult(max=trial(p), lossless_rate=lossless, lossless_trials=[], latency=trial(p))
            for p in p99s]
    return TransportResult(transports.get(name), runs=runs)


def test_the_targets_are_judged_from_the_medians_and_every_run_is_listed() -> None:
    rows = [_row("sensorwire", 150_000, [400, 900, 500]), _row("nats", 100_000, [450, 520, 480]),
            _row("redis", 70_000, [600, 700, 650])]
    text = report.targets(rows, QUICK)
    assert "1.50x NATS core's" in text and "met, and the 1.5x aim" in text
    # sensorwire's median p99 is 500 µs: above NATS's 480, below Redis's 650
    assert "sensorwire 500 µs; **not met**: at or above NATS core (480 µs)" in text
    assert "Redis" not in text.split("not met")[1].split(".")[0]
    assert "sensorwire 400 / 900 / 500; nats 450 / 520 / 480; redis 600 / 700 / 650" in text

    rows[0] = _row("sensorwire", 90_000, [300, 310, 320])
    text = report.targets(rows, QUICK)
    assert "0.90x NATS core's" in text and "**not met**." in text
    assert "310 µs; met: below each of the 2 other rows" in text
    assert "Judged without these rows (skipped, failed or not asked for): zenoh, zmq-2part" in text


def test_the_targets_say_when_they_cannot_be_judged() -> None:
    assert "not judged" in report.targets([_row("nats", 1.0, [1.0])], QUICK)
    skipped = TransportResult(transports.get("nats"), status="skipped", reason="no server")
    text = report.targets([_row("sensorwire", 1.0, [1.0]), skipped], QUICK)
    assert "Throughput**: not judged" in text
    assert "p99 latency at 5k/s**: not judged (no peer row with a latency)" in text


@pytest.mark.parametrize("curve", [False, True], ids=["plain", "curve"])
def test_the_soak_writes_files_every_role_accepts(tmp_path: Path, curve: bool) -> None:
    from bench import soak
    from sensorwire.checkconfig import load_any

    keys = soak.make_keys(tmp_path) if curve else None
    files = {
        "agent": soak.agent_toml("pi-a", ["tcp://127.0.0.1:1"], tmp_path / "spool", ["env0-g1", "env1"], 0.05,
                                 str(tmp_path / "tty"), 9999, keys),
        "collector": soak.collector_toml(["tcp://127.0.0.1:2"], f'kind = "sqlite"\npath = "{tmp_path}/a.db"',
                                         9998, 300, True, keys),
        "proxy": soak.proxy_toml("tcp://*:1", "tcp://*:2", 9997, True, keys),
    }
    for role, text in files.items():
        (tmp_path / f"{role}.toml").write_text(text)
        assert load_any(tmp_path / f"{role}.toml")[0] == role


def test_the_soak_flags_steady_growth_not_a_step_or_noise() -> None:
    from bench.soak import grows, slope_per_hour

    ts = [60.0 * i for i in range(20)]
    steady = [1000.0 + 10 * i for i in range(20)]
    step = [1000.0] * 3 + [1600.0] * 17       # caches filled during the first minutes
    noise = [1000.0 + (7 if i % 2 else -7) for i in range(20)]
    assert grows(steady, slope_per_hour(ts, steady), 100)
    assert not grows(step, slope_per_hour(ts, step), 100)
    assert not grows(noise, slope_per_hour(ts, noise), 100)
