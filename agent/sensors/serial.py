"""``kind = "serial"``: a device that prints lines on a serial port.

The port is any path or pyserial URL (``/dev/serial/by-id/...``,
``socket://host:port``, ``rfc2217://``, ``loop://``).  Every complete line is
one reading, parsed by ``format`` (see :mod:`.lineformats`); with ``poll``
the string is written every ``interval_s`` and each answer line is a reading.

What the host may rely on:

- ``read_next`` blocks in the port's read for at most ``timeout_s``; it
  never sleeps, retries or raises for bad input.  A native port or
  ``socket://`` without ``poll`` also has ``fileno()`` and ``read_ready()``,
  so the host's own loop waits on it and reads it (a line wakes the loop
  only, not a reader thread first).  Bad lines are counted by
  reason (:meth:`SerialSensor.counters`) and logged rate-limited.
- ``open`` and ``read_next`` raise :class:`SerialPortError` when the port is
  missing or lost (USB unplugged, pty closed); the host closes the sensor and
  reopens it with backoff.  The path is resolved again on every open, so a
  re-pointed symlink or a re-enumerated ``/dev/serial/by-id/`` link works.
- After an open, the first bytes may be the tail of a line the device began
  before the port was open.  When they arrive within ``QUIET_OPEN_S`` of the
  open, they are that tail and are discarded up to the first line end; when
  the port was quiet for longer than that, the device was between lines and
  the first line is whole, so it is read like every other.  With ``poll``
  nothing is discarded, since the device speaks only when asked.

pyserial opens and configures every port.  Native ports and ``socket://``
are then read straight from their descriptor (one ``select`` and one
``read`` per burst of bytes, which is what pyserial's own read does, without
its per-call overhead); other URL handlers are read through pyserial.
pyserial is imported only when a port is opened or listed.
"""

from __future__ import annotations

import logging
import os
import re
import select
import time
from collections.abc import Sequence
from typing import Annotated, Any

import msgspec

from sensorwire.agent.sensors import Reading, SensorConfig, SensorKind
from sensorwire.agent.sensors.lineformats import (
    BadLine,
    CsvFormat,
    JsonFormat,
    KvFormat,
    LineSplitter,
    NmeaFormat,
    RegexFormat,
    decode,
)
from sensorwire.logs import RateLimited
from sensorwire.names import metric_problem, unit_problem

log = logging.getLogger(__name__)
_bad_log = RateLimited(log, period_s=10.0)

FORMATS = ("csv", "kv", "json", "nmea", "regex")
PARITIES = ("N", "E", "O", "M", "S")
STOPBITS = (1, 1.5, 2)
BYTESIZES = (5, 6, 7, 8)
BAUDRATE_MAX = (1 << 31) - 1  # pyserial hands it to the kernel as a C int
WRITE_TIMEOUT_S = 1.0
READ_MAX = 4096
# bytes that arrive this soon after an open may be the rest of a line in flight then (a
# device mid-line sends its next byte within a character time, plus a USB adapter's
# latency timer: 16 ms on FTDI's default); after a longer quiet, the first line is whole
QUIET_OPEN_S = 0.1
# native POSIX ports and socket://; other handlers (loop://, rfc2217://, spy://) read via pyserial
_FD_READERS = ("serial.serialposix", "serial.urlhandler.protocol_socket")


class SerialPortError(Exception):
    """The port cannot be opened or was lost; retryable (the host reopens it with backoff)."""


# pyserial's URL handlers (serial.serial_for_url); a path has no "://"
URL_SCHEMES = ("socket", "rfc2217", "loop", "spy", "hwgrep", "alt", "cp2110")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^:/?#\s]+):(\d{1,5})(?:[/?#].*)?$")


def url_problem(port: str) -> str | None:
    """What is wrong with ``port`` as a pyserial URL (None for a path or a good URL): a
    mistake here would otherwise be retried for ever at run time."""
    scheme, sep, rest = port.partition("://")
    if not sep:
        return None
    if scheme not in URL_SCHEMES:
        return (f"{port!r}: unknown URL scheme {scheme!r} (pyserial knows "
                f"{', '.join(s + '://' for s in URL_SCHEMES)}; a device is a path such as /dev/ttyUSB0)")
    if scheme in ("socket", "rfc2217"):
        m = _HOST_PORT.match(rest)
        if m is None or not 0 < int(m.group(2)) < 65536:
            return f"{port!r}: expected {scheme}://HOST:PORT, e.g. {scheme}://192.0.2.7:4000"
    if scheme == "rfc2217":
        return _rfc2217_options_problem(port, rest.partition("?")[2])
    return None


def _rfc2217_options_problem(port: str, query: str) -> str | None:
    """pyserial's rfc2217:// options: ``timeout=S`` (for each answer of the server, 3 s unless
    given), ``logging=LEVEL``, ``ign_set_control``, ``poll_modem``."""
    from urllib.parse import parse_qs

    for option, values in parse_qs(query, keep_blank_values=True).items():
        if option == "timeout":
            try:
                ok = 0 < float(values[0]) < 3600
            except ValueError:
                ok = False
            if not ok:
                return f"{port!r}: timeout={values[0]!r}: expected seconds, e.g. timeout=0.5"
        elif option == "logging":
            if values[0] not in ("debug", "info", "warning", "error"):
                return f"{port!r}: logging={values[0]!r}: expected debug, info, warning or error"
        elif option not in ("ign_set_control", "poll_modem"):
            return (f"{port!r}: unknown rfc2217 option {option!r} (pyserial knows timeout, "
                    "logging, ign_set_control, poll_modem)")
    return None


class SerialConfig(SensorConfig, kw_only=True):
    port: str
    format: str
    baudrate: Annotated[int, msgspec.Meta(gt=0, le=BAUDRATE_MAX)] = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1.0
    fields: list[str] = []
    units: dict[str, str] = {}
    delimiter: str = ","
    pair_separator: str = " "
    kv_separator: str = "="
    pattern: str | None = None
    poll: str | None = None
    max_line_bytes: Annotated[int, msgspec.Meta(gt=0, le=1 << 20)] = 4096

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.port.strip():
            raise ValueError("port: must not be empty (a device path such as /dev/ttyUSB0, "
                             "or a pyserial URL)")
        problem = url_problem(self.port)
        if problem:
            raise ValueError(f"port: {problem}")
        if self.format not in FORMATS:
            raise ValueError(f"format: {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.bytesize not in BYTESIZES:
            raise ValueError(f"bytesize: {self.bytesize} is not one of 5, 6, 7, 8")
        if self.parity not in PARITIES:
            raise ValueError(f"parity: {self.parity!r} is not one of "
                             "N (none), E (even), O (odd), M (mark), S (space)")
        if self.stopbits not in STOPBITS:
            raise ValueError(f"stopbits: {self.stopbits:g} is not one of 1, 1.5, 2")
        if self.poll == "":
            raise ValueError("poll: must not be empty (leave it out for a device that "
                             "prints by itself)")
        for metric, unit in self.units.items():
            problem = metric_problem(metric)
            if problem:
                raise ValueError(f"units: metric {metric!r} {problem}")
            problem = unit_problem(unit)
            if problem:
                raise ValueError(f"units: the unit of {metric!r} {problem}")
        self._check_format_keys()
        known = self.metrics()
        if known is not None:
            for metric in self.units:
                if metric not in known:
                    raise ValueError(f"units: {metric!r} is not a metric of this sensor "
                                     f"(a typo? its metrics: {', '.join(sorted(known))})")

    def _check_format_keys(self) -> None:
        only = {"fields": "csv", "delimiter": "csv", "pair_separator": "kv",
                "kv_separator": "kv", "pattern": "regex"}
        defaults: dict[str, object] = {"fields": [], "delimiter": ",", "pair_separator": " ",
                    "kv_separator": "=", "pattern": None}
        for key, fmt in only.items():
            if self.format != fmt and getattr(self, key) != defaults[key]:
                raise ValueError(f'{key}: only used with format = "{fmt}"')
        if self.format == "csv":
            if not any(self.fields):
                raise ValueError('fields: format = "csv" needs the metric name of each column, '
                                 'e.g. fields = ["temperature", "humidity"] ("" skips a column)')
            seen: set[str] = set()
            for name in self.fields:
                if not name:
                    continue
                problem = metric_problem(name)
                if problem:
                    raise ValueError(f"fields: {name!r} {problem}")
                if name in seen:
                    raise ValueError(f"fields: {name!r} is listed twice")
                seen.add(name)
            _check_separator("delimiter", self.delimiter)
        elif self.format == "kv":
            _check_separator("pair_separator", self.pair_separator)
            _check_separator("kv_separator", self.kv_separator)
            pair, kv = self.pair_separator, self.kv_separator
            if kv in pair or pair in kv or (pair.isspace() and kv.isspace()):
                raise ValueError(f"kv_separator: {self.kv_separator!r} must differ from "
                                 f"pair_separator {self.pair_separator!r}")
        elif self.format == "regex":
            if self.pattern is None:
                raise ValueError('pattern: format = "regex" needs a pattern with named groups, '
                                 r"e.g. '^T=(?P<temperature>[-\d.]+)$'")
            try:
                compiled = re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern: does not compile: {exc}") from None
            if not compiled.groupindex:
                raise ValueError("pattern: has no named groups; name each value, "
                                 r"e.g. (?P<temperature>[-\d.]+)")
            for name in compiled.groupindex:
                problem = metric_problem(name)
                if problem:
                    raise ValueError(f"pattern: group {name!r} {problem}")

    def metrics(self) -> set[str] | None:
        """The metric names this sensor can produce; None when the device decides (kv, json)."""
        if self.format == "csv":
            return {f for f in self.fields if f}
        if self.format == "regex" and self.pattern is not None:
            return set(re.compile(self.pattern).groupindex)
        if self.format == "nmea":
            return set(NmeaFormat.UNITS)
        return None


def _check_separator(key: str, value: str) -> None:
    if not value:
        raise ValueError(f"{key}: must not be empty")
    if "\r" in value or "\n" in value:
        raise ValueError(f"{key}: must not hold a line end")


LineFormat = CsvFormat | KvFormat | JsonFormat | NmeaFormat | RegexFormat


def make_format(config: SerialConfig) -> LineFormat:
    if config.format == "csv":
        return CsvFormat(config.fields, config.delimiter)
    if config.format == "kv":
        return KvFormat(config.pair_separator, config.kv_separator)
    if config.format == "json":
        return JsonFormat()
    if config.format == "nmea":
        return NmeaFormat()
    assert config.pattern is not None  # checked in SerialConfig
    return RegexFormat(config.pattern)


class SerialSensor:
    """Reads lines from one serial port; used by one host thread at a time."""

    def __init__(self, config: SerialConfig) -> None:
        self.config = config
        self._format = make_format(config)
        self._units = config.units
        self._lines = LineSplitter(config.max_line_bytes)
        self._poll = config.poll.encode("utf-8") if config.poll is not None else None
        self._next_poll = 0.0
        self._port: Any = None
        self._fd: int | None = None  # a native port's descriptor, read directly
        self._opened_at: float | None = None  # an open whose first bytes have not come yet
        self._timeout: float | None = None
        self._bad: dict[str, int] = {}
        self._bad_total = 0
        self._awaiting = False  # poll: written, and nothing came back since
        self._unanswered = 0

    # -- the StreamSensor interface -----------------------------------------
    def open(self) -> None:
        import serial  # pyserial: only agents with a serial sensor load it

        self.close()
        c = self.config
        # pyserial's rfc2217:// refuses any write timeout (NotImplementedError, after the
        # negotiation): its writes wait at most its socket's timeout, 5 s
        write_timeout = None if c.port.startswith("rfc2217://") else WRITE_TIMEOUT_S
        try:
            self._port = serial.serial_for_url(
                c.port, baudrate=c.baudrate, bytesize=c.bytesize, parity=c.parity,
                stopbits=int(c.stopbits) if c.stopbits.is_integer() else c.stopbits,
                timeout=0.5, write_timeout=write_timeout, exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise SerialPortError(f"cannot open {c.port}: {exc}") from exc
        self._timeout = 0.5
        # ports whose pyserial read is select + read on one descriptor are read directly
        self._fd = self._port.fileno() if type(self._port).__module__ in _FD_READERS else None
        if self._poll is None:
            self._lines.resync()  # until the first bytes show whether a line was in flight
            self._opened_at = time.monotonic()
        else:
            self._lines.reset()
            self._next_poll = time.monotonic()
            self._awaiting = False
        log.debug("sensor %s: opened %s", c.name, c.port)

    def read_next(self, timeout_s: float) -> Sequence[Reading] | None:
        """The next good line's readings, or None after about ``timeout_s`` without one.

        A read may overrun the deadline by a quarter of what was left (see ``_read``).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            readings = self._next_reading()
            if readings is not None:
                return readings
            now = time.monotonic()
            wait = deadline - now
            if self._poll is not None:
                if now >= self._next_poll:
                    self._send_poll(now)
                wait = min(wait, self._next_poll - now)
            if now >= deadline:
                return None
            self._feed(self._read(max(0.0, wait)))

    # -- read from the host's own loop (optional, see StreamSensor) ----------
    def fileno(self) -> int | None:
        """The descriptor the host may wait on instead of calling :meth:`read_next` in a
        thread: a native port or ``socket://`` that prints by itself; None otherwise (not
        open, read through pyserial, or with ``poll``, which must be written on a schedule)."""
        return self._fd if self._poll is None else None

    def read_ready(self) -> list[Sequence[Reading]]:
        """The readings of every complete good line in what waits on the port now; never
        blocks.  Raises :class:`SerialPortError` when the port is lost."""
        fd = self._fd
        if fd is None:
            raise SerialPortError(f"{self.config.port}: not open")
        self._feed(self._read_fd(fd, 0.0))
        out: list[Sequence[Reading]] = []
        while (readings := self._next_reading()) is not None:
            out.append(readings)
        return out

    def close(self) -> None:
        port, self._port = self._port, None
        self._fd = None
        if port is not None:
            try:
                port.close()
            except Exception as exc:  # noqa: BLE001 - closing a lost port may fail; it is gone either way
                log.debug("sensor %s: close: %s", self.config.name, exc)

    def counters(self) -> dict[str, int]:
        """``bad_lines`` and ``bad_lines.<reason>`` since the sensor was created; with
        ``poll``, ``unanswered_polls``: polls after which nothing came before the next."""
        out = {"bad_lines": self._bad_total}
        for reason, n in list(self._bad.items()):
            out[f"bad_lines.{reason}"] = n
        if self._poll is not None:
            out["unanswered_polls"] = self._unanswered
        return out

    # -- inside -----------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        """Hand read bytes to the line splitter; the first after an open decide whether the
        line they begin is whole (see the module's docstring)."""
        if data and self._opened_at is not None:
            if time.monotonic() - self._opened_at >= QUIET_OPEN_S:
                self._lines.reset()  # nothing was in flight when the port opened
            self._opened_at = None
        if data:
            self._awaiting = False
        self._lines.feed(data)

    def _next_reading(self) -> list[Reading] | None:
        """The readings of the next good buffered line; None when no complete line waits."""
        while True:
            line = b""
            try:
                got = self._lines.next()
                if got is None:
                    return None
                line = got
                text = decode(line)
                if not text:
                    continue  # blank: nothing but whitespace
                parsed = self._format.parse(text)
            except BadLine as exc:
                self._count(exc, line)
                continue
            if parsed:
                if self._units:
                    return [(m, v, self._units.get(m, u)) for m, v, u in parsed]
                return parsed

    def _count(self, exc: BadLine, line: bytes) -> None:
        self._bad[exc.reason] = self._bad.get(exc.reason, 0) + 1
        self._bad_total += 1
        shown = f" in {line[:60]!r}" if line else ""
        _bad_log.warning(f"{self.config.name}:{exc.reason}",
                         "sensor %s: bad line (%s): %s%s; %d bad lines so far",
                         self.config.name, exc.reason, exc.detail, shown, self._bad_total)

    def _read(self, wait: float) -> bytes:
        """What arrives within ``wait`` seconds (b"" when nothing does)."""
        if self._fd is not None:
            return self._read_fd(self._fd, wait)
        import serial

        port = self._port
        if port is None:
            raise SerialPortError(f"{self.config.port}: not open")
        try:
            # setting pyserial's timeout reconfigures the port (a tcgetattr at least):
            # keep it while it is at most a quarter longer than the wait
            if self._timeout is None or not wait <= self._timeout <= wait * 1.25:
                port.timeout = wait
                self._timeout = wait
            started = time.monotonic()
            data: bytes = port.read(port.in_waiting or 1)
        except (serial.SerialException, OSError) as exc:
            raise SerialPortError(f"{self.config.port}: lost: {exc}") from exc
        if not data and self._timeout >= 0.02 and time.monotonic() - started < self._timeout / 2:
            # no data long before the timeout: end of input (a closed socket or pty)
            raise SerialPortError(f"{self.config.port}: lost: end of input")
        return data

    def _read_fd(self, fd: int, wait: float) -> bytes:
        """A native port: one select and one read per burst, what pyserial's read does
        inside, without its per-call overhead (this is the hot path at high line rates)."""
        try:
            ready, _, _ = select.select([fd], [], [], wait)
            if not ready:
                return b""
            data = os.read(fd, READ_MAX)
        except (BlockingIOError, InterruptedError):
            return b""
        except (OSError, ValueError) as exc:
            raise SerialPortError(f"{self.config.port}: lost: {exc}") from exc
        if not data:  # readable but empty: hung up (unplugged, or the pty's other side closed)
            raise SerialPortError(f"{self.config.port}: lost: end of input")
        return data

    def _send_poll(self, now: float) -> None:
        import serial

        assert self._poll is not None
        if self._port is None:
            raise SerialPortError(f"{self.config.port}: not open")
        if self._awaiting:  # the last poll got nothing back, not even a bad line
            self._unanswered += 1
            _bad_log.warning(f"{self.config.name}:unanswered",
                             "sensor %s: no answer to the poll %r within interval_s (%g s); "
                             "%d unanswered so far", self.config.name, self.config.poll,
                             self.config.interval_s, self._unanswered)
        try:
            self._port.write(self._poll)
        except (serial.SerialException, OSError) as exc:
            raise SerialPortError(
                f"{self.config.port}: cannot write the poll string: {exc}") from exc
        self._awaiting = True
        interval = self.config.interval_s
        self._next_poll += interval
        if self._next_poll <= now:  # fell behind: skip missed polls, don't burst
            self._next_poll = now + interval


KIND = SensorKind("serial", SerialConfig, SerialSensor, streaming=True)


# -- sensorwire serial list ----------------------------------------------------------
class PortInfo(msgspec.Struct, frozen=True):
    device: str
    by_id: str  # the stable /dev/serial/by-id/ link, "" when there is none
    description: str
    vid_pid: str  # "2341:0043", "" when not USB


def list_ports() -> list[PortInfo]:
    """The serial ports of this machine, sorted by device path."""
    import glob  # only `sensorwire serial list` needs it, never a running agent

    from serial.tools import list_ports as pyserial_list

    by_id: dict[str, str] = {}
    for link in sorted(glob.glob("/dev/serial/by-id/*")):
        by_id.setdefault(os.path.realpath(link), link)
    out: list[PortInfo] = []
    for p in pyserial_list.comports():
        vid_pid = f"{p.vid:04x}:{p.pid:04x}" if p.vid is not None and p.pid is not None else ""
        description = p.description if p.description and p.description != "n/a" else ""
        stable = by_id.get(os.path.realpath(p.device), "")
        out.append(PortInfo(p.device, stable, description, vid_pid))
    return sorted(out, key=lambda i: i.device)
