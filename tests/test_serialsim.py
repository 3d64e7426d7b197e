"""``sensorwire serial list`` and ``sensorwire serial-sim``, run as real commands."""

from __future__ import annotations

import os
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from support import run_cli, wait_until

from sensorwire.agent import sensors
from sensorwire.agent.sensors.serial import SerialSensor

FIELDS = {"csv": {"fields": ["temperature", "humidity", "pressure"]}}
EXPECTED = {
    "csv": {"temperature", "humidity", "pressure"},
    "kv": {"temperature", "humidity", "pm2_5"},
    "json": {"temperature", "humidity", "battery.volts"},
    "nmea": {"latitude", "longitude"},  # in both GGA and RMC
}


def test_serial_list_exits_0() -> None:
    r = run_cli("serial", "list")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("port") or "no serial ports found" in r.stderr


@contextmanager
def serial_sim(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen([sys.executable, "-m", "sensorwire", "serial-sim", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "serial-sim printed nothing in 20 s"
        path = proc.stdout.readline().strip()
        yield proc, path
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def sensor_on(path: str, fmt: str) -> SerialSensor:
    _, cfg = sensors.parse({"name": "sim", "kind": "serial", "port": path, "format": fmt,
                            **FIELDS.get(fmt, {})}, 0, "test.toml")
    return SerialSensor(cfg)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["csv", "kv", "json", "nmea"])
def test_serial_sim_prints_a_pty_path_then_writes_lines_a_sensor_reads(fmt: str) -> None:
    with serial_sim("--format", fmt, "--rate", "20") as (proc, path):
        assert path.startswith("/dev/"), path
        assert stat.S_ISCHR(os.stat(path).st_mode)
        sensor = sensor_on(path, fmt)
        sensor.open()
        try:
            deadline = time.monotonic() + 15
            seen: list[set[str]] = []
            while len(seen) < 4 and time.monotonic() < deadline:
                got = sensor.read_next(0.5)
                if got:
                    seen.append({m for m, _, _ in got})
        finally:
            sensor.close()
        assert len(seen) == 4, f"only {len(seen)} readings in 15 s"
        assert all(EXPECTED[fmt] <= metrics for metrics in seen)
        assert sensor.counters() == {"bad_lines": 0}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_serial_sim_garbage_is_counted_as_bad_lines_and_sigint_stops_it() -> None:
    with serial_sim("--format", "nmea", "--rate", "50", "--garbage", "1") as (proc, path):
        sensor = sensor_on(path, "nmea")
        sensor.open()
        try:
            def bad_lines() -> int:
                assert sensor.read_next(0.2) is None  # every line is corrupt: no reading
                return sensor.counters()["bad_lines"]
            wait_until(lambda: bad_lines() >= 10, timeout_s=15, what="10 bad lines")
        finally:
            sensor.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0


def test_serial_sim_rejects_bad_arguments() -> None:
    r = run_cli("serial-sim", "--format", "csv", "--garbage", "1.5")
    assert r.returncode == 2
    assert "expected a fraction from 0 to 1, got 1.5" in r.stderr
    r = run_cli("serial-sim", "--format", "xml")
    assert r.returncode == 2


def test_serial_sim_at_a_rate_slower_than_the_clock_can_wait_still_runs_and_stops() -> None:
    """--rate 1e-300 passes the argument check (> 0); its period is no timeout select takes,
    which ended the simulator with an OverflowError right after its first line."""
    with serial_sim("--format", "csv", "--rate", "1e-300") as (proc, path):
        # read the pty's input queue as it is (a serial sensor's open would flush it): the
        # header and the first line, which the simulator writes just before its first wait
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            got = b""

            def first_line() -> bool:
                nonlocal got
                if select.select([fd], [], [], 0.2)[0]:
                    got += os.read(fd, 4096)
                assert got.count(b"\n") >= 2 or proc.poll() is None, "serial-sim ended"
                return got.count(b"\n") >= 2

            wait_until(first_line, timeout_s=15, what="the header and the first line")
        finally:
            os.close(fd)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert proc.stderr is not None
        assert "Traceback" not in proc.stderr.read()
