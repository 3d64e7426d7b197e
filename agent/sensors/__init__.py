"""The sensor plug-in interface and the registry of sensor kinds.

A sensor kind is a module that defines ``KIND = SensorKind(...)``: its config
struct (a :class:`SensorConfig` subclass) and a factory.  The word in
``kind = "..."``, the module name and the class name agree
(``kind = "simulated"`` -> ``sensors/simulated.py`` -> ``SimulatedSensor``).

Built-in kinds are imported only when a config uses them (psutil and pyserial
stay out of an agent that does not need them).  Third-party kinds register
through the ``sensorwire.sensors`` entry-point group.

The host (:mod:`sensorwire.agent.runtime`) owns scheduling, retries and error
counting; a sensor never sleeps, retries or starts threads of its own.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Protocol

import msgspec

from sensorwire.configload import Config, ConfigError, check_name, convert

# One reading: (metric, value, unit); unit "" means none.
Reading = tuple[str, float, str]


class SensorConfig(Config):
    """Keys every sensor has."""

    name: str
    kind: str
    interval_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0

    def __post_init__(self) -> None:
        check_name(self.name)


class Sensor(Protocol):
    """A polled sensor: ``read()`` is called every ``interval_s``.

    ``open`` may raise; the host retries it with capped backoff.  ``read``
    returns the readings of one sample (at least one) or raises.  ``close``
    is idempotent and safe without ``open``.
    """

    def open(self) -> None: ...

    def read(self) -> Sequence[Reading]: ...

    def close(self) -> None: ...


class StreamSensor(Protocol):
    """A sensor that produces readings when its device does (e.g. a serial line).

    The host calls ``read_next(timeout_s)`` in a thread of its own; it blocks
    for at most ``timeout_s`` and returns one sample's readings, or None.

    A stream sensor may also offer to be read from the host's own loop: then
    it has ``fileno() -> int | None`` (after ``open``: a descriptor that is
    readable when input waits, or None to be read in a thread after all) and
    ``read_ready() -> list[readings]`` (what the waiting input makes, without
    blocking; raises when the device is lost, like ``read_next``).  The host
    then opens it and retries the open in a thread as before, but reads it in
    its main loop: a line wakes the loop only, not a reader thread first.

    Any sensor may also have ``counters() -> dict[str, int]`` (e.g. bad input
    by reason); the host calls it from its main thread for every heartbeat,
    so it must be cheap and must not block.
    """

    def open(self) -> None: ...

    def read_next(self, timeout_s: float) -> Sequence[Reading] | None: ...

    def close(self) -> None: ...


class LoopReadable(StreamSensor, Protocol):
    """A stream sensor the host may read from its own loop (see :class:`StreamSensor`)."""

    def fileno(self) -> int | None: ...

    def read_ready(self) -> list[Sequence[Reading]]: ...


class SensorKind(msgspec.Struct, frozen=True):
    name: str
    config: type[SensorConfig]
    factory: Callable[[Any], Sensor | StreamSensor]
    streaming: bool = False


_BUILTIN = {
    "simulated": "sensorwire.agent.sensors.simulated",
    "system": "sensorwire.agent.sensors.system",
    "serial": "sensorwire.agent.sensors.serial",
}


_REGISTERED: dict[str, SensorKind] = {}


def register(k: SensorKind) -> None:
    """Make a sensor kind available in this process (for embedding and tests)."""
    _REGISTERED[k.name] = k


def _entry_points(name: str | None = None) -> list[Any]:
    # imported here: importlib.metadata costs 2 MB of RSS, and only plug-ins need it
    from importlib import metadata

    eps = metadata.entry_points(group="sensorwire.sensors")
    return [ep for ep in eps if name is None or ep.name == name]


def available() -> list[str]:
    names = set(_BUILTIN) | set(_REGISTERED)
    names.update(ep.name for ep in _entry_points())
    return sorted(names)


def kind(name: str) -> SensorKind:
    """The registered kind ``name``; KeyError when there is none."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    module = _BUILTIN.get(name)
    if module is not None:
        found: SensorKind = importlib.import_module(module).KIND
        return found
    for ep in _entry_points(name):
        loaded: SensorKind = ep.load()
        return loaded
    raise KeyError(name)


def parse(raw: Any, index: int, source: str) -> tuple[SensorKind, SensorConfig]:
    """Validate one ``[[sensors]]`` table against its kind's config struct."""
    where = f"sensors[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where}: expected a table")
    name = raw.get("kind")
    if name is None:
        raise ConfigError(f"{source}: {where}.kind: required key is missing "
                          f"(one of {', '.join(available())})")
    if not isinstance(name, str):
        raise ConfigError(f"{source}: {where}.kind: expected a string, got {name!r}")
    try:
        k = kind(name)
    except KeyError:
        raise ConfigError(
            f"{source}: {where}.kind: unknown sensor kind {name!r}; "
            f"known kinds: {', '.join(available())}"
        ) from None
    return k, convert(raw, k.config, source, prefix=where)
