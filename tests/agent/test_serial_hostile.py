"""The serial sensor against a hostile device, on real pseudo-terminals: what it sends is
counted or read, never lost unseen."""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable
from typing import Any

import pytest
from support import wait_until

from sensorwire.agent import sensors
from sensorwire.agent.sensors import serial as serial_sensor
from sensorwire.agent.sensors.serial import SerialSensor
from sensorwire.configload import ConfigError
from sensorwire.serialsim import Pty, nmea


def test_a_device_that_never_ends_a_line_from_the_open_on_is_counted(
        pty: Pty, make_sensor: Callable[..., SerialSensor],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes right after the open may be a line's tail, but no tail is longer than a line:
    binary output or a wrong baud rate that never gives a line end is too_long, not nothing."""
    monkeypatch.setattr(serial_sensor, "QUIET_OPEN_S", 3600.0)  # "right after", however slow CI is
    sensor = make_sensor(port=pty.path, format="csv", fields=["a"], max_line_bytes=256)
    sensor.open()

    def counted() -> bool:
        pty.write(b"\x00\xff" * 100, timeout_s=0.05)
        sensor.read_next(0.01)
        return sensor.counters().get("bad_lines.too_long", 0) > 0

    wait_until(counted, timeout_s=5, interval_s=0, what="the endless line to be counted")
    assert sensor.counters() == {"bad_lines": 1, "bad_lines.too_long": 1}
    pty.write(b"\n1\n")
    got = wait_until(lambda: sensor.read_next(0.2), timeout_s=5, what="the next line")
    assert list(got) == [("a", 1.0, "")]
    assert sensor.counters()["bad_lines"] == 1


# -- configuration at its limits ---------------------------------------------------------
def test_a_baudrate_no_port_can_take_is_a_config_error_not_an_endless_open_failure() -> None:
    """pyserial gives a baud rate to the kernel as a C int: beyond that, every open raised an
    OverflowError (not even a SerialPortError), retried for ever instead of refused at start."""
    with pytest.raises(ConfigError, match=r"sensors\[0\].baudrate: expected an integer >= 1 "
                                          r"and <= 2147483647, got 2147483648"):
        sensors.parse({"name": "dev", "kind": "serial", "port": "/dev/ttyUSB0",
                       "format": "json", "baudrate": 1 << 31}, 0, "test.toml")


def test_the_largest_baudrate_allowed_opens(
        pty: Pty, make_sensor: Callable[..., SerialSensor]) -> None:
    sensor = make_sensor(port=pty.path, format="json", baudrate=(1 << 31) - 1)
    sensor.open()


def test_csv_numbers_too_large_for_a_float_are_counted_not_skipped_as_headers(
        pty: Pty, make_sensor: Callable[..., SerialSensor]) -> None:
    sensor = make_sensor(port=pty.path, format="csv", fields=["count"])
    sensor.open()
    pty.write(b"\n" + b"9" * 400 + b"\n1e400\n-0\n7\n")
    got = [wait_until(lambda: sensor.read_next(0.2), timeout_s=5, what="a reading")
           for _ in range(2)]
    assert [list(r) for r in got] == [[("count", 0.0, "")], [("count", 7.0, "")]]
    assert sensor.counters() == {"bad_lines": 2, "bad_lines.not_numeric": 2}


# -- what a device can put in the log ---------------------------------------------------------
def nmea_gga_bytes() -> bytes:
    return nmea("GPGGA,120000,4807.038,N,01131.000,E,1,08,0.9,545.4,M,,M,,").encode()


def test_what_a_device_sends_reaches_the_log_only_escaped(
        pty: Pty, make_sensor: Callable[..., SerialSensor],
        caplog: pytest.LogCaptureFixture) -> None:
    """Control characters beyond C0 (a C1 CSI, which a terminal takes as the start of a
    command; a bidi override; a line separator) are valid UTF-8: a bad line's detail must
    show them escaped, as it shows every other piece of the line."""
    # a name of its own: bad-line warnings are rate-limited per sensor name and reason
    sensor = make_sensor(name="escaped", port=pty.path, format="nmea")
    sensor.open()
    hostile = "\u009b2J\u2028\u202e"
    pty.write(b"\n$GPGGA,1*" + hostile.encode() + b"\n" + nmea_gga_bytes() + b"\n")
    wait_until(lambda: sensor.read_next(0.2), timeout_s=5, what="the good sentence")
    assert sensor.counters() == {"bad_lines": 1, "bad_lines.checksum": 1}
    [message] = [r.getMessage() for r in caplog.records if "bad line" in r.getMessage()]
    assert message.isprintable(), message
    assert repr(hostile)[1:-1] in message


# -- a device that answers only when asked, and does not --------------------------------------
def test_a_polled_device_that_never_answers_is_counted_and_logged(
        pty: Pty, make_sensor: Callable[..., SerialSensor],
        caplog: pytest.LogCaptureFixture) -> None:
    """The adapter is there (the port opens, the poll is written) but the device behind it
    is off or its wires are loose: no reading, no bad line, no error: it must show."""
    sensor = make_sensor(name="mute", port=pty.path, format="csv", fields=["co2"],
                         poll="READ\r\n", interval_s=0.05)
    sensor.open()
    wait_until(lambda: sensor.read_next(0.05) is None
               and sensor.counters().get("unanswered_polls", 0) >= 3,
               timeout_s=5, what="unanswered polls to be counted")
    assert sensor.counters()["bad_lines"] == 0
    [message] = [r.getMessage() for r in caplog.records if "no answer" in r.getMessage()]
    assert message.startswith("sensor mute: no answer to the poll 'READ\\r\\n' within "
                              "interval_s (0.05 s)")


def test_a_polled_device_that_answers_has_no_unanswered_polls(
        pty: Pty, make_sensor: Callable[..., SerialSensor]) -> None:
    sensor = make_sensor(port=pty.path, format="csv", fields=["co2"], poll="R\n",
                         interval_s=0.3)
    assert sensor.counters() == {"bad_lines": 0, "unanswered_polls": 0}
    sensor.open()
    got = 0
    deadline = time.monotonic() + 10
    while got < 3:  # the device answers each poll at once; the sensor reads the answer
        assert time.monotonic() < deadline, f"{got} answers read in 10 s"
        if sensor.read_next(0.01) is not None:
            got += 1
        if select.select([pty.master], [], [], 0)[0]:
            for _ in range(os.read(pty.master, 100).count(b"\n")):
                pty.write(b"400\n")
    assert sensor.counters() == {"bad_lines": 0, "unanswered_polls": 0}


# -- failed readings ---------------------------------------------------------------------------
@pytest.mark.parametrize(("keys", "failed", "good"), [
    ({"format": "kv"}, b"t=nan h=40", b"t=21.5 h=40"),
    ({"format": "json"}, b'{"t": NaN, "h": 40}', b'{"t": 21.5, "h": 40}'),
])
def test_a_failed_reading_next_to_good_ones_is_counted(
        keys: dict[str, Any], failed: bytes, good: bytes,
        pty: Pty, make_sensor: Callable[..., SerialSensor]) -> None:
    """A board with two sensors, one of which failed: its metric must not vanish unseen."""
    sensor = make_sensor(port=pty.path, **keys)
    sensor.open()
    pty.write(b"\n" + failed + b"\n" + good + b"\n")
    got = wait_until(lambda: sensor.read_next(0.2), timeout_s=5, what="the good line")
    assert sorted(got) == [("h", 40.0, ""), ("t", 21.5, "")]
    assert sensor.counters() == {"bad_lines": 1, "bad_lines.not_numeric": 1}


def test_a_one_column_device_s_messages_are_counted_its_header_skipped(
        pty: Pty, make_sensor: Callable[..., SerialSensor]) -> None:
    sensor = make_sensor(port=pty.path, format="csv", fields=["lux"])
    sensor.open()
    pty.write(b"\nlux\nFailed to read from BH1750 sensor!\nlux\n312\n")
    got = wait_until(lambda: sensor.read_next(0.2), timeout_s=5, what="the reading")
    assert list(got) == [("lux", 312.0, "")]
    assert sensor.counters() == {"bad_lines": 1, "bad_lines.not_numeric": 1}


@pytest.mark.parametrize("keys", [
    {"format": "csv", "fields": ["a"]}, {"format": "csv", "fields": ["a", "b"]},
    {"format": "kv"}, {"format": "json"}, {"format": "nmea"},
])
def test_a_line_of_only_whitespace_is_blank_and_ignored(
        keys: dict[str, Any], pty: Pty, make_sensor: Callable[..., SerialSensor]) -> None:
    """docs/serial.md: blank lines are ignored, surrounding whitespace trimmed; a line of
    spaces and tabs is blank in every format, not a bad line in some and a header in one."""
    sensor = make_sensor(port=pty.path, **keys)
    sensor.open()
    pty.write(b"\n \t \r\n\t\n   \n")
    assert sensor.read_next(0.2) is None
    assert sensor.counters() == {"bad_lines": 0}


@pytest.mark.parametrize(("keys", "twice", "good"), [
    ({"format": "kv"}, b"t=21.5 h=40 t=-5", b"t=1"),
    ({"format": "json"}, b'{"t": 21.5, "h": 40, "t": -5}', b'{"t": 1}'),
])
def test_a_metric_given_twice_on_a_line_is_counted_not_half_kept(
        keys: dict[str, Any], twice: bytes, good: bytes,
        pty: Pty, make_sensor: Callable[..., SerialSensor]) -> None:
    sensor = make_sensor(port=pty.path, **keys)
    sensor.open()
    pty.write(b"\n" + twice + b"\n" + good + b"\n")
    got = wait_until(lambda: sensor.read_next(0.2), timeout_s=5, what="the good line")
    assert list(got) == [("t", 1.0, "")]
    assert sensor.counters() == {"bad_lines": 1, "bad_lines.malformed": 1}
