"""The serial sensor on real pseudo-terminals: formats, noise, unplug, polling, config."""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from support import wait_until

from sensorwire.agent import config as agent_config
from sensorwire.agent import sensors
from sensorwire.agent.sensors import Reading
from sensorwire.agent.sensors import serial as serial_sensor
from sensorwire.agent.sensors.serial import SerialPortError, SerialSensor
from sensorwire.configload import ConfigError
from sensorwire.serialsim import Pty, nmea, point

ROOT = Path(__file__).resolve().parents[2]


def collect(sensor: SerialSensor, n: int, timeout_s: float = 10.0) -> list[Sequence[Reading]]:
    """The next ``n`` readings, read the way the host reads them."""
    out: list[Sequence[Reading]] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"got {len(out)} of {n} readings in {timeout_s} s: {out}")
        got = sensor.read_next(0.2)
        if got is not None:
            out.append(got)
    return out


GGA = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
RMC = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"
GSV = nmea("GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00")

# a Reading as a test expects it: its value may be a pytest.approx(...)
Expected = tuple[str, object, str]

# format keys, the lines the device prints, the readings they must give
FORMAT_CASES: dict[str, tuple[dict[str, Any], list[str], list[list[Expected]]]] = {
    "csv": (
        {"format": "csv", "fields": ["temperature", "", "humidity"],
         "units": {"temperature": "C", "humidity": "%"}},
        ["temperature,uptime,humidity", "21.5,17,40", "-3.25,18,99.5"],
        [[("temperature", 21.5, "C"), ("humidity", 40.0, "%")],
         [("temperature", -3.25, "C"), ("humidity", 99.5, "%")]],
    ),
    "kv": (
        {"format": "kv", "pair_separator": ",", "kv_separator": ":", "units": {"pm2_5": "ug/m3"}},
        ["pm2_5:12, pm10:20, id:A7"],
        [[("pm2_5", 12.0, "ug/m3"), ("pm10", 20.0, "")]],
    ),
    "json": (
        {"format": "json", "units": {"battery.volts": "V"}},
        ['{"t": 21.5, "ok": true, "battery": {"volts": 3.7}, "id": "x"}'],
        [[("t", 21.5, ""), ("battery.volts", 3.7, "V")]],
    ),
    "nmea": (
        {"format": "nmea", "units": {"satellites": "count"}},
        [GGA, GSV, RMC],
        [[("fix_quality", 1.0, ""), ("satellites", 8.0, "count"), ("hdop", 0.9, ""),
          ("latitude", pytest.approx(48.1173), "deg"),
          ("longitude", pytest.approx(11.516667), "deg"), ("altitude", 545.4, "m")],
         [("latitude", pytest.approx(48.1173), "deg"),
          ("longitude", pytest.approx(11.516667), "deg"),
          ("speed", pytest.approx(11.5236, abs=1e-4), "m/s"), ("course", 84.4, "deg")]],
    ),
    "regex": (
        {"format": "regex", "pattern": r"^T=(?P<temperature>[-\d.]+) H=(?P<humidity>[\d.]+)$",
         "units": {"temperature": "C"}},
        ["T=-2.5 H=80"],
        [[("temperature", -2.5, "C"), ("humidity", 80.0, "")]],
    ),
}


@pytest.mark.parametrize("fmt", sorted(FORMAT_CASES))
def test_each_format_read_from_a_pty(fmt: str, pty: Pty,
                                     make_sensor: Callable[..., SerialSensor]) -> None:
    keys, lines, expected = FORMAT_CASES[fmt]
    sensor = make_sensor(port=pty.path, baudrate=115200, **keys)
    sensor.open()
    # the leading line end ends the (empty) partial line the sensor discards after opening
    pty.write(b"\r\n" + b"".join(line.encode() + b"\r\n" for line in lines))
    got = collect(sensor, len(expected))
    assert [list(r) for r in got] == expected
    assert sensor.read_next(0.1) is None
    assert sensor.counters() == {"bad_lines": 0}


def test_bytes_at_once_after_opening_are_discarded_up_to_a_line_end(
        pty: Pty, make_sensor: Callable[..., SerialSensor],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes that come right after the open may be the tail of a line in flight then."""
    monkeypatch.setattr(serial_sensor, "QUIET_OPEN_S", 3600.0)  # "at once", however slow CI is
    sensor = make_sensor(port=pty.path, format="csv", fields=["a", "b"])
    sensor.open()
    pty.write(b".5,40\r\n1,2\r\n")  # the tail of a line begun before the port was open
    assert collect(sensor, 1) == [[("a", 1.0, ""), ("b", 2.0, "")]]
    assert sensor.counters() == {"bad_lines": 0}


def test_the_first_line_after_a_quiet_open_is_read(
        pty: Pty, make_sensor: Callable[..., SerialSensor]) -> None:
    """A port quiet for longer than QUIET_OPEN_S after the open had no line in flight: the
    first line written after that is whole, and is read like every other."""
    sensor = make_sensor(port=pty.path, format="csv", fields=["a", "b"])
    sensor.open()
    assert sensor.read_next(2 * serial_sensor.QUIET_OPEN_S) is None  # the port stays quiet
    pty.write(b"24.5,40\r\n1,2\r\n")
    assert collect(sensor, 2) == [[("a", 24.5, ""), ("b", 40.0, "")], [("a", 1.0, ""), ("b", 2.0, "")]]
    assert sensor.counters() == {"bad_lines": 0}


def test_the_first_line_after_a_quiet_reopen_is_read_from_the_descriptor(
        pty: Pty, make_sensor: Callable[..., SerialSensor]) -> None:
    """The same through read_ready, as the agent's loop reads a native port, after a reopen."""
    sensor = make_sensor(port=pty.path, format="csv", fields=["a", "b"])
    for value in (1, 2):
        sensor.open()
        fd = sensor.fileno()
        assert fd is not None
        assert select.select([fd], [], [], 2 * serial_sensor.QUIET_OPEN_S)[0] == []  # quiet
        pty.write(f"{value},0\r\n".encode())
        got: list[Sequence[Reading]] = []
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            select.select([fd], [], [], 0.5)
            got = sensor.read_ready()
        assert [list(r) for r in got] == [[("a", float(value), ""), ("b", 0.0, "")]]
        sensor.close()
    assert sensor.counters() == {"bad_lines": 0}


def test_noise_csv_gives_exactly_the_valid_readings_and_counts_the_bad(
        pty: Pty, make_sensor: Callable[..., SerialSensor]) -> None:
    sensor = make_sensor(port=pty.path, format="csv", fields=["n", "v"], max_line_bytes=256)
    sensor.open()
    for chunk in (
        b"\n",
        b"n,v\r\n",                     # a header: skipped, not bad
        b"1,10\r\n",
        b"\xff\xfe\x80garbage\x81\r\n",  # line noise: undecodable
        b"2,2", b"0\r\n",               # one line in two pieces: fine
        b"3,\r\n",                      # not_numeric
        b"3,30,7\r\n",                  # columns
        b"\x00\x00\r\n",                # undecodable
        b"x" * 300, b"x" * 300,         # too_long, counted once ...
        b"\r\n",                        # ... and discarded to its end
        b"4,40\n",
        b"5,5",                         # a partial line: never complete, never a reading
    ):
        pty.write(chunk)
    got = collect(sensor, 3)
    assert [dict((m, v) for m, v, _ in r)["n"] for r in got] == [1.0, 2.0, 4.0]
    assert sensor.read_next(0.2) is None
    assert sensor.counters() == {"bad_lines": 5, "bad_lines.undecodable": 2,
                                 "bad_lines.not_numeric": 1, "bad_lines.columns": 1,
                                 "bad_lines.too_long": 1}


def test_noise_nmea_gives_exactly_the_valid_readings_and_counts_the_bad(
        pty: Pty, make_sensor: Callable[..., SerialSensor]) -> None:
    sensor = make_sensor(port=pty.path, format="nmea")
    sensor.open()
    good = [nmea(f"GPGGA,0000{i:02d},4807.038,N,01131.000,E,1,{i:02d},0.9,{i}.0,M,,M,,")
            for i in range(1, 5)]
    flipped = good[1].replace("4807", "4806")
    for chunk in (
        b"\r\n",
        good[0].encode() + b"\r\n",
        GSV.encode() + b"\r\n",                       # another type: skipped, not bad
        flipped.encode() + b"\r\n",                   # checksum
        b"$GPGGA,0000", good[1].encode() + b"\r\n",   # cut short and run into the next: checksum
        good[2].encode()[:30] + b"\r\n",              # cut short: no checksum
        b"\xb5b\x01\x07\x5c\x00\r\n",                 # a binary UBX message: undecodable
        good[3].encode() + b"\r\n",
        b"$GPRMC,0000",                               # unplugged mid-line: never complete
    ):
        pty.write(chunk)
    got = collect(sensor, 2)
    assert [dict((m, v) for m, v, _ in r)["altitude"] for r in got] == [1.0, 4.0]
    assert sensor.read_next(0.2) is None
    assert sensor.counters() == {"bad_lines": 4, "bad_lines.checksum": 3,
                                 "bad_lines.undecodable": 1}


def test_a_missing_port_raises_a_retryable_error(
        tmp_path: Path, make_sensor: Callable[..., SerialSensor]) -> None:
    sensor = make_sensor(port=str(tmp_path / "ttyUSB9"), format="json")
    with pytest.raises(SerialPortError, match="ttyUSB9"):
        sensor.open()


def test_unplug_then_replug_at_a_repointed_symlink(
        tmp_path: Path, make_sensor: Callable[..., SerialSensor]) -> None:
    link = tmp_path / "ttyGPS"
    first, second = Pty(), Pty()
    try:
        point(link, first.path)
        sensor = make_sensor(port=str(link), format="csv", fields=["a"])
        sensor.open()
        first.write(b"\n1\n")
        assert collect(sensor, 1) == [[("a", 1.0, "")]]
        first.write(b"2")
        first.close()  # unplugged mid-line
        with pytest.raises(SerialPortError, match="lost"):
            wait_until(lambda: sensor.read_next(0.2), timeout_s=5, what="the loss to show")
        sensor.close()
        with pytest.raises(SerialPortError):
            sensor.open()  # the link points at a device that is gone
        point(link, second.path)
        sensor.open()
        second.write(b"\n3\n")
        assert collect(sensor, 1) == [[("a", 3.0, "")]]
    finally:
        first.close()
        second.close()


def test_read_ready_gives_every_complete_line_waiting_and_keeps_a_partial_one(
        pty: Pty, make_sensor: Callable[..., SerialSensor]) -> None:
    sensor = make_sensor(port=pty.path, format="csv", fields=["a"])
    assert sensor.fileno() is None  # not open
    sensor.open()
    fd = sensor.fileno()
    assert fd is not None
    assert sensor.read_ready() == []  # nothing waits: no blocking
    pty.write(b"\n1\n2\n4,5\n3")  # "4,5": a column too many, counted
    wait_until(lambda: select.select([fd], [], [], 0.05)[0], timeout_s=5, what="input")
    assert sensor.read_ready() == [[("a", 1.0, "")], [("a", 2.0, "")]]
    assert sensor.counters()["bad_lines"] == 1
    pty.write(b"\n")
    wait_until(lambda: select.select([fd], [], [], 0.05)[0], timeout_s=5, what="the line end")
    assert sensor.read_ready() == [[("a", 3.0, "")]]
    pty.close()  # unplugged
    with pytest.raises(SerialPortError, match="lost"):
        wait_until(lambda: sensor.read_ready(), timeout_s=5, what="the loss to show")


def test_a_polling_or_pyserial_read_sensor_is_left_to_its_thread(
        pty: Pty, make_sensor: Callable[..., SerialSensor]) -> None:
    polling = make_sensor(port=pty.path, format="json", poll="READ\r\n")
    polling.open()
    assert polling.fileno() is None  # its request must be written on a schedule
    polling.close()
    loop = make_sensor(port="loop://", format="json")
    loop.open()
    assert loop.fileno() is None  # read through pyserial


def test_read_next_returns_within_its_timeout_when_the_device_is_quiet(
        pty: Pty, make_sensor: Callable[..., SerialSensor]) -> None:
    sensor = make_sensor(port=pty.path, format="json")
    sensor.open()
    started = time.monotonic()
    assert sensor.read_next(0.3) is None
    assert 0.25 <= time.monotonic() - started < 2.0


def test_poll_writes_the_request_every_interval_and_reads_each_answer(
        pty: Pty, make_sensor: Callable[..., SerialSensor]) -> None:
    """A device that answers only when asked: the test plays it on the pty's master side."""
    requests: list[bytes] = []
    done = threading.Event()

    def device() -> None:
        buf = b""
        while not done.is_set():
            ready, _, _ = select.select([pty.master], [], [], 0.1)
            if not ready:
                continue
            try:
                buf += os.read(pty.master, 100)
            except OSError:
                return
            while b"\r\n" in buf:
                req, buf = buf.split(b"\r\n", 1)
                requests.append(req)
                pty.write(f"T={len(requests)}.5\r\n".encode())

    sensor = make_sensor(port=pty.path, format="regex", pattern=r"T=(?P<t>[\d.]+)",
                         poll="READ\r\n", interval_s=0.2)
    player = threading.Thread(target=device, daemon=True)
    player.start()
    try:
        sensor.open()
        started = time.monotonic()
        got = collect(sensor, 3)
        elapsed = time.monotonic() - started
    finally:
        done.set()
        player.join(2)
    assert [r[0][1] for r in got] == [1.5, 2.5, 3.5]
    assert requests[:3] == [b"READ"] * 3
    assert elapsed >= 0.35  # three polls, 0.2 s apart


def test_a_pyserial_url_without_a_descriptor_works_too(
        make_sensor: Callable[..., SerialSensor]) -> None:
    """loop:// sends back what is written: the poll string is its own answer."""
    sensor = make_sensor(port="loop://", format="kv", poll="t=21.5 h=40\r\n", interval_s=0.1)
    sensor.open()
    assert collect(sensor, 2) == [[("t", 21.5, ""), ("h", 40.0, "")]] * 2


def test_socket_url_reads_lines_and_notices_the_peer_closing(
        make_sensor: Callable[..., SerialSensor]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        sensor = make_sensor(port=f"socket://127.0.0.1:{port}", format="csv", fields=["a"])
        sensor.open()
        peer, _ = server.accept()
        with peer:
            peer.sendall(b"\n1\n2\n")
            assert collect(sensor, 2) == [[("a", 1.0, "")], [("a", 2.0, "")]]
        with pytest.raises(SerialPortError, match="lost"):
            wait_until(lambda: sensor.read_next(0.2), timeout_s=5, what="the loss to show")


# -- configuration --------------------------------------------------------------
def parse_error(**keys: Any) -> str:
    with pytest.raises(ConfigError) as info:
        sensors.parse({"name": "dev", "kind": "serial", "port": "/dev/ttyUSB0", **keys}, 2,
                      "agent.toml")
    return str(info.value)


@pytest.mark.parametrize(("keys", "message"), [
    ({}, "agent.toml: sensors[2].format: required key is missing"),
    ({"format": "xml"}, "sensors[2].format: 'xml' is not one of csv, kv, json, nmea, regex"),
    ({"format": "csv"}, 'sensors[2].fields: format = "csv" needs the metric name of each column'),
    ({"format": "csv", "fields": ["", ""]}, "sensors[2].fields: format = \"csv\" needs"),
    ({"format": "csv", "fields": ["a", "a"]}, "sensors[2].fields: 'a' is listed twice"),
    ({"format": "csv", "fields": ["a b"]}, "sensors[2].fields: 'a b' may hold only"),
    ({"format": "json", "fields": ["a"]}, 'sensors[2].fields: only used with format = "csv"'),
    ({"format": "kv", "delimiter": ";"}, 'sensors[2].delimiter: only used with format = "csv"'),
    ({"format": "kv", "kv_separator": " "}, "sensors[2].kv_separator: ' ' must differ"),
    ({"format": "regex"}, 'sensors[2].pattern: format = "regex" needs a pattern'),
    ({"format": "regex", "pattern": "T=(\\d+"}, "sensors[2].pattern: does not compile: "),
    ({"format": "regex", "pattern": "T=(\\d+)"}, "sensors[2].pattern: has no named groups"),
    ({"format": "nmea", "pattern": "x"}, 'sensors[2].pattern: only used with format = "regex"'),
    ({"format": "csv", "fields": ["temperature"], "units": {"temprature": "C"}},
     "sensors[2].units: 'temprature' is not a metric of this sensor (a typo? its metrics: "
     "temperature)"),
    ({"format": "nmea", "units": {"speed_kmh": "km/h"}}, "sensors[2].units: 'speed_kmh' is not"),
    ({"format": "json", "units": {"t": "\x01"}}, "sensors[2].units: the unit of 't' must not hold"),
    ({"format": "json", "parity": "X"}, "sensors[2].parity: 'X' is not one of N (none)"),
    ({"format": "json", "stopbits": 3}, "sensors[2].stopbits: 3 is not one of 1, 1.5, 2"),
    ({"format": "json", "bytesize": 9}, "sensors[2].bytesize: 9 is not one of 5, 6, 7, 8"),
    ({"format": "json", "baudrate": 0},
     "sensors[2].baudrate: expected an integer >= 1 and <= 2147483647, got 0"),
    ({"format": "json", "poll": ""}, "sensors[2].poll: must not be empty"),
    ({"format": "json", "max_line_bytes": 0}, "sensors[2].max_line_bytes: expected an integer"),
    ({"format": "json", "port": ""}, "sensors[2].port: must not be empty"),
    ({"format": "json", "baud": 9600}, "sensors[2].baud: unknown key (a typo?)"),
    ({"format": "json", "port": "sockt://10.0.0.5:4000"},
     "sensors[2].port: 'sockt://10.0.0.5:4000': unknown URL scheme 'sockt' (pyserial knows socket://"),
    ({"format": "json", "port": "socket://10.0.0.5"},
     "sensors[2].port: 'socket://10.0.0.5': expected socket://HOST:PORT"),
    ({"format": "json", "port": "rfc2217://host:99999"}, "expected rfc2217://HOST:PORT"),
    ({"format": "json", "port": "rfc2217://host:2217?timeout=abc"},
     "'rfc2217://host:2217?timeout=abc': timeout='abc': expected seconds, e.g. timeout=0.5"),
    ({"format": "json", "port": "rfc2217://host:2217?timout=1"},
     "unknown rfc2217 option 'timout' (pyserial knows timeout, logging, ign_set_control, poll_modem)"),
])
def test_config_errors_name_the_key_and_the_fix(keys: dict[str, Any], message: str) -> None:
    assert message in parse_error(**keys)


def test_a_port_that_does_not_exist_is_still_a_valid_config() -> None:
    _, cfg = sensors.parse({"name": "gps", "kind": "serial", "port": "/dev/nonexistent",
                            "format": "nmea", "stopbits": 1.5, "parity": "E"}, 0, "agent.toml")
    assert cfg.port == "/dev/nonexistent"  # type: ignore[attr-defined]


@pytest.mark.parametrize("port", ["socket://192.0.2.7:4000", "socket://[::1]:4000",
                                  "rfc2217://dev.example:2217?logging=debug",
                                  "rfc2217://192.0.2.7:2217?timeout=0.5&poll_modem", "loop://", "spy:///dev/ttyUSB0"])
def test_the_pyserial_urls_pass(port: str) -> None:
    _, cfg = sensors.parse({"name": "d", "kind": "serial", "port": port, "format": "json"}, 0, "x")
    assert cfg.port == port  # type: ignore[attr-defined]


def test_two_sensors_on_one_port_are_refused_naming_both(tmp_path: Path) -> None:
    """The second reader would wait for the port's lock for ever; a by-id symlink and the
    device it points to are one port."""
    dev = tmp_path / "ttyUSB0"
    dev.touch()
    link = tmp_path / "usb-Arduino-if00"
    link.symlink_to(dev)
    raw = {"site": "gh", "publish": {"connect": ["tcp://127.0.0.1:5556"]}, "sensors": [
        {"name": "a", "kind": "serial", "port": str(dev), "format": "json"},
        {"name": "b", "kind": "serial", "port": str(link), "format": "json"}]}
    with pytest.raises(ConfigError, match=r"sensors\[1\]\.port: .* is already the port of sensors\[0\]"):
        agent_config.from_raw(raw, "agent.toml")
    raw["sensors"] = [{"name": n, "kind": "serial", "port": "loop://", "format": "json"} for n in "ab"]
    assert len(agent_config.from_raw(raw, "agent.toml").sensors) == 2  # each loop:// is its own


def test_the_example_agent_toml_shows_a_serial_sensor() -> None:
    cfg = agent_config.load(ROOT / "config" / "agent.toml")
    assert "serial" in [kind.name for kind, _ in cfg.sensors]


def _doc_examples() -> list[str]:
    text = (ROOT / "docs" / "serial.md").read_text()
    return [b for b in re.findall(r"```toml\n(.*?)```", text, re.S) if 'kind = "serial"' in b]


def test_every_example_in_the_serial_docs_is_a_valid_config(tmp_path: Path) -> None:
    examples = _doc_examples()
    formats = set()
    for i, block in enumerate(examples):
        path = tmp_path / f"agent{i}.toml"
        path.write_text('site = "s"\n[publish]\nconnect = ["tcp://127.0.0.1:5556"]\n' + block)
        cfg = agent_config.load(path)
        formats |= {c.format for k, c in cfg.sensors if k.name == "serial"}  # type: ignore[attr-defined]
    assert formats == {"csv", "kv", "json", "nmea", "regex"}


def test_an_agent_without_a_serial_sensor_does_not_import_pyserial(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('site = "s"\n[publish]\nconnect = ["tcp://127.0.0.1:5556"]\n'
                    '[[sensors]]\nname = "h"\nkind = "system"\n')
    code = ("import sys\n"
            "from sensorwire import cli\n"
            "from sensorwire.agent import config, runtime\n"
            f"config.load({str(path)!r})\n"
            "assert 'serial' not in sys.modules, 'pyserial was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
