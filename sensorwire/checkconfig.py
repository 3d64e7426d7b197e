"""``sensorwire check-config FILE``: which role a file is for, and whether it is valid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sensorwire import configload
from sensorwire.configload import ConfigError

ROLES = ("agent", "proxy", "collector")


def guess_role(path: Path, raw: dict[str, Any]) -> str:
    stem = path.stem.lower()
    for role in ROLES:
        if role in stem:
            return role
    if "sensors" in raw or "publish" in raw or "site" in raw:
        return "agent"
    if "frontend" in raw or "backend" in raw:
        return "proxy"
    if "subscribe" in raw or "storage" in raw:
        return "collector"
    raise ConfigError(
        f"{path.name}: cannot tell whether this is an agent, proxy or collector file; "
        "name it agent.toml, proxy.toml or collector.toml, or pass --role"
    )


def load_any(path: str | Path, role: str | None = None) -> tuple[str, object]:
    """Validate ``path`` as ``role`` (guessed when None); returns (role, config)."""
    p = Path(path)
    raw = configload.read_toml(p)
    role = role or guess_role(p, raw)
    if role == "agent":
        from sensorwire.agent import config as agent_config

        return role, agent_config.load(p)
    if role == "proxy":
        from sensorwire import proxy

        return role, proxy.load(p)
    from sensorwire.collector import config as collector_config

    return role, collector_config.load(p)
