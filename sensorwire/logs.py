"""Logging set-up, done once in ``main()``: stderr only, journald-aware.

Under systemd (``JOURNAL_STREAM`` set) lines carry syslog priority prefixes
(``<3>``) and no timestamps of their own, so ``journalctl -p err`` works; on a
terminal they carry a timestamp and the level.
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
        return f"<{prio}>{record.name}: {super().format(record)}"


def setup(level: str = "info", stream: object = None) -> None:
    """Route the ``sensorwire`` loggers to stderr at ``level``."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    if os.environ.get("JOURNAL_STREAM"):
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
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._period:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        if len(self._last) > 1024:
            self._last.clear()
        self._last[key] = now
        hidden = self._suppressed.pop(key, 0)
        if hidden:
            self._log.warning(msg + " (and %d more like it in the last %.0f s)", *args, hidden, self._period)
        else:
            self._log.warning(msg, *args)
