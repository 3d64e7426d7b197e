"""``sensorwire serial-sim``: a pretend serial device on a pseudo-terminal.

It creates a pty, prints the path of its device side (``/dev/pts/N``) as the
first line of standard output, and writes lines of one format to it until
SIGTERM or SIGINT, so a ``serial`` sensor can run without hardware::

    $ sensorwire serial-sim --format nmea --rate 1 --garbage 0.05
    /dev/pts/7

Like a real line, what nobody reads is lost: when the pty's buffer stays
full, new lines are dropped rather than blocking the writer.  :class:`Pty`
is also what the tests and ``bench/`` use to play a device.
"""

from __future__ import annotations

import functools
import logging
import math
import operator
import os
import random
import select
import sys
import time
import tty
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from sensorwire import sdnotify
from sensorwire.lifecycle import StopSignal

log = logging.getLogger(__name__)

FORMATS = ("csv", "kv", "json", "nmea")
CSV_FIELDS = ("temperature", "humidity", "pressure")
MAX_WAIT_S = 3600.0  # one wait between lines at most: select refuses a timeout past time_t


class Pty:
    """A pseudo-terminal: write bytes to :attr:`path` as a serial device would.

    The device side is kept open (raw mode, no echo) for as long as the pty
    lives, so readers may come and go; ``close()`` hangs it up, which a
    reader sees as the device being unplugged.
    """

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self._slave)
        self.dropped_writes = 0

    def write(self, data: bytes, timeout_s: float = 0.5) -> bool:
        """Write ``data``; False when the pty stayed full for ``timeout_s`` and the rest is lost.

        A reader that opens the port later discards what waits (pyserial flushes
        the input on open), so a full pty loses nothing anybody would have read.
        """
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.master, view) :]
                continue
            except BlockingIOError:
                pass
            _, ready, _ = select.select([], [self.master], [], timeout_s)
            if not ready:
                self.dropped_writes += 1
                return False
        return True

    def close(self) -> None:
        for fd in (self.master, self._slave):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.master = self._slave = -1

    def __enter__(self) -> Pty:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def point(link: str | Path, target: str | Path) -> None:
    """Make ``link`` a symlink to ``target``, atomically replacing what was there."""
    tmp = Path(f"{link}.new")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def nmea(body: str) -> str:
    """``body`` as a sentence with its checksum: ``$<body>*hh``."""
    return f"${body}*{functools.reduce(operator.xor, body.encode('ascii'), 0):02X}"


class Device:
    """Realistic lines of one format, changing slowly with time."""

    def __init__(self, fmt: str, rng: random.Random | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
        self.fmt = fmt
        self.rng = rng or random.Random()
        self.n = 0

    def start(self) -> list[str]:
        """What the device prints when it starts (a CSV header)."""
        return [",".join(CSV_FIELDS)] if self.fmt == "csv" else []

    def lines(self, t: float) -> list[str]:
        """The lines of one reading at ``t`` seconds (NMEA: a GGA and an RMC sentence)."""
        self.n += 1
        r = self.rng
        temp = 21.0 + 3.0 * math.sin(t / 60.0) + r.gauss(0, 0.05)
        hum = 55.0 + 10.0 * math.sin(t / 90.0) + r.gauss(0, 0.2)
        pres = 1013.0 + r.gauss(0, 0.3)
        if self.fmt == "csv":
            return [f"{temp:.2f},{hum:.1f},{pres:.1f}"]
        if self.fmt == "kv":
            pm = max(0.0, 8 + r.gauss(0, 2))
            return [f"temperature={temp:.2f} humidity={hum:.1f} pm2_5={pm:.0f} id=sim-1"]
        if self.fmt == "json":
            return [f'{{"temperature": {temp:.2f}, "humidity": {hum:.1f}, "ok": true, '
                    f'"battery": {{"volts": {3.7 + r.gauss(0, 0.01):.3f}}}, "id": "sim-1"}}']
        return self._nmea(t)

    def _nmea(self, t: float) -> list[str]:
        # a slow circle around Munich: ~30 m radius, one lap every 10 minutes
        lat = 48.1173 + 0.00027 * math.sin(t * 2 * math.pi / 600)
        lon = 11.5167 + 0.0004 * math.cos(t * 2 * math.pi / 600)
        clock = time.strftime("%H%M%S", time.gmtime()) + f".{self.n % 100:02d}"
        date = time.strftime("%d%m%y", time.gmtime())
        lat_s, ns = _ddmm(lat, 2), "N" if lat >= 0 else "S"
        lon_s, ew = _ddmm(lon, 3), "E" if lon >= 0 else "W"
        sats = 8 + self.n % 3
        alt = 520.0 + self.rng.gauss(0, 0.5)
        return [
            nmea(f"GPGGA,{clock},{lat_s},{ns},{lon_s},{ew},1,{sats:02d},0.9,{alt:.1f},M,46.9,M,,"),
            nmea(f"GPRMC,{clock},A,{lat_s},{ns},{lon_s},{ew},0.6,{(t * 0.6) % 360:.1f},{date},,"),
        ]

    def garbage(self, good: str) -> bytes:
        """A corrupt line standing in for ``good``: noise, a cut line, a bad checksum."""
        r = self.rng
        choice = r.randrange(3 if self.fmt == "nmea" else 2)
        if choice == 0:  # line noise at the wrong baud rate: not UTF-8
            noise = [r.randrange(0x80, 0x100) for _ in range(r.randrange(4, 24))]
            return bytes([0xFF, 0xFE, *noise])
        if choice == 1:  # a line cut short by a reset
            if self.fmt == "csv":
                return good[: good.index(",")].encode()  # too few columns
            if self.fmt == "kv":
                return good[: good.index("=") - 2].encode()  # a key with no value
            return good[: len(good) // 2].encode()  # json: not JSON; nmea: no checksum
        i = r.randrange(1, len(good) - 3)  # one character flipped: the checksum no longer fits
        return (good[:i] + chr(ord(good[i]) ^ 0x01) + good[i + 1 :]).encode()


def _ddmm(deg: float, width: int) -> str:
    d = int(abs(deg))
    return f"{d:0{width}d}{(abs(deg) - d) * 60:07.4f}"


def run(fmt: str, rate_hz: float, garbage: float, stop: StopSignal,
        out: TextIO = sys.stdout, clock: Callable[[], float] = time.monotonic) -> int:
    """Write lines to a new pty until ``stop``; the pty's path is the first line of ``out``."""
    device = Device(fmt)
    with Pty() as pty:
        print(pty.path, file=out, flush=True)
        sdnotify.notify(f"READY=1\nSTATUS=writing {fmt} to {pty.path}")
        log.info("writing %s lines to %s at %g Hz (%.0f%% corrupt); stop with Ctrl-C",
                 fmt, pty.path, rate_hz, garbage * 100)
        for line in device.start():
            pty.write(line.encode() + b"\r\n")
        start = clock()
        period = 1.0 / rate_hz
        n = good = bad = 0
        while not stop.is_set():
            t = clock() - start
            for line in device.lines(t):
                if device.rng.random() < garbage:
                    pty.write(device.garbage(line) + b"\r\n")
                    bad += 1
                else:
                    pty.write(line.encode() + b"\r\n")
                    good += 1
            n += 1
            # wait on the signal pipe, not stop.event: Event.set() in a signal handler
            # deadlocks when the signal lands while this thread holds the event's lock;
            # in steps select can take (a rate of 1e-300 Hz is a period of 1e300 s)
            while (left := start + n * period - clock()) > 0 and not stop.is_set():
                select.select([stop.fd], [], [], min(left, MAX_WAIT_S))
        log.info("stopped: %d good and %d corrupt lines written, %d writes dropped (nobody read)",
                 good, bad, pty.dropped_writes)
    return 0
