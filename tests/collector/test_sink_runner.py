"""SinkRunner: what it keeps per device is bounded."""

from __future__ import annotations

from collections.abc import Sequence

from sensorwire.collector.frames import EMPTY, CheckedFrame
from sensorwire.collector.sinks import DROPS_BY_DEVICE_MAX, Item, SinkRunner


class Nowhere:
    name = "nowhere"

    def open(self) -> None:
        pass

    def write(self, batch: Sequence[Item]) -> None:
        pass

    def close(self) -> None:
        pass


def frames(devices: int) -> list[Item]:
    return [(CheckedFrame("gh", f"made-up-{i}", 1, 1, 0, "env", 0, EMPTY, ()), 0)
            for i in range(devices)]


def test_drops_are_counted_per_device_for_a_bounded_number_of_devices() -> None:
    runner = SinkRunner(Nowhere(), queue_max=1)  # not started: the queue only fills
    assert runner.offer(frames(DROPS_BY_DEVICE_MAX + 1))[0][0].device_id == "made-up-1"
    assert runner.dropped == DROPS_BY_DEVICE_MAX
    assert len(runner.dropped_by_device) == DROPS_BY_DEVICE_MAX
    runner.offer(frames(3))                     # three more devices: the table starts again
    assert runner.dropped == DROPS_BY_DEVICE_MAX + 3
    assert dict(runner.dropped_by_device) == {f"made-up-{i}": 1 for i in range(3)}
