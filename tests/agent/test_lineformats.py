"""The serial line formats, as pure functions: bytes in, readings or a counted reason out."""

from __future__ import annotations

import functools
import operator

import pytest

from sensorwire.agent.sensors.lineformats import (
    BadLine,
    CsvFormat,
    JsonFormat,
    KvFormat,
    LineSplitter,
    NmeaFormat,
    RegexFormat,
    decode,
    number,
)


def nmea(body: str) -> str:
    """A sentence with its checksum: nmea("GPGGA,...") -> "$GPGGA,...*hh"."""
    return f"${body}*{functools.reduce(operator.xor, body.encode(), 0):02X}"


def reason(parse: object, text: str) -> str:
    with pytest.raises(BadLine) as info:
        parse(text)  # type: ignore[operator]
    return info.value.reason


# -- cutting and decoding ------------------------------------------------------
def test_splitter_accepts_every_line_end_and_skips_blank_lines() -> None:
    s = LineSplitter(100)
    s.feed(b"a\nb\r\nc\rd\n\n\r\ne")
    assert [s.next(), s.next(), s.next(), s.next(), s.next()] == [b"a", b"b", b"c", b"d", None]
    s.feed(b"f\n")
    assert s.next() == b"ef"


def test_splitter_joins_a_line_that_arrives_in_pieces() -> None:
    s = LineSplitter(100)
    for piece in (b"21", b".5,", b"40", b".0"):
        s.feed(piece)
        assert s.next() is None
    s.feed(b"\n")
    assert s.next() == b"21.5,40.0"


def test_an_over_long_line_is_reported_once_and_the_rest_of_it_discarded() -> None:
    s = LineSplitter(16)
    s.feed(b"x" * 10)
    assert s.next() is None
    s.feed(b"x" * 10)
    with pytest.raises(BadLine) as info:
        s.next()
    assert info.value.reason == "too_long"
    s.feed(b"y" * 100)
    assert s.next() is None  # still the same line: not counted again
    s.feed(b"yy\nok\n")
    assert s.next() == b"ok"


def test_a_long_complete_line_is_too_long() -> None:
    s = LineSplitter(4)
    s.feed(b"12345\n123\n")
    with pytest.raises(BadLine, match="too_long"):
        s.next()
    assert s.next() == b"123"


def test_resync_discards_up_to_the_first_line_end() -> None:
    s = LineSplitter(100)
    s.resync()
    s.feed(b".5,40\n21.5,40\n")
    assert s.next() == b"21.5,40"
    assert s.next() is None


def test_a_resync_tail_longer_than_any_line_is_too_long_not_discarded_unseen() -> None:
    """A line in flight at the open is at most max_line_bytes: more bytes without a line end
    are no tail but a device that never ends its lines (binary, wrong baud rate), counted."""
    s = LineSplitter(16)
    s.resync()
    s.feed(b"y" * 10)
    assert s.next() is None
    s.feed(b"y" * 10)
    with pytest.raises(BadLine, match="too_long"):
        s.next()
    s.feed(b"y" * 100)
    assert s.next() is None  # the same line: counted once
    s.feed(b"\nok\n")
    assert s.next() == b"ok"
    s.resync()
    s.feed(b"z" * 20 + b"\nok\n")  # the same, arriving at once with its line end
    with pytest.raises(BadLine, match="too_long"):
        s.next()
    assert s.next() == b"ok"


def test_decode_rejects_non_utf8_and_control_characters() -> None:
    assert decode(b"  21.5,40\t ") == "21.5,40"
    assert decode("température=21".encode()) == "température=21"
    for noise in (b"\xff\xfe21", b"21\x00,40", b"\x1b[0m21"):
        with pytest.raises(BadLine) as info:
            decode(noise)
        assert info.value.reason == "undecodable"


@pytest.mark.parametrize(("text", "value"), [
    ("21.5", 21.5), ("-3", -3.0), ("+.5", 0.5), ("1e3", 1000.0), (" 7. ", 7.0),
    ("nan", None), ("inf", None), ("1_000", None), ("0x1f", None), ("", None), ("21.5C", None),
    # digits of other scripts (float() takes them): not what a device prints, but noise
    ("\u0662\u0661.\u0665", None), ("\uff12\uff11", None), ("\u00b2", None),
])
def test_number_accepts_only_finite_decimal_numbers(text: str, value: float | None) -> None:
    assert number(text) == value


# -- csv -----------------------------------------------------------------------
def test_csv_maps_columns_to_fields_and_skips_empty_names() -> None:
    f = CsvFormat(["temperature", "", "humidity"])
    assert f.parse("21.5, 7 ,40") == [("temperature", 21.5, ""), ("humidity", 40.0, "")]
    assert f.parse("21.5,ok,40") == [("temperature", 21.5, ""), ("humidity", 40.0, "")]


def test_csv_header_is_skipped_wherever_it_appears() -> None:
    f = CsvFormat(["temperature", "humidity"])
    assert f.parse("temp,hum") is None
    assert f.parse("21.5,40") == [("temperature", 21.5, ""), ("humidity", 40.0, "")]
    assert f.parse("temp,hum") is None


def test_csv_bad_lines() -> None:
    f = CsvFormat(["temperature", "humidity"])
    assert reason(f.parse, "21.5") == "columns"
    assert reason(f.parse, "21.5,40,") == "columns"
    assert reason(f.parse, "Starting sensor v1.2") == "columns"
    assert reason(f.parse, "21.5,nan") == "not_numeric"
    assert reason(f.parse, "21.5,") == "not_numeric"
    # a sensor that failed to answer (Arduino DHT code prints nan): counted, not a header
    assert reason(f.parse, "nan,nan") == "not_numeric"
    assert reason(f.parse, "-inf, NaN") == "not_numeric"


def test_csv_a_number_too_large_for_a_float_is_a_bad_value_not_a_header() -> None:
    """1e400 or a 400-digit count is a number no float holds (a corrupt or overflowed
    reading): it was taken for a header cell, so such lines were skipped unseen."""
    assert reason(CsvFormat(["count"]).parse, "9" * 400) == "not_numeric"
    f = CsvFormat(["temperature", "humidity"])
    assert reason(f.parse, "1e400,1e400") == "not_numeric"
    assert reason(f.parse, "temp,-1e999") == "not_numeric"


def test_csv_one_column_header_is_one_word_so_messages_are_bad_lines() -> None:
    """With one column any text has the header's shape: a device's messages were skipped as
    headers, unseen, where with two columns the same line is counted (columns)."""
    f = CsvFormat(["temperature"])
    assert f.parse("temperature") is None
    assert f.parse("Temp_C") is None
    assert reason(f.parse, "Failed to read from DHT sensor!") == "not_numeric"
    assert reason(f.parse, "Starting sensor v1.2") == "not_numeric"
    assert reason(CsvFormat(["t", "h"]).parse, "Starting sensor v1.2") == "columns"


def test_csv_other_delimiters() -> None:
    assert CsvFormat(["a", "b"], ";").parse("1;2") == [("a", 1.0, ""), ("b", 2.0, "")]
    assert CsvFormat(["a", "b"], " ").parse("1    2") == [("a", 1.0, ""), ("b", 2.0, "")]
    assert CsvFormat(["a", "b"], "\t").parse("1\t 2") == [("a", 1.0, ""), ("b", 2.0, "")]


# -- kv ------------------------------------------------------------------------
def test_kv_every_numeric_value_is_a_metric() -> None:
    f = KvFormat()
    assert f.parse("temp=21.5  hum=40 id=A7 pm2_5=12") == [
        ("temp", 21.5, ""), ("hum", 40.0, ""), ("pm2_5", 12.0, "")]


def test_kv_other_separators() -> None:
    f = KvFormat(pair_separator=",", kv_separator=":")
    assert f.parse("temp: 21.5, hum:40") == [("temp", 21.5, ""), ("hum", 40.0, "")]


def test_kv_bad_lines() -> None:
    f = KvFormat()
    assert reason(f.parse, "temp=21.5 garbage") == "malformed"
    assert reason(f.parse, "status=ok") == "not_numeric"
    assert reason(f.parse, "temp (C)=21.5") == "malformed"
    assert reason(f.parse, "t/c=21.5") == "bad_name"


def test_kv_a_failed_reading_is_a_bad_line_not_a_pair_left_out() -> None:
    """nan, inf or a number no float holds is a sensor that failed, as in csv: left out
    like id=A7, it went quiet unseen whenever another pair on the line was a number."""
    f = KvFormat()
    for text in ("t=nan h=40", "h=40 t=-inf", "t=1e400 h=40", "t=OVF h=40"):
        assert reason(f.parse, text) == "not_numeric", text
    assert f.parse("t=21.5C h=40 id=A7") == [("h", 40.0, "")]


def test_kv_a_key_given_twice_is_a_bad_line_not_one_value_kept() -> None:
    assert reason(KvFormat().parse, "t=21.5 h=40 t=22.5") == "malformed"
    assert reason(KvFormat().parse, "t=21.5 t =22.5") == "malformed"


# -- json ----------------------------------------------------------------------
def test_json_flattens_nested_objects_and_keeps_only_numbers() -> None:
    f = JsonFormat()
    got = f.parse('{"t": 21.5, "ok": true, "id": "x", "n": null, "list": [1, 2], '
                  '"bat": {"v": 3.7, "cell": {"mv": 3700}}, "big": 12}')
    assert sorted(got or []) == [("bat.cell.mv", 3700.0, ""), ("bat.v", 3.7, ""),
                                 ("big", 12.0, ""), ("t", 21.5, "")]


def test_json_bad_lines() -> None:
    f = JsonFormat()
    assert reason(f.parse, '{"t": 21.5') == "malformed"
    assert reason(f.parse, "[1, 2]") == "malformed"
    assert reason(f.parse, '{"ok": true, "id": "x"}') == "not_numeric"
    assert reason(f.parse, '{"t": NaN}') == "not_numeric"
    # a failed reading next to good ones: counted, as in csv, not left out unseen
    assert reason(f.parse, '{"t": NaN, "h": 40}') == "not_numeric"
    assert reason(f.parse, '{"h": 40, "b": {"t": -Infinity}}') == "not_numeric"
    assert reason(f.parse, '{"t": 1e400, "h": 40}') == "not_numeric"
    assert reason(f.parse, '{"n": ' + "9" * 400 + ', "h": 40}') == "not_numeric"
    assert reason(f.parse, '{"a b": 1}') == "bad_name"
    # one of two values for a name was kept, the other dropped unseen
    assert reason(f.parse, '{"t": 21.5, "t": 22.5}') == "malformed"
    assert reason(f.parse, '{"b": {"v": 1}, "b.v": 2}') == "malformed"
    assert reason(f.parse, '{"b.v": 2, "b": {"v": 1}}') == "malformed"
    assert reason(f.parse, '{"b": {"v": 1, "v": 2}}') == "malformed"
    assert reason(f.parse, "[" * 3000 + "]" * 3000) == "malformed"


# -- regex ---------------------------------------------------------------------
def test_regex_named_groups_are_metrics() -> None:
    f = RegexFormat(r"^T=(?P<temperature>[-\d.]+) H=(?P<humidity>[\d.]+)(?: P=(?P<pressure>\d+))?$")
    assert f.parse("T=-2.5 H=80") == [("temperature", -2.5, ""), ("humidity", 80.0, "")]
    assert f.parse("T=1 H=2 P=1013") == [
        ("temperature", 1.0, ""), ("humidity", 2.0, ""), ("pressure", 1013.0, "")]
    assert reason(f.parse, "hello") == "no_match"
    assert reason(f.parse, "T=1.2.3 H=2") == "not_numeric"


# -- nmea ----------------------------------------------------------------------
GGA = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
RMC = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"


def test_nmea_gga() -> None:
    got = dict((m, (v, u)) for m, v, u in NmeaFormat().parse(GGA) or [])
    assert got.keys() == {"latitude", "longitude", "altitude", "fix_quality", "satellites", "hdop"}
    assert got["latitude"][0] == pytest.approx(48 + 7.038 / 60)
    assert got["longitude"][0] == pytest.approx(11 + 31.0 / 60)
    assert got["altitude"] == (545.4, "m")
    assert got["fix_quality"] == (1.0, "")
    assert got["satellites"] == (8.0, "")
    assert got["latitude"][1] == got["longitude"][1] == "deg"


def test_nmea_rmc_converts_knots_to_metres_per_second() -> None:
    got = dict((m, (v, u)) for m, v, u in NmeaFormat().parse(RMC) or [])
    assert got.keys() == {"latitude", "longitude", "speed", "course"}
    assert got["speed"][0] == pytest.approx(22.4 * 1852 / 3600)
    assert got["speed"][1] == "m/s"
    assert got["course"] == (84.4, "deg")


def test_nmea_south_and_west_are_negative_and_other_talkers_work() -> None:
    got = dict((m, v) for m, v, _ in NmeaFormat().parse(
        nmea("GNGGA,000001,3352.128,S,15112.558,W,2,12,0.7,40.0,M,,M,,")) or [])
    assert got["latitude"] == pytest.approx(-(33 + 52.128 / 60))
    assert got["longitude"] == pytest.approx(-(151 + 12.558 / 60))


def test_nmea_without_a_fix_reports_no_position() -> None:
    f = NmeaFormat()
    assert f.parse(nmea("GPGGA,000001,,,,,0,00,99.9,,M,,M,,")) == [
        ("fix_quality", 0.0, ""), ("satellites", 0.0, ""), ("hdop", 99.9, "")]
    assert f.parse(nmea("GPRMC,000001,V,,,,,,,010124,,")) is None


def test_nmea_unknown_and_proprietary_sentences_are_skipped_not_bad() -> None:
    f = NmeaFormat()
    assert f.parse(nmea("GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00")) is None
    assert f.parse(nmea("PUBX,00,081350.00,4717.113210,N")) is None


def test_nmea_bad_lines() -> None:
    f = NmeaFormat()
    assert reason(f.parse, GGA[:-2] + "48") == "checksum"
    assert reason(f.parse, GGA.replace("545.4", "545.5")) == "checksum"
    assert reason(f.parse, GGA.split("*")[0]) == "checksum"
    assert reason(f.parse, "$GPGGA,1235" + GGA) == "checksum"  # a partial line run into the next
    assert reason(f.parse, "GPGGA,123519") == "malformed"
    assert reason(f.parse, nmea("GPGGA,123519,4807.038")) == "malformed"
    gga = "GPGGA,1,{lat},{ns},01131.000,E,{q},08,0.9,545.4,M,,M,,"
    assert reason(f.parse, nmea(gga.format(lat="4807.038", ns="N", q="x"))) == "not_numeric"
    assert reason(f.parse, nmea(gga.format(lat="4877.038", ns="N", q="1"))) == "malformed"
    assert reason(f.parse, nmea(gga.format(lat="4807.038", ns="Q", q="1"))) == "malformed"
    assert reason(f.parse, nmea("GPRMC,1,X,4807.038,N,01131.000,E,0,0,010124,,")) == "malformed"
