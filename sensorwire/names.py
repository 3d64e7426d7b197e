"""Rules for the names that travel in topics: sites, devices, sensors, metrics.

A topic is ``<site>/<device>/<sensor>``; the names must therefore never hold
``/``, whitespace or the topic delimiter byte, and stay short.
"""

from __future__ import annotations

import re

MAX_NAME_LEN = 64
MAX_METRIC_LEN = 128
MAX_UNIT_LEN = 32

# Segment names (site, device, sensor): start with a letter or digit, then
# letters, digits, '.', '_' or '-'.  '$' is reserved for the protocol's own
# topics (heartbeats), so no sensor can collide with them.
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
# Metric names may also hold ':' (e.g. "gps:fix") and, for flattened JSON, '.'.
_METRIC = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:-]*\Z")
# Units (and other free text a frame carries, such as a heartbeat's agent_version) are
# printed by tail and query: no C0 or C1 control characters (a terminal takes
# "\x1b[" and "\x9b" as the start of a command), and beyond ASCII none of the
# Unicode categories that change how a line reads without being seen: format
# characters (Cf: bidi overrides such as U+202E, zero-width U+200B..U+200F, U+2066..U+2069,
# U+FEFF), line and paragraph separators (Zl, Zp) and lone surrogates (Cs).
_UNIT = re.compile(r"[^\x00-\x1f\x7f-\x9f]*\Z")
_HIDDEN_CATEGORIES = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))


def segment_problem(name: str) -> str | None:
    """Why ``name`` is not a valid site, device or sensor name (None when it is)."""
    if not name:
        return "must not be empty"
    if len(name) > MAX_NAME_LEN:
        return f"is {len(name)} characters long; at most {MAX_NAME_LEN} are allowed"
    if not _SEGMENT.match(name):
        return (
            "may hold only letters, digits, '.', '_' and '-', and must start "
            "with a letter or digit"
        )
    return None


def metric_problem(name: str) -> str | None:
    """Why ``name`` is not a valid metric name (None when it is)."""
    if not name:
        return "must not be empty"
    if len(name) > MAX_METRIC_LEN:
        return f"is {len(name)} characters long; at most {MAX_METRIC_LEN} are allowed"
    if not _METRIC.match(name):
        return "may hold only letters, digits, '.', '_', ':' and '-'"
    return None


def unit_problem(unit: str) -> str | None:
    """Why ``unit`` is not a valid unit (None when it is; "" means no unit)."""
    if len(unit) > MAX_UNIT_LEN:
        return f"is {len(unit)} characters long; at most {MAX_UNIT_LEN} are allowed"
    if not _UNIT.match(unit) or not unit.isascii() and _holds_hidden(unit):
        return "must not hold control or invisible format characters (C0, C1, bidi, zero-width)"
    return None


def _holds_hidden(text: str) -> bool:
    import unicodedata  # only for text beyond ASCII (rare): the agent does not load it otherwise

    return any(unicodedata.category(c) in _HIDDEN_CATEGORIES for c in text)


def is_segment(name: str) -> bool:
    return len(name) <= MAX_NAME_LEN and _SEGMENT.match(name) is not None


def is_metric(name: str) -> bool:
    return len(name) <= MAX_METRIC_LEN and _METRIC.match(name) is not None
