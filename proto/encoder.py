"""Hand-written encoders for the frames an agent sends: data frames and heartbeats.

The agent never imports protobuf to send (its descriptor pool, message
classes and text format cost about 2.4 MiB of RSS even with the upb backend);
it imports it only to parse a repair request, which is rare and may be
hostile, so protobuf's own parser handles it.

Data frames: :class:`DataEncoder`.

A sensor usually sends the same metrics with the same units every time; only
``seq``, the time, the values and (rarely) the flags change.  So everything
else is encoded once, and each frame is the constant bytes with the changing
fields packed in between by one precompiled :class:`struct.Struct`: about a
fifth of the cost of filling and serialising a protobuf ``Frame``.

The bytes are a valid ``sensorwire.v1.Frame`` (fields in field-number
order, as protobuf writes them); the one difference from
``Frame.SerializeToString()`` is that a value or a time of 0 is written rather
than left out, which decodes to the same frame.  ``tests/proto/test_encoder.py``
checks both.

Heartbeats: :class:`HeartbeatEncoder`, byte for byte what protobuf writes
(proto3: fields at their default left out, in field-number order; map entries
as nested messages with key and value both written, in the order given).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from sensorwire.proto.wire import DELIM

_ONE_BYTE = tuple(bytes((i,)) for i in range(0x80))


def _varint(n: int) -> bytes:
    """``n`` (>= 0) as a protobuf varint; the sizes a ``seq`` or flags have are unrolled."""
    if n < 0x80:
        return _ONE_BYTE[n]
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    if n < 0x20_0000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _text(field: int, value: str) -> bytes:
    data = value.encode("utf-8")
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _uint64(n: int) -> bytes:
    """``n`` as a uint64 varint; raises ValueError outside 0 .. 2**64 - 1, as protobuf does."""
    if not 0 <= n < 1 << 64:
        raise ValueError(f"{n} is out of range for a uint64")
    return _varint(n)


def _nested(field: int, body: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(body)) + body


def _fixed64(n: int, signed: bool = False) -> bytes:
    """``n`` as 8 little-endian bytes; raises ValueError when it does not fit, as protobuf does."""
    try:
        return n.to_bytes(8, "little", signed=signed)
    except OverflowError:
        raise ValueError(f"{n} is out of range for a {'s' if signed else ''}fixed64") from None


_DOUBLE = struct.Struct("<d")
_ZERO_DOUBLE = bytes(8)


class DataEncoder:
    """Encodes the data frames of one sensor with one list of (metric, unit).

    ``metrics`` and ``units`` are the layout as two tuples, so a caller can
    compare a sample's names with them in C (``zip(*readings)``).
    """

    __slots__ = ("topic", "layout", "metrics", "units", "_head", "_struct", "_consts", "_args", "_n")

    def __init__(self, topic: bytes, site: str, device_id: str, boot_id: int, sensor: str,
                 layout: Sequence[tuple[str, str]]) -> None:
        self.topic = topic
        self.layout = list(layout)
        self.metrics = tuple(m for m, _ in self.layout)
        self.units = tuple(u for _, u in self.layout)
        self._n = len(self.layout)
        self._head = (topic + DELIM + _text(1, site) + _text(2, device_id)
                      + b"\x19" + boot_id.to_bytes(8, "little"))
        consts: list[bytes] = []
        c = _text(6, sensor)
        for metric, unit in self.layout:
            body_head = _text(1, metric) + b"\x11"          # metric, then the value's tag
            body_tail = _text(3, unit) if unit else b""
            c += b"\x3a" + _varint(len(body_head) + 8 + len(body_tail)) + body_head
            consts.append(c)
            c = body_tail
        consts.append(c)
        # one pack writes the time's tag and value, then the constants with the values between
        consts.insert(0, b"\x29")
        fmt = "<" + "".join(f"{len(x)}s{'q' if i == 0 else 'd'}" for i, x in enumerate(consts[:-1]))
        self._struct = struct.Struct(fmt + f"{len(consts[-1])}s")
        self._consts = tuple(consts)
        self._args: list[object] = [b""] * (2 * self._n + 3)
        self._args[0::2] = consts

    def encode(self, seq: int, time_ns: int, values: Sequence[float], flags: int = 0) -> bytes:
        args = self._args
        args[1] = time_ns
        args[3::2] = values
        msg = self._head + b"\x20" + _varint(seq) + self._struct.pack(*args)
        return msg + b"\x48" + _varint(flags) if flags else msg

    def template(self, flags: int = 0) -> tuple[bytes, str, tuple[bytes, ...]]:
        """What a decoder needs to recognise this encoder's frames with ``flags``.

        Returns ``(head, fmt, consts)``: every frame starts with ``head`` (up to
        and including the tag of ``seq``), then ``seq`` as a varint, then bytes
        that :func:`struct.unpack` with ``fmt`` splits into ``(k0, time, k1,
        value1, k2, value2, ..., kN)``: the constant parts ``consts`` at the even
        indexes, the time and the values at the odd ones.
        """
        consts = list(self._consts)
        if flags:
            consts[-1] += b"\x48" + _varint(flags)
        fmt = "<" + "".join(f"{len(c)}s{'q' if i == 0 else 'd'}" for i, c in enumerate(consts[:-1]))
        return self._head + b"\x20", fmt + f"{len(consts[-1])}s", tuple(consts)


class SeqSpan(NamedTuple):
    """An inclusive range of data seqs of one boot: the fields of a ``SeqRange``."""

    boot_id: int
    first: int
    last: int


class HeartbeatEncoder:
    """Encodes the heartbeats of one agent boot: ``topic 0x00 Frame`` with a ``Heartbeat``.

    ``site``, ``device_id``, ``boot_id`` and ``agent_version`` do not change
    within a boot and are encoded once.  The bytes are exactly those of
    ``Frame.SerializeToString()`` for the same frame, except that protobuf may
    write the ``counters`` map in another order (it keeps no order), and a
    counter name given twice is written twice (a parser keeps the last, as
    for any map).
    """

    __slots__ = ("topic", "_head", "_version")

    def __init__(self, topic: bytes, site: str, device_id: str, boot_id: int,
                 agent_version: str) -> None:
        self.topic = topic
        head = topic + DELIM
        if site:
            head += _text(1, site)
        if device_id:
            head += _text(2, device_id)
        if boot_id:
            head += b"\x19" + _fixed64(boot_id)
        self._head = head
        self._version = _text(1, agent_version) if agent_version else b""

    def encode(self, time_ns: int, uptime_s: float, interval_s: float, last_seq: int,
               stopping: bool, counters: Iterable[tuple[str, int]], clock_synced: bool,
               unavailable: Iterable[tuple[int, int, int]] = ()) -> bytes:
        """The message for these values.

        ``counters`` are (name, value) pairs, ``unavailable`` (boot_id, first,
        last) ranges.  Raises ValueError for an integer out of its field's range.
        """
        hb = [self._version]
        for field, value in ((2, uptime_s), (3, interval_s)):
            bits = _DOUBLE.pack(value)
            if bits != _ZERO_DOUBLE:  # -0.0 and NaN are written, as protobuf does
                hb.append(_ONE_BYTE[field << 3 | 1] + bits)
        if last_seq:
            hb.append(b"\x20" + _uint64(last_seq))
        if stopping:
            hb.append(b"\x28\x01")
        for key, count in counters:
            hb.append(_nested(6, _text(1, key) + b"\x10" + _uint64(count)))
        if clock_synced:
            hb.append(b"\x38\x01")
        for boot_id, first, last in unavailable:
            r = b"\x09" + _fixed64(boot_id) if boot_id else b""
            if first:
                r += b"\x10" + _uint64(first)
            if last:
                r += b"\x18" + _uint64(last)
            hb.append(_nested(8, r))
        out = self._head
        if time_ns:
            out += b"\x29" + _fixed64(time_ns, signed=True)
        return out + _nested(8, b"".join(hb))
