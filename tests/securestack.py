"""Helpers for the security tests: key folders and configuration files.

The tests start real ``sensorwire`` processes with these files; nothing here
starts a process itself.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from sensorwire import keys


class KeyRing:
    """Key pairs in ``<tmp>/keys``; allow-list folders ``agents`` and ``collectors`` beside."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "keys"
        self.agents = tmp / "allow-agents"
        self.collectors = tmp / "allow-collectors"
        for d in (self.dir, self.agents, self.collectors):
            d.mkdir(parents=True, exist_ok=True)

    def make(self, *names: str) -> None:
        for name in names:
            keys.generate(name, self.dir)

    def secret(self, name: str) -> Path:
        return self.dir / f"{name}.key_secret"

    def public(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    def z85(self, name: str) -> str:
        return keys.load_public(self.public(name)).decode("ascii")

    def allow(self, folder: Path, name: str) -> None:
        shutil.copy(self.public(name), folder / f"{name}.key")

    def revoke(self, folder: Path, name: str) -> None:
        (folder / f"{name}.key").unlink()


def security_block(mode: str = "curve", **paths: Path | str) -> str:
    lines = ["[security]", f'mode = "{mode}"']
    lines += [f'{k} = "{v}"' for k, v in paths.items()]
    return "\n".join(lines) + "\n"


def proxy_toml(front: str, back: str, security: str = "", limits: str = "") -> str:
    return (f'frontend = "{front}"\nbackend = "{back}"\nsummary_s = 0.5\n'
            f"{security}\n{limits}\n")


def collector_toml(db: Path, connect: list[str] | None = None, bind: list[str] | None = None,
                   security: str = "", limits: str = "") -> str:
    eps = ""
    if connect:
        eps += "connect = [" + ", ".join(f'"{e}"' for e in connect) + "]\n"
    if bind:
        eps += "bind = [" + ", ".join(f'"{e}"' for e in bind) + "]\n"
    return (f"summary_s = 0.5\n[subscribe]\n{eps}[storage]\npath = \"{db}\"\n"
            f"flush_interval_s = 0.05\n{security}\n{limits}\n")


def agent_toml(device: str, connect: str, spool: Path, security: str = "",
               interval_s: float = 0.05) -> str:
    return f"""\
site = "gh"
device_id = "{device}"
[publish]
connect = ["{connect}"]
heartbeat_s = 0.5
[spool]
dir = "{spool}"
[[sensors]]
name = "env"
kind = "simulated"
interval_s = {interval_s}
[[sensors.metrics]]
name = "temperature"
unit = "C"
signal = "sine"
mean = 20.0
amplitude = 2.0
period_s = 10.0
{security}"""


def seqs(db: Path, device: str, boot_id: int | None = None) -> list[int]:
    """Data seqs stored for ``device`` (of one boot, given ``boot_id``), in order ([] before the
    database exists)."""
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    try:
        return [s for (s,) in conn.execute(
            "SELECT f.seq FROM frames f JOIN devices d ON d.id = f.device_key "
            "WHERE d.device = ? AND f.seq > 0 AND (? IS NULL OR f.boot_id = ?) "
            "ORDER BY f.boot_id, f.seq", (device, boot_id, boot_id))]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def boots(db: Path, device: str) -> list[int]:
    """The boot ids of ``device`` with frames stored."""
    conn = sqlite3.connect(db)
    try:
        return [b for (b,) in conn.execute(
            "SELECT DISTINCT f.boot_id FROM frames f JOIN devices d ON d.id = f.device_key "
            "WHERE d.device = ?", (device,))]
    finally:
        conn.close()


def stored(db: Path, device: str) -> int:
    return len(seqs(db, device))
