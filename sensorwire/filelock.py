"""One process at a time on a folder or file: ``flock`` on a lock file beside it.

The kernel releases the lock however the process ends (a crash, SIGKILL), so a
lock file left behind never locks anybody out.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class Held(Exception):
    """Another process holds the lock."""


def take(path: Path, mode: int = 0o600) -> int:
    """The descriptor holding an exclusive lock on ``path`` (created if missing; close it to
    let go).  Raises :class:`Held` when another process has it, ``OSError`` when the file
    cannot be made."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise Held(str(path)) from None
    return fd
