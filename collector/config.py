"""collector.toml: the collector's configuration, validated once at start."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from sensorwire import configload, security
from sensorwire.collector.alerting import rules as alert_rules
from sensorwire.collector.alerting.notifiers import AnyNotifierConfig
from sensorwire.configload import Config, ConfigError
from sensorwire.metrics import CollectorMetricsConfig
from sensorwire.proto import wire
from sensorwire.security import CollectorSecurity
from sensorwire.zmqutil import check_endpoints

Positive = Annotated[float, msgspec.Meta(gt=0)]


class SubscribeConfig(Config):
    connect: list[str] = []
    bind: list[str] = []
    prefixes: list[str] = []
    rcvhwm: Annotated[int, msgspec.Meta(ge=0, le=2_147_483_647)] = 100_000  # libzmq: an int
    # the newest heartbeat read older than this: the collector is falling behind (sensorwire.lag)
    max_lag_s: Positive = 10.0

    def __post_init__(self) -> None:
        if not self.connect and not self.bind:
            raise ValueError("connect: give at least one endpoint in connect or bind")
        check_endpoints("connect", self.connect)
        check_endpoints("bind", self.bind)
        for i, p in enumerate(self.prefixes):
            try:
                wire.subscriptions(p)
            except ValueError as exc:
                raise ValueError(f"prefixes: [{i}] {exc}") from None


class StorageConfig(Config):
    kind: Literal["sqlite", "postgres", "none"] = "sqlite"
    path: str = "telemetry.db"
    batch_max: Annotated[int, msgspec.Meta(gt=0)] = 160_000  # samples per write (frames: at least 1)
    flush_interval_s: Positive = 1.0
    queue_max: Annotated[int, msgspec.Meta(gt=0)] = 200_000
    # a call into a sink (a write, ...) running longer than this: the sink is stalled, logged,
    # and the systemd watchdog is no longer pinged, so systemd restarts the collector
    stalled_after_s: Positive = 120.0
    # --- kind = "postgres" (docs/postgres.md) ---------------------------------------------
    dsn: str | None = None
    schema: str | None = None
    timescaledb: Literal["auto", "on", "off"] = "auto"
    retention_days: Positive | None = None
    compress_after_days: Positive | None = None
    buffer_max: Annotated[int, msgspec.Meta(gt=0)] = 100_000
    spool_dir: str | None = None
    spool_max_mb: Positive = 1024.0

    def __post_init__(self) -> None:
        from sensorwire.collector.pg_config import check_storage

        check_storage(self)


class LimitsConfig(Config):
    max_message_bytes: Annotated[int, msgspec.Meta(gt=0)] = 65536
    max_samples_per_frame: Annotated[int, msgspec.Meta(gt=0)] = 1024
    # frames per second one device may send; excess frames are dropped and counted (0: no limit)
    max_frames_per_s_per_device: Annotated[int, msgspec.Meta(ge=0)] = 1000
    # devices followed at once (seq tracking, presence); when full, a new device evicts the one
    # silent longest that is not online, or its frames are rejected and counted
    # (too_many_devices); there is no "no limit": memory is bounded whatever is sent
    max_devices: Annotated[int, msgspec.Meta(ge=1)] = 100_000


class PresenceConfig(Config):
    # silence after which a device is offline; default: 3 x the heartbeat interval it announces
    offline_after_s: Annotated[float, msgspec.Meta(gt=0)] | None = None


class RepairConfig(Config):
    enabled: bool = True
    delay_s: Annotated[float, msgspec.Meta(ge=0)] = 0.5
    attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 6
    # how far back the seq tracking of each device resumes from storage at start
    resume_s: Annotated[float, msgspec.Meta(ge=0)] = 3600.0


class TimeConfig(Config):
    # frames of a device whose clock is further off than this are flagged (frames.flags & 2)
    max_skew_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0


class CollectorConfig(Config):
    subscribe: SubscribeConfig
    time: TimeConfig = msgspec.field(default_factory=TimeConfig)
    presence: PresenceConfig = msgspec.field(default_factory=PresenceConfig)
    repair: RepairConfig = msgspec.field(default_factory=RepairConfig)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    security: CollectorSecurity = msgspec.field(default_factory=CollectorSecurity)
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    summary_s: Positive = 60.0
    metrics: CollectorMetricsConfig = msgspec.field(default_factory=CollectorMetricsConfig)
    alerts: list[alert_rules.AlertRule] = []      # docs/alerting.md
    notifiers: list[AnyNotifierConfig] = []

    def __post_init__(self) -> None:
        security.check(self.security, binds=bool(self.subscribe.bind),
                       connects=bool(self.subscribe.connect))
        declared = [(n.name, str(type(n).__struct_config__.tag)) for n in self.notifiers]
        alert_rules.check_references(self.alerts, declared)


def load(path: str | Path, unset: Callable[[str], str] | None = None) -> CollectorConfig:
    """The collector's configuration (``unset``: see :func:`configload.expand_env`)."""
    try:
        return configload.load(path, CollectorConfig, unset)
    except ConfigError as exc:  # errors about [[alerts]] / [[notifiers]] name the rule
        raise ConfigError(alert_rules.name_the_rule(str(exc), path)) from None
