"""``[[alerts]]``: alert rules, validated strictly once at start.

One rule has exactly one condition:

- ``above``, ``below`` or ``outside = [lo, hi]``: a threshold on ``metric``,
  with an optional ``clear`` value past which it resolves (hysteresis);
- ``rate_above`` / ``rate_below``: the metric's rate of change in units per
  second over ``window_s`` (default 60), with an optional ``clear``;
- ``stale_s``: no sample (of ``metric``, or of any metric of the sensor when
  ``metric`` is omitted) for that long;
- ``device_offline = true``: the collector says the device went silent.

``for_s`` delays firing until the condition has held that long, ``repeat_s``
re-notifies a long-firing alert, ``notify`` names notifiers (``log`` always
exists), ``max_instances`` bounds the alert instances (series) the rule
follows at once.  Errors name the rule: ``collector.toml: alerts[0].clear: rule
"greenhouse-hot": ...``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from sensorwire import configload, names
from sensorwire.collector.alerting.patterns import Pattern
from sensorwire.configload import Config

Severity = Literal["info", "warning", "critical"]
Kind = Literal["above", "below", "outside", "rate_above", "rate_below", "stale", "offline"]
Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]

DEFAULT_WINDOW_S = 60.0
REPEAT_MIN_S = 60.0  # reminders at most once a minute: a typo (0.001) must not flood anyone
WINDOW_MIN_S = 1.0   # a rate over less than a second is noise (and 1e-10 divided by zero)
DEFAULT_MAX_INSTANCES = 10_000
_CONDITIONS = ("above", "below", "outside", "rate_above", "rate_below", "stale_s", "device_offline")


class AlertRule(Config):
    name: str
    match: str = "**"
    metric: str | None = None
    above: float | None = None
    below: float | None = None
    outside: list[float] | None = None
    rate_above: float | None = None
    rate_below: float | None = None
    window_s: Positive | None = None
    stale_s: Positive | None = None
    device_offline: bool = False
    clear: float | list[float] | None = None
    for_s: NonNegative = 0.0
    repeat_s: Positive | None = None
    severity: Severity = "warning"
    notify: list[str] = msgspec.field(default_factory=lambda: ["log"])
    # alert instances (site/device/sensor/metric) followed at once; when full, the ok one idle
    # longest is forgotten, or (all pending or firing) the new series is not watched, counted
    max_instances: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_MAX_INSTANCES

    def __post_init__(self) -> None:
        configload.check_name(self.name, "name")
        try:
            Pattern(self.match)
        except ValueError as exc:
            raise ValueError(f"match: {exc}") from None
        given = [c for c in _CONDITIONS if getattr(self, c) not in (None, False)]
        if not given:
            raise ValueError("no condition: give one of " + ", ".join(_CONDITIONS))
        if len(given) > 1:
            raise ValueError(f"{given[1]}: a rule has one condition, this one also has "
                             f"{given[0]}; write a second [[alerts]] rule")
        self._check_metric()
        self._check_outside()
        self._check_clear()
        if self.window_s is not None and self.kind not in ("rate_above", "rate_below"):
            raise ValueError("window_s: only rate_above and rate_below rules have a window")
        if self.window_s is not None and self.window_s < WINDOW_MIN_S:
            raise ValueError(f"window_s: {self.window_s:g} is too short: give at least "
                             f"{WINDOW_MIN_S:g} s, several times the sampling interval")
        if self.repeat_s is not None and self.repeat_s < REPEAT_MIN_S:
            raise ValueError(f"repeat_s: {self.repeat_s:g} would remind more than once a "
                             f"minute: give at least {REPEAT_MIN_S:g} s (or leave it out: "
                             "no reminders)")
        if not self.notify:
            raise ValueError("notify: give at least one notifier (\"log\" always exists)")

    # -- what the rule is -------------------------------------------------------
    @property
    def kind(self) -> Kind:
        if self.above is not None:
            return "above"
        if self.below is not None:
            return "below"
        if self.outside is not None:
            return "outside"
        if self.rate_above is not None:
            return "rate_above"
        if self.rate_below is not None:
            return "rate_below"
        if self.stale_s is not None:
            return "stale"
        return "offline"

    @property
    def threshold(self) -> float | None:
        """The value the condition compares with (``stale_s`` for stale rules)."""
        return {"above": self.above, "below": self.below, "rate_above": self.rate_above,
                "rate_below": self.rate_below, "stale": self.stale_s}.get(self.kind)

    @property
    def clear_value(self) -> float | None:
        """The value past which an above/below/rate rule resolves."""
        if isinstance(self.clear, float | int):
            return float(self.clear)
        has_clear = self.kind in ("above", "below", "rate_above", "rate_below")
        return self.threshold if has_clear else None

    @property
    def clear_band(self) -> tuple[float, float] | None:
        """For ``outside`` rules: the band the value must be back inside."""
        if self.outside is None:
            return None
        lo, hi = self.clear if isinstance(self.clear, list) else self.outside
        return float(lo), float(hi)

    @property
    def window(self) -> float:
        return self.window_s if self.window_s is not None else DEFAULT_WINDOW_S

    # -- checks -----------------------------------------------------------------
    def _check_metric(self) -> None:
        kind = self.kind
        if self.metric is not None:
            problem = names.metric_problem(self.metric)
            if problem:
                raise ValueError(f"metric: {self.metric!r} {problem}")
            if kind == "offline":
                raise ValueError("metric: a device_offline rule watches a whole device; "
                                 "remove metric")
        elif kind not in ("stale", "offline"):
            raise ValueError(f"metric: required for {_a(_cond_key(kind))} rule "
                             "(which metric to watch)")

    def _check_outside(self) -> None:
        if self.outside is None:
            return
        if len(self.outside) != 2:
            raise ValueError(f"outside: give two numbers [lo, hi], got {len(self.outside)}")
        lo, hi = self.outside
        if not lo < hi:
            raise ValueError(f"outside: [{_g(lo)}, {_g(hi)}]: lo must be below hi")

    def _check_clear(self) -> None:
        clear, kind = self.clear, self.kind
        if clear is None:
            return
        if kind in ("stale", "offline"):
            raise ValueError("clear: only above, below, outside, rate_above and rate_below "
                             "rules have a clear value")
        key = _cond_key(kind)
        if kind == "outside":
            assert self.outside is not None
            lo, hi = self.outside
            if not isinstance(clear, list) or len(clear) != 2:
                raise ValueError(f"clear: an outside rule clears inside a band: give "
                                 f"[lo, hi] within [{_g(lo)}, {_g(hi)}]")
            clo, chi = clear
            if not lo <= clo <= chi <= hi:
                raise ValueError(f"clear: [{_g(clo)}, {_g(chi)}] must lie within outside "
                                 f"[{_g(lo)}, {_g(hi)}] (the alert resolves only once the "
                                 "value is back inside the narrower band)")
            return
        if isinstance(clear, list):
            raise ValueError(f"clear: expected a number for {_a(key)} rule, got a list")
        threshold = self.threshold
        assert threshold is not None
        if kind in ("above", "rate_above") and clear > threshold:
            raise ValueError(f"clear: {_g(clear)} is above the threshold {key} = {_g(threshold)}; "
                             f"{_a(key)} rule resolves when the value falls to clear, so clear "
                             "must not be above the threshold")
        if kind in ("below", "rate_below") and clear < threshold:
            raise ValueError(f"clear: {_g(clear)} is below the threshold {key} = {_g(threshold)}; "
                             f"{_a(key)} rule resolves when the value rises to clear, so clear "
                             "must not be below the threshold")


def _cond_key(kind: Kind) -> str:
    return {"stale": "stale_s", "offline": "device_offline"}.get(kind, kind)


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _g(v: float) -> str:
    return f"{v:g}"


def check_references(rules: Sequence[AlertRule], notifier_names: Sequence[tuple[str, str]]) -> None:
    """Cross-checks over the whole file; raises ValueError("alerts[i].key: ...").

    ``notifier_names`` holds ``(name, kind)`` of every declared notifier.
    """
    declared: dict[str, int] = {}
    for i, (name, kind) in enumerate(notifier_names):
        if name in declared:
            raise ValueError(f"notifiers[{i}].name: {name!r} is already the name of "
                             f"notifiers[{declared[name]}]")
        if name == "log" and kind != "log":
            raise ValueError(f"notifiers[{i}].name: 'log' is the built-in log notifier; "
                             "choose another name")
        declared[name] = i
    known = sorted({*declared, "log"})
    seen: dict[str, int] = {}
    for i, rule in enumerate(rules):
        if rule.name in seen:
            raise ValueError(f"alerts[{i}].name: {rule.name!r} is already the name of "
                             f"alerts[{seen[rule.name]}]")
        seen[rule.name] = i
        for j, target in enumerate(rule.notify):
            if target not in known:
                raise ValueError(f"alerts[{i}].notify: [{j}] no notifier named {target!r} "
                                 f"(declared: {', '.join(known)})")


_WHERE = re.compile(r"^(?P<src>[^:]*): (?P<table>alerts|notifiers)\[(?P<i>\d+)\](?P<rest>[^:]*): ")


def name_the_rule(message: str, path: str | Path) -> str:
    """Put the rule's (or notifier's) own name into an error about ``alerts[i]``."""
    m = _WHERE.match(message)
    if not m:
        return message
    try:
        raw = configload.read_toml(path)
        entry = raw[m.group("table")][int(m.group("i"))]
        name = entry["name"]
    except (configload.ConfigError, KeyError, IndexError, TypeError):
        return message
    if not isinstance(name, str):
        return message
    what = "rule" if m.group("table") == "alerts" else "notifier"
    return f"{m.group(0)}{what} {name!r}: {message[m.end():]}"
