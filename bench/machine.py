"""What the table was measured on: date, machine, Python and library versions."""

from __future__ import annotations

import datetime
import os
import platform

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


def header() -> str:
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (f"{now} · {os.cpu_count()} × {cpu_model()}, {platform.system()} {platform.release()} · "
            f"Python {platform.python_version()} · "
            f"pyzmq {zmq.__version__} / libzmq {zmq.zmq_version()} · "
            f"protobuf {protobuf_version} ({api_implementation.Type()} backend)")
