"""The ``sensorwire`` command: one console script, one subcommand per role or tool.

Exit status: 0 on success and on a clean stop by SIGTERM/SIGINT, 2 for a bad
configuration or bad arguments, 1 for anything else that stopped the process
(an endpoint that cannot be bound, a database that cannot be opened).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from sensorwire import __version__, logs, sdnotify
from sensorwire.configload import ConfigError

log = logging.getLogger("sensorwire")

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2


def _ready(summary: str) -> Callable[[], None]:
    def ready() -> None:
        sdnotify.notify(f"READY=1\nSTATUS={summary}")
    return ready


# -- roles ------------------------------------------------------------------
def cmd_agent(args: argparse.Namespace) -> int:
    from sensorwire.agent import config as agent_config
    from sensorwire.agent.runtime import Agent

    cfg = agent_config.load(args.config)
    _set_level(args, cfg.log_level)
    from sensorwire.lifecycle import StopSignal

    with StopSignal().install() as stop:
        Agent(cfg).run(stop, ready=_ready(f"agent {cfg.site}/{cfg.device_id} publishing"))
    sdnotify.notify("STOPPING=1")
    return EXIT_OK


def cmd_proxy(args: argparse.Namespace) -> int:
    from sensorwire import proxy
    from sensorwire.lifecycle import StopSignal

    if args.config:
        cfg = proxy.load(args.config)
        if args.frontend or args.backend:
            cfg = proxy.ProxyConfig(
                frontend=args.frontend or cfg.frontend, backend=args.backend or cfg.backend,
                log_level=cfg.log_level, summary_s=cfg.summary_s,
            )
    elif args.frontend and args.backend:
        cfg = proxy.ProxyConfig(frontend=args.frontend, backend=args.backend)
    else:
        raise _Usage("proxy: give -c FILE, or both --frontend EP and --backend EP")
    _set_level(args, cfg.log_level)
    with StopSignal().install() as stop:
        proxy.Proxy(cfg).run(stop, ready=_ready("proxy forwarding"))
    sdnotify.notify("STOPPING=1")
    return EXIT_OK


def cmd_collector(args: argparse.Namespace) -> int:
    from sensorwire.collector import config as collector_config
    from sensorwire.collector.runtime import Collector
    from sensorwire.lifecycle import StopSignal

    cfg = collector_config.load(args.config)
    _set_level(args, cfg.log_level)
    with StopSignal().install() as stop:
        Collector(cfg).run(stop, ready=_ready("collector receiving"))
    sdnotify.notify("STOPPING=1")
    return EXIT_OK


# -- tools --------------------------------------------------------------------
def cmd_tail(args: argparse.Namespace) -> int:
    from sensorwire import tail
    from sensorwire.lifecycle import StopSignal

    with StopSignal().install() as stop:
        return tail.run(args.connect or ["tcp://127.0.0.1:5557"], args.prefix, stop, count=args.count)


def cmd_query(args: argparse.Namespace) -> int:
    from sensorwire.collector import query
    from sensorwire.collector.sqlite_store import QueryFilter
    from sensorwire.timefmt import parse_time_ns

    try:
        since = parse_time_ns(args.since) if args.since else None
        until = parse_time_ns(args.until) if args.until else None
    except ValueError as exc:
        raise _Usage(f"query: {exc}") from None
    f = QueryFilter(args.device, args.sensor, args.metric, since, until, args.limit)
    return query.run(args.db, f, args.format)


def cmd_status(args: argparse.Namespace) -> int:
    from sensorwire.collector import status

    return status.run(args.db, args.format)


def cmd_check_config(args: argparse.Namespace) -> int:
    from sensorwire import checkconfig

    role, _ = checkconfig.load_any(args.file, args.role)
    print(f"{args.file}: a valid {role} configuration")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from sensorwire import demo

    return demo.run(duration_s=args.duration, workdir=args.dir)


# -- parsing ------------------------------------------------------------------
class _Usage(Exception):
    pass


def _positive_int(text: str) -> int:
    v = int(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a whole number > 0, got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sensorwire",
        description="Brokerless IoT telemetry: agents publish protobuf frames on ZeroMQ, "
        "a proxy joins them to collectors, collectors store them.",
    )
    p.add_argument("--version", action="version", version=f"sensorwire {__version__}")
    p.add_argument("--log-level", choices=logs.LEVELS, default=None,
                   help="overrides log_level in the config (default: info)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    a = sub.add_parser("agent", help="read sensors and publish frames",
                       description="Read the configured sensors and publish their frames.")
    a.add_argument("-c", "--config", required=True, metavar="FILE", help="agent.toml")
    a.set_defaults(func=cmd_agent)

    x = sub.add_parser("proxy", help="join agents (frontend) to collectors (backend)",
                       description="Run the XSUB/XPUB proxy: agents connect to the frontend, "
                       "collectors to the backend.")
    x.add_argument("-c", "--config", metavar="FILE", help="proxy.toml")
    x.add_argument("--frontend", metavar="EP", help="where agents connect, e.g. tcp://*:5556")
    x.add_argument("--backend", metavar="EP", help="where collectors connect, e.g. tcp://*:5557")
    x.set_defaults(func=cmd_proxy)

    c = sub.add_parser("collector", help="subscribe to frames and store them",
                       description="Subscribe to frames and hand them to storage.")
    c.add_argument("-c", "--config", required=True, metavar="FILE", help="collector.toml")
    c.set_defaults(func=cmd_collector)

    t = sub.add_parser("tail", help="print frames as JSON lines as they pass",
                       description="Print every frame as one JSON line (heartbeats too).")
    t.add_argument("--connect", action="append", metavar="EP",
                   help="a proxy backend or an agent's bound endpoint (repeatable; "
                   "default tcp://127.0.0.1:5557)")
    t.add_argument("--count", type=_positive_int, metavar="N", help="exit after N frames")
    t.add_argument("prefix", nargs="*", metavar="PREFIX",
                   help="topic prefixes, segment-safe: site, site/device or site/device/sensor")
    t.set_defaults(func=cmd_tail)

    q = sub.add_parser("query", help="print stored samples",
                       description="Print stored samples ordered by time. DURATION is "
                       "90s, 15m, 2h or 7d before now; ISO times are UTC unless they say otherwise.")
    q.add_argument("--db", required=True, metavar="FILE_OR_DSN",
                   help="the collector's SQLite file, or a PostgreSQL DSN (postgresql://...)")
    q.add_argument("--device")
    q.add_argument("--sensor")
    q.add_argument("--metric")
    q.add_argument("--since", metavar="DURATION_OR_ISO")
    q.add_argument("--until", metavar="DURATION_OR_ISO")
    q.add_argument("--limit", type=_positive_int, metavar="N")
    q.add_argument("--format", choices=("table", "csv", "json"), default="table")
    q.set_defaults(func=cmd_query)

    st = sub.add_parser("status", help="devices: presence and loss counters",
                        description="One row per device: state (online, offline, stopped), last "
                        "seen, frames stored, gaps (frames missing), duplicates, restarts.")
    st.add_argument("--db", required=True, metavar="FILE_OR_DSN",
                    help="the collector's SQLite file, or a PostgreSQL DSN (postgresql://...)")
    st.add_argument("--format", choices=("table", "json"), default="table")
    st.set_defaults(func=cmd_status)

    k = sub.add_parser("check-config", help="validate an agent, proxy or collector file",
                       description="Validate a configuration file and say what is wrong.")
    k.add_argument("file", metavar="FILE")
    k.add_argument("--role", choices=("agent", "proxy", "collector"),
                   help="default: guessed from the file name, then from its keys")
    k.set_defaults(func=cmd_check_config)

    d = sub.add_parser("demo", help="run a proxy, a collector and simulated agents locally",
                       description="Start a proxy, a collector and three simulated agents on "
                       "free local ports, run them, stop them and show what was stored.")
    d.add_argument("--duration", type=float, default=20.0, metavar="S", help="seconds (default 20)")
    d.add_argument("--dir", default="sensorwire-demo", metavar="DIR",
                   help="where configs, logs and the database go (default ./sensorwire-demo)")
    d.set_defaults(func=cmd_demo)
    return p



def _set_level(args: argparse.Namespace, config_level: str) -> None:
    if args.log_level is None:
        logging.getLogger().setLevel(config_level.upper())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.setup(args.log_level or "info")
    try:
        rc: int = args.func(args)
        return rc
    except ConfigError as exc:
        print(f"sensorwire: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except _Usage as exc:
        parser.print_usage(sys.stderr)
        print(f"sensorwire: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - translate to a message and an exit status
        from sensorwire.collector.sqlite_store import StoreError
        from sensorwire.zmqutil import EndpointError

        if isinstance(exc, EndpointError | StoreError | OSError):
            print(f"sensorwire: {exc}", file=sys.stderr)
            return EXIT_FAIL
        raise


if __name__ == "__main__":
    sys.exit(main())
