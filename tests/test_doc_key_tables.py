"""The docs' tables of configuration keys name every key of the struct they describe, no other,
and give each key the default the code has (where the table shows it as a value)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sensorwire.agent.sensors.serial import SerialConfig
from sensorwire.collector.config import LimitsConfig, StorageConfig
from sensorwire.proxy import ProxyLimits

DOCS = Path(__file__).resolve().parents[1] / "docs"
REQUIRED = object()


def key_table(doc: str, first_columns: str) -> list[tuple[list[str], str]]:
    """The rows of the table in ``doc`` whose header starts ``first_columns``: (the keys
    named in the first cell, the second cell)."""
    lines = (DOCS / doc).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.replace(" ", "").startswith(first_columns))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append((re.findall(r"`([a-z_]+)`", cells[0]), cells[1]))
    return rows


def defaults(*structs: type[msgspec.Struct], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for struct in structs:
        for f in msgspec.structs.fields(struct):
            if f.encode_name in skip:
                continue
            if f.default is not msgspec.NODEFAULT:
                out[f.encode_name] = f.default
            elif f.default_factory is not msgspec.NODEFAULT:
                out[f.encode_name] = f.default_factory()
            else:
                out[f.encode_name] = REQUIRED
    return out


def shown(cell: str, n: int) -> list[Any] | None:
    """The ``n`` default values a cell shows (TOML values, in backticks or bare), or None
    when it describes them in words."""
    if cell.lower().strip("()") == "required":
        return [REQUIRED] * n
    values = re.findall(r"`([^`]+)`", cell) or [cell]
    if len(values) != n:
        return None
    try:
        return [tomllib.loads(f"v = {v}")["v"] for v in values]
    except tomllib.TOMLDecodeError:
        return None


POSTGRES_KEYS = ("dsn", "schema", "batch_max", "flush_interval_s", "queue_max", "stalled_after_s",
                 "buffer_max", "spool_dir", "spool_max_mb", "timescaledb", "retention_days",
                 "compress_after_days")

TABLES = {
    "serial.md": ("|key|default|meaning|", defaults(SerialConfig, skip=("name", "kind"))),
    "postgres.md": ("|key|default|what|",
                    {k: v for k, v in defaults(StorageConfig).items() if k in POSTGRES_KEYS}),
    "security.md": ("|key|default|proxy|collector|", {**defaults(LimitsConfig), **defaults(ProxyLimits)}),
}


@pytest.mark.parametrize("doc", sorted(TABLES))
def test_a_doc_key_table_matches_its_struct(doc: str) -> None:
    header, code = TABLES[doc]
    rows = key_table(doc, header)
    documented = [k for keys, _ in rows for k in keys]
    assert sorted(documented) == sorted(code), f"docs/{doc}: keys in the table vs the code"
    wrong = []
    for keys, cell in rows:
        values = shown(cell, len(keys))
        if values is None:
            continue  # a default described in words ("none", "the service's state folder ...")
        for key, value in zip(keys, values, strict=True):
            if value is REQUIRED and code[key] is None:
                continue  # required with this kind only (dsn): checked after decoding
            if value != code[key]:
                wrong.append(f"{key}: the table says {cell}, the code {code[key]!r}")
    assert not wrong, f"docs/{doc}: " + "; ".join(wrong)
    # the limits shared by the proxy and the collector have one default
    if doc == "security.md":
        both = set(defaults(LimitsConfig)) & set(defaults(ProxyLimits))
        assert all(defaults(LimitsConfig)[k] == defaults(ProxyLimits)[k] for k in both)
