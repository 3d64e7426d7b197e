"""Decoding and checking what the collector receives, cheaply for frames that repeat.

:class:`sensorwire.proto.wire.Decoder` parses every message with protobuf
and checks its topic, names and sizes; reading eight samples' strings out of
protobuf objects is most of the collector's cost per frame.  But a sensor's
frames differ from each other only in ``seq``, the time and the values.  So
:class:`Intake` keeps, per topic, a *template* of the last data frame that
passed every check: its bytes up to ``seq``, and the constant bytes around the
time and the values (as :class:`~sensorwire.proto.encoder.DataEncoder` writes
them, which is also what protobuf writes when no value is 0).  A message that
is that frame byte for byte except for ``seq``, the time and the values is the
same frame with other numbers: it is read with one :func:`struct.unpack` and
needs no check.  Anything else - another layout, other flags, a heartbeat, a
value of 0 that protobuf left out, garbage - takes the full path, and may
become the topic's new template.

Templates are bounded: ``cache_size`` topics (131,072 by default: 10,000
devices of 8 sensors and more; devices with the same sensor share its
template's ``Struct`` and constants, and names are interned, so a topic costs
about 500 bytes), then the cache starts again, at
most every ``wire.REFILL_S`` (ten minutes; in between a new topic takes the full
path, so a fleet of more topics than the bound keeps its templates instead of
relearning one at every frame).  A topic whose frames never come out the way a
template expects stops being tried after a few attempts.
"""

from __future__ import annotations

import struct
from sys import intern

from sensorwire.collector.frames import CheckedFrame, Layouts
from sensorwire.proto import wire
from sensorwire.proto.encoder import DataEncoder

LEARN_ATTEMPTS = 8   # failed attempts to make a template for a topic before giving up on it
CACHE_TOPICS = 131_072  # topics with a template (and names checked): ~500 bytes each for a fleet
#                         of a few sensor kinds, ~4.4 KB each for made-up layouts (570 MB at most)
SHAPES_MAX = 4096    # distinct frame shapes (sensor name, metrics, units, flags) shared by templates
_MAX_VARINT_BYTES = 10


class _Template:
    __slots__ = ("head", "seq_at", "struct", "size", "consts", "site", "device_id", "boot_id",
                 "sensor", "flags", "layout")

    def __init__(self, head: bytes, shape: tuple[struct.Struct, tuple[bytes, ...]],
                 frame: CheckedFrame) -> None:
        self.head = head
        self.seq_at = len(head)
        self.struct, self.consts = shape
        self.size = self.struct.size
        # what every matching frame has (copied: the tracker may change a frame's flags); names
        # interned, so that a device's topics and the decoder's cache share one string of each
        self.site, self.device_id, self.boot_id = intern(frame.site), intern(frame.device_id), frame.boot_id
        self.sensor, self.flags, self.layout = intern(frame.sensor), frame.flags, frame.layout


class Intake:
    """``decode(msg)`` returns a :class:`CheckedFrame` or raises :class:`wire.WireError`."""

    def __init__(self, max_samples: int = 1024, cache_size: int = CACHE_TOPICS) -> None:
        self.decoder = wire.Decoder(max_samples=max_samples, cache_size=cache_size)
        self.layouts = Layouts(cache_size)
        self.cache_size = cache_size
        self._templates: dict[bytes, _Template] = {}
        self._failed: dict[bytes, int] = {}
        self._refill = wire.Refill()         # for _templates
        self._refill_failed = wire.Refill()  # for _failed
        # (fmt, consts) -> (Struct, consts): one per shape, shared by the templates of every device
        # whose sensor sends it (a Struct and its constants cost ~1.2 KB a topic unshared)
        self._shapes: dict[tuple[str, tuple[bytes, ...]], tuple[struct.Struct, tuple[bytes, ...]]] = {}
        self.matched = 0  # frames read through a template (for tests and benchmarks)

    def decode(self, msg: bytes) -> CheckedFrame:
        idx = msg.find(wire.DELIM, 0, wire.MAX_TOPIC_BYTES + 1)
        t = self._templates.get(msg[:idx]) if idx > 0 else None
        if t is not None and msg.startswith(t.head):
            pos = t.seq_at
            seq = 0
            try:
                b = msg[pos]
                seq = b & 0x7F
                shift = 7
                pos += 1
                while b & 0x80:
                    b = msg[pos]
                    seq |= (b & 0x7F) << shift
                    shift += 7
                    pos += 1
            except IndexError:  # cut off inside seq: not this template (the full path says why)
                seq = 0
            if 0 < seq <= wire.MAX_SEQ and pos - t.seq_at <= _MAX_VARINT_BYTES and len(msg) - pos == t.size:
                r = t.struct.unpack_from(msg, pos)
                if r[0::2] == t.consts:
                    self.matched += 1
                    return CheckedFrame(t.site, t.device_id, t.boot_id, seq, r[1], t.sensor,
                                        t.flags, t.layout, r[3::2])
        frame = CheckedFrame.from_pb(self.decoder.decode(msg), self.layouts)
        if frame.seq:
            self._learn(msg, msg[:idx], frame, t)
        return frame

    def _learn(self, msg: bytes, topic: bytes, frame: CheckedFrame, old: _Template | None) -> None:
        """Make ``frame`` the template of ``topic`` if ``msg`` is written the expected way."""
        if old is not None:
            if (old.boot_id, old.flags, old.layout.pairs) == (frame.boot_id, frame.flags,
                                                               frame.layout.pairs):
                return  # the same kind of frame, written differently (a 0 left out): keep it
        failed = self._failed.get(topic, 0)
        if failed >= LEARN_ATTEMPTS:
            return
        if old is None and not self._refill.room(self._templates, self.cache_size):
            return  # full, and not yet time to start again: the full path, no learning
        enc = DataEncoder(topic, frame.site, frame.device_id, frame.boot_id, frame.sensor,
                          frame.layout.pairs)
        if enc.encode(frame.seq, frame.time_unix_nano, frame.values, frame.flags) != msg:
            if self._refill_failed.room(self._failed, self.cache_size):
                self._failed[topic] = failed + 1
            return
        head, fmt, consts = enc.template(frame.flags)
        shape = self._shapes.get((fmt, consts))
        if shape is None:
            if len(self._shapes) >= SHAPES_MAX:
                self._shapes.clear()  # templates keep theirs; new ones share anew
            shape = self._shapes[(fmt, consts)] = (struct.Struct(fmt), consts)
        self._templates[topic] = _Template(head, shape, frame)
