"""What a notifier is given: one alert transition, and its JSON form.

The JSON object (one per delivery; one per POST for webhooks) has exactly the
fields of :data:`FIELDS`.  Times are ISO 8601 UTC with microseconds;
``resolved`` is null while the alert fires.  ``sensor`` is null for device
alerts, ``metric`` for device alerts and stale rules without a metric;
``value`` and ``threshold`` are null where the rule has none, and when not
finite (JSON has no inf or NaN).

Templates (a webhook's ``template`` and ``headers``, an exec ``command``, an
email ``subject``) name fields in braces: ``{rule}``, ``{summary}``...;
``{json}`` is the whole object and ``{name}`` is the rule's name (as
``{rule}``).  Other braces are left alone, so a JSON template such as
``{"text": "{summary}"}`` needs no escaping.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from sensorwire.timefmt import iso_from_ns

FIELDS = ("rule", "severity", "state", "site", "device", "sensor", "metric", "value",
          "threshold", "started", "resolved", "summary")
PLACEHOLDERS = (*FIELDS, "json", "name")

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

State = Literal["firing", "resolved"]


@dataclass(frozen=True)
class Notification:
    rule: str
    severity: str
    state: State
    site: str
    device: str
    sensor: str | None
    metric: str | None
    value: float | None
    threshold: float | None
    started_ns: int
    resolved_ns: int | None
    summary: str
    time_ns: int  # when it was sent: started, resolved, or a repeat's time (not in the JSON)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "state": self.state,
            "site": self.site,
            "device": self.device,
            "sensor": self.sensor,
            "metric": self.metric,
            "value": _num(self.value),
            "threshold": _num(self.threshold),
            "started": iso_from_ns(self.started_ns),
            "resolved": None if self.resolved_ns is None else iso_from_ns(self.resolved_ns),
            "summary": self.summary,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    def topic_name(self) -> str:
        """``site/device/sensor`` (``site/device`` for device alerts)."""
        return "/".join(p for p in (self.site, self.device, self.sensor) if p)


def _num(v: float | None) -> float | None:
    # JSON has no NaN/Infinity: a non-finite value is null (not invalid JSON, not a string)
    if v is None or math.isfinite(v):
        return v
    return None


def placeholders(template: str) -> list[str]:
    """The ``{names}`` a template uses."""
    return _PLACEHOLDER.findall(template)


def check_template(template: str) -> None:
    """Raise ValueError naming the first unknown placeholder."""
    for name in placeholders(template):
        if name not in PLACEHOLDERS:
            raise ValueError(
                f"unknown placeholder {{{name}}} in {template!r}; known: "
                + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
            )


def render(template: str, n: Notification, escape_json: bool = False) -> str:
    """Fill ``template``; with ``escape_json`` values are escaped for a JSON string.

    Strings are inserted without quotes (the template has them), numbers as
    numbers, null as ``null``; ``{json}`` is always the whole JSON object.  A
    non-finite value (inf, nan) is ``null`` in JSON, ``inf``/``nan`` in text.
    """
    values = n.to_dict()

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key == "json":
            return n.to_json()
        if key == "name":
            key = "rule"
        if key not in values:
            return m.group(0)
        v = values[key]
        if key in ("value", "threshold") and not escape_json:
            v = getattr(n, key)  # in text, inf and nan are shown as they are
        if v is None:
            return "null" if escape_json else ""
        if isinstance(v, float):
            return repr(v) if escape_json else f"{v:g}"
        text = str(v)
        return json.dumps(text, ensure_ascii=False)[1:-1] if escape_json else text

    return _PLACEHOLDER.sub(sub, template)
