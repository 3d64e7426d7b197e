"""agent.toml: the agent's configuration, validated once at start."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from sensorwire import configload, names, security
from sensorwire.agent import sensors
from sensorwire.configload import Config, ConfigError, check_name
from sensorwire.metrics import MetricsConfig
from sensorwire.security import AgentSecurity


class PublishConfig(Config):
    connect: list[str] = []
    bind: list[str] = []
    heartbeat_s: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 5.0  # collectors: at most a day
    sndhwm: Annotated[int, msgspec.Meta(ge=0, le=2_147_483_647)] = 10000  # libzmq: an int
    # recently sent frames kept for gap repair: whichever bound is reached first
    ring_frames: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 10000
    ring_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0

    def __post_init__(self) -> None:
        from sensorwire.zmqutil import check_endpoints

        check_endpoints("connect", self.connect)
        check_endpoints("bind", self.bind)


class SpoolConfig(Config):
    enabled: bool = True
    dir: str = ""
    max_mb: Annotated[float, msgspec.Meta(gt=0)] = 64.0
    overflow: Literal["drop_oldest", "drop_newest"] = "drop_oldest"
    fsync: Literal["never", "interval", "always"] = "interval"
    fsync_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    # below the collectors' default flood limit (1,000 frames/s per device) with room for live frames;
    # also the most frames gap repairs resend per second (agent/publisher.py)
    replay_rate: Annotated[float, msgspec.Meta(gt=0)] = 500.0


class AgentFile(Config):
    site: str
    device_id: str = ""
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    publish: PublishConfig = msgspec.field(default_factory=PublishConfig)
    spool: SpoolConfig = msgspec.field(default_factory=SpoolConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    security: AgentSecurity = msgspec.field(default_factory=AgentSecurity)
    sensors: list[dict[str, Any]] = []

    def __post_init__(self) -> None:
        check_name(self.site, "site")
        if self.device_id:
            check_name(self.device_id, "device_id")
        if not self.publish.connect and not self.publish.bind:
            raise ValueError("publish: give at least one endpoint in connect or bind")
        security.check(self.security, binds=bool(self.publish.bind),
                       connects=bool(self.publish.connect))


class AgentConfig(msgspec.Struct, frozen=True):
    """A validated agent.toml: the file's tables, with each sensor's kind and settings."""

    site: str
    device_id: str
    log_level: str
    publish: PublishConfig
    spool: SpoolConfig
    sensors: list[tuple[sensors.SensorKind, sensors.SensorConfig]]
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    security: AgentSecurity = msgspec.field(default_factory=AgentSecurity)

    @property
    def spool_dir(self) -> Path:
        """``[spool] dir``, or ``$STATE_DIRECTORY/spool/<device>`` (systemd), or
        ``~/.local/state/sensorwire/spool/<device>``."""
        if self.spool.dir:
            return Path(self.spool.dir).expanduser()
        state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        base = Path(state) if state else Path.home() / ".local/state/sensorwire"
        return base / "spool" / self.device_id


def default_device_id(source: str) -> str:
    """The host name up to its first dot.  One that is no valid name is refused, not replaced by
    a fixed one: two such devices would publish as one, and mix their frames."""
    host = socket.gethostname().split(".")[0]
    if not names.is_segment(host):
        raise ConfigError(f"{source}: device_id is not set and the host name {host!r} is not a "
                          "valid device id (a letter or digit, then letters, digits, '.', '_' or "
                          f"'-', at most {names.MAX_NAME_LEN}): set device_id")
    return host


def from_raw(raw: dict[str, Any], source: str) -> AgentConfig:
    top = configload.convert(raw, AgentFile, source)
    parsed = [sensors.parse(s, i, source) for i, s in enumerate(top.sensors)]
    seen: dict[str, int] = {}
    ports: dict[str, int] = {}
    for i, (_, cfg) in enumerate(parsed):
        if cfg.name in seen:
            raise ConfigError(
                f"{source}: sensors[{i}].name: {cfg.name!r} is already the name of sensors[{seen[cfg.name]}]"
            )
        seen[cfg.name] = i
        port = getattr(cfg, "port", None)
        if isinstance(port, str) and not port.startswith("loop://"):  # each loop:// is its own
            # one reader a port: a second one would wait for its lock for ever (a symlink
            # such as /dev/serial/by-id/... and the device it points to are the same port)
            key = port.strip() if "://" in port else os.path.realpath(port.strip())
            if key in ports:
                raise ConfigError(f"{source}: sensors[{i}].port: {port!r} is already the port of "
                                  f"sensors[{ports[key]}]; a port is read by one sensor (give the "
                                  "other one's metrics to that sensor)")
            ports[key] = i
    return AgentConfig(
        site=top.site,
        device_id=top.device_id or default_device_id(source),
        log_level=top.log_level,
        publish=top.publish,
        spool=top.spool,
        sensors=parsed,
        metrics=top.metrics,
        security=top.security,
    )


def load(path: str | Path) -> AgentConfig:
    p = Path(path)
    raw = configload.read_toml(p)
    try:
        raw = configload.expand_env(raw)
    except ConfigError as exc:
        raise ConfigError(f"{p.name}: {exc}") from None
    return from_raw(raw, p.name)
