"""Logging set-up, done once in ``main()``: stderr only, journald-aware.

Under systemd (``JOURNAL_STREAM`` set, and naming our stderr) lines carry
syslog priority prefixes (``<3>``) and no timestamps of their own, so
``journalctl -p err`` works; every line of a multi-line message (a traceback)
carries the prefix, as journald makes each line an entry of its own.  On a
terminal lines carry a timestamp and the level.
"""

from __future__ import annotations

import logging
import os
import sys
import time

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}

LEVELS = ("debug", "info", "warning", "error", "critical")


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        text = f"{record.name}: {super().format(record)}"
        return "\n".join(f"<{prio}>{line}" for line in text.split("\n"))


def _journal_stream(stream: object) -> bool:
    """Is ``stream`` the journal stream systemd gave us (``JOURNAL_STREAM=dev:inode``)?

    Checked against the stream itself, as systemd asks: a child whose stderr
    was redirected elsewhere inherits the variable but not the journal.
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def setup(level: str = "info", stream: object = None) -> None:
    """Route the ``sensorwire`` loggers to stderr at ``level``."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    if _journal_stream(handler.stream):
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        fmt = logging.Formatter(
            "%(asctime)s.%(msecs)03dZ %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
        )
        fmt.converter = time.gmtime
        handler.setFormatter(fmt)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


class RateLimited:
    """Logs at most one message per ``key`` every ``period_s``; counts the rest.

    The next message that gets through says how many were suppressed, so a
    flood of bad input is visible without one log line per bad reading.
    """

    def __init__(self, logger: logging.Logger, period_s: float = 10.0) -> None:
        self._log = logger
        self._period = period_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: object) -> None:
        self.log(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args: object) -> None:
        self.log(logging.ERROR, key, msg, *args)

    def log(self, level: int, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._period:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        if len(self._last) > 1024:  # keys may be device names: made-up ones must not grow memory
            self._last.clear()
            self._suppressed.clear()
        self._last[key] = now
        hidden = self._suppressed.pop(key, 0)
        if hidden:
            self._log.log(level, msg + " (and %d more like it in the last %.0f s)", *args, hidden,
                          self._period)
        else:
            self._log.log(level, msg, *args)
