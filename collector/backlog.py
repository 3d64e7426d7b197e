"""What a database sink holds while its database is unreachable: memory, then a disk spool.

Frames and events are *parked* here in arrival order and *taken* back, oldest
first, once the database answers again:

- up to ``buffer_max`` frames and events stay in memory (an event takes the
  room of one frame);
- when memory is full and a spool folder is configured, everything in memory
  moves to the spool (the agent's :class:`~sensorwire.agent.spool.Spool`:
  append-only segment files with checksums, bounded by ``spool_max_bytes``),
  so the spool always holds the *older* part and memory the newer;
- what fits in neither is dropped and counted (``dropped``), per device.

Records in the spool are ``b"F" <received_ns u64> <Frame protobuf>`` and
``b"E" <event JSON>``.  A clean close moves memory to the spool, so parked
frames survive a restart of the collector (the spool is read again on open).
A spool segment is deleted only once everything read from it is written
(:meth:`Backlog.stored`): after a crash mid-write it is read again.
A frame taken out but not written (the database failed again) is put back
with :meth:`Backlog.restore`; frames are order-independent (storage is
idempotent), and events are taken one at a time.

Used by one thread only (the sink's).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import struct
from pathlib import Path

from sensorwire.agent.spool import Record, Spool, SpoolError
from sensorwire.collector.events import Counts, Event, Lost, Presence
from sensorwire.collector.frames import CheckedFrame
from sensorwire.collector.sinks import count_by_device, count_samples, take_samples
from sensorwire.logs import RateLimited
from sensorwire.proto.v1.telemetry_pb2 import Frame

log = logging.getLogger(__name__)
_drops = RateLimited(log, period_s=10.0)

Item = tuple[CheckedFrame, int]
Piece = list[Item] | Event
_U64 = struct.Struct("<Q")
_EVENTS: dict[str, type[Presence] | type[Lost] | type[Counts]] = {
    "Presence": Presence, "Lost": Lost, "Counts": Counts}


class BacklogError(Exception):
    """The spool folder cannot be used (permanent)."""


def _encode_event(ev: Event) -> bytes:
    return b"E" + json.dumps({"type": type(ev).__name__, **dataclasses.asdict(ev)}).encode()


def _decode(message: bytes) -> Item | Event | None:
    kind = message[:1]
    if kind == b"F":
        received = _U64.unpack_from(message, 1)[0]
        return CheckedFrame.from_pb(Frame.FromString(message[1 + _U64.size:])), received
    if kind == b"E":
        obj = json.loads(message[1:])
        cls = _EVENTS.get(obj.pop("type", ""))
        return cls(**obj) if cls is not None else None
    return None


class Backlog:
    def __init__(self, buffer_max: int, spool_dir: str | Path | None = None,
                 spool_max_bytes: int = 1 << 30) -> None:
        self.buffer_max = buffer_max
        self.spool_dir = Path(spool_dir) if spool_dir is not None else None
        self.spool_max_bytes = spool_max_bytes
        self._front: collections.deque[Piece] = collections.deque()  # taken out and put back
        self._mem: collections.deque[Piece] = collections.deque()
        self._mem_frames = 0
        self._mem_events = 0  # events in _mem: they count against buffer_max, one each
        self._spool: Spool | None = None
        self.dropped = 0
        self.dropped_events = 0
        self.dropped_by_device: collections.Counter[str] = collections.Counter()
        self.spooled = 0

    # -- lifecycle ------------------------------------------------------------------------
    def open(self) -> None:
        if self.spool_dir is None:
            return
        spool = Spool(self.spool_dir, self.spool_max_bytes, overflow="drop_newest", hold_read=True)
        try:
            spool.open()
        except SpoolError as exc:
            raise BacklogError(f"storage.spool_dir: {exc}") from None
        spool.on_write_failed = self._spool_refused
        self._spool = spool
        if spool.pending:
            log.info("postgres: %d frames and events left in the spool %s from before; they are "
                     "written first", spool.pending, self.spool_dir)

    def close(self) -> None:
        """Move what memory holds to the spool (if there is one) and close it."""
        self._mem.extendleft(reversed(self._front))
        self._mem_frames += sum(len(p) for p in self._front if isinstance(p, list))
        self._mem_events += sum(1 for p in self._front if not isinstance(p, list))
        self._front.clear()
        if self._spool is None:
            if self._mem_frames or self._mem_events:
                self._count_drop([i for p in self._mem if isinstance(p, list) for i in p])
                self.dropped_events += self._mem_events
                log.error("postgres: %d frames and %d events not written at shutdown (the "
                          "database is unreachable and storage.spool_dir is not set): lost",
                          self._mem_frames, self._mem_events)
            self._mem.clear()
            self._mem_frames = self._mem_events = 0
            return
        if self._mem:
            n = self._mem_frames
            self._to_spool()
            log.warning("postgres: the database is unreachable at shutdown: %d frames kept in the "
                        "spool %s for the next start", n, self.spool_dir)
        self._spool.close()
        self._spool = None

    # -- state ----------------------------------------------------------------------------
    @property
    def frames_in_memory(self) -> int:
        return self._mem_frames

    @property
    def spool_pending(self) -> int:
        """Frames and events in the spool."""
        return self._spool.pending if self._spool is not None else 0

    def __bool__(self) -> bool:
        return bool(self._front) or bool(self._mem) or self.spool_pending > 0

    # -- parking ------------------------------------------------------------------------------
    def park(self, batch: list[Item]) -> None:
        """Hold ``batch`` after everything held; count what does not fit."""
        if self._mem_frames + self._mem_events + len(batch) > self.buffer_max:
            if self._spool is not None:
                self._to_spool()
                if len(batch) > self.buffer_max:
                    self._spool_items(batch)
                    return
            else:
                room = max(self.buffer_max - self._mem_frames - self._mem_events, 0)
                self._count_drop(batch[room:])
                batch = batch[:room]
                if not batch:
                    return
        self._mem.append(batch)
        self._mem_frames += len(batch)

    def park_event(self, ev: Event) -> None:
        """Hold ``ev`` after everything held.  An event takes the room of one frame in memory
        (a flood of made-up devices during an outage must not grow it for ever): past
        ``buffer_max``, memory goes to the spool, or without one the event is dropped and
        counted (``dropped_events``)."""
        if self._mem_frames + self._mem_events >= self.buffer_max:
            if self._spool is not None:
                self._to_spool()
            else:
                self.dropped_events += 1
                _drops.warning("events", "postgres: database unreachable and the memory buffer "
                               "is full (%d frames and events, storage.buffer_max) and "
                               "storage.spool_dir is not set: an event dropped (%d in all), "
                               "e.g. %r", self.buffer_max, self.dropped_events, ev)
                return
        self._mem.append(ev)
        self._mem_events += 1

    def stored(self) -> None:
        """What :meth:`take` gave has been written (or refused for good): the spool's segments
        read to their end can go.  Until then they stay on disk, so a crash while a piece is
        being written loses nothing (it is read again, and storage drops the duplicates)."""
        if self._spool is not None and not self._front:
            self._spool.release()

    def restore(self, piece: Piece) -> None:
        """Put back a piece taken by :meth:`take` that could not be written (first in line)."""
        self._front.appendleft(piece)

    def take(self, max_samples: int) -> Piece | None:
        """The oldest piece: frames of up to ``max_samples`` samples (``[storage] batch_max``,
        counted as :func:`~sensorwire.collector.sinks.count_samples` does; at least one frame),
        or one event; None when empty."""
        if self._front:
            return self._front.popleft()
        if self._spool is not None and self._spool.pending:
            return self._take_spool(max_samples)
        if not self._mem:
            return None
        head = self._mem[0]
        if not isinstance(head, list):
            self._mem_events -= 1
            return self._mem.popleft()
        out: list[Item] = []
        room = max_samples
        while self._mem and isinstance(part := self._mem[0], list):
            k = take_samples(part, room) or (0 if out else 1)  # at least one frame
            if not k:
                break
            out.extend(part[:k])
            room -= count_samples(part[:k])
            if k == len(part):
                self._mem.popleft()
            else:
                self._mem[0] = part[k:]
                break
        self._mem_frames -= len(out)
        return out

    # -- the spool ------------------------------------------------------------------------------
    def _take_spool(self, max_samples: int) -> Piece | None:
        assert self._spool is not None
        out: list[Item] = []
        room = max_samples
        while room > 0 or not out:
            rec = self._spool.next()
            if rec is None:
                break
            try:
                got = _decode(rec.message)
            except Exception:  # noqa: BLE001 - a record we cannot read is counted, not fatal
                got = None
            if got is None:
                log.warning("postgres: an unreadable record in the spool %s was skipped",
                            self.spool_dir)
                continue
            if isinstance(got, tuple):
                out.append(got)
                room -= len(got[0].values) or 1
                continue
            if out:  # an event after frames: keep it for the next take, in order
                self._front.append(got)
                break
            return got
        if out:
            return out
        return self.take(max_samples) if self._mem else None

    def _to_spool(self) -> None:
        assert self._spool is not None
        while self._mem:
            piece = self._mem.popleft()
            if isinstance(piece, list):
                self._spool_items(piece)
            else:
                self._spool.append(0, 0, _encode_event(piece))
        self._mem_frames = self._mem_events = 0
        self._spool.flush()

    def _spool_items(self, items: list[Item]) -> None:
        assert self._spool is not None
        append = self._spool.append
        refused: list[Item] = []
        for frame, received in items:
            msg = b"F" + _U64.pack(received) + frame.to_pb().SerializeToString()
            if append(frame.boot_id, frame.seq, msg):
                self.spooled += 1
            else:
                refused.append((frame, received))
        if refused:
            self._count_drop(refused, spool_full=True)

    def _spool_refused(self, records: list[Record]) -> None:
        """The file system refused the spool's write of these (the spool logged it): count them
        as the spool's other drops are, per device."""
        items: list[Item] = []
        for rec in records:
            try:
                got = _decode(rec.message)
            except Exception:  # noqa: BLE001 - we wrote it; counted as an event if unreadable
                got = None
            if isinstance(got, tuple):
                items.append(got)
            else:
                self.dropped_events += 1
        self._count_drop(items, spool_full=True, refused=True)

    def _count_drop(self, items: list[Item], spool_full: bool = False, refused: bool = False) -> None:
        if not items:
            return
        self.dropped += len(items)
        count_by_device(self.dropped_by_device, items)
        where = (f"the spool {self.spool_dir} cannot be written (the disk full?)" if refused
                 else f"the spool {self.spool_dir} is full (storage.spool_max_mb)" if spool_full
                 else f"the memory buffer is full ({self.buffer_max} frames, storage.buffer_max)"
                 + ("" if self._spool is not None else " and storage.spool_dir is not set"))
        _drops.warning(where, "postgres: database unreachable and %s: %d frames dropped (%d in "
                       "all)", where, len(items), self.dropped)
