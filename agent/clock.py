"""Is this device's clock synchronised?

A Raspberry Pi has no real-time clock: it boots in the past and is right only
once NTP has synchronised it.  Two signs:

1. where systemd-timesyncd runs (the default on Raspberry Pi OS; its folder
   ``/run/systemd/timesync`` exists), its marker file ``synchronized``;
2. elsewhere (chrony, ntpd), the kernel's NTP state: ``adjtimex(2)`` returns
   ``TIME_ERROR`` (5) while the clock is unsynchronised.  That needs ctypes,
   2.4 MB of memory, so it is loaded only on such machines, at the first check.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

TIMESYNC_DIR = "/run/systemd/timesync"
_TIME_ERROR = 5


class ClockState:
    def __init__(self, timesync_dir: str = TIMESYNC_DIR) -> None:
        self.marker = os.path.join(timesync_dir, "synchronized")
        self._timesyncd = os.path.isdir(timesync_dir)
        self._adjtimex: Any = None
        self._buf: Any = None
        self._tried = False

    def synced(self) -> bool:
        if self._timesyncd or os.path.exists(self.marker):
            return os.path.exists(self.marker)
        if not self._tried:
            self._tried = True
            try:
                import ctypes

                # the process's own symbols, libc's among them: no ctypes.util (which
                # loads subprocess and tempfile to look for a library already loaded)
                self._adjtimex = ctypes.CDLL(None, use_errno=True).adjtimex
                self._buf = ctypes.create_string_buffer(512)  # struct timex, modes = 0: read only
            except (OSError, AttributeError) as exc:
                log.debug("adjtimex unavailable: %s", exc)
        if self._adjtimex is None:
            return False
        return bool(self._adjtimex(self._buf) != _TIME_ERROR)
