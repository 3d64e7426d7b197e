"""Turning the lines a serial device prints into readings: pure functions, no I/O.

:class:`LineSplitter` cuts a byte stream into lines; :func:`decode` makes a
line text; one parser class per ``format`` turns the text into readings.  A
parser's ``parse(text)`` returns the line's readings, ``None`` for a line that
is fine but carries no reading (a CSV header, an NMEA sentence type nobody
asked for), or raises :class:`BadLine`.

``BadLine.reason`` is a short, stable word used as a counter label:

``undecodable``  not UTF-8, or holds control characters (line noise, wrong baud rate)
``too_long``     more than ``max_line_bytes`` without a line end
``columns``      csv: not as many columns as ``fields``
``not_numeric``  a value that must be a number is not (csv column, regex group), a failed
                 reading (nan, inf, 1e400) in csv, kv or json,
                 or a kv/json line has no numeric value at all
``checksum``     nmea: the checksum is missing or wrong
``malformed``    not the shape of the format (bad JSON, a kv pair without its
                 separator, a key given twice, an NMEA sentence with missing fields)
``no_match``     regex: the pattern does not match
``bad_name``     kv/json: a key that cannot be a metric name
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

from sensorwire.agent.sensors import Reading
from sensorwire.names import metric_problem

_LINE_END = re.compile(rb"[\r\n]")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\Z", re.ASCII)

KNOTS_TO_M_S = 1852.0 / 3600.0


class BadLine(Exception):
    """A line that yields no reading because it is wrong; ``reason`` labels a counter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


_FAILED_READING = {"nan", "inf", "infinity", "ovf"}  # printf/Arduino for a reading that failed


def number(text: str) -> float | None:
    """``text`` as a finite number, or None (``nan``, ``inf``, ``1_000``, ``0x1f`` are not)."""
    text = text.strip()
    if not _NUMBER.match(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def _reading_like(text: str) -> bool:
    """Whether ``text`` is a reading even when no number: a failed one's ``nan`` or ``inf``,
    or a number too large for a float (``1e400``, a 400-digit count)."""
    text = text.strip()
    return text.lower().lstrip("+-") in _FAILED_READING or _NUMBER.match(text) is not None


def decode(line: bytes) -> str:
    """A line's text without surrounding whitespace; BadLine("undecodable") for noise."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadLine("undecodable",
                      f"byte {line[exc.start]:#04x} at {exc.start} is not UTF-8") from None
    m = _CONTROL.search(text)
    if m:
        raise BadLine("undecodable", f"control character {m.group()!r} at {m.start()}")
    return text.strip()


class LineSplitter:
    """Cuts a byte stream into lines ended by ``\\n``, ``\\r`` or ``\\r\\n``.

    ``next()`` returns the next complete, non-empty line without its end, or
    None when no complete line is waiting.  A line longer than
    ``max_line_bytes`` raises ``BadLine("too_long")`` once, and the rest of
    it, up to its line end, is discarded.  ``resync()`` discards everything
    up to the next line end: after a port opens, the first bytes may be the
    tail of a line the device started earlier.  A tail is no longer than a
    line: past ``max_line_bytes`` it is ``too_long`` like any other.
    """

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no line end
        self._discarding = False
        self._tail: int | None = None  # after resync(): bytes of the tail discarded so far

    def feed(self, data: bytes) -> None:
        self._buf += data

    def pending(self) -> int:
        """Bytes of an incomplete line held (discarded bytes not counted)."""
        return 0 if self._discarding else len(self._buf)

    def reset(self) -> None:
        """Forget everything held, e.g. after the port was closed."""
        self._buf.clear()
        self._scanned = 0
        self._discarding = False
        self._tail = None

    def resync(self) -> None:
        self.reset()
        self._discarding = True
        self._tail = 0

    def next(self) -> bytes | None:
        buf = self._buf
        while True:
            m = _LINE_END.search(buf, self._scanned)
            if m is None:
                if self._discarding:
                    size = len(buf)
                    buf.clear()
                    self._scanned = 0
                    self._discard_tail(size)
                    return None
                self._scanned = len(buf)
                if len(buf) > self.max_line_bytes:
                    size = len(buf)
                    buf.clear()
                    self._scanned = 0
                    self._discarding = True
                    raise BadLine("too_long", f"{size} bytes and no line end "
                                              f"(max_line_bytes = {self.max_line_bytes})")
                return None
            end = m.start()
            line = bytes(buf[:end])
            del buf[: end + 1]
            self._scanned = 0
            if self._discarding:
                self._discarding = False
                self._discard_tail(end)
                self._tail = None
                continue
            if not line:
                continue  # the \n of \r\n, or a blank line
            if len(line) > self.max_line_bytes:
                raise BadLine("too_long",
                              f"{len(line)} bytes (max_line_bytes = {self.max_line_bytes})")
            return line

    def _discard_tail(self, size: int) -> None:
        """Count ``size`` more bytes of the tail after a resync; one longer than a line was
        none (a device that never ends its lines) and is reported once, as too_long."""
        if self._tail is None:
            return  # the rest of a line already reported
        self._tail += size
        if self._tail > self.max_line_bytes:
            size, self._tail = self._tail, None
            raise BadLine("too_long", f"{size} bytes and no line end since the port opened "
                                      f"(max_line_bytes = {self.max_line_bytes})")


# -- formats -------------------------------------------------------------------
class CsvFormat:
    """One reading per line; column *i* is the metric ``fields[i]`` ("" skips it).

    A line none of whose cells is a number, with as many cells as ``fields``,
    is a header and is skipped wherever it appears, unless a cell is a failed
    reading's ``nan`` or ``inf`` (what Arduino code prints when a sensor does
    not answer) or a number too large for a float (``1e400``): that is a bad
    line (``not_numeric``), counted, so a failing sensor does not go quiet unseen.
    With one column, where any text has a header's shape, the header is one
    word (a valid metric name): a device's messages are bad lines, as they are
    with more columns.  A whitespace delimiter splits on runs of whitespace.
    """

    def __init__(self, fields: Sequence[str], delimiter: str = ",") -> None:
        self.fields = list(fields)
        self.delimiter: str | None = None if delimiter.isspace() else delimiter

    def parse(self, text: str) -> list[Reading] | None:
        cells = text.split(self.delimiter)
        if len(cells) != len(self.fields):
            raise BadLine("columns", f"{len(cells)} columns, expected {len(self.fields)}")
        values = [number(c) for c in cells]
        if (all(v is None for v in values) and not any(_reading_like(c) for c in cells)
                and (len(cells) > 1 or metric_problem(cells[0].strip()) is None)):
            return None  # a header
        out: list[Reading] = []
        for i, (name, value) in enumerate(zip(self.fields, values, strict=True)):
            if not name:
                continue
            if value is None:
                raise BadLine("not_numeric", f"column {i + 1} ({name}): {cells[i].strip()[:40]!r}")
            out.append((name, value, ""))
        return out


class KvFormat:
    """``temp=21.5 hum=40``: every pair with a numeric value is a metric.

    Pairs with other values (``id=A7``, ``t=21.5C``) are left out; a line
    with no numeric value at all is bad, and so is one with a failed reading
    (``nan``, ``inf``, a number too large for a float), as in csv, or with a
    key given twice.  A whitespace ``pair_separator`` splits on runs of
    whitespace.
    """

    def __init__(self, pair_separator: str = " ", kv_separator: str = "=") -> None:
        self.pair_separator: str | None = None if pair_separator.isspace() else pair_separator
        self.kv_separator = kv_separator

    def parse(self, text: str) -> list[Reading] | None:
        found: dict[str, float] = {}
        for pair in text.split(self.pair_separator):
            pair = pair.strip()
            if not pair:
                continue
            key, sep, raw = pair.partition(self.kv_separator)
            if not sep:
                raise BadLine("malformed", f"{pair[:40]!r} has no {self.kv_separator!r}")
            value = number(raw)
            if value is None:
                if _reading_like(raw):
                    raise BadLine("not_numeric", f"{key.strip()[:40]!r}: a failed reading "
                                                 f"{raw.strip()[:20]!r}")
                continue
            key = key.strip()
            _check_key(key)
            if key in found:
                raise BadLine("malformed", f"key {key[:40]!r} given twice")
            found[key] = value
        if not found:
            raise BadLine("not_numeric", "no numeric value in the line")
        return [(k, v, "") for k, v in found.items()]


class JsonFormat:
    """One JSON object per line; every number is a metric, nested keys joined by ``.``.

    Booleans, strings, nulls and lists are left out; a line with no number at
    all is bad, and so is one with a failed reading (``NaN``, ``Infinity``, a
    number too large for a float), as in csv, or with a metric given twice.
    """

    def parse(self, text: str) -> list[Reading] | None:
        try:
            obj = json.loads(text, object_pairs_hook=_json_object)
        except (ValueError, RecursionError) as exc:
            raise BadLine("malformed", f"not JSON: {str(exc)[:60]}") from None
        if not isinstance(obj, dict):
            raise BadLine("malformed", f"a JSON {type(obj).__name__}, not an object")
        found: dict[str, float] = {}
        stack: list[tuple[str, dict[str, object]]] = [("", obj)]
        while stack:
            prefix, node = stack.pop()
            for key, value in node.items():
                name = prefix + key
                if isinstance(value, dict):
                    stack.append((name + ".", value))
                elif isinstance(value, int | float) and not isinstance(value, bool):
                    try:
                        v = float(value)
                    except OverflowError:
                        v = math.inf
                    if not math.isfinite(v):
                        raise BadLine("not_numeric", f"{name[:40]!r}: a failed reading "
                                                     "(NaN, Infinity, or too large for a float)")
                    _check_key(name)
                    if name in found:  # {"b.v": 1, "b": {"v": 2}}
                        raise BadLine("malformed", f"key {name[:40]!r} given twice")
                    found[name] = v
        if not found:
            raise BadLine("not_numeric", "no numeric field in the object")
        return [(k, v, "") for k, v in found.items()]


def _json_object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """An object's pairs as a dict; a key given twice is a bad line, not one value lost."""
    obj: dict[str, object] = {}
    for key, value in pairs:
        if key in obj:
            raise BadLine("malformed", f"key {key[:40]!r} given twice")
        obj[key] = value
    return obj


class RegexFormat:
    """The pattern is searched in each line; its named groups are the metrics.

    A group that did not take part in the match is left out.
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = re.compile(pattern)

    def parse(self, text: str) -> list[Reading] | None:
        m = self.pattern.search(text)
        if m is None:
            raise BadLine("no_match", f"{text[:60]!r}")
        out: list[Reading] = []
        for name, raw in m.groupdict().items():
            if raw is None:
                continue
            value = number(raw)
            if value is None:
                raise BadLine("not_numeric", f"{name}: {raw[:40]!r}")
            out.append((name, value, ""))
        if not out:
            raise BadLine("not_numeric", "no group took part in the match")
        return out


class NmeaFormat:
    """NMEA 0183 with checksum verification; GGA and RMC give readings.

    Every sentence's checksum is verified first (a wrong or missing one is a
    bad line); then sentence types other than GGA and RMC, and proprietary
    sentences (``$P...``), are skipped.  Positions are signed decimal degrees
    (south and west negative) and are reported only with a fix (GGA quality
    > 0, RMC status ``A``).
    """

    UNITS = {
        "latitude": "deg",
        "longitude": "deg",
        "altitude": "m",
        "speed": "m/s",
        "course": "deg",
        "fix_quality": "",
        "satellites": "",
        "hdop": "",
    }

    def parse(self, text: str) -> list[Reading] | None:
        if not text.startswith("$"):
            raise BadLine("malformed", f"does not start with '$': {text[:40]!r}")
        star = text.rfind("*")
        if star < 0:
            raise BadLine("checksum", "no checksum")
        body, given = text[1:star], text[star + 1 :]
        try:
            want = int(given, 16) if len(given) == 2 else -1
            got = 0
            for b in body.encode("ascii"):
                got ^= b
        except (ValueError, UnicodeEncodeError):
            raise BadLine("checksum",
                          f"{given[:8]!r} is not a checksum, or the text is not ASCII") from None
        if got != want:
            raise BadLine("checksum", f"*{given[:8]!r} given, *{got:02X} computed")
        fields = body.split(",")
        address = fields[0]
        if len(address) < 5 or address.startswith("P"):
            return None  # proprietary or unknown
        kind = address[-3:]
        if kind == "GGA":
            return self._gga(fields)
        if kind == "RMC":
            return self._rmc(fields)
        return None

    def _gga(self, f: list[str]) -> list[Reading] | None:
        # $--GGA,time,lat,N/S,lon,E/W,quality,satellites,hdop,altitude,M,...
        if len(f) < 10:
            raise BadLine("malformed", f"GGA with {len(f)} fields, expected at least 10")
        found: list[tuple[str, float]] = []
        quality = _optional(f[6], "fix_quality")
        for name, i in (("fix_quality", 6), ("satellites", 7), ("hdop", 8)):
            v = _optional(f[i], name)
            if v is not None:
                found.append((name, v))
        if quality:
            if f[2] and f[4]:
                found.append(("latitude", _coordinate(f[2], f[3], "NS", 90.0)))
                found.append(("longitude", _coordinate(f[4], f[5], "EW", 180.0)))
            alt = _optional(f[9], "altitude")
            if alt is not None:
                found.append(("altitude", alt))
        return self._readings(found)

    def _rmc(self, f: list[str]) -> list[Reading] | None:
        # $--RMC,time,status,lat,N/S,lon,E/W,speed_knots,course,date,...
        if len(f) < 10:
            raise BadLine("malformed", f"RMC with {len(f)} fields, expected at least 10")
        if f[2] == "V":
            return None  # no fix: nothing to report
        if f[2] != "A":
            raise BadLine("malformed", f"RMC status {f[2][:8]!r}, expected A or V")
        found: list[tuple[str, float]] = [
            ("latitude", _coordinate(f[3], f[4], "NS", 90.0)),
            ("longitude", _coordinate(f[5], f[6], "EW", 180.0)),
        ]
        knots = _optional(f[7], "speed")
        if knots is not None:
            found.append(("speed", knots * KNOTS_TO_M_S))
        course = _optional(f[8], "course")
        if course is not None:
            found.append(("course", course))
        return self._readings(found)

    def _readings(self, found: list[tuple[str, float]]) -> list[Reading] | None:
        return [(name, v, self.UNITS[name]) for name, v in found] or None


def _optional(text: str, what: str) -> float | None:
    if not text:
        return None
    value = number(text)
    if value is None:
        raise BadLine("not_numeric", f"{what}: {text[:20]!r}")
    return value


def _coordinate(text: str, hemisphere: str, signs: str, limit: float) -> float:
    """``ddmm.mmmm`` (``dddmm.mmmm`` for longitude) and N/S/E/W as signed degrees."""
    value = number(text)
    if value is None or value < 0:
        raise BadLine("not_numeric", f"coordinate {text[:20]!r}")
    degrees = math.floor(value / 100.0)
    minutes = value - degrees * 100.0
    result = degrees + minutes / 60.0
    if minutes >= 60.0 or result > limit:
        raise BadLine("malformed", f"coordinate {text[:20]!r} out of range")
    if hemisphere not in (signs[0], signs[1]):
        raise BadLine("malformed", f"hemisphere {hemisphere[:4]!r}, expected {' or '.join(signs)}")
    return -result if hemisphere == signs[1] else result


def _check_key(key: str) -> None:
    problem = metric_problem(key)
    if problem:
        raise BadLine("bad_name", f"key {key[:40]!r} {problem}")
