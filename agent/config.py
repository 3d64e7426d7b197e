"""agent.toml: the agent's configuration, validated once at start."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from sensorwire import configload, names
from sensorwire.agent import sensors
from sensorwire.configload import Config, ConfigError, check_name
from sensorwire.metrics import MetricsConfig


class PublishConfig(Config):
    connect: list[str] = []
    bind: list[str] = []
    heartbeat_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    sndhwm: Annotated[int, msgspec.Meta(ge=0)] = 10000


class AgentFile(Config):
    site: str
    device_id: str = ""
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    publish: PublishConfig = msgspec.field(default_factory=PublishConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    sensors: list[dict[str, Any]] = []

    def __post_init__(self) -> None:
        check_name(self.site, "site")
        if self.device_id:
            check_name(self.device_id, "device_id")
        if not self.publish.connect and not self.publish.bind:
            raise ValueError("publish: give at least one endpoint in connect or bind")


@dataclass(frozen=True)
class AgentConfig:
    site: str
    device_id: str
    log_level: str
    publish: PublishConfig
    sensors: list[tuple[sensors.SensorKind, sensors.SensorConfig]]
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


def default_device_id() -> str:
    host = socket.gethostname().split(".")[0]
    return host if names.is_segment(host) else "device"


def from_raw(raw: dict[str, Any], source: str) -> AgentConfig:
    top = configload.convert(raw, AgentFile, source)
    parsed = [sensors.parse(s, i, source) for i, s in enumerate(top.sensors)]
    seen: dict[str, int] = {}
    for i, (_, cfg) in enumerate(parsed):
        if cfg.name in seen:
            raise ConfigError(
                f"{source}: sensors[{i}].name: {cfg.name!r} is already the name of sensors[{seen[cfg.name]}]"
            )
        seen[cfg.name] = i
    return AgentConfig(
        site=top.site,
        device_id=top.device_id or default_device_id(),
        log_level=top.log_level,
        publish=top.publish,
        sensors=parsed,
        metrics=top.metrics,
    )


def load(path: str | Path) -> AgentConfig:
    p = Path(path)
    raw = configload.read_toml(p)
    try:
        raw = configload.expand_env(raw)
    except ConfigError as exc:
        raise ConfigError(f"{p.name}: {exc}") from None
    return from_raw(raw, p.name)
