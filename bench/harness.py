"""Runs one transport: warm-up, then the three measurements, in fresh processes per run.

For each run the harness sets up the transport's services, starts a
subscriber process, then a publisher process, and warms up (the publisher
sends slowly until the subscriber has seen a frame, so subscriptions have
propagated everywhere).  Then, on the same pair of processes:

1. **max**: the publisher sends as fast as it can for ``max_s``; the rate is
   distinct frames received ÷ (last receive − first send).  The reported max
   is the highest such receive rate of any trial of the run: a client that
   batches (a Redis pipeline) can receive a little more when paced than when
   flooded.
2. **lossless**: paced trials of ``lossless_s`` each, bracketing then
   bisecting on the rate.  A trial passes when every frame arrived, none was
   refused by the client, and the last one arrived within
   ``0.1 s + 5 %`` of the trial's length after the last send (the
   subscriber kept up; it did not just buffer).  The result is the highest
   receive rate of a passing trial.
3. **latency**: paced at ``latency_rate`` for ``latency_s``; p50 and p99 of
   (receive time − the frame's ``time_unix_nano``), and the CPU time of each
   process ÷ frames.  Where the transport runs a proxy process (``proxy_pid``
   in its env), every trial also reports that process's CPU time ÷ the frames
   the publisher's socket accepted.

Between trials the subscriber waits until nothing at all has arrived for
0.2 s, so one trial's backlog never counts against the next.
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import machine
from bench.pacing import Pace
from bench.procs import BenchError, other_cpu_seconds
from bench.transports.base import Transport
from bench.worker import Worker

log = logging.getLogger(__name__)

MAX_COUNT = 4_000_000  # frames in a max trial at most (bounded whatever the rate)


@dataclass(frozen=True)
class Settings:
    runs: int = 3
    max_s: float = 1.5
    lossless_s: float = 1.5
    lossless_trials: int = 5
    latency_rate: float = 5000.0
    latency_s: float = 4.0  # 20,000 frames: a p99 that one scheduling hiccup moves less
    warmup_limit_s: float = 15.0
    ceiling_s: float = 1.0  # per ceiling


QUICK = Settings(runs=1, max_s=0.5, lossless_s=0.5, lossless_trials=3, latency_s=0.5, ceiling_s=0.3)


@dataclass
class TrialResult:
    target: float | None  # paced rate asked for; None = as fast as possible
    attempted: int
    accepted: int
    received: int
    dups: int
    send_rate: float  # achieved
    recv_rate: float  # received ÷ (last receive − first send)
    behind_s: float  # last receive − end of sending
    pub_cpu_s: float
    sub_cpu_s: float
    p50_us: float
    p99_us: float
    details: dict[str, Any]
    proxy_cpu_s: float | None = None  # the transport's proxy process, if it has one

    @property
    def lost(self) -> int:
        return self.attempted - self.received

    @property
    def proxy_cpu_us(self) -> float | None:
        """The proxy process's CPU µs per frame the publisher's socket accepted."""
        if self.proxy_cpu_s is None:
            return None
        return 1e6 * self.proxy_cpu_s / max(1, self.accepted)

    def lossless(self, trial_s: float) -> bool:
        return (self.received == self.attempted == self.accepted
                and self.behind_s <= 0.1 + 0.05 * trial_s)

    def brief(self) -> str:
        target = "max" if self.target is None else f"{self.target:,.0f}/s"
        return (f"{target}: sent {self.attempted:,} at {self.send_rate:,.0f}/s, "
                f"received {self.received:,} ({self.recv_rate:,.0f}/s), lost {self.lost:,}"
                + (f", refused {self.attempted - self.accepted:,}"
                   if self.accepted != self.attempted else "")
                + (f", {self.dups:,} duplicates" if self.dups else "")
                + f", done {max(0.0, self.behind_s) * 1000:.0f} ms after the last send")


@dataclass
class RunResult:
    max: TrialResult
    lossless_rate: float  # 0.0 when no trial passed
    lossless_trials: list[TrialResult]
    latency: TrialResult

    @property
    def max_rate(self) -> float:
        """The highest receive rate of any trial (normally the unpaced one)."""
        return max(t.recv_rate for t in [self.max, *self.lossless_trials])


@dataclass
class TransportResult:
    transport: Transport
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    versions: str = ""
    runs: list[RunResult] = field(default_factory=list)

    def median(self, value: Any) -> float:
        xs = [value(r) for r in self.runs]
        xs = [x for x in xs if x is not None and not math.isnan(x)]
        return statistics.median(xs) if xs else float("nan")

    @property
    def max_rate(self) -> float:
        return self.median(lambda r: r.max_rate)

    @property
    def lossless_rate(self) -> float:
        return self.median(lambda r: r.lossless_rate)

    @property
    def p50_us(self) -> float:
        return self.median(lambda r: r.latency.p50_us)

    @property
    def p99_us(self) -> float:
        return self.median(lambda r: r.latency.p99_us)

    @property
    def latency_lost(self) -> int:
        return max((r.latency.lost for r in self.runs), default=0)

    @property
    def pub_cpu_us(self) -> float:
        return self.median(lambda r: 1e6 * r.latency.pub_cpu_s / max(1, r.latency.attempted))

    @property
    def sub_cpu_us(self) -> float:
        return self.median(lambda r: 1e6 * r.latency.sub_cpu_s / max(1, r.latency.received))

    @property
    def max_pub_cpu_us(self) -> float:
        return self.median(lambda r: 1e6 * r.max.pub_cpu_s / max(1, r.max.attempted))

    @property
    def max_sub_cpu_us(self) -> float:
        return self.median(lambda r: 1e6 * r.max.sub_cpu_s / max(1, r.max.received))

    @property
    def proxy_cpu_us(self) -> float:
        """NaN for a transport without a proxy process."""
        return self.median(lambda r: r.latency.proxy_cpu_us)


def prepare(transport: Transport) -> TransportResult:
    """A result to add runs to; skipped (with the reason) when its server or library is missing."""
    result = TransportResult(transport)
    reason = transport.unavailable()
    if reason is not None:
        result.status, result.reason = "skipped", reason
        return result
    try:
        result.versions = transport.versions()
    except BenchError as exc:
        result.status, result.reason = "failed", str(exc)
    return result


def add_run(result: TransportResult, settings: Settings, i: int,
            progress: Callable[[str], None] = print) -> None:
    """Run ``result``'s transport once more (run ``i``, from 0); a failure marks the result."""
    if result.status != "ok":
        return
    waited = machine.wait_quiet()
    if waited > 5:
        progress(f"  (waited {waited:.0f} s for the machine to go quiet)")
    try:
        run = run_once(result.transport, settings)
    except BenchError as exc:
        result.status, result.reason = "failed", str(exc)
        return
    result.runs.append(run)
    lossless = f"{run.lossless_rate:,.0f}/s" if run.lossless_rate else "none passed"
    progress(f"  {result.transport.name} run {i + 1}/{settings.runs}: max {run.max_rate:,.0f}/s, "
             f"lossless {lossless}, "
             f"p50/p99 {run.latency.p50_us:,.0f}/{run.latency.p99_us:,.0f} µs"
             + (f" (lost {run.latency.lost:,})" if run.latency.lost else ""))


def run_once(transport: Transport, settings: Settings) -> RunResult:
    with contextlib.ExitStack() as stack:
        env = stack.enter_context(transport.services())
        sub = stack.enter_context(Worker("sub", transport.name, env))
        sub.start()
        pub = stack.enter_context(Worker("pub", transport.name, env))
        pub.start()
        _warm_up(pub, sub, settings.warmup_limit_s)
        proxy = _cpu_of(env.get("proxy_pid"))

        top = trial(pub, sub, Pace(settings.max_s, None, MAX_COUNT), proxy=proxy)
        log.debug("%s max: %s", transport.name, top.brief())
        rate, tried = search(pub, sub, top.recv_rate, settings, proxy)
        lat = trial(pub, sub, Pace(settings.latency_s, settings.latency_rate), latency=True,
                    proxy=proxy)
        log.debug("%s latency: %s", transport.name, lat.brief())
        return RunResult(max=top, lossless_rate=rate, lossless_trials=tried, latency=lat)
    raise AssertionError("unreachable")


CpuProbe = Callable[[], float | None]


def _cpu_of(pid: str | None) -> CpuProbe | None:
    """Reads the CPU seconds of the process ``pid`` (the transport's proxy), if any."""
    if pid is None:
        return None
    return lambda: other_cpu_seconds(int(pid))


def _warm_up(pub: Worker, sub: Worker, limit_s: float) -> None:
    pub.send("warmup", limit_s)
    deadline = time.monotonic() + limit_s
    try:
        while not sub.call("seen"):
            if time.monotonic() > deadline:
                raise BenchError(f"the subscriber received nothing in {limit_s:.0f} s of warm-up")
            time.sleep(0.02)
    finally:
        pub.send("stop")
        pub.reply(limit_s + 5, "warmup")


def trial(pub: Worker, sub: Worker, pace: Pace, latency: bool = False,
          proxy: CpuProbe | None = None) -> TrialResult:
    if not sub.call("quiesce", 0.2, 30.0, timeout_s=40):
        raise BenchError("the subscriber was still receiving an earlier trial's frames after 30 s")
    floor = pub.call("next_seq")
    capacity = pace.max_count
    if pace.rate is not None:
        capacity = min(capacity, int(pace.rate * pace.duration_s) + pace.burst + 1)
    sub.call("arm", floor, capacity)
    proxy_before = proxy() if proxy is not None else None
    flush_s = 10.0
    sent = pub.call("send", pace, flush_s, timeout_s=pace.duration_s + flush_s + 30)
    limit_s = max(3.0, 2 * pace.duration_s)
    got = sub.call("collect", sent["attempted"], limit_s, 0.3, latency, timeout_s=limit_s + 30)
    proxy_after = proxy() if proxy is not None else None
    span = (got["last_ns"] - sent["first_ns"]) / 1e9
    send_span = (sent["last_ns"] - sent["first_ns"]) / 1e9
    return TrialResult(
        target=pace.rate,
        attempted=sent["attempted"], accepted=sent["accepted"],
        received=got["received"], dups=got["dups"],
        send_rate=sent["attempted"] / send_span if send_span > 0 else 0.0,
        recv_rate=got["received"] / span if got["received"] and span > 0 else 0.0,
        behind_s=(got["last_ns"] - sent["last_ns"]) / 1e9 if got["received"] else float("inf"),
        pub_cpu_s=sent["cpu_s"], sub_cpu_s=got["cpu_s"],
        p50_us=got["p50_us"], p99_us=got["p99_us"],
        details=got["details"],
        proxy_cpu_s=(proxy_after - proxy_before
                     if proxy_before is not None and proxy_after is not None else None),
    )


def search(pub: Worker, sub: Worker, max_rate: float, settings: Settings,
           proxy: CpuProbe | None = None) -> tuple[float, list[TrialResult]]:
    """The highest paced rate that passes, within ``settings.lossless_trials`` trials.

    Starts just under the max rate, steps up by 1.25× while trials pass and
    down by 0.6× while they fail, then bisects between the highest pass and
    the lowest failure.  A target the publisher could not reach counts as a
    failure for the bracketing, but a passing trial's receive rate still
    counts for the result.
    """
    best = 0.0
    lo: float | None = None  # highest target that passed at (nearly) the target rate
    hi: float | None = None  # lowest target that failed, or that the publisher could not reach
    target = max(100.0, 0.95 * max_rate)
    tried: list[TrialResult] = []
    for _ in range(settings.lossless_trials):
        t = trial(pub, sub, Pace(settings.lossless_s, target), proxy=proxy)
        tried.append(t)
        log.debug("lossless try %s -> %s", f"{target:,.0f}", t.brief())
        passed = t.lossless(settings.lossless_s)
        if passed:
            best = max(best, t.recv_rate)
        if passed and t.send_rate >= 0.95 * target:
            lo = target if lo is None else max(lo, target)
        else:
            hi = target if hi is None else min(hi, target)
        if hi is None:
            assert lo is not None
            target = lo * 1.25
        elif lo is None:
            target = hi * 0.6
            if target < 100.0:
                break
        else:
            if hi / lo < 1.04:
                break
            target = (lo + hi) / 2
    return best, tried
