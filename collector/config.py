"""collector.toml: the collector's configuration, validated once at start."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec

from sensorwire import configload
from sensorwire.configload import Config
from sensorwire.metrics import CollectorMetricsConfig
from sensorwire.proto import wire

Positive = Annotated[float, msgspec.Meta(gt=0)]


class SubscribeConfig(Config):
    connect: list[str] = []
    bind: list[str] = []
    prefixes: list[str] = []
    rcvhwm: Annotated[int, msgspec.Meta(ge=0)] = 100_000

    def __post_init__(self) -> None:
        if not self.connect and not self.bind:
            raise ValueError("connect: give at least one endpoint in connect or bind")
        for i, p in enumerate(self.prefixes):
            try:
                wire.subscriptions(p)
            except ValueError as exc:
                raise ValueError(f"prefixes: [{i}] {exc}") from None


class StorageConfig(Config):
    kind: Literal["sqlite", "none"] = "sqlite"
    path: str = "telemetry.db"
    batch_max: Annotated[int, msgspec.Meta(gt=0)] = 5000
    flush_interval_s: Positive = 0.2
    queue_max: Annotated[int, msgspec.Meta(gt=0)] = 200_000


class LimitsConfig(Config):
    max_message_bytes: Annotated[int, msgspec.Meta(gt=0)] = 65536
    max_samples_per_frame: Annotated[int, msgspec.Meta(gt=0)] = 1024


class CollectorConfig(Config):
    subscribe: SubscribeConfig
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    summary_s: Positive = 60.0
    metrics: CollectorMetricsConfig = msgspec.field(default_factory=CollectorMetricsConfig)


def load(path: str | Path) -> CollectorConfig:
    return configload.load(path, CollectorConfig)
