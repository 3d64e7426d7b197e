"""The markdown report: the table, the ceilings, and how each row was driven."""

from __future__ import annotations

import math

from bench import transports
from bench.ceilings import Ceilings
from bench.harness import Settings, TransportResult


def _rate(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:,.0f}"


def _latency(p50: float, p99: float) -> str:
    if math.isnan(p50) or math.isnan(p99):
        return "–"
    if p99 >= 1000:
        return f"{p50 / 1000:.1f} / {p99 / 1000:.1f} ms"
    return f"{p50:,.0f} / {p99:,.0f} µs"


def _cpu(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:.1f}"


def _proxy(us: float | None) -> str:
    """`` (proxy 4.2)`` for a row with a proxy process; nothing for the others."""
    return "" if us is None or math.isnan(us) else f" (proxy {us:.1f})"


def table(results: list[TransportResult], ceilings: Ceilings, settings: Settings) -> str:
    rate = f"{settings.latency_rate / 1000:g}k/s"
    lines = [
        f"| transport | max frames/s received | lossless frames/s | p50 / p99 latency at {rate} "
        f"| CPU µs/frame pub / sub (proxy) at {rate} | max ÷ ceilings: encode / decode / zmq |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        label = r.transport.label
        if r.status != "ok":
            lines.append(f"| {label} | {r.status} ({summary(r.reason)}) | | | | |")
            continue
        lost = r.latency_lost
        lat = _latency(r.p50_us, r.p99_us) + (f" (lost {lost:,})" if lost else "")
        m = r.max_rate
        ratios = " / ".join(f"{m / c:.2f}" for c in (ceilings.encode_per_s, ceilings.decode_per_s,
                                                       ceilings.zmq_per_s))
        lossless = _rate(r.lossless_rate) if r.lossless_rate > 0 else "none passed"
        lines.append(f"| {label} | {_rate(m)} | {lossless} | {lat} "
                     f"| {_cpu(r.pub_cpu_us)} / {_cpu(r.sub_cpu_us)}{_proxy(r.proxy_cpu_us)} "
                     f"| {ratios} |")
    return "\n".join(lines)


def targets(results: list[TransportResult], settings: Settings) -> str:
    """Issue 10's two targets for the data path, read off this run's rows.

    Throughput: sensorwire's lossless rate at least NATS core's (aim 1.5x).
    Latency: sensorwire's p99 below every other row's.  Both compare
    medians; each row's p99 of every run is listed too, because on a shared
    machine one run's p99 can move by a factor of two.
    """
    by_name = {r.transport.name: r for r in results if r.status == "ok" and r.runs}
    sw = by_name.get("sensorwire")
    if sw is None:
        return "Targets: not judged (the sensorwire row did not run)."
    lines = ["Targets, from this run (medians of the rows above):", ""]
    nats = by_name.get("nats")
    if nats is None or not nats.lossless_rate > 0:
        lines.append("- **Throughput**: not judged (no NATS core row with a lossless rate).")
    else:
        x = sw.lossless_rate / nats.lossless_rate
        verdict = ("met, and the 1.5x aim" if x >= 1.5 else "met; the 1.5x aim not"
                   if x >= 1.0 else "**not met**")
        lines.append(f"- **Throughput**: sensorwire's lossless rate is {x:.2f}x NATS core's "
                     f"({_rate(sw.lossless_rate)} against {_rate(nats.lossless_rate)} frames/s; "
                     f"target at least 1x, aim 1.5x): {verdict}.")
    rate = f"{settings.latency_rate / 1000:g}k/s"
    peers = [r for r in by_name.values() if r is not sw and not math.isnan(r.p99_us)]
    if math.isnan(sw.p99_us) or not peers:
        lines.append(f"- **p99 latency at {rate}**: not judged (no peer row with a latency).")
    else:
        above = [r for r in peers if r.p99_us <= sw.p99_us]
        names = ", ".join(f"{r.transport.label} ({r.p99_us:,.0f} µs)" for r in above)
        verdict = (f"met: below each of the {len(peers)} other rows" if not above
                   else f"**not met**: at or above {names}")
        lines.append(f"- **p99 latency at {rate}**: sensorwire {sw.p99_us:,.0f} µs; {verdict}.")
        lines.append("- p99 of each run, µs: " + "; ".join(
            f"{r.transport.name} " + " / ".join(f"{run.latency.p99_us:,.0f}" for run in r.runs)
            for r in [sw, *peers]) + ".")
    missing = [t.name for t in transports.ALL if t.name not in by_name]
    if missing:
        lines.append(f"- Judged without these rows (skipped, failed or not asked for): "
                     f"{', '.join(missing)}.")
    return "\n".join(lines)


def summary(reason: str) -> str:
    """One line for a multi-line reason: its first line and, for a traceback, its last."""
    lines = [x.strip() for x in reason.strip().splitlines() if x.strip()]
    if not lines:
        return "no reason given"
    if len(lines) == 1:
        return lines[0]
    return f"{lines[0].rstrip(':')}: {lines[-1]}"


def ceilings_line(c: Ceilings) -> str:
    return (f"Ceilings in this run ({c.frame_bytes}-byte frame of 8 samples): "
            f"protobuf build + encode {c.encode_per_s:,.0f}/s in one process, "
            f"decode {c.decode_per_s:,.0f}/s; pyzmq one-part messages of that size "
            f"{c.zmq_per_s:,.0f}/s (PUSH→PULL, tcp loopback).")


def method(settings: Settings) -> str:
    return (f"Publisher and subscriber are separate processes; medians of {settings.runs} "
            f"run(s), each with fresh processes, made round by round (run 1 of every transport, "
            f"then run 2, ...). max: unpaced for {settings.max_s:g} s (the "
            f"highest receive rate of any trial); lossless: up to {settings.lossless_trials} "
            f"paced trials of {settings.lossless_s:g} s, every frame received and the subscriber "
            f"done within 0.1 s + 5 % of the trial after the last send; latency and CPU: paced "
            f"at {settings.latency_rate:,.0f}/s for {settings.latency_s:g} s, receive time − the "
            f"frame's time_unix_nano, process CPU time ÷ frames (a proxy process's ÷ frames its "
            f"publisher's socket accepted).")


def practices(results: list[TransportResult]) -> str:
    lines = []
    for r in results:
        versions = f" [{r.versions}]" if r.versions else ""
        lines.append(f"- **{r.transport.label}** (`{r.transport.name}`){versions}: "
                     f"{r.transport.practice}")
    return "\n".join(lines)


def details(results: list[TransportResult], settings: Settings) -> str:
    lines = []
    for r in results:
        if r.status == "failed":
            lines.append(f"- {r.transport.name}: failed:\n\n```\n{r.reason.strip()}\n```")
            continue
        if r.status != "ok":
            continue
        for i, run in enumerate(r.runs, 1):
            pub_us = 1e6 * run.max.pub_cpu_s / max(1, run.max.attempted)
            sub_us = 1e6 * run.max.sub_cpu_s / max(1, run.max.received)
            lines.append(f"- {r.transport.name} run {i}: {run.max.brief()}; "
                         f"CPU µs/frame at max {pub_us:.1f} pub / {sub_us:.1f} sub"
                         f"{_proxy(run.max.proxy_cpu_us)}")
            for t in run.lossless_trials:
                verdict = "pass" if t.lossless(settings.lossless_s) else "fail"
                lines.append(f"  - lossless try at {t.brief()}: {verdict}")
            lines.append(f"  - latency {run.latency.brief()}{_proxy(run.latency.proxy_cpu_us)}"
                         + (f"; subscriber: {run.latency.details}" if run.latency.details else ""))
    return "\n".join(lines)
