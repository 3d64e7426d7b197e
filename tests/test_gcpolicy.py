"""The collector's garbage-collection policy: applied once per process."""

from __future__ import annotations

import gc

from sensorwire import gcpolicy


def test_gc_settles_once_per_process() -> None:
    gcpolicy.settle()
    assert gc.get_threshold()[0] == gcpolicy.YOUNG_THRESHOLD
    frozen = gc.get_freeze_count()
    gc.set_threshold(700, 10, 10)
    try:
        gcpolicy.settle()  # a second collector in the same process: nothing changes
        assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == frozen
    finally:
        gc.set_threshold(gcpolicy.YOUNG_THRESHOLD, 20, 100)
