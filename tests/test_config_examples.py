"""The example configurations' commented-out keys: uncommented, they still load, and a key of a
table (not of an array of tables such as [[sensors]] or [[alerts]]) shows its default; and
every key the code reads from a configuration file is documented somewhere.

An operator enables a key of config/*.toml (or of the files install-service writes) by
deleting its "# "; that must give a valid file, with the key where it belongs (a top-level key
written after a table's header would be taken for a key of that table), and the value shown
must be what the key is when left out, as the comment beside it implies.
"""

from __future__ import annotations

import re
import tomllib
import typing
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sensorwire import checkconfig
from sensorwire.agent.config import AgentFile
from sensorwire.collector.config import CollectorConfig
from sensorwire.proxy import ProxyConfig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted([*(ROOT / "config").glob("*.toml"), *(ROOT / "sensorwire" / "defaults").glob("*.toml")])
ENV = {"SMTP_PASSWORD": "x", "HOOK_TOKEN": "x", "SLACK_WEBHOOK_URL": "https://hooks.example/x"}

# "# key = value   # comment", "# [table]   # comment", "# [[array]]" and the continuation lines
# of a commented-out multi-line array; "# # ..." lines are comments about a commented key.
COMMENTED = re.compile(r"# (\[\[?[a-z_.]+\]\]?(\s+#.*)?|[a-z_]+ = .*|  \{.*|\])$")


def uncommented(text: str) -> tuple[str, list[tuple[str, str, int]]]:
    """``text`` with every commented-out table and key enabled (but not the commented keys of
    an array entry that is not commented out: a serial sensor's keys of other formats), and
    the (table, key, line) of each key enabled outside arrays of tables."""
    out, keys = [], []
    table, in_array, live_entry, seen = "", False, False, set()
    for n, line in enumerate(text.splitlines(), 1):
        m = COMMENTED.match(line)
        header = re.match(r"\[(\[?)([a-z_.]+)\]", line[2:] if m else line)
        if header:
            in_array, table, live_entry = bool(header[1]), header[2], not m
        if m and in_array and live_entry:
            m = None
        body = line[2:] if m else line
        key = re.match(r"([a-z_]+) = ", body)
        if key and not in_array:
            if (table, key[1]) in seen:
                continue  # shown twice: once is enough
            seen.add((table, key[1]))
            if m:
                keys.append((table, key[1], n))
        out.append(body)
    return "\n".join(out) + "\n", keys


FILES: dict[str, type[msgspec.Struct]] = {"agent": AgentFile, "proxy": ProxyConfig,
                                           "collector": CollectorConfig}


def default_of(role: str, table: str, key: str) -> Any:
    struct = FILES[role]
    for part in filter(None, table.split(".")):
        (field,) = [f for f in msgspec.structs.fields(struct) if f.encode_name == part]
        struct = field.type
    for f in msgspec.structs.fields(struct):
        if f.encode_name == key:
            if f.default is not msgspec.NODEFAULT:
                return f.default
            if f.default_factory is not msgspec.NODEFAULT:
                return f.default_factory()
            return None  # required
    raise AssertionError(f"[{table}] {key}: not a key of {struct.__name__}")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_commented_keys_uncommented_load_and_show_their_defaults(
        path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    text, keys = uncommented(path.read_text())
    enabled = tmp_path / path.name
    enabled.write_text(text)
    role, _ = checkconfig.load_any(enabled)
    raw = tomllib.loads(text)
    wrong = []
    for table, key, line in keys:
        default = default_of(role, table, key)
        shown = raw
        for part in filter(None, table.split(".")):
            shown = shown[part]
        value = shown[key]
        # None or "": no default value to show, the example's is one (retention_days = 365;
        # device_id, whose default is the host name); [security] shows mode = "curve"
        if default not in (None, "") and table != "security" and value != default:
            wrong.append(f"{path.name}:{line}: [{table}] {key} = {value!r}, default {default!r}")
    assert not wrong, "\n".join(wrong)


DOCS = [ROOT / "README.md", *(p for p in (ROOT / "docs").glob("*.md") if p.name != "performance.md"),
        *EXAMPLES]


def config_structs() -> set[type[msgspec.Struct]]:
    """Every struct a configuration file is decoded into: the three files' (recursively), each
    sensor kind's (with its parts, e.g. the simulated signals) and each notifier kind's."""
    from sensorwire.agent import sensors
    from sensorwire.collector.alerting.notifiers import AnyNotifierConfig

    todo: list[Any] = [*FILES.values(), *(sensors.kind(n).config for n in ("simulated", "system", "serial")),
                       *typing.get_args(AnyNotifierConfig)]
    seen: set[type[msgspec.Struct]] = set()
    while todo:
        t = todo.pop()
        if isinstance(t, type) and issubclass(t, msgspec.Struct):
            if t not in seen:
                seen.add(t)
                todo += [f.type for f in msgspec.structs.fields(t)]
        else:
            todo += typing.get_args(t)
    return seen


def test_every_configuration_key_is_documented() -> None:
    text = "\n".join(p.read_text() for p in DOCS)
    missing = sorted({f"{s.__name__}.{f.encode_name}" for s in config_structs()
                      for f in msgspec.structs.fields(s)
                      if not re.search(rf"`{f.encode_name}`|\b{f.encode_name} = |\[{f.encode_name}\]",
                                       text)})
    assert not missing, "keys in no doc nor example configuration: " + ", ".join(missing)
