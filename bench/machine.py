"""What the table was measured on: date, machine, Python and library versions."""

from __future__ import annotations

import datetime
import os
import platform
import time

import zmq
from google.protobuf import __version__ as protobuf_version
from google.protobuf.internal import api_implementation


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load() -> str:
    """The 1-minute load average against the core count: other work skews every row."""
    try:
        one, _, _ = os.getloadavg()
    except OSError:
        return "load unknown"
    return f"load {one:.1f} on {os.cpu_count()} cores"


def busy() -> bool:
    """Is other work using more than half the machine right now?"""
    try:
        return os.getloadavg()[0] > (os.cpu_count() or 1) / 2
    except OSError:
        return False


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine so far (Linux), else None."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def wait_quiet(cores: float = 0.3, limit_s: float = 20.0, window_s: float = 0.5) -> float:
    """Wait until the machine uses less than ``cores`` cores over ``window_s`` (the brokers
    have worked off what an earlier row left them), at most ``limit_s``; the seconds waited."""
    start = time.monotonic()
    n = os.cpu_count() or 1
    while time.monotonic() - start < limit_s:
        a = _cpu_jiffies()
        time.sleep(window_s)
        b = _cpu_jiffies()
        if a is None or b is None or b[1] == a[1]:
            break
        if (b[0] - a[0]) / (b[1] - a[1]) * n < cores:
            break
    return time.monotonic() - start


def header() -> str:
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (f"{now} · {os.cpu_count()} × {cpu_model()}, {platform.system()} {platform.release()} · "
            f"Python {platform.python_version()} · "
            f"pyzmq {zmq.__version__} / libzmq {zmq.zmq_version()} · "
            f"protobuf {protobuf_version} ({api_implementation.Type()} backend)")
