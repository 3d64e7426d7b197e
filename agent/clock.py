"""Is this device's clock synchronised?

A Raspberry Pi has no real-time clock: it boots in the past and is right only
once NTP has synchronised it.  Two signs, checked in this order:

1. systemd-timesyncd's marker file ``/run/systemd/timesync/synchronized``;
2. the kernel's NTP state: ``adjtimex(2)`` returns ``TIME_ERROR`` (5) while
   the clock is unsynchronised (chrony and ntpd keep it up to date).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

TIMESYNC_MARKER = "/run/systemd/timesync/synchronized"
_TIME_ERROR = 5


class ClockState:
    def __init__(self, marker: str = TIMESYNC_MARKER) -> None:
        self.marker = marker
        self._adjtimex = None
        self._buf = None
        try:
            import ctypes
            import ctypes.util

            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            self._adjtimex = libc.adjtimex
            self._buf = ctypes.create_string_buffer(512)  # struct timex, modes = 0: read only
        except (OSError, AttributeError) as exc:
            log.debug("adjtimex unavailable: %s", exc)

    def synced(self) -> bool:
        if os.path.exists(self.marker):
            return True
        if self._adjtimex is None:
            return False
        return bool(self._adjtimex(self._buf) != _TIME_ERROR)
