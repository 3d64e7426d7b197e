"""The ``sensorwire`` command: one console script, one subcommand per role or tool.

Exit status: 0 on success and on a clean stop by SIGTERM/SIGINT, 2 for a bad
configuration or bad arguments, 1 for anything else that stopped the process
(an endpoint that cannot be bound, a database that cannot be opened).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from sensorwire import __version__, logs
from sensorwire.configload import ConfigError

if TYPE_CHECKING:
    from sensorwire.metrics import Family

log = logging.getLogger("sensorwire")

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2
_I64 = 1 << 63


# -- roles ------------------------------------------------------------------
# Each runs under sensorwire.daemon: READY=1/WATCHDOG=1/STATUS=/STOPPING=1 for systemd,
# SIGHUP re-reads the file (a bad one is logged and the running configuration kept),
# and the [metrics] endpoint.
def cmd_agent(args: argparse.Namespace) -> int:
    from sensorwire.agent import config as agent_config

    cfg = agent_config.load(args.config)
    _set_level(args, cfg.log_level)
    if args.once:
        from sensorwire.agent import once

        return once.run(cfg)
    from sensorwire import daemon
    from sensorwire.agent.runtime import Agent

    agent = Agent(cfg)

    def families() -> Iterable[Family]:
        from sensorwire import rolemetrics  # only a scrape needs it: [metrics] is off by default

        return rolemetrics.agent_families(agent)

    def reload() -> None:
        new = agent_config.load(args.config)
        agent.reload(new)
        _set_level(args, new.log_level)

    daemon.run("agent", agent, cfg.metrics, families, reload)
    return EXIT_OK


def cmd_proxy(args: argparse.Namespace) -> int:
    import msgspec

    from sensorwire import daemon, proxy, rolemetrics

    def from_file() -> proxy.ProxyConfig:
        cfg = proxy.load(args.config)
        return msgspec.structs.replace(cfg, frontend=args.frontend or cfg.frontend,
                                       backend=args.backend or cfg.backend)

    if args.config:
        cfg = from_file()
    elif args.frontend and args.backend:
        try:
            cfg = proxy.ProxyConfig(frontend=args.frontend, backend=args.backend)
        except ValueError as exc:  # the checks of a config file, on the command line's
            raise _Usage(f"proxy: {exc}") from None
    else:
        raise _Usage("proxy: give -c FILE, or both --frontend EP and --backend EP")
    _set_level(args, cfg.log_level)
    p = proxy.Proxy(cfg)

    def reload() -> None:
        new = from_file()
        p.reload(new)
        _set_level(args, new.log_level)

    daemon.run("proxy", p, cfg.metrics, lambda: rolemetrics.proxy_families(p),
               reload if args.config else None)
    return EXIT_OK


def cmd_collector(args: argparse.Namespace) -> int:
    from sensorwire import daemon, rolemetrics
    from sensorwire.collector import config as collector_config
    from sensorwire.collector.runtime import Collector, make_sinks

    cfg = collector_config.load(args.config)
    _set_level(args, cfg.log_level)
    sinks = make_sinks(cfg)
    if cfg.metrics.endpoint("collector")[0]:
        from sensorwire.collector.sinks.metrics import MetricsSink

        sinks.append(MetricsSink(cfg.metrics.export_values, cfg.metrics.values_max,
                                 devices_max=cfg.limits.max_devices))
    c = Collector(cfg, sinks=sinks)

    def reload() -> None:
        new = collector_config.load(args.config)
        c.reload(new)
        _set_level(args, new.log_level)

    daemon.run("collector", c, cfg.metrics, lambda: rolemetrics.collector_families(c), reload)
    return EXIT_OK


# -- tools --------------------------------------------------------------------
def cmd_tail(args: argparse.Namespace) -> int:
    from sensorwire import tail, zmqutil
    from sensorwire.lifecycle import StopSignal
    from sensorwire.proto import wire

    for prefix in args.prefix:
        try:
            wire.subscriptions(prefix)
        except ValueError as exc:
            raise _Usage(f"tail: {exc}") from None
    for endpoint in args.connect or []:  # libzmq would take a bad one and wait for ever
        problem = zmqutil.endpoint_problem(endpoint, connect=True)
        if problem:
            raise _Usage(f"tail: --connect {problem}")
    sec = None
    if args.secret_key or args.server_key:
        if not (args.secret_key and args.server_key):
            raise _Usage("tail: CURVE needs both --secret-key and --server-key")
        from sensorwire.security import ClientSecurity

        sec = ClientSecurity(mode="curve", secret_key=args.secret_key, server_key=args.server_key)
    with StopSignal().install() as stop:
        return tail.run(args.connect or ["tcp://127.0.0.1:5557"], args.prefix, stop, count=args.count,
                        security=sec, max_lag_s=args.max_lag_s)


def cmd_keygen(args: argparse.Namespace) -> int:
    from sensorwire import keys

    try:
        public, secret = keys.generate(args.name, args.dir, force=args.force)
    except ValueError as exc:
        raise _Usage(f"keygen: {exc}") from None
    except keys.KeyExists as exc:
        print(f"sensorwire: {exc}", file=sys.stderr)
        return EXIT_FAIL
    pair = keys.load_secret(secret)
    print(f"{public}: public key {pair.public.decode('ascii')}: give it to the other side "
          "(an allow-list folder, or a server_key)")
    print(f"{secret}: secret key, mode 0600: keep it on this machine only (secret_key)")
    return EXIT_OK


def cmd_query(args: argparse.Namespace) -> int:
    from sensorwire.collector import query
    from sensorwire.collector.sqlite_store import QueryFilter
    from sensorwire.timefmt import parse_time_ns

    try:
        since = parse_time_ns(args.since) if args.since else None
        until = parse_time_ns(args.until) if args.until else None
    except ValueError as exc:
        raise _Usage(f"query: {exc}") from None
    # a store's times and limits are 64-bit: a time before 1678 or after 2262, or a limit past
    # 2^63, bounds nothing (and would not fit in a query)
    since, until, limit = (None if v is None else max(-_I64, min(v, _I64 - 1))
                           for v in (since, until, args.limit))
    f = QueryFilter(args.device, args.sensor, args.metric, since, until, limit)
    return query.run(args.db, f, args.format)


def cmd_status(args: argparse.Namespace) -> int:
    from sensorwire.collector import status

    return status.run(args.db, args.format)


def cmd_alerts(args: argparse.Namespace) -> int:
    from sensorwire.collector.alerting import listing
    from sensorwire.timefmt import parse_time_ns

    if args.db is None:
        raise _Usage("alerts: give --db FILE (the collector's SQLite file)")
    try:
        since = parse_time_ns(args.since) if args.since else None
    except ValueError as exc:
        raise _Usage(f"alerts: {exc}") from None
    if since is not None and since >= _I64:  # after 2262: after any stored time, nothing to list
        since = _I64 - 1
    return listing.run(args.db, args.active, since, args.format)


def cmd_alerts_test(args: argparse.Namespace) -> int:
    from sensorwire.collector import config as collector_config
    from sensorwire.collector.alerting import replay
    from sensorwire.timefmt import parse_time_ns

    # it notifies nobody: the notifiers' secrets ($SMTP_PASSWORD, ...) need not be set here
    cfg = collector_config.load(args.config, unset=lambda var: f"<{var} not set>")
    try:
        since = parse_time_ns(args.test_since or args.since or "24h")
    except ValueError as exc:
        raise _Usage(f"alerts test: {exc}") from None
    db = args.test_db or args.db or cfg.storage.path
    if not cfg.alerts:
        raise ConfigError(f"{args.config}: no [[alerts]] rules to test")
    return replay.run(cfg.alerts, db, since, args.test_format or args.format)


def cmd_check_config(args: argparse.Namespace) -> int:
    from sensorwire import checkconfig

    role, _ = checkconfig.load_any(args.file, args.role)
    print(f"{args.file}: a valid {role} configuration")
    return EXIT_OK


def cmd_install_service(args: argparse.Namespace) -> int:
    from sensorwire import install

    try:
        return install.run(args.role, user=args.user, config=args.config, dry_run=args.dry_run,
                           root=args.root)
    except install.InstallError as exc:
        print(f"sensorwire: {exc}", file=sys.stderr)
        return EXIT_FAIL


def cmd_demo(args: argparse.Namespace) -> int:
    from sensorwire import demo

    return demo.run(duration_s=args.duration, workdir=args.dir)


def cmd_serial_list(args: argparse.Namespace) -> int:
    from sensorwire import render
    from sensorwire.agent.sensors.serial import list_ports

    ports = list_ports()
    if not ports:
        print("no serial ports found", file=sys.stderr)
        return EXIT_OK
    print(render.table(["port", "stable path", "description", "vid:pid"],
                       [(p.device, p.by_id, p.description, p.vid_pid) for p in ports]))
    return EXIT_OK


def cmd_serial_sim(args: argparse.Namespace) -> int:
    from sensorwire import serialsim
    from sensorwire.lifecycle import StopSignal

    with StopSignal().install() as stop:
        return serialsim.run(args.format, args.rate, args.garbage, stop)


# -- parsing ------------------------------------------------------------------
class _Usage(Exception):
    pass


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not v > 0 or math.isinf(v):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return v


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to 1, got {text}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a whole number > 0, got {text}")
    return v


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, finding the terminal's width without :mod:`shutil`.

    argparse makes a formatter for every argument added, and the stock one
    imports shutil for ``get_terminal_size``, which brings bz2 and lzma
    (0.5 MB of RSS in an agent that runs for months).  Same rule as shutil's:
    ``$COLUMNS``, else the terminal of stdout, else 80.
    """

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:
            width = _columns()
        super().__init__(prog, indent_increment, max_help_position, width)


def _columns() -> int:
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser (and, through ``add_subparsers``, sub-parsers) with :class:`_Formatter`."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        kw.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kw)

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments:") and any(
                w.split("=")[0] == "--log-level" for w in message.split()):
            message += " (--log-level goes before the command: sensorwire --log-level debug agent ...)"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
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
    a.add_argument("--once", action="store_true",
                   help="read every sensor once, print each frame as a JSON line (as tail does) "
                   "and exit; non-zero, naming them, when sensors failed")
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
    t.add_argument("--max-lag-s", type=_positive_float, default=10.0, metavar="S",
                   help="warn on stderr when even the newest heartbeat read is older than this: "
                   "tail is falling behind (default 10)")
    t.add_argument("--secret-key", metavar="FILE",
                   help="CURVE: this client's .key_secret file (its public key must be in the "
                   "server's allow-list: a proxy's authorized_collectors)")
    t.add_argument("--server-key", metavar="FILE", help="CURVE: the server's public .key file")
    t.add_argument("prefix", nargs="*", metavar="PREFIX",
                   help="topic prefixes, segment-safe: site, site/device or site/device/sensor")
    t.set_defaults(func=cmd_tail)

    g = sub.add_parser("keygen", help="make a CURVE key pair for a device, proxy or collector",
                       description="Write NAME.key (public) and NAME.key_secret (secret, mode "
                       "0600) in ZeroMQ's certificate format. For a device, NAME is its device_id: "
                       "the proxy binds a key to the device named by its file.")
    g.add_argument("name", metavar="NAME", help="a device_id, or e.g. proxy, collector-1")
    g.add_argument("--dir", default=".", metavar="DIR", help="where to write them (default: .)")
    g.add_argument("--force", action="store_true", help="replace an existing pair")
    g.set_defaults(func=cmd_keygen)

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

    al = sub.add_parser("alerts", help="list stored alerts; 'alerts test' replays history "
                        "through the rules",
                        description="List the alerts the collector stored: the history of "
                        "notifications, or with --active those firing now. 'sensorwire alerts test "
                        "-c collector.toml --db FILE' replays stored samples through the rules "
                        "instead and prints what would have fired and resolved, notifying nobody.")
    al.add_argument("--db", metavar="FILE", help="the collector's SQLite file")
    al.add_argument("--active", action="store_true", help="only the alerts firing now")
    al.add_argument("--since", metavar="DURATION_OR_ISO", help="e.g. 24h, 7d, 2026-11-28T00:00:00Z")
    al.add_argument("--format", choices=("table", "json"), default="table",
                    help="json: one object per line with the notification's fields")
    al.set_defaults(func=cmd_alerts)
    al_sub = al.add_subparsers(dest="action", metavar="[test]", required=False)
    at = al_sub.add_parser("test", help="replay stored samples through the rules, notify nobody",
                           description="Replay the samples stored since --since (default 24h) "
                           "through the [[alerts]] rules of a collector file and print what would "
                           "have fired and resolved, and when. Nobody is notified, nothing is "
                           "written.")
    at.add_argument("-c", "--config", required=True, metavar="FILE", help="collector.toml")
    # own dests: a subparser's defaults would overwrite the same options given before 'test'
    at.add_argument("--db", dest="test_db", metavar="FILE",
                    help="default: [storage] path of the collector file")
    at.add_argument("--since", dest="test_since", metavar="DURATION_OR_ISO", help="default 24h")
    at.add_argument("--format", dest="test_format", choices=("table", "json"))
    at.set_defaults(func=cmd_alerts_test)

    k = sub.add_parser("check-config", help="validate an agent, proxy or collector file",
                       description="Validate a configuration file and say what is wrong.")
    k.add_argument("file", metavar="FILE")
    k.add_argument("--role", choices=("agent", "proxy", "collector"),
                   help="default: guessed from the file name, then from its keys")
    k.set_defaults(func=cmd_check_config)

    i = sub.add_parser("install-service", help="install the systemd unit of a role",
                       description="Write /etc/systemd/system/sensorwire-ROLE.service for the "
                       "sensorwire installed here, install a default configuration if there is "
                       "none, and print the systemctl commands to enable and start it.")
    i.add_argument("role", choices=("agent", "proxy", "collector"))
    i.add_argument("--user", metavar="NAME",
                   help="run as this existing user (default: a dynamic user made by systemd)")
    i.add_argument("--config", metavar="PATH",
                   help="the configuration file (default: /etc/sensorwire/ROLE.toml)")
    i.add_argument("--dry-run", action="store_true",
                   help="write nothing; print exactly the unit file to stdout, the rest to stderr")
    i.add_argument("--root", metavar="DIR",
                   help="write under DIR as if it were / (the unit's own paths stay as they are)")
    i.set_defaults(func=cmd_install_service)

    d = sub.add_parser("demo", help="run a proxy, a collector and simulated agents locally",
                       description="Start a proxy, a collector, three simulated agents and one "
                       "on a simulated serial device on free local ports, run them, stop them "
                       "and show what was stored.")
    d.add_argument("--duration", type=float, default=20.0, metavar="S", help="seconds (default 20)")
    d.add_argument("--dir", default="sensorwire-demo", metavar="DIR",
                   help="where configs, logs and the database go (default ./sensorwire-demo)")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("serial", help="serial ports on this machine",
                       description="Serial port tools.")
    s_sub = s.add_subparsers(dest="serial_command", metavar="COMMAND", required=True)
    sl = s_sub.add_parser("list", help="list serial ports with their stable paths",
                          description="List the serial ports: device, stable "
                          "/dev/serial/by-id/ path, description and USB VID:PID.")
    sl.set_defaults(func=cmd_serial_list)

    ss = sub.add_parser("serial-sim", help="a simulated serial device on a pseudo-terminal",
                        description="Create a pseudo-terminal, print its path as the first "
                        "line, and write lines of FORMAT to it until stopped.")
    ss.add_argument("--format", required=True, choices=("csv", "kv", "json", "nmea"))
    ss.add_argument("--rate", type=_positive_float, default=1.0, metavar="HZ",
                    help="readings per second (nmea: fixes, a GGA and an RMC sentence each; "
                    "default 1)")
    ss.add_argument("--garbage", type=_fraction, default=0.0, metavar="FRACTION",
                    help="fraction of lines written corrupt (default 0)")
    ss.set_defaults(func=cmd_serial_sim)
    return p



def _set_level(args: argparse.Namespace, config_level: str) -> None:
    if args.log_level is None:
        logging.getLogger().setLevel(config_level.upper())


def _command_parser(command: str) -> argparse.ArgumentParser:
    """The parser of ``command``, whose usage line says what that command takes."""
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices.get(command, parser)
            return found
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # not kept: the parsers of every command are garbage once the arguments are parsed
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level or "info")
    try:
        rc: int = args.func(args)
        return rc
    except ConfigError as exc:
        print(f"sensorwire: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except _Usage as exc:
        _command_parser(args.command).print_usage(sys.stderr)
        print(f"sensorwire: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError as exc:
        if args.command in ("agent", "proxy", "collector"):  # a role's own pipe: say so
            print(f"sensorwire: {exc}", file=sys.stderr)
            return EXIT_FAIL
        # the reader of what it prints went away (`sensorwire query ... | head`): no message,
        # as other tools; stdout to /dev/null, or the interpreter's last flush fails again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAIL
    except Exception as exc:  # noqa: BLE001 - translate to a message and an exit status
        from sensorwire.agent.spool import SpoolError
        from sensorwire.collector.sqlite_store import StoreError
        from sensorwire.zmqutil import EndpointError

        if isinstance(exc, EndpointError | StoreError | SpoolError | OSError):
            print(f"sensorwire: {exc}", file=sys.stderr)
            return EXIT_FAIL
        import sqlite3

        if isinstance(exc, sqlite3.DatabaseError):  # --db names a file that is not our database
            db = getattr(args, "db", None)
            print(f"sensorwire: {db or 'the database'}: {exc} (is it a sensorwire database?)",
                  file=sys.stderr)
            return EXIT_FAIL
        raise


if __name__ == "__main__":
    sys.exit(main())
