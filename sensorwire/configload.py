"""Loading TOML configuration into typed, validated objects.

Validation happens once, at start, with msgspec: unknown keys, missing keys and
wrong types become a :class:`ConfigError` whose message names the file, the key
path and what was expected, e.g.::

    agent.toml: sensors[1].interval_s: expected a number > 0, got "fast"

Any string may use ``${VAR}`` or ``${VAR:-default}`` to take a value from the
environment.  Struct ``__post_init__`` checks raise ``ValueError("key: what is
wrong")`` and the key is joined onto the path.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from sensorwire import names
from sensorwire.msgspecload import msgspec

T = TypeVar("T")

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_AT = re.compile(r"^(?P<msg>.*) - at `\$(?P<path>.*)`$", re.S)
_TYPES = {
    "float": "a number",
    "int": "an integer",
    "str": "a string",
    "bool": "true or false",
    "array": "a list",
    "object": "a table",
}


class ConfigError(Exception):
    """A configuration file is wrong; the message says where and how to fix it."""


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every configuration table: unknown keys are errors."""


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; syntax errors name the file and the line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p.name}: TOML syntax error: {exc}") from None


def expand_env(raw: Any, where: str = "", env: Mapping[str, str] | None = None,
               unset: Callable[[str], str] | None = None) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of ``raw``; a variable not set
    and without a default is an error, or ``unset(VAR)`` when given."""
    environ = os.environ if env is None else env
    if isinstance(raw, str):
        def sub(m: re.Match[str]) -> str:
            var, default = m.group(1), m.group(2)
            if var in environ and (environ[var] != "" or default is None):
                return environ[var]
            if default is not None:
                return default
            if unset is not None:
                return unset(var)
            raise ConfigError(
                f"{where or '<top>'}: environment variable {var} is not set "
                f"(set it, or write ${{{var}:-default}})"
            )
        return _ENV.sub(sub, raw)
    if isinstance(raw, dict):
        return {k: expand_env(v, _join(where, k), environ, unset) for k, v in raw.items()}
    if isinstance(raw, list):
        return [expand_env(v, f"{where}[{i}]", environ, unset) for i, v in enumerate(raw)]
    if isinstance(raw, float) and not math.isfinite(raw):  # TOML has inf and nan; no key wants them
        raise ConfigError(f"{where or '<top>'}: expected a finite number, got {raw}")
    return raw


def convert(raw: Any, into: type[T], source: str, prefix: str = "") -> T:
    """Convert decoded TOML into ``into``, translating msgspec's errors."""
    try:
        return msgspec.convert(raw, into)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(str(exc), raw, source, prefix, into)) from None


def load(path: str | Path, into: type[T], unset: Callable[[str], str] | None = None) -> T:
    """Read, expand and convert one configuration file (``unset``: see :func:`expand_env`)."""
    p = Path(path)
    raw = read_toml(p)
    try:
        raw = expand_env(raw, unset=unset)
    except ConfigError as exc:
        raise ConfigError(f"{p.name}: {exc}") from None
    return convert(raw, into, p.name)


def check_name(value: str, what: str = "name") -> None:
    """Raise ValueError when ``value`` is not a valid site/device/sensor name."""
    problem = names.segment_problem(value)
    if problem:
        raise ValueError(f"{what}: {value!r} {problem}")


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _explain(message: str, raw: Any, source: str, prefix: str, into: Any = None) -> str:
    m = _AT.match(message)
    path, msg = (m.group("path"), m.group("msg")) if m else ("", message)
    path = path.lstrip(".")
    if prefix:
        path = prefix + ("" if not path or path.startswith("[") else ".") + path

    def where(p: str) -> str:
        return f"{source}: {p}: " if p else f"{source}: "

    if msg.startswith("Object contains unknown field"):
        key = msg.split("`")[1]
        raw_path = m.group("path") if m else ""
        table = _lookup(raw, raw_path)
        given = set(table) if isinstance(table, dict) else set()
        near = _nearest_key(into, raw_path, key, given) if into is not None else None
        return where(_join(path, key)) + (f"unknown key (a typo of {near}?)" if near
                                          else "unknown key (a typo?)")
    if msg.startswith("Object missing required field"):
        key = msg.split("`")[1]
        return where(_join(path, key)) + "required key is missing"
    if msg.startswith(("Invalid enum value", "Invalid value")):
        # a value not among a Literal's or a tagged union's (signal = "wave"): name the choices
        raw_path = m.group("path") if m else ""
        choices = _choices(into, raw_path) if into is not None else None
        got = _lookup(raw, raw_path)
        shown = "" if got is _MISSING else f", got {_show(got)}"
        if choices:
            return where(path) + f"expected {choices}{shown}"
        return where(path) + f"{msg[0].lower()}{msg[1:]}: see the documented choices"
    if msg.startswith("Expected"):
        # "Expected `float`, got `str`"  or  "Expected `float` > 0.0"
        body = msg[len("Expected ") :]
        body = re.sub(r", got `[^`]+`$", "", body)
        expected = _expected(into, m.group("path") if m else "") if into is not None else None
        body = expected or re.sub(r"`([a-z]+)`", lambda t: _TYPES.get(t.group(1), t.group(1)), body)
        body = re.sub(r"(\d)\.0\b", r"\1", body)
        body = body.replace(" | ", " or ")
        got = _lookup(raw, m.group("path") if m else "")
        shown = "" if got is _MISSING else f", got {_show(got)}"
        return where(path) + f"expected {body}{shown}"
    # __post_init__ messages: "key: what is wrong", or "key: [i] what is wrong" for a list item
    km = re.match(r"^([A-Za-z_][A-Za-z0-9_]*): (?:\[(\d+)\] )?(.*)$", msg, re.S)
    if km:
        at = _join(path, km.group(1))
        if km.group(2) is not None:
            at = _join(at, int(km.group(2)))
        return where(at) + km.group(3)
    return where(path) + msg


_MISSING = object()

_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _nearest_key(into: Any, path: str, key: str, given: set[str]) -> str | None:
    """The key of the table at ``path`` that ``key`` looks most like (``sitee``: ``site``), of
    those not ``given`` already, or None when none is close."""
    from msgspec import inspect as mi

    node = _node(into, path)
    while isinstance(node, mi.Metadata):
        node = node.type
    if not isinstance(node, mi.StructType):
        return None
    keys = [f.encode_name for f in node.fields if f.encode_name not in given]
    near = difflib.get_close_matches(key, keys, n=1, cutoff=0.7)
    return near[0] if near else None


def _choices(into: Any, path: str) -> str | None:
    """``one of "a", "b"``: the values a Literal at ``path`` allows, or the tags of the
    tagged union whose tag field ``path`` ends in."""
    from msgspec import inspect as mi

    expected = _expected(into, path)
    if expected is not None and expected.startswith("one of "):
        return expected
    km = re.match(r"^(.*)\.([^.\[]+)$", path)
    if km is None:
        return None
    node = _node(into, km.group(1))
    while isinstance(node, mi.Metadata):
        node = node.type
    if not isinstance(node, mi.UnionType):
        return None
    tags = [t.tag for t in node.types if isinstance(t, mi.StructType) and t.tag_field == km.group(2)]
    return "one of " + ", ".join(json.dumps(t) for t in tags) if tags else None


def _expected(into: Any, path: str) -> str | None:
    """Describe the type expected at ``path`` in ``into``, bounds included."""
    from msgspec import inspect as mi

    node = _node(into, path)
    if node is None:
        return None
    while isinstance(node, mi.Metadata):
        node = node.type
    if isinstance(node, mi.UnionType):
        parts = [d for d in (_describe(t) for t in node.types) if d]
        return " or ".join(parts) if parts else None
    return _describe(node)


def _node(into: Any, path: str) -> Any:
    """The msgspec type at ``path`` (``.a.b[0].c``) in ``into``; None when it cannot tell."""
    from msgspec import inspect as mi

    node: Any = mi.type_info(into)
    for part in re.findall(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]", path):
        key, _idx = part
        while isinstance(node, mi.Metadata):
            node = node.type
        if key:
            if not isinstance(node, mi.StructType):
                return None
            fields = {f.encode_name: f.type for f in node.fields}
            if key not in fields:
                return None
            node = fields[key]
        elif isinstance(node, mi.ListType | mi.SetType | mi.VarTupleType):
            node = node.item_type
        elif isinstance(node, mi.DictType):
            node = node.value_type
        else:
            return None
    return node


def _describe(node: Any) -> str | None:
    from msgspec import inspect as mi

    names = {
        mi.FloatType: "a number", mi.IntType: "an integer", mi.StrType: "a string",
        mi.BoolType: "true or false", mi.ListType: "a list", mi.DictType: "a table",
        mi.StructType: "a table", mi.NoneType: None,
    }
    for cls, word in names.items():
        if isinstance(node, cls):
            if word is None:
                return None
            bounds = [f"{sym} {_fmt(getattr(node, attr))}" for attr, sym in _BOUNDS
                      if getattr(node, attr, None) is not None]
            if isinstance(node, mi.IntType):  # msgspec keeps integer bounds as gt/lt: say >= / <=
                bounds = [b.replace("> ", ">= ").replace(str(node.gt), str(node.gt + 1))
                          if b.startswith("> ") and node.gt is not None else
                          b.replace("< ", "<= ").replace(str(node.lt), str(node.lt - 1))
                          if b.startswith("< ") and node.lt is not None else b for b in bounds]
            return word + (" " + " and ".join(bounds) if bounds else "")
    if isinstance(node, mi.LiteralType):
        return "one of " + ", ".join(json.dumps(v) for v in node.values)
    return None


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _lookup(raw: Any, path: str) -> Any:
    node = raw
    for part in re.findall(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]", path):
        key, idx = part
        try:
            if key:
                node = node[key]
            elif idx == "...":
                return _MISSING
            else:
                node = node[int(idx)]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return node


def _show(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
