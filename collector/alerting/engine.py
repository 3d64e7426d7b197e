"""The alert state machines: rules applied to samples, presence and time.

Each (rule, site, device, sensor, metric) is one alert *instance*::

    ok ──condition true──▶ pending ──held for_s──▶ firing ──cleared──▶ ok
     ▲                       │                      │ (notify "resolved")
     └──cleared──────────────┘                      └─ every repeat_s: notify "firing" again
                                (notify "firing")

With ``for_s = 0`` an instance goes from ok to firing at once.  A threshold
instance fires when the value is past the threshold (``above``: value >
above) and resolves only once it is back past ``clear`` (value <= clear);
readings in between change nothing, pending or firing: that is the hysteresis
band.  So a pending instance keeps its start time through readings in the
band, and goes back to ok only past ``clear``.

The engine is pure: it never reads a clock and does no I/O.  Every method
takes the time (Unix ns, the collector's clock: when a frame was received),
and timed transitions (``for_s`` elapsed, ``stale_s`` elapsed, ``repeat_s``)
are stamped at the exact time they became due, however late :meth:`Engine.tick`
is called, so a live run and a replay of the same frames give the same
transitions at the same times.  Rates use the samples' own times.

Memory is bounded whatever is sent: a rule follows at most ``max_instances``
instances.  A full rule makes room for a new series by forgetting its
instance that is ok and has been idle longest (no sample for the longest
time: for a rate rule, a window going out of date; for a stale rule, the
series closest to going stale), counted in :attr:`Engine.evicted`.  Pending
and firing instances are never forgotten (a firing alert must resolve), so a
rule whose instances all are pending or firing does not watch the new series:
counted in :attr:`Engine.refused`.  Both name the last series concerned
(:attr:`Engine.last_limited`), for the sink's warnings.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from sensorwire.collector.alerting.notification import Notification
from sensorwire.collector.alerting.patterns import Pattern
from sensorwire.collector.alerting.rules import AlertRule
from sensorwire.collector.events import Presence
from sensorwire.collector.frames import CheckedFrame

NS = 1_000_000_000
RATE_POINTS_MAX = 256  # samples kept per rate instance (decimated beyond)
# topics whose matching rules are remembered; when full, a random eighth is forgotten: a
# fleet with more topics than this keeps many of its hits (clearing it all, or forgetting
# the oldest, would miss on every frame when the topics come round in a fixed order)
_CACHE_MAX = 65536
_CACHE_EVICT = _CACHE_MAX // 8

Key = tuple[str, str, str, str, str]  # rule, site, device, sensor ('' = none), metric ('' = none)
Phase = Literal["ok", "pending", "firing"]


class Rule:
    """An :class:`AlertRule` made ready for evaluation."""

    def __init__(self, config: AlertRule) -> None:
        self.config = config
        self.name = config.name
        self.kind = config.kind
        self.pattern = Pattern(config.match)
        self.metric = config.metric
        self.for_ns = int(config.for_s * NS)
        self.repeat_ns = int(config.repeat_s * NS) if config.repeat_s else None
        self.stale_ns = int(config.stale_s * NS) if config.stale_s else None
        self.window_ns = int(config.window * NS)
        self.threshold = config.threshold
        self.clear = config.clear_value
        self.band = config.clear_band
        lo_hi = config.outside
        self.outside = (float(lo_hi[0]), float(lo_hi[1])) if lo_hi else None
        self.max_instances = config.max_instances
        self.live = 0  # instances of this rule
        # its instances that were ok when last active, least recently active first; an entry
        # may have left ok since (it is skipped when found at the front)
        self.idle: collections.OrderedDict[Key, Instance] = collections.OrderedDict()

    def condition(self, v: float) -> bool:
        k = self.kind
        if k in ("above", "rate_above"):
            return v > self.threshold  # type: ignore[operator]
        if k in ("below", "rate_below"):
            return v < self.threshold  # type: ignore[operator]
        lo, hi = self.outside  # type: ignore[misc]
        return v < lo or v > hi

    def cleared(self, v: float) -> bool:
        k = self.kind
        if k in ("above", "rate_above"):
            return v <= self.clear  # type: ignore[operator]
        if k in ("below", "rate_below"):
            return v >= self.clear  # type: ignore[operator]
        lo, hi = self.band  # type: ignore[misc]
        return lo <= v <= hi

    def crossed(self, v: float | None) -> float | None:
        """The threshold to report: for ``outside``, the bound the value is past."""
        if self.outside is None:
            return self.threshold
        lo, hi = self.outside
        if v is None:
            return None
        return lo if v < (lo + hi) / 2 else hi


@dataclass(eq=False)
class Instance:
    rule: Rule
    site: str
    device: str
    sensor: str | None
    metric: str | None
    phase: Phase = "ok"
    since_ns: int = 0                 # pending: when the condition became true
    started_ns: int = 0               # firing: when it fired
    notified_ns: int = 0              # firing: the last "firing" notification
    value: float | None = None        # the last value the condition saw
    threshold: float | None = None    # firing: the threshold it crossed
    last_seen_ns: int | None = None   # stale: the last sample
    window: collections.deque[tuple[int, float]] | None = None  # rate: (sample time, value)
    scheduled: int | None = None      # the due time of this instance's live heap entry
    token: int = -1
    gone: bool = False
    key: Key = field(init=False)

    def __post_init__(self) -> None:
        self.key = (self.rule.name, self.site, self.device, self.sensor or "", self.metric or "")

    def deadline(self) -> int | None:
        """When something happens to this instance next, if nothing else does."""
        r = self.rule
        if self.phase == "pending":
            return self.since_ns + r.for_ns
        if self.phase == "firing":
            return self.notified_ns + r.repeat_ns if r.repeat_ns else None
        if r.stale_ns is not None and self.last_seen_ns is not None:
            return self.last_seen_ns + r.stale_ns
        return None


@dataclass(frozen=True)
class ActiveAlert:
    """A firing alert as stored, to carry over a restart."""

    rule: str
    site: str
    device: str
    sensor: str | None
    metric: str | None
    started_ns: int
    notified_ns: int
    value: float | None
    threshold: float | None = None


@dataclass
class _TopicRules:
    by_metric: dict[str, list[Rule]] = field(default_factory=dict)
    any_metric: list[Rule] = field(default_factory=list)   # stale rules without a metric


class Engine:
    """Evaluates rules; every method returns the notifications it caused, in order."""

    def __init__(self, rules: Sequence[AlertRule]) -> None:
        self.rules = [Rule(r) for r in rules]
        self._by_name = {r.name: r for r in self.rules}
        self._offline = [r for r in self.rules if r.kind == "offline"]
        self._sample_rules = [r for r in self.rules if r.kind != "offline"]
        self.now_ns = 0
        self._instances: dict[Key, Instance] = {}
        self._heap: list[tuple[int, int, Instance]] = []
        self._counter = itertools.count()
        self._topics: dict[tuple[str, str, str], _TopicRules] = {}
        self._rng = random.Random(0)  # which topics a full cache forgets; not a secret
        self.transitions = 0
        # max_instances: per rule, series forgotten to make room / new series not watched
        self.evicted: collections.Counter[str] = collections.Counter()
        self.refused: collections.Counter[str] = collections.Counter()
        self.evicted_total = self.refused_total = 0
        # rule -> ("evicted" or "refused", the series concerned), since the sink last looked
        self.last_limited: dict[str, tuple[str, Key]] = {}
        # rate windows started again because a sample was older than the newest by more than
        # the window (a device clock stepped back); the last series, for the sink's log
        self.window_resets = 0
        self.last_window_reset: tuple[Key, int] | None = None  # (series, seconds back)

    # -- inputs ---------------------------------------------------------------
    def restore(self, active: Iterable[ActiveAlert]) -> list[ActiveAlert]:
        """Carry firing alerts over a restart; returns those whose rule is gone."""
        unknown: list[ActiveAlert] = []
        for a in active:
            rule = self._by_name.get(a.rule)
            if rule is None:
                unknown.append(a)
                continue
            inst = self._instance(rule, a.site, a.device, a.sensor, a.metric, room=False)
            assert inst is not None  # a firing alert is carried over, beyond max_instances too
            inst.phase = "firing"
            inst.started_ns, inst.notified_ns, inst.value = a.started_ns, a.notified_ns, a.value
            inst.threshold = a.threshold
            if rule.kind == "offline" and a.value is not None:
                # it fired after a.value seconds of silence: the silence began then
                inst.last_seen_ns = a.started_ns - round(a.value * NS)
            self._schedule(inst)
        return unknown

    def seed(self, site: str, device: str, sensor: str, metrics: Iterable[str],
             seen_ns: int) -> None:
        """A series known from storage, last seen at ``seen_ns``: stale rules watch it
        from the start, not only after its first sample."""
        rules = self._rules_for(site, device, sensor)
        todo: list[tuple[Rule, str | None]] = [
            (r, m) for m in metrics for r in rules.by_metric.get(m, ()) if r.kind == "stale"]
        todo += [(r, None) for r in rules.any_metric]
        for r, m in todo:
            inst = self._instance(r, site, device, sensor, m)
            if inst is None:
                continue  # max_instances: counted
            if inst.last_seen_ns is None or inst.last_seen_ns < seen_ns:
                inst.last_seen_ns = seen_ns
            self._schedule(inst)

    def observe(self, frame: CheckedFrame, received_ns: int,
                out: list[Notification] | None = None) -> list[Notification]:
        """A frame arrived (heartbeats are ignored: presence covers devices).  Notifications
        are appended to ``out`` (returned), so those made before an exception are kept."""
        if out is None:
            out = []
        if self._due(received_ns):
            out += self.tick(received_ns)
        if frame.seq == 0:
            return out
        t = max(received_ns, self.now_ns)
        self.now_ns = t
        site, device, sensor = frame.site, frame.device_id, frame.sensor
        rules = self._rules_for(site, device, sensor)
        if rules.by_metric:
            by_metric = rules.by_metric
            layout, values = frame.layout, frame.values
            pairs: Iterable[tuple[str, float]] = zip(layout.metrics, values, strict=True)
            if layout.unique is not None:  # a metric named twice: its first value, as stored
                pairs = [(layout.metrics[i], values[i]) for i in layout.unique]
            for metric, value in pairs:
                matched = by_metric.get(metric)
                if matched:
                    for r in matched:
                        self._sample(out, r, site, device, sensor, metric, value,
                                     frame.time_unix_nano, t)
        for r in rules.any_metric:
            inst = self._instance(r, site, device, sensor, None)
            if inst is not None:
                self._seen(out, inst, t)
        return out

    def presence(self, ev: Presence) -> list[Notification]:
        """A device went offline, came back online or stopped cleanly."""
        t = max(ev.time_ns, self.now_ns)
        out = self.tick(t) if self._due(t) else []
        self.now_ns = t
        for r in self._offline:
            if not r.pattern.matches_device(ev.site, ev.device):
                continue
            key = (r.name, ev.site, ev.device, "", "")
            inst = self._instances.get(key)
            if ev.state == "offline":
                if inst is None:
                    inst = self._instance(r, ev.site, ev.device, None, None)
                    if inst is None:
                        continue  # max_instances: counted
                    inst.value = max(0, t - ev.last_seen_ns) / NS if ev.last_seen_ns else None
                    inst.last_seen_ns = ev.last_seen_ns or None
                    self._begin(out, inst, t)
            elif inst is not None:  # online again, or stopped on purpose: not silent
                # the silence ran from the last contact before it, kept when it went offline;
                # this event's own last_seen_ns is the frame that ended it
                began = inst.last_seen_ns or ev.last_seen_ns
                inst.value = max(0, t - began) / NS if began else None
                if inst.phase == "firing":
                    self._resolve(out, inst, t)
                self._drop(inst)
        return out

    def tick(self, now_ns: int) -> list[Notification]:
        """Let time pass up to ``now_ns``: fire what waited long enough, find stale data."""
        out: list[Notification] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ns:
            _, token, inst = heapq.heappop(heap)
            if token != inst.token or inst.gone:
                continue
            inst.scheduled = None
            due = inst.deadline()
            if due is None:
                continue
            if due > now_ns:
                self._schedule(inst)
                continue
            self.now_ns = max(self.now_ns, due)
            self._on_deadline(out, inst, due)
            self._schedule(inst)
        self.now_ns = max(self.now_ns, now_ns)
        return out

    def discard(self) -> None:
        """Forget everything (this engine is replaced): an instance and its rule's ``idle``
        refer to each other, and a cycle waits for a full collection, which the collector
        makes rare (``sensorwire/gcpolicy.py``): each reload would leave the whole engine."""
        for r in self.rules:
            r.idle.clear()
        self._instances.clear()
        self._heap.clear()
        self._topics.clear()

    def next_deadline(self) -> int | None:
        """The earliest time :meth:`tick` may have something to do."""
        return self._heap[0][0] if self._heap else None

    def instances(self) -> int:
        """Alert instances followed now (ok, pending and firing), every rule."""
        return len(self._instances)

    def firing(self) -> list[Instance]:
        return [i for i in self._instances.values() if i.phase == "firing"]

    def firing_by_rule(self) -> collections.Counter[str]:
        """Firing instances per rule name; safe from another thread (``/metrics``)."""
        live = list(self._instances.values())  # one C-level copy: no other thread runs meanwhile
        return collections.Counter(i.rule.name for i in live if i.phase == "firing")

    # -- state machine --------------------------------------------------------
    def _sample(self, out: list[Notification], r: Rule, site: str, device: str, sensor: str,
                metric: str, value: float, sample_ns: int, t: int) -> None:
        kind = r.kind
        if kind == "stale":
            seen = self._instance(r, site, device, sensor, metric)
            if seen is not None:
                self._seen(out, seen, t)
            return
        if math.isnan(value):
            return
        if kind in ("rate_above", "rate_below"):
            rated = self._instance(r, site, device, sensor, metric)
            if rated is None:
                return
            if rated.phase == "ok":
                self._touch(rated)
            if _stepped_back(rated, r, sample_ns):
                self.window_resets += 1
                assert rated.window is not None
                self.last_window_reset = (rated.key, (rated.window[-1][0] - sample_ns) // NS)
                rated.window.clear()
            rate = _rate(rated, r, value, sample_ns)
            if rate is not None:
                self._evaluate(out, rated, rate, t)
            return
        found = self._instances.get((r.name, site, device, sensor, metric))
        if found is None:
            if not r.condition(value):
                return  # the common case: nothing to remember
        inst = found or self._instance(r, site, device, sensor, metric)
        if inst is None:
            return
        self._evaluate(out, inst, value, t)
        if inst.phase == "ok":
            self._drop(inst)

    def _evaluate(self, out: list[Notification], inst: Instance, v: float, t: int) -> None:
        r = inst.rule
        inst.value = v
        if inst.phase == "ok":
            if r.condition(v):
                self._begin(out, inst, t)
        elif inst.phase == "pending":
            if r.cleared(v):  # in the band, pending keeps its start, as firing stays firing
                inst.phase = "ok"
                self._touch(inst)
        elif r.cleared(v):
            self._resolve(out, inst, t)

    def _seen(self, out: list[Notification], inst: Instance, t: int) -> None:
        """A stale rule's instance got a sample."""
        previous = inst.last_seen_ns
        inst.last_seen_ns = t
        if inst.phase == "firing":
            inst.value = (t - previous) / NS if previous is not None else None
            self._resolve(out, inst, t)
        else:
            inst.phase = "ok"
            self._touch(inst)
        self._schedule(inst)

    def _begin(self, out: list[Notification], inst: Instance, t: int) -> None:
        """The condition became true at ``t``."""
        if inst.rule.for_ns > 0:
            inst.phase = "pending"
            inst.since_ns = t
            self._schedule(inst)
        else:
            self._fire(out, inst, t)

    def _on_deadline(self, out: list[Notification], inst: Instance, at: int) -> None:
        r = inst.rule
        if inst.phase == "pending":
            if r.kind in ("stale", "offline") and inst.last_seen_ns is not None:
                inst.value = (at - inst.last_seen_ns) / NS
            self._fire(out, inst, at)
        elif inst.phase == "firing":
            inst.notified_ns = at
            out.append(self._notification(inst, "firing", at))
        else:  # a stale rule's silence has lasted stale_s
            assert inst.last_seen_ns is not None
            inst.value = (at - inst.last_seen_ns) / NS
            self._begin(out, inst, at)

    def _fire(self, out: list[Notification], inst: Instance, t: int) -> None:
        inst.phase = "firing"
        inst.started_ns = inst.notified_ns = t
        out.append(self._notification(inst, "firing", t))
        self._schedule(inst)

    def _resolve(self, out: list[Notification], inst: Instance, t: int) -> None:
        inst.phase = "ok"
        self._touch(inst)
        out.append(self._notification(inst, "resolved", t))

    def _notification(self, inst: Instance, state: Literal["firing", "resolved"],
                      t: int) -> Notification:
        self.transitions += 1
        r = inst.rule
        if state == "firing" and t == inst.started_ns:
            inst.threshold = r.crossed(inst.value)
        return Notification(
            rule=r.name, severity=r.config.severity, state=state, site=inst.site,
            device=inst.device, sensor=inst.sensor, metric=inst.metric, value=inst.value,
            threshold=inst.threshold, started_ns=inst.started_ns,
            resolved_ns=t if state == "resolved" else None,
            summary=summary(inst, state, t), time_ns=t,
        )

    # -- bookkeeping ----------------------------------------------------------
    def _due(self, t: int) -> bool:
        return bool(self._heap) and self._heap[0][0] <= t

    def _instance(self, r: Rule, site: str, device: str, sensor: str | None,
                  metric: str | None, room: bool = True) -> Instance | None:
        """The instance of ``r`` for this series, made if need be; None when ``r`` is at
        ``max_instances`` and none of its instances can go (``room``: make room or refuse)."""
        key = (r.name, site, device, sensor or "", metric or "")
        inst = self._instances.get(key)
        if inst is None:
            if room and r.live >= r.max_instances and not self._evict(r, key):
                self.refused[r.name] += 1
                self.refused_total += 1
                self.last_limited[r.name] = ("refused", key)
                return None
            inst = Instance(r, site, device, sensor, metric)
            if r.kind in ("rate_above", "rate_below"):
                inst.window = collections.deque()
            self._instances[key] = inst
            r.live += 1
            self._touch(inst)
        return inst

    def _evict(self, r: Rule, newcomer: Key) -> bool:
        """Forget ``r``'s ok instance idle longest, to make room for ``newcomer``."""
        idle = r.idle
        while idle:
            _, inst = idle.popitem(last=False)
            if inst.phase == "ok" and not inst.gone:
                self._drop(inst)
                self.evicted[r.name] += 1
                self.evicted_total += 1
                self.last_limited[r.name] = ("evicted", inst.key)
                return True
        return False  # every instance is pending or firing

    def _touch(self, inst: Instance) -> None:
        """``inst`` is ok and was active now: the last of its rule's to be forgotten."""
        idle = inst.rule.idle
        idle[inst.key] = inst
        idle.move_to_end(inst.key)

    def _drop(self, inst: Instance) -> None:
        if inst.gone:
            return
        inst.gone = True
        inst.rule.live -= 1
        inst.rule.idle.pop(inst.key, None)
        self._instances.pop(inst.key, None)

    def _schedule(self, inst: Instance) -> None:
        due = inst.deadline()
        if due is None or (inst.scheduled is not None and inst.scheduled <= due):
            return  # an entry at or before ``due`` is queued; it looks again then
        inst.token = next(self._counter)
        inst.scheduled = due
        heap = self._heap
        heapq.heappush(heap, (due, inst.token, inst))
        if len(heap) > 2 * len(self._instances) + 1024:
            self._compact()

    def _compact(self) -> None:
        """Keep only the heap entries still meant (one per scheduled instance): entries of
        instances forgotten or moved later would otherwise pile up until they fall due."""
        self._heap = [(i.scheduled, i.token, i) for i in self._instances.values()
                      if i.scheduled is not None]
        heapq.heapify(self._heap)

    def _rules_for(self, site: str, device: str, sensor: str) -> _TopicRules:
        key = (site, device, sensor)
        found = self._topics.get(key)
        if found is None:
            found = _TopicRules()
            for r in self._sample_rules:
                if r.pattern.matches(site, device, sensor):
                    if r.metric is None:
                        found.any_metric.append(r)
                    else:
                        found.by_metric.setdefault(r.metric, []).append(r)
            topics = self._topics
            if len(topics) >= _CACHE_MAX:
                for gone in self._rng.sample(list(topics), _CACHE_EVICT):
                    del topics[gone]
            topics[key] = found
        return found


def _stepped_back(inst: Instance, r: Rule, sample_ns: int) -> bool:
    """Whether ``sample_ns`` is older than the newest sample by more than the window: the
    device's clock stepped back (or one frame came from far in the future).  Without a new
    start, the window would refuse every sample until time caught up."""
    w = inst.window
    return bool(w) and w is not None and w[-1][0] - sample_ns > r.window_ns


def _rate(inst: Instance, r: Rule, value: float, sample_ns: int) -> float | None:
    """Units per second between the newest sample and the oldest one within
    ``window_s``; None until the samples span half the window.  A sample not newer than the
    newest is ignored, unless the clock stepped back (see :func:`_stepped_back`)."""
    w = inst.window
    assert w is not None
    if w and sample_ns <= w[-1][0]:
        return None  # a duplicate or a sample out of order: no new information
    w.append((sample_ns, value))
    horizon = sample_ns - r.window_ns
    while w[0][0] < horizon:
        w.popleft()
    if len(w) > RATE_POINTS_MAX:  # bounded memory: keep every other sample, and both ends
        kept = list(w)
        w.clear()
        w.extend(kept[:-1:2])
        w.append(kept[-1])
    span = w[-1][0] - w[0][0]
    if span * 2 < r.window_ns:
        return None
    return (w[-1][1] - w[0][1]) / (span / NS)


# -- summaries ----------------------------------------------------------------
def summary(inst: Instance, state: str, t: int) -> str:
    r = inst.rule
    where = "/".join(p for p in (inst.site, inst.device, inst.sensor) if p)
    what = f"{where} {inst.metric}" if inst.metric else where
    v = inst.value
    k = r.kind
    tail = f" ({r.name}, {r.config.severity})"
    if state == "resolved":
        lasted = _duration((t - inst.started_ns) / NS)
        if k == "offline":
            return f"{where} is back after {_duration(v) if v is not None else 'a silence'}; " \
                   f"alert lasted {lasted}{tail}"
        if k == "stale":
            return f"{what} has samples again; alert lasted {lasted}{tail}"
        if k == "outside":
            lo, hi = r.band  # type: ignore[misc]
            return f"{what} is {_g(v)}, back inside [{_g(lo)}, {_g(hi)}] after {lasted}{tail}"
        unit = "/s" if k.startswith("rate") else ""
        return f"{what} is {'changing at ' if unit else ''}{_g(v)}{unit}, back past clear " \
               f"{_g(r.clear)}{unit} after {lasted}{tail}"
    if k == "offline":
        silent = f" for {_duration(v)}" if v is not None else ""
        return f"{where} is offline (silent{silent}){tail}"
    if k == "stale":
        return f"{what}: no sample for {_duration(v)} (stale_s = {_g(r.threshold)}){tail}"
    if k == "outside":
        lo, hi = r.outside  # type: ignore[misc]
        return f"{what} is {_g(v)}, outside [{_g(lo)}, {_g(hi)}]{tail}"
    if k in ("rate_above", "rate_below"):
        verb = "above" if k == "rate_above" else "below"
        return f"{what} is changing at {_g(v)}/s, {verb} {_g(r.threshold)}/s over " \
               f"{_g(r.window_ns / NS)} s{tail}"
    return f"{what} is {_g(v)}, {k} {_g(r.threshold)}{tail}"


def _g(v: float | None) -> str:
    return "?" if v is None else f"{v:.6g}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.3g} s" if seconds < 10 else f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"
