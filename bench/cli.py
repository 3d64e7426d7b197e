"""``python -m bench``: run the comparison and print the markdown report.

The report goes to stdout; progress to stderr.  Exit status 0 when every
transport ran or was skipped, 1 when one failed, 2 for bad arguments,
130 on Ctrl-C or SIGTERM (after every process the bench started has been
stopped).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench import ceilings, harness, machine, report, transports
from bench.harness import QUICK, Settings, TransportResult
from bench.procs import BenchError
from bench.transports.base import Transport

log = logging.getLogger("bench")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Compare sensorwire with the transports a user would pick instead, "
        "on the same protobuf frame, and print a markdown table.")
    p.add_argument("--quick", action="store_true",
                   help="a fast smoke run: 1 run, short trials (about a minute)")
    p.add_argument("--only", metavar="NAME[,NAME]", type=lambda s: [x for x in s.split(",") if x],
                   help=f"run only these transports: {', '.join(transports.BY_NAME)}")
    p.add_argument("--runs", type=int, metavar="N",
                   help="runs per transport; the table shows medians (default 3, 1 with --quick)")
    p.add_argument("--duration", type=float, metavar="S",
                   help="seconds per trial (default 1.5 for max and lossless trials, "
                   "4 for latency; 0.5 with --quick)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write every measurement as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="log every trial to stderr")
    p.add_argument("--list", action="store_true", help="list the transports and exit")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    s = QUICK if args.quick else Settings()
    if args.runs is not None:
        s = replace(s, runs=args.runs)
    if args.duration is not None:
        s = replace(s, max_s=args.duration, lossless_s=args.duration, latency_s=args.duration)
    return s


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    if args.list:
        for t in transports.ALL:
            print(f"{t.name:16} {t.label}")
        for t in transports.EXTRA:
            print(f"{t.name:16} {t.label} (only with --only)")
        return 0
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.duration is not None and not 0.1 <= args.duration <= 60:
        parser.error("--duration must be between 0.1 and 60 seconds")
    chosen = list(transports.ALL)
    if args.only:
        unknown = [n for n in args.only if n not in transports.BY_NAME]
        if unknown:
            parser.error(f"--only: no transport {', '.join(unknown)}; there are: "
                         f"{', '.join(transports.BY_NAME)}")
        chosen = [transports.BY_NAME[n] for n in args.only]
    settings = settings_from(args)
    signal.signal(signal.SIGTERM, _interrupt)  # stop like on Ctrl-C: every process is cleaned up
    try:
        return _run(chosen, settings, args.json, " ".join(["python -m bench", *argv]))
    except KeyboardInterrupt:
        log.warning("interrupted; every process the bench started has been stopped")
        return 130


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run(chosen: list[Transport], settings: Settings, json_path: Path | None,
         command: str) -> int:
    started = time.monotonic()
    head = machine.header()
    load_before, busy_before = machine.load(), machine.busy()
    log.info("%s", head)
    log.info("ceilings ...")
    try:
        ceil = ceilings.measure(settings.ceiling_s)
    except BenchError as exc:
        log.error("ceilings: %s", exc)
        return 1
    log.info("%s", report.ceilings_line(ceil))
    # round by round: a noisy minute of the shared machine falls on one run of every
    # transport, not on all the runs of one
    results: list[TransportResult] = [harness.prepare(t) for t in chosen]
    for i in range(settings.runs):
        log.info("round %d of %d ...", i + 1, settings.runs)
        for r in results:
            harness.add_run(r, settings, i, progress=log.info)
    for r in results:
        if r.status != "ok":
            log.warning("%s %s: %s", r.transport.name, r.status, report.summary(r.reason))
    elapsed = time.monotonic() - started
    out = [
        f"Measured {head} · {elapsed:.0f} s · `{command}` · "
        f"{load_before} before, {machine.load()} after",
        "",
        *([f"**The machine was busy** ({load_before} when the run began): every figure "
           "is lower and noisier than on an idle machine; compare rows of one run.", ""]
          if busy_before else []),
        report.table(results, ceil, settings),
        "",
        report.targets(results, settings),
        "",
        report.ceilings_line(ceil),
        "",
        report.method(settings),
        "",
        "How each row is driven:",
        "",
        report.practices(results),
        "",
        "<details><summary>Every trial</summary>",
        "",
        report.details(results, settings),
        "",
        "</details>",
    ]
    print("\n".join(out))
    if json_path is not None:
        data = _as_json(head, ceil, settings, results)
        json_path.write_text(json.dumps(data, indent=2, default=str))
    return 1 if any(r.status == "failed" for r in results) else 0


def _as_json(head: str, ceil: ceilings.Ceilings, settings: Settings,
             results: list[TransportResult]) -> dict[str, Any]:
    rows = []
    for r in results:
        rows.append({
            "name": r.transport.name, "label": r.transport.label, "status": r.status,
            "reason": r.reason, "versions": r.versions, "practice": r.transport.practice,
            "max_per_s": r.max_rate if r.runs else None,
            "lossless_per_s": r.lossless_rate if r.runs else None,
            "p50_us": r.p50_us if r.runs else None, "p99_us": r.p99_us if r.runs else None,
            "pub_cpu_us": r.pub_cpu_us if r.runs else None,
            "sub_cpu_us": r.sub_cpu_us if r.runs else None,
            "max_pub_cpu_us": r.max_pub_cpu_us if r.runs else None,
            "max_sub_cpu_us": r.max_sub_cpu_us if r.runs else None,
            "runs": [asdict(run) for run in r.runs],
        })
    return {"header": head, "settings": asdict(settings), "ceilings": asdict(ceil), "rows": rows}
