"""The spool keeps frames in order, within its bound, across restarts and crashes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sensorwire.agent.spool import Spool, SpoolError


def msg(i: int, size: int = 200) -> bytes:
    return f"gh/pi-1/env\x00{i:08d}".encode() + b"x" * (size - 20)


def drain(s: Spool) -> list[int]:
    out = []
    while (rec := s.next()) is not None:
        out.append(rec.seq)
    return out


def test_frames_come_back_oldest_first_with_their_identity(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 20) as s:
        for i in range(1, 101):
            assert s.append(7, i, msg(i))
        rec = s.next()
        assert rec is not None and (rec.boot_id, rec.seq, rec.message) == (7, 1, msg(1))
        assert drain(s) == list(range(2, 101))
        assert s.pending == 0 and s.next() is None
        assert list(tmp_path.glob("seg-*")) == []  # fully replayed segments are deleted


def test_survives_a_restart(tmp_path: Path) -> None:
    s = Spool(tmp_path, max_bytes=1 << 20)
    s.open()
    for i in range(1, 51):
        s.append(7, i, msg(i))
    s.flush()  # what the agent does once per loop iteration; then the process dies
    s2 = Spool(tmp_path, max_bytes=1 << 20)
    with pytest.raises(SpoolError, match="in use by another agent"):
        s2.open()
    s.close()
    with Spool(tmp_path, max_bytes=1 << 20) as s3:
        assert s3.pending == 50 and s3.holds(7, 25)
        s3.append(8, 1, msg(1))
        assert drain(s3) == list(range(1, 51)) + [1]


def test_a_segment_goes_when_its_last_frame_is_replayed_not_at_the_next_call(tmp_path: Path) -> None:
    """The agent replays while ``pending`` is above 0, so there is no call after the last
    frame: the segment must not wait for one, or a restart would send it all again."""
    with Spool(tmp_path, max_bytes=1 << 20) as s:
        for i in range(1, 6):
            s.append(7, i, msg(i))
        got = [rec.seq for _ in range(s.pending) if (rec := s.next()) is not None]
        assert got == [1, 2, 3, 4, 5] and s.pending == 0
        assert list(tmp_path.glob("seg-*")) == []
    with Spool(tmp_path, max_bytes=1 << 20) as s:
        assert s.pending == 0 and s.next() is None


def test_a_restart_goes_on_where_replay_stopped(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 20) as s:
        for i in range(1, 11):
            s.append(7, i, msg(i))
        assert [s.next() is not None for _ in range(4)] == [True] * 4
    assert (tmp_path / "cursor").read_text().split()[1] == "4"
    with Spool(tmp_path, max_bytes=1 << 20) as s:
        assert s.pending == 6 and not s.holds(7, 4) and s.holds(7, 5)
        assert not (tmp_path / "cursor").exists()  # good until the next close only
        assert drain(s) == list(range(5, 11))
    assert not (tmp_path / "cursor").exists() and list(tmp_path.glob("seg-*")) == []


def test_after_a_crash_replay_starts_the_segment_again_and_loses_nothing(tmp_path: Path) -> None:
    s = Spool(tmp_path, max_bytes=1 << 20)
    s.open()
    for i in range(1, 11):
        s.append(7, i, msg(i))
    s.flush()
    assert s.next() is not None and s.next() is not None
    # the process dies here: no close, so no cursor (the lock goes with the process)
    assert s._lock_fd is not None
    os.close(s._lock_fd)
    with Spool(tmp_path, max_bytes=1 << 20) as s2:
        assert drain(s2) == list(range(1, 11))  # 1 and 2 twice in all: duplicates, not losses


def test_an_unreadable_cursor_is_ignored_with_a_warning(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    with Spool(tmp_path, max_bytes=1 << 20) as s:
        for i in range(1, 4):
            s.append(7, i, msg(i))
    (tmp_path / "cursor").write_text("rubbish")
    with Spool(tmp_path, max_bytes=1 << 20) as s:
        assert drain(s) == [1, 2, 3]
    assert "not '<segment> <count>'" in caplog.text


def test_a_torn_last_record_is_skipped_and_counted(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 20) as s:
        for i in range(1, 11):
            s.append(7, i, msg(i))
    [seg] = tmp_path.glob("seg-*.spool")
    data = seg.read_bytes()
    seg.write_bytes(data[:-50])  # a crash in the middle of the last write
    with Spool(tmp_path, max_bytes=1 << 20) as s:
        assert drain(s) == list(range(1, 10))
        assert s.corrupt == 1


@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest"])
def test_the_size_bound_holds_and_drops_are_counted(tmp_path: Path, overflow: str) -> None:
    max_bytes = 256 * 1024
    with Spool(tmp_path, max_bytes=max_bytes, overflow=overflow,  # type: ignore[arg-type]
               segment_bytes=32 * 1024) as s:
        for i in range(1, 5001):
            s.append(7, i, msg(i))
            s.flush()
            assert sum(p.stat().st_size for p in tmp_path.glob("seg-*")) <= max_bytes
        kept = drain(s)
        assert len(kept) + s.dropped == 5000
        assert s.dropped > 0
        if overflow == "drop_oldest":
            assert kept[-1] == 5000 and kept == list(range(kept[0], 5001))
        else:
            assert kept == list(range(1, len(kept) + 1))


def test_interleaved_reading_and_writing(tmp_path: Path) -> None:
    got = []
    with Spool(tmp_path, max_bytes=1 << 20, segment_bytes=64 * 1024) as s:
        n = 0
        for _ in range(50):
            for _ in range(30):
                n += 1
                s.append(1, n, msg(n))
            for _ in range(20):
                rec = s.next()
                if rec:
                    got.append(rec.seq)
        got += drain(s)
    assert got == list(range(1, n + 1))


def test_bytes_written_to_flash_are_counted(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 20, fsync="always") as s:
        for i in range(10):
            s.append(1, i + 1, msg(i, 200))
        assert s.bytes_written_today == s.bytes_written_total
        assert s.bytes_written_total == 8 + 10 * (24 + 200)


@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest"])
def test_a_frame_put_back_by_a_replay_pass_is_never_dropped_by_a_full_spool(
        tmp_path: Path, overflow: str) -> None:
    """A replay pass takes each frame and puts back the ones nobody listens for yet: a move
    inside the spool, which a spool at its bound must not turn into a drop."""
    with Spool(tmp_path, max_bytes=64 * 1024, overflow=overflow,  # type: ignore[arg-type]
               segment_bytes=16 * 1024) as s:
        i = 0
        while s.dropped == 0:  # fill it to the bound
            i += 1
            s.append(7, i, msg(i))
        dropped, pending = s.dropped, s.pending
        for _ in range(pending):  # one whole pass, nobody listening
            rec = s.next()
            assert rec is not None
            s.requeue(rec.boot_id, rec.seq, rec.message)
        assert (s.dropped, s.pending, s.replayed) == (dropped, pending, 0)
        assert s.boots[7][2] == pending  # still known to hold that boot's frames
        kept = drain(s)
    assert len(kept) == pending and kept == sorted(kept)
