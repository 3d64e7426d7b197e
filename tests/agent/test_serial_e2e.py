"""Serial sensors end to end: pty -> ``sensorwire agent`` -> ``sensorwire collector`` -> SQLite.

The agent binds and the collector connects to it directly.  Frames published
before the collector's subscription reaches the agent are lost, so every test
keeps the device talking until its lines show up in the database, and checks
exact sets only for what was written after that.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from support import Proc, tcp, wait_until, write

from sensorwire.proto import wire
from sensorwire.serialsim import Pty, nmea, point

pytestmark = pytest.mark.slow

SIMULATED = """
[[sensors]]
name = "env"
kind = "simulated"
interval_s = 0.1
metrics = [{ name = "temperature", signal = "constant", value = 20.0 }]
"""


class Rig:
    """One agent, one collector storing into ``db``; the test plays the devices."""

    def __init__(self, tmp_path: Path, procs: Callable[..., Proc]) -> None:
        self.tmp_path = tmp_path
        self.procs = procs
        self.endpoint = tcp()
        self.db = tmp_path / "telemetry.db"
        self.agent: Proc | None = None

    def start(self, sensors_toml: str) -> None:
        agent = write(self.tmp_path / "agent.toml", f"""\
site = "lab"
device_id = "pi-01"
[publish]
bind = ["{self.endpoint}"]
heartbeat_s = 0.2
{sensors_toml}""")
        collector = write(self.tmp_path / "collector.toml", f"""\
[subscribe]
connect = ["{self.endpoint}"]
[storage]
kind = "sqlite"
path = "{self.db}"
flush_interval_s = 0.05
""")
        self.agent = self.procs("agent", "agent", "-c", str(agent))
        self.procs("collector", "collector", "-c", str(collector))

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        if not self.db.exists():
            return []
        try:
            conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
            try:
                return conn.execute(sql, args).fetchall()
            finally:
                conn.close()
        except sqlite3.OperationalError:
            return []  # not created yet

    def values(self, sensor: str, metric: str, since_ns: int = 0) -> list[float]:
        return [v for (v,) in self.rows(
            "SELECT value FROM readings WHERE sensor = ? AND metric = ? AND time_ns > ? "
            "ORDER BY seq", sensor, metric, since_ns)]

    def log_has(self, text: str) -> bool:
        assert self.agent is not None
        return text in self.agent.log()


@pytest.fixture
def rig(tmp_path: Path, procs: Callable[..., Proc]) -> Rig:
    return Rig(tmp_path, procs)


@pytest.fixture
def ptys() -> Iterator[Callable[[], Pty]]:
    made: list[Pty] = []

    def make() -> Pty:
        p = Pty()
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def talk_until(check: Callable[[], Any], say: Callable[[], object], timeout_s: float = 30.0,
               what: str = "condition") -> Any:
    """Keep the device(s) talking until ``check`` holds."""
    def step() -> Any:
        say()
        return check()
    return wait_until(step, timeout_s=timeout_s, interval_s=0.1, what=what)


# -- every format, stored ---------------------------------------------------------
GGA = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
RMC = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"

FORMATS: dict[str, tuple[str, list[str], set[tuple[str, float, str | None]]]] = {
    "csv": (
        'format = "csv"\nfields = ["temperature", "", "humidity"]\n'
        'units = { temperature = "C", humidity = "%" }',
        ["temperature,uptime,humidity", "21.5,17,40"],
        {("temperature", 21.5, "C"), ("humidity", 40.0, "%")},
    ),
    "kv": (
        'format = "kv"\nunits = { pm2_5 = "ug/m3" }',
        ["pm2_5=12 pm10=20 id=A7"],
        {("pm2_5", 12.0, "ug/m3"), ("pm10", 20.0, None)},
    ),
    "json": (
        'format = "json"\nunits = { "battery.volts" = "V" }',
        ['{"t": 21.5, "ok": true, "battery": {"volts": 3.7}}'],
        {("t", 21.5, None), ("battery.volts", 3.7, "V")},
    ),
    "nmea": (
        'format = "nmea"',
        [GGA, nmea("GPGSV,1,1,01,03,03,111,00"), RMC],
        {("latitude", 48.1173, "deg"), ("longitude", 11.516667, "deg"), ("altitude", 545.4, "m"),
         ("fix_quality", 1.0, None), ("satellites", 8.0, None), ("hdop", 0.9, None),
         ("speed", 11.523556, "m/s"), ("course", 84.4, "deg")},
    ),
    "regex": (
        "format = \"regex\"\npattern = '^T=(?P<temperature>[-\\d.]+) H=(?P<humidity>[\\d.]+)$'\n"
        'units = { temperature = "C" }',
        ["T=-2.5 H=80"],
        {("temperature", -2.5, "C"), ("humidity", 80.0, None)},
    ),
}


def test_each_format_is_stored_with_its_metrics_values_and_units(
        rig: Rig, ptys: Callable[[], Pty]) -> None:
    devices = {fmt: ptys() for fmt in FORMATS}
    rig.start("".join(
        f'\n[[sensors]]\nname = "{fmt}"\nkind = "serial"\nport = "{devices[fmt].path}"\n'
        f"baudrate = 115200\n{keys}\n"
        for fmt, (keys, _, _) in FORMATS.items()))

    def say() -> None:
        for fmt, (_, lines, _) in FORMATS.items():
            devices[fmt].write(b"".join(line.encode() + b"\r\n" for line in lines))

    def stored() -> dict[str, set[tuple[str, float, str | None]]]:
        out: dict[str, set[tuple[str, float, str | None]]] = {fmt: set() for fmt in FORMATS}
        for sensor, metric, value, unit in rig.rows(
                "SELECT DISTINCT sensor, metric, round(value, 6), unit FROM readings"):
            out[sensor].add((metric, value, unit))
        return out

    talk_until(lambda: all(len(stored()[f]) >= len(FORMATS[f][2]) for f in FORMATS), say,
               what="every format's readings in the database")
    got = stored()
    for fmt, (_, _, expected) in FORMATS.items():
        assert got[fmt] == {(m, round(v, 6), u) for m, v, u in expected}, fmt


# -- noise ---------------------------------------------------------------------------
class Heartbeats:
    """A SUB socket on the agent for its heartbeats' counters."""

    def __init__(self, endpoint: str) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, wire.heartbeat_topic("lab", "pi-01"))
        self.sock.connect(endpoint)
        self.decoder = wire.Decoder()
        self.counters: dict[str, int] = {}

    def latest(self) -> dict[str, int]:
        """The counters of the newest heartbeat that arrived within 0.1 s (drained, then
        returned: a ``while poll(100)`` would never return if heartbeats came faster)."""
        if self.sock.poll(100):
            while self.sock.poll(0):
                frame = self.decoder.decode(self.sock.recv())
                self.counters = dict(frame.heartbeat.counters)
        return self.counters

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def gga(altitude: int) -> bytes:
    return nmea(f"GPGGA,120000,4807.038,N,01131.000,E,1,08,0.9,{altitude}.0,M,,M,,").encode()


def wrong_checksum(sentence: bytes) -> bytes:
    body, _, checksum = sentence.rpartition(b"*")
    return body + b"*%02X" % (int(checksum, 16) ^ 0x5A)


def test_noise_stores_exactly_the_valid_readings_and_counts_exactly_the_bad(
        rig: Rig, ptys: Callable[[], Pty]) -> None:
    dev = ptys()
    rig.start(f'[[sensors]]\nname = "gps"\nkind = "serial"\nport = "{dev.path}"\n'
              'format = "nmea"\nmax_line_bytes = 512\n')
    hb = Heartbeats(rig.endpoint)
    try:
        # 1. talk until frames reach the database: from now on nothing is lost
        talk_until(lambda: rig.values("gps", "altitude"), lambda: dev.write(gga(1000) + b"\r\n"),
                   what="the first stored reading")
        # 2. valid sentences (altitudes 1..6) among noise, written once
        stream = [
            gga(1) + b"\r\n",
            b"\xff\xfe\x13\x88\xa0\xfa\r\n",                   # line noise: undecodable
            wrong_checksum(gga(2)) + b"\r\n",                 # checksum
            b"$GPGGA,1200", gga(3) + b"\r\n",                 # cut, run into the next: checksum
            gga(4)[:25] + b"\r\n",                            # cut short: no checksum
            nmea("GPGSV,1,1,01,03,03,111,00").encode() + b"\r\n",  # another sentence type: skipped
            b"$" + b"9" * 600 + b"\r\n",                      # too_long
            gga(5) + b"\r\n",
            b"GPGGA,no dollar\r\n",                           # malformed
            gga(6) + b"\n",
        ]
        for chunk in stream:
            dev.write(chunk)
        # 3. talk until the end marker is stored: everything before it has been too
        talk_until(lambda: 9999.0 in rig.values("gps", "altitude"),
                   lambda: dev.write(gga(9999) + b"\r\n"), what="the end marker")
        stored = [v for v in rig.values("gps", "altitude") if v < 1000]
        assert stored == [1.0, 5.0, 6.0]
        expected = {"bad_lines.gps": 6, "bad_lines.gps.undecodable": 1,
                    "bad_lines.gps.checksum": 3, "bad_lines.gps.too_long": 1,
                    "bad_lines.gps.malformed": 1}
        wait_until(lambda: {k: v for k, v in hb.latest().items() if k.startswith("bad_lines.")}
                   == expected, timeout_s=10, what=f"heartbeat counters {expected}")
    finally:
        hb.close()


# -- unplug and replug -----------------------------------------------------------------
def test_unplug_and_replug_at_a_repointed_symlink_while_another_sensor_goes_on(
        rig: Rig, ptys: Callable[[], Pty], tmp_path: Path) -> None:
    link = tmp_path / "ttyACM-arduino"
    first = ptys()
    point(link, first.path)
    rig.start(f'[[sensors]]\nname = "arduino"\nkind = "serial"\nport = "{link}"\n'
              f'format = "csv"\nfields = ["plug", "n"]\n{SIMULATED}')
    n = iter(range(1_000_000))

    talk_until(lambda: rig.values("arduino", "plug"),
               lambda: first.write(f"1,{next(n)}\r\n".encode()), what="readings before unplug")
    unplugged_ns = time.time_ns()
    first.write(b"1,12")  # mid-line
    first.close()
    wait_until(lambda: rig.log_has("sensor arduino: read failed"), timeout_s=15,
               what="the agent to notice the unplug")
    # the simulated sensor goes on meanwhile
    wait_until(lambda: rig.values("env", "temperature", unplugged_ns + 1_000_000_000),
               timeout_s=15, what="simulated readings a second after the unplug")

    second = ptys()
    replugged_ns = time.time_ns()
    point(link, second.path)
    talk_until(lambda: rig.values("arduino", "plug", replugged_ns),
               lambda: second.write(f"2,{next(n)}\r\n".encode()), timeout_s=45,
               what="readings after the replug")
    assert set(rig.values("arduino", "plug", replugged_ns)) == {2.0}
    during = rig.values("env", "temperature", unplugged_ns)
    assert len(during) >= 5
    wait_until(lambda: rig.log_has("sensor arduino: recovered"), timeout_s=10,
               what="the recovery to be logged")
    assert rig.agent is not None
    log = rig.agent.log()
    assert log.count("sensor arduino: read failed") + log.count("sensor arduino: open failed") == 1


# -- a port that is not there at start ---------------------------------------------------------
def test_a_port_missing_at_start_is_read_once_it_appears(
        rig: Rig, ptys: Callable[[], Pty], tmp_path: Path) -> None:
    link = tmp_path / "ttyUSB-gps"
    rig.start(f'[[sensors]]\nname = "gps"\nkind = "serial"\nport = "{link}"\n'
              f'format = "nmea"\n{SIMULATED}')
    wait_until(lambda: rig.values("env", "temperature"), timeout_s=20,
               what="the other sensor's readings")
    wait_until(lambda: rig.log_has("sensor gps: open failed"), timeout_s=10,
               what="the failed open to be logged")
    assert not rig.values("gps", "altitude")

    dev = ptys()
    point(link, dev.path)
    talk_until(lambda: rig.values("gps", "altitude"), lambda: dev.write(gga(42) + b"\r\n"),
               timeout_s=60, what="readings once the port appeared")
    assert set(rig.values("gps", "altitude")) == {42.0}
