"""What the collector holds for a frame it has received and checked.

A :class:`CheckedFrame` is a ``sensorwire.v1.Frame`` after the collector's
checks, in a form that is cheap to read: the frame's fields as plain
attributes, and its samples as a shared :class:`Layout` (the metric names and
units, the same object for every frame a sensor sends while its metrics stay
the same) plus a tuple of values.  A sensor's frames differ only in ``seq``,
the time and the values, so sinks can do per-layout work once (look up
series ids, match alert rules) instead of once per sample.

Heartbeats (``seq == 0``) have an empty layout and keep the protobuf
``Heartbeat`` in :attr:`CheckedFrame.heartbeat`; data frames have
``heartbeat = None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from sensorwire.proto.v1.telemetry_pb2 import Frame, Heartbeat

__all__ = ["CheckedFrame", "Layout", "Layouts", "Sample"]


class Sample(NamedTuple):
    metric: str
    value: float
    unit: str


class Layout:
    """The (metric, unit) pairs of a frame's samples, in order.

    Compared and hashed by identity: the collector makes one per distinct list
    (:class:`Layouts`), so a dictionary keyed by layouts is keyed by content
    too, at the cost of a pointer comparison.  ``unique`` lists the indexes of
    the first occurrence of each (metric, unit) pair: a frame that names the
    same metric twice is stored with its first value only.
    """

    __slots__ = ("pairs", "metrics", "units", "unique", "__weakref__")

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        self.pairs: tuple[tuple[str, str], ...] = tuple(pairs)
        self.metrics: tuple[str, ...] = tuple(m for m, _ in self.pairs)
        self.units: tuple[str, ...] = tuple(u for _, u in self.pairs)
        first: dict[tuple[str, str], int] = {}
        for i, p in enumerate(self.pairs):
            first.setdefault(p, i)
        self.unique: tuple[int, ...] | None = (
            None if len(first) == len(self.pairs) else tuple(first.values()))

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        return f"Layout({list(self.pairs)!r})"


EMPTY = Layout(())


class Layouts:
    """One :class:`Layout` per distinct list of pairs, at most ``limit`` of them.

    When full it starts again (layouts already handed out stay valid; equal
    ones made later are merely different objects).
    """

    def __init__(self, limit: int = 65536) -> None:
        self.limit = limit
        self._known: dict[tuple[tuple[str, str], ...], Layout] = {}

    def get(self, pairs: tuple[tuple[str, str], ...]) -> Layout:
        layout = self._known.get(pairs)
        if layout is None:
            if len(self._known) >= self.limit:
                self._known.clear()
            layout = self._known[pairs] = Layout(pairs)
        return layout


class CheckedFrame:
    """A checked frame: the fields of ``sensorwire.v1.Frame``, samples as layout + values."""

    __slots__ = ("site", "device_id", "boot_id", "seq", "time_unix_nano", "sensor", "flags",
                 "layout", "values", "heartbeat")

    def __init__(self, site: str, device_id: str, boot_id: int, seq: int, time_unix_nano: int,
                 sensor: str, flags: int, layout: Layout, values: Sequence[float],
                 heartbeat: Heartbeat | None = None) -> None:
        self.site = site
        self.device_id = device_id
        self.boot_id = boot_id
        self.seq = seq
        self.time_unix_nano = time_unix_nano
        self.sensor = sensor
        self.flags = flags
        self.layout = layout
        self.values = values
        self.heartbeat = heartbeat

    @property
    def samples(self) -> list[Sample]:
        """The samples as (metric, value, unit) tuples (for code that wants them one by one)."""
        return [Sample(m, v, u) for (m, u), v in zip(self.layout.pairs, self.values, strict=True)]

    @classmethod
    def from_pb(cls, frame: Frame, layouts: Layouts | None = None) -> CheckedFrame:
        """From a protobuf ``Frame`` (already checked)."""
        samples = frame.samples
        pairs = tuple([(s.metric, s.unit) for s in samples])
        layout = (EMPTY if not pairs else layouts.get(pairs) if layouts is not None
                  else Layout(pairs))
        hb = frame.heartbeat if frame.seq == 0 else None
        return cls(frame.site, frame.device_id, frame.boot_id, frame.seq, frame.time_unix_nano,
                   frame.sensor, frame.flags, layout, tuple([s.value for s in samples]), hb)

    def to_pb(self) -> Frame:
        """The protobuf ``Frame`` with the same content."""
        frame = Frame(site=self.site, device_id=self.device_id, boot_id=self.boot_id,
                      seq=self.seq, time_unix_nano=self.time_unix_nano, sensor=self.sensor,
                      flags=self.flags)
        for (metric, unit), value in zip(self.layout.pairs, self.values, strict=True):
            frame.samples.add(metric=metric, value=value, unit=unit)
        if self.heartbeat is not None:
            frame.heartbeat.CopyFrom(self.heartbeat)
        return frame

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CheckedFrame):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__
                   if k not in ("layout", "values")) and (
            self.layout.pairs == other.layout.pairs and tuple(self.values) == tuple(other.values))

    __hash__ = None  # type: ignore[assignment]  # mutable (the tracker sets time and flags)

    def __repr__(self) -> str:
        return (f"CheckedFrame({self.site}/{self.device_id}/{self.sensor or '$hb'} "
                f"boot {self.boot_id:x} seq {self.seq} t {self.time_unix_nano} flags {self.flags} "
                f"{list(zip(self.layout.metrics, self.values, strict=True))})")
