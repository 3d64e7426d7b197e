"""The agent's store-and-forward spool: bounded, append-only, restart-proof.

Frames that nobody listens for (or that ZeroMQ refuses at the send
high-water mark) are appended here and replayed, oldest first, when a
subscriber is back.  The layout is friendly to SD cards:

- a folder of *segment* files ``seg-000000000001.spool``, each a magic header
  then records ``<u32 length><u32 crc32><u64 boot_id><u64 seq><message>``;
- records are only ever appended, written in batches (``flush()`` once per
  loop iteration, or when 64 KiB are buffered); existing data is never
  rewritten; a fully replayed segment is deleted;
- ``fsync`` is ``never``, ``interval`` (at most once per ``fsync_interval_s``)
  or ``always`` (after every write);
- the total size stays under ``max_bytes``: ``drop_oldest`` deletes the oldest
  segment, ``drop_newest`` refuses new frames; either way every frame lost is
  counted;
- a record torn by a crash (short or with a bad checksum) ends its segment's
  readable part and is counted as ``corrupt``;
- a write the file system refuses (the disk full, an I/O error) costs the
  frames of that write, counted in ``dropped`` and ``write_failed`` and
  logged (rate-limited) with what to do; the torn part is cut off again, and
  the spool goes on (it keeps trying to write: once there is room, frames
  are kept again).  An agent on a full SD card keeps sending live frames;
- a segment is deleted as soon as its last frame is replayed; how far replay
  got in the oldest segment is saved in the file ``cursor`` when the spool is
  closed, so a restart does not send those frames again.  After a crash the
  cursor is missing and they are sent again (collectors drop them as
  duplicates): never fewer frames, at worst some twice.

A lock file keeps two agents from sharing one folder.  Only the agent's main
thread uses a Spool; ``/metrics`` reads its counters, :attr:`Spool.pending` and
:meth:`Spool.written_today` from another thread.
"""

from __future__ import annotations

import collections
import datetime as _dt
import io
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Literal

import msgspec

from sensorwire import filelock
from sensorwire.logs import RateLimited

log = logging.getLogger(__name__)
_refused = RateLimited(log, period_s=30.0)

MAGIC = b"SWSPOOL1"
_HEAD = struct.Struct("<IIQQ")
_BUF_MAX = 64 * 1024
CURSOR = "cursor"  # "<segment number> <records replayed>" of the oldest segment, at close
_MAX_RECORD = 16 * 1024 * 1024

Overflow = Literal["drop_oldest", "drop_newest"]
Fsync = Literal["never", "interval", "always"]


class SpoolError(Exception):
    """The spool folder cannot be used; the message says why and what to do."""


class _Segment(msgspec.Struct):
    number: int
    path: Path
    size: int = 0          # bytes on disk (after the header)
    records: int = 0       # records written
    consumed: int = 0      # records read by replay


class Record(msgspec.Struct, frozen=True):
    boot_id: int
    seq: int
    message: bytes


class Spool:
    def __init__(self, folder: str | os.PathLike[str], max_bytes: int, overflow: Overflow = "drop_oldest",
                 fsync: Fsync = "interval", fsync_interval_s: float = 1.0,
                 segment_bytes: int | None = None, hold_read: bool = False) -> None:
        self.folder = Path(folder)
        # hold_read: a segment read to its end stays on disk until release(), for a reader
        # that must first store what it read elsewhere (the collector's database backlog);
        # after a crash it is read again from its start (storage drops the duplicates)
        self.hold_read = hold_read
        self.max_bytes = max_bytes
        self.overflow = overflow
        self.fsync = fsync
        self.fsync_interval_s = fsync_interval_s
        self.segment_bytes = segment_bytes or max(4096, min(8 << 20, max_bytes // 8))
        self._segments: collections.deque[_Segment] = collections.deque()
        self._writer: io.FileIO | None = None  # unbuffered: flush() writes its own batch at once
        self._reader: BinaryIO | None = None
        self._reader_seg: _Segment | None = None
        self._buf: list[bytes] = []
        self._buf_len = 0
        self._last_fsync = 0.0
        self._lock_fd: int | None = None
        self._next_number = 1
        # per boot: [min seq, max seq, frames pending]
        self.boots: dict[int, list[int]] = {}
        self.dropped = 0
        self.write_failed = 0   # of dropped: frames the file system refused (disk full, I/O error)
        self._failing = False   # the last write failed (logged once it works again)
        # called with the frames a refused write cost (the collector counts them per device)
        self.on_write_failed: Callable[[list[Record]], None] | None = None
        self.corrupt = 0
        self.appended = 0
        self.replayed = 0
        self.bytes_written_total = 0
        self._day = ""
        self.bytes_written_today = 0

    # -- lifecycle ------------------------------------------------------------
    def open(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock_fd = filelock.take(self.folder / "lock")
        except filelock.Held:
            raise SpoolError(f"spool folder {self.folder} is in use by another agent: is this one "
                             "running already? Two agents need each their own device_id (the "
                             "default spool folder is named after it) or [spool] dir") from None
        except OSError as exc:
            raise SpoolError(f"spool folder {self.folder}: {exc.strerror}; set [spool] dir "
                             "to a writable folder") from None
        cursor = self._take_cursor()
        for path in sorted(self.folder.glob("seg-*.spool")):
            try:
                number = int(path.stem[4:])
            except ValueError:
                continue
            seg = _Segment(number, path)
            replayed = cursor[1] if cursor is not None and cursor[0] == number else 0
            for rec in self._scan(seg):
                seg.records += 1
                if seg.records > replayed:
                    self._note(rec.boot_id, rec.seq)
            seg.consumed = min(replayed, seg.records)
            if seg.consumed >= seg.records:
                path.unlink(missing_ok=True)
                continue
            self._segments.append(seg)
            self._next_number = number + 1
        if self._segments:
            log.info("spool %s: %d frames in %d segments waiting for replay",
                     self.folder, self.pending, len(self._segments))

    def close(self) -> None:
        try:
            self.flush(force_sync=self.fsync != "never")
            if self._lock_fd is not None:  # opened: the folder is ours
                self._save_cursor()
        finally:
            for f in (self._writer, self._reader):
                if f is not None:
                    f.close()
            self._writer = self._reader = None
            self._reader_seg = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def _take_cursor(self) -> tuple[int, int] | None:
        """The cursor saved at the last close, removed: it holds only until the next close (a
        crash in between replays from the start of the segment again, which loses nothing)."""
        path = self.folder / CURSOR
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("spool %s: cannot read %s (%s): frames replayed before the last stop "
                        "may be sent again", self.folder, CURSOR, exc.strerror)
            return None
        path.unlink(missing_ok=True)
        try:
            number, replayed = (int(x) for x in text.split())
        except ValueError:
            log.warning("spool %s: %s holds %r, not '<segment> <count>': frames replayed before "
                        "the last stop may be sent again", self.folder, CURSOR, text[:40])
            return None
        return number, max(replayed, 0)

    def _save_cursor(self) -> None:
        head = self._segments[0] if self._segments else None
        path = self.folder / CURSOR
        tmp = self.folder / (CURSOR + ".tmp")
        try:
            if head is None or head.consumed == 0:
                path.unlink(missing_ok=True)
                return
            with open(tmp, "w") as f:
                f.write(f"{head.number} {head.consumed}\n")
                f.flush()
                if self.fsync != "never":
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("spool %s: cannot update %s (%s): frames replayed already may be sent "
                        "again after the restart (collectors drop them as duplicates)",
                        self.folder, CURSOR, exc.strerror)

    def __enter__(self) -> Spool:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state ----------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Frames waiting for replay."""
        segments = list(self._segments)  # a copy: /metrics asks from another thread
        return sum(s.records - s.consumed for s in segments)

    @property
    def size_bytes(self) -> int:
        return sum(s.size + len(MAGIC) for s in self._segments) + self._buf_len

    def holds(self, boot_id: int, seq: int) -> bool:
        """Might ``seq`` of ``boot_id`` still be waiting here? (cheap, may say yes wrongly)"""
        b = self.boots.get(boot_id)
        return b is not None and b[0] <= seq <= b[1]

    def _note(self, boot_id: int, seq: int) -> None:
        b = self.boots.get(boot_id)
        if b is None:
            self.boots[boot_id] = [seq, seq, 1]
        else:
            if seq < b[0]:
                b[0] = seq
            if seq > b[1]:
                b[1] = seq
            b[2] += 1

    def _forget(self, boot_id: int) -> None:
        b = self.boots.get(boot_id)
        if b is not None:
            b[2] -= 1
            if b[2] <= 0:
                del self.boots[boot_id]

    # -- writing --------------------------------------------------------------
    def append(self, boot_id: int, seq: int, message: bytes) -> bool:
        """Spool one frame; False (and counted) when ``drop_newest`` refuses it, or the file
        system refuses a new segment.  (A refused write of frames already taken is counted by
        :meth:`flush`.)"""
        record = _HEAD.pack(len(message), zlib.crc32(message), boot_id, seq) + message
        if self.size_bytes + len(record) > self.max_bytes:
            if self.overflow == "drop_newest" or not self._make_room(len(record)):
                self.dropped += 1
                return False
        if not self._write(record, boot_id, seq):
            return False
        self.appended += 1
        return True

    def requeue(self, boot_id: int, seq: int, message: bytes) -> None:
        """Put a frame :meth:`next` just gave back at the tail (nobody listens for it yet).

        Never refused, not even by a full spool: the frame is already counted in the size (in
        the segment it was read from, until that one is retired), so this is a move, not a new
        frame, and a spool at its bound must not drop what it already holds.  The bound may be
        passed by what one replay pass moves before its first segments are retired.
        """
        self._write(_HEAD.pack(len(message), zlib.crc32(message), boot_id, seq) + message,
                    boot_id, seq)
        self.replayed -= 1  # next() counted it as taken (and _write counted it if refused)

    def _write(self, record: bytes, boot_id: int, seq: int) -> bool:
        """Add one record at the tail (buffered; flushed when the buffer or the policy says);
        False, counted, when no segment can be opened for it."""
        try:
            seg = self._tail_for(len(record))
        except OSError as exc:
            self._refused([record], exc)
            return False
        seg.size += len(record)
        seg.records += 1
        self._buf.append(record)
        self._buf_len += len(record)
        self._note(boot_id, seq)
        if self._buf_len >= _BUF_MAX or self.fsync == "always":
            self.flush()
        return True

    def flush(self, force_sync: bool = False) -> None:
        """Write buffered records to the OS; fsync as the policy says.  Never raises for the
        file system: a refused write is counted (see the module's docstring)."""
        writer = self._writer
        if self._buf and writer is not None:
            records, self._buf = self._buf, []
            data = b"".join(records)
            self._buf_len = 0
            try:
                _write_all(writer, data)
            except OSError as exc:
                self._unwrite(records, len(data), exc)
                return
            self._count_written(len(data))
            if self._failing:
                self._failing = False
                log.info("spool %s: writing again (%d frames dropped while the file system "
                         "refused them)", self.folder, self.write_failed)
            now = time.monotonic()
            if (self.fsync == "always" or force_sync
                    or (self.fsync == "interval" and now - self._last_fsync >= self.fsync_interval_s)):
                self._fsync(writer)
                self._last_fsync = now
        elif force_sync and writer is not None:
            self._fsync(writer)

    def _fsync(self, writer: io.FileIO) -> None:
        try:
            os.fsync(writer.fileno())
        except OSError as exc:  # the data was written; whether it is on the disk is not known
            _refused.warning("fsync", "spool %s: fsync failed (%s): the frames written may not "
                             "survive a power cut; check the disk", self.folder, exc.strerror)

    def _unwrite(self, records: list[bytes], nbytes: int, exc: OSError) -> None:
        """A write of the tail segment's buffered ``records`` failed: cut the segment back to
        what was written before, and count the records as lost."""
        seg = self._segments[-1]  # _tail_for flushes before it starts a new segment
        seg.size -= nbytes
        seg.records -= len(records)
        assert self._writer is not None
        try:
            self._writer.truncate(len(MAGIC) + seg.size)  # frees blocks: works on a full disk
        except OSError:
            # the torn part stays after this segment's last record; it is never read (reading
            # stops at seg.records), and after a restart it is counted as corrupt
            self._writer.close()
            self._writer = None
        self._refused(records, exc)

    def _refused(self, records: list[bytes], exc: OSError) -> None:
        lost = []
        for r in records:
            _, _, boot_id, seq = _HEAD.unpack_from(r)
            lost.append(Record(boot_id, seq, r[_HEAD.size:]))
        for rec in lost:
            self._forget(rec.boot_id)
        self.dropped += len(lost)
        self.write_failed += len(lost)
        self._failing = True
        _refused.warning("write", "spool %s: the file system refused a write (%s): %d frames "
                         "dropped (%d in all); free space there or lower [spool] max_mb",
                         self.folder, exc.strerror or exc, len(lost), self.write_failed)
        if self.on_write_failed is not None:
            self.on_write_failed(lost)

    def written_today(self) -> int:
        """Bytes written to the folder since 00:00 UTC (0 on a day with no write yet)."""
        day = self._day  # before the count: _count_written resets the count first
        return self.bytes_written_today if day == _today() else 0

    def _count_written(self, n: int) -> None:
        day = _today()
        if day != self._day:
            self.bytes_written_today = 0
            self._day = day
        self.bytes_written_today += n
        self.bytes_written_total += n

    def _tail_for(self, record_len: int) -> _Segment:
        tail = self._segments[-1] if self._segments else None
        if tail is None or self._writer is None or tail.size + record_len > self.segment_bytes:
            self.flush()
            if self._writer is not None:
                self._writer.close()
            number = self._next_number
            self._next_number += 1
            path = self.folder / f"seg-{number:012d}.spool"
            self._writer = None
            writer = open(path, "ab", buffering=0)  # noqa: SIM115 - kept open while it is the tail
            try:
                _write_all(writer, MAGIC)
            except OSError:
                writer.close()
                path.unlink(missing_ok=True)
                raise
            self._writer = writer
            self._count_written(len(MAGIC))
            tail = _Segment(number, path)
            self._segments.append(tail)
        return tail

    def _make_room(self, need: int) -> bool:
        """Delete oldest segments (counting their unread frames) until ``need`` fits."""
        while self.size_bytes + need > self.max_bytes and len(self._segments) > 1:
            head = self._segments.popleft()
            lost = head.records - head.consumed
            if self._reader_seg is head:
                self._close_reader()
            for rec in self._scan(head, skip=head.consumed):
                self._forget(rec.boot_id)
            head.path.unlink(missing_ok=True)
            self.dropped += lost
            log.warning("spool %s full (%d bytes): dropped the oldest %d frames (%d in all)",
                        self.folder, self.max_bytes, lost, self.dropped)
        return self.size_bytes + need <= self.max_bytes

    # -- reading --------------------------------------------------------------
    def next(self) -> Record | None:
        """The oldest frame not yet replayed (it counts as taken), or None."""
        while (head := self._unread()) is not None:
            if self._reader_seg is not head:
                self._close_reader()
                if head is self._segments[-1]:
                    self.flush()
                self._reader = open(head.path, "rb")  # noqa: SIM115
                self._reader.seek(len(MAGIC))
                self._reader_seg = head
                for _ in range(head.consumed):
                    self._read_one(self._reader)
            elif head is self._segments[-1] and self._buf:
                self.flush()
            assert self._reader is not None
            rec = self._read_one(self._reader)
            if rec is None:  # torn record: the rest of this segment is unreadable
                self.corrupt += head.records - head.consumed
                head.consumed = head.records
                continue
            head.consumed += 1
            self.replayed += 1
            self._forget(rec.boot_id)
            if head.consumed >= head.records and not self.hold_read:
                self._retire(head)  # now, not at the next call: there may be none before a stop
            return rec
        return None

    def _unread(self) -> _Segment | None:
        """The oldest segment with records not yet read; read ones are retired first unless
        they are held for :meth:`release`."""
        for seg in list(self._segments):
            if seg.consumed < seg.records:
                return seg
            if not self.hold_read:
                self._retire(seg)
        return None

    def release(self) -> None:
        """With ``hold_read``: what was read is stored elsewhere now; delete the segments read
        to their end."""
        while self._segments and self._segments[0].consumed >= self._segments[0].records:
            self._retire(self._segments[0])

    def _retire(self, seg: _Segment) -> None:
        if self._reader_seg is seg:
            self._close_reader()
        if seg is self._segments[-1] and self._writer is not None:
            self.flush()
            self._writer.close()
            self._writer = None
        self._segments.popleft()
        seg.path.unlink(missing_ok=True)

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._reader = None
        self._reader_seg = None

    @staticmethod
    def _read_one(f: BinaryIO) -> Record | None:
        head = f.read(_HEAD.size)
        if len(head) < _HEAD.size:
            return None
        length, crc, boot_id, seq = _HEAD.unpack(head)
        if length > _MAX_RECORD:
            return None
        msg = f.read(length)
        if len(msg) < length or zlib.crc32(msg) != crc:
            return None
        return Record(boot_id, seq, msg)

    def _scan(self, seg: _Segment, skip: int = 0) -> Iterator[Record]:
        try:
            with open(seg.path, "rb") as f:
                if f.read(len(MAGIC)) != MAGIC:
                    log.warning("spool: %s is not a spool segment; ignored", seg.path)
                    return
                n = 0
                while True:
                    pos = f.tell()
                    rec = self._read_one(f)
                    if rec is None:
                        if f.seek(0, os.SEEK_END) > pos:
                            self.corrupt += 1
                            log.warning("spool: %s: a torn record at byte %d; the rest of the "
                                        "segment is skipped", seg.path, pos)
                        if seg.size == 0:
                            seg.size = pos - len(MAGIC)
                        return
                    n += 1
                    if n > skip:
                        yield rec
        except FileNotFoundError:
            return

    def stats(self) -> dict[str, int]:
        return {
            "spool_frames": self.pending,
            "spool_bytes": self.size_bytes,
            "spool_dropped": self.dropped,
            "spool_write_failed": self.write_failed,
            "spool_corrupt": self.corrupt,
            "spool_replayed": self.replayed,
            "spool_bytes_written_today": self.written_today(),
            "spool_bytes_written_total": self.bytes_written_total,
        }


def _write_all(f: io.FileIO, data: bytes) -> None:
    """All of ``data``, or OSError (an unbuffered write may take part of it, then refuse)."""
    view = memoryview(data)
    while view:
        n = f.write(view)
        if not n:
            raise OSError(0, "the file system took none of the write")
        view = view[n:]


def _today() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d")
