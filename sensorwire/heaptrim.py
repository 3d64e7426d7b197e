"""Give the C heap's free pages back to the system once start-up is over (glibc).

Start-up (imports, parsing the configuration, the sensors' first reads)
frees much of what it allocates, but glibc keeps freed memory inside its
heap: it returns only the top of the heap, and only past a threshold that
grows as large blocks are freed.  ``malloc_trim(0)`` returns every free
page; in the agent that is 0.2-0.5 MiB of RSS, net of ctypes (which the
clock check may have loaded anyway).  Other C libraries (musl, macOS) have no
such function, and nothing is done there.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def trim() -> bool:
    """``malloc_trim(0)``: True when memory went back to the system."""
    try:
        import ctypes

        # the process's own symbols, libc's among them (no ctypes.util: it loads subprocess)
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (ImportError, OSError, AttributeError) as exc:
        log.debug("malloc_trim unavailable: %s", exc)
        return False
    return bool(malloc_trim(0))
