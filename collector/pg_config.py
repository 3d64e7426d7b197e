"""Checks of the ``[storage]`` keys that belong to ``kind = "postgres"``.

Kept beside the PostgreSQL store so that ``config.py`` only grows by the keys
themselves.  Raises ``ValueError("key: what is wrong")`` as every config check
does; the loader joins the key onto ``storage.``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from sensorwire.collector.config import StorageConfig

# a plain, unquoted PostgreSQL identifier: what `schema` may be
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_POSTGRES_ONLY = ("dsn", "schema", "retention_days", "compress_after_days", "spool_dir")
_POSTGRES_ONLY_WITH_DEFAULTS = ("timescaledb", "buffer_max", "spool_max_mb")  # set: not default


def check_storage(s: StorageConfig) -> None:
    if s.kind != "postgres":
        for key in _POSTGRES_ONLY:
            if getattr(s, key) is not None:
                raise ValueError(f'{key}: only used with kind = "postgres" (kind is "{s.kind}")')
        defaults = {f.name: f.default for f in msgspec.structs.fields(s)}
        for key in _POSTGRES_ONLY_WITH_DEFAULTS:
            if getattr(s, key) != defaults[key]:
                raise ValueError(f'{key}: only used with kind = "postgres" (kind is "{s.kind}")')
        return
    if not s.dsn or not s.dsn.strip():
        raise ValueError('dsn: required with kind = "postgres", e.g. '
                         '"postgresql://sensorwire@db.example/telemetry" (the password may come '
                         "from $PGPASSWORD or a passfile, as libpq reads them)")
    if s.schema is not None and not _IDENT.match(s.schema):
        raise ValueError(f"schema: {s.schema!r} is not a plain PostgreSQL name (lower-case letters, "
                         "digits and _, not starting with a digit, at most 63)")
    if (s.retention_days is not None or s.compress_after_days is not None) and s.timescaledb == "off":
        raise ValueError("timescaledb: retention_days and compress_after_days are TimescaleDB "
                         'policies; they need timescaledb = "auto" or "on"')
    if s.spool_dir is not None and not s.spool_dir.strip():
        raise ValueError("spool_dir: give a folder, or leave the key out for no disk spool")


def spool_folder(s: StorageConfig) -> Path | None:
    """Where the PostgreSQL sink spools frames while the database is down: ``spool_dir``;
    without it, for a collector that systemd started as a service (``$INVOCATION_ID`` and
    ``$STATE_DIRECTORY`` set: one state folder per unit), ``$STATE_DIRECTORY/pgspool``;
    otherwise none.  Not a folder of the user's own by default: two collectors started by
    hand on one host would share it, and its lock would stop the second."""
    if s.spool_dir is not None:
        return Path(s.spool_dir).expanduser()
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state and os.environ.get("INVOCATION_ID"):
        return Path(state) / "pgspool"
    return None
