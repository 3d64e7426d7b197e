"""``[storage] batch_max`` counts samples per write (issue 9: "batch_max = 5000  # samples per
write"), both for what reception queues and for what a database sink held during an outage.

A frame counts its samples, a heartbeat (no samples) 1; a write holds whole frames, and at least
one, so a frame with more samples than ``batch_max`` is written alone rather than never.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from support import Nowhere, wait_until

from sensorwire.collector.backlog import Backlog
from sensorwire.collector.config import StorageConfig
from sensorwire.collector.frames import CheckedFrame, Layout
from sensorwire.collector.sinks import Item, SinkRunner, count_samples

BOOT = 7


def frame(seq: int, samples: int) -> Item:
    layout = Layout([(f"m{i}", "") for i in range(samples)])
    f = CheckedFrame("gh", "pi-1", BOOT, seq, 1_700_000_000_000_000_000 + seq, "env", 0, layout,
                     tuple(float(i) for i in range(samples)))
    return f, 1


class Sizes(Nowhere):
    """Records the samples of each frame of each write."""

    name = "sizes"

    def __init__(self) -> None:
        self.writes: list[list[int]] = []

    def write(self, batch: Sequence[Item]) -> None:
        self.writes.append([len(f.values) for f, _ in batch])


def test_the_default_is_20000_frames_of_8_samples() -> None:
    assert StorageConfig().batch_max == 160_000
    assert count_samples([frame(1, 8), frame(2, 0)]) == 9


def test_a_write_holds_at_most_batch_max_samples_and_at_least_one_frame() -> None:
    sink = Sizes()
    r = SinkRunner(sink, batch_max=16, flush_interval_s=60.0)
    r.offer([frame(s, 8) for s in range(1, 6)])                  # 40 samples in one offer
    r.offer([frame(6, 0), frame(7, 0), frame(8, 0), frame(9, 20)])  # heartbeats, then a big one
    assert r.depth == 9
    r.start()
    r.close()  # writes what is queued, batch by batch
    assert sink.writes == [[8, 8], [8, 8], [8, 0, 0, 0], [20]]
    assert r.written == 9 and r.depth == 0


def test_a_full_batch_of_samples_is_written_without_waiting_for_the_interval() -> None:
    sink = Sizes()
    r = SinkRunner(sink, batch_max=16, flush_interval_s=60.0)
    r.start()
    try:
        r.offer([frame(1, 8), frame(2, 8)])  # 16 samples: due now, not in a minute
        wait_until(lambda: len(sink.writes) == 1, timeout_s=10, what="the full batch written")
        assert sink.writes == [[8, 8]]
        r.offer([frame(3, 8)])  # 8 of 16: waits for the interval
        assert r.depth == 1
    finally:
        r.close()
    assert sink.writes == [[8, 8], [8]]


def test_what_an_outage_held_is_written_back_in_pieces_of_batch_max_samples(tmp_path: Path) -> None:
    b = Backlog(buffer_max=100)
    b.open()
    b.park([frame(s, 8) for s in range(1, 4)])
    b.park([frame(4, 0), frame(5, 30), frame(6, 8)])
    pieces: list[list[int]] = []
    while (piece := b.take(16)) is not None:
        assert isinstance(piece, list)
        pieces.append([len(f.values) for f, _ in piece])
    assert pieces == [[8, 8], [8, 0], [30], [8]]
    assert b.frames_in_memory == 0
    b.close()
    # the same from the spool, where a piece ends where the samples run out
    spooled = Backlog(buffer_max=2, spool_dir=tmp_path / "spool", spool_max_bytes=1 << 20)
    spooled.open()
    spooled.park([frame(s, 8) for s in range(1, 6)])  # more than buffer_max: to the spool
    assert spooled.spool_pending == 5
    pieces = []
    while (piece := spooled.take(16)) is not None:
        assert isinstance(piece, list)
        pieces.append([f.seq for f, _ in piece])
    assert pieces == [[1, 2], [3, 4], [5]]
    spooled.close()
