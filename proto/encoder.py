"""A fast encoder for data frames whose layout repeats.

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
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

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


class DataEncoder:
    """Encodes the data frames of one sensor with one list of (metric, unit).

    ``metrics`` and ``units`` are the layout as two tuples, so a caller can
    compare a sample's names with them in C (``zip(*readings)``).
    """

    __slots__ = ("topic", "layout", "metrics", "units", "_head", "_struct", "_args", "_n")

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
        consts = [bytes(c) for c in self._args[0::2]]  # type: ignore[arg-type]
        if flags:
            consts[-1] += b"\x48" + _varint(flags)
        fmt = "<" + "".join(f"{len(c)}s{'q' if i == 0 else 'd'}" for i, c in enumerate(consts[:-1]))
        return self._head + b"\x20", fmt + f"{len(consts[-1])}s", tuple(consts)
