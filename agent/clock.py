"""Is this device's clock synchronised?

A Raspberry Pi has no real-time clock: it boots in the past and is right only
once NTP has synchronised it.  Two signs:

1. where systemd-timesyncd runs (the default on Raspberry Pi OS; its folder
   ``/run/systemd/timesync`` exists), its marker file ``synchronized``;
2. elsewhere (chrony, ntpd), the kernel's NTP state: ``adjtimex(2)`` returns
   ``TIME_ERROR`` (5) while the clock is unsynchronised.  That needs ctypes,
   2.4 MB of memory, so it is loaded only on such machines, at the first check.

When neither sign can be read (no ctypes, or ``adjtimex`` fails: -1, e.g.
EPERM under a seccomp filter such as systemd's ``ProtectClock=yes``), the
state is unknown, and an unknown clock is *not known to be synchronised*:
:meth:`ClockState.synced` says False and frames are flagged.  A WARNING says
so once.  sensorwire's own agent unit allows the read (see
:mod:`sensorwire.units`).
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
        self._errno: Any = None
        self._tried = False
        self._warned = False

    def synced(self) -> bool:
        """True only when the clock is known to be synchronised."""
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
                self._errno = ctypes.get_errno
            except (OSError, AttributeError) as exc:
                log.debug("adjtimex unavailable: %s", exc)
        if self._adjtimex is None:
            return False
        state = int(self._adjtimex(self._buf))
        if state < 0:  # unknown: not known to be synchronised
            if not self._warned:
                self._warned = True
                log.warning("cannot read the kernel's clock state (adjtimex: %s): frames are "
                            "flagged as from a clock not known to be synchronised; a systemd "
                            "unit with ProtectClock=yes forbids the read (sensorwire's own "
                            "agent unit allows it: run `sensorwire install-service agent` again)",
                            os.strerror(self._errno()))
            return False
        return state != _TIME_ERROR
