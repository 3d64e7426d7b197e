"""The agent's clock-sync check: timesyncd's marker where it runs, adjtimex elsewhere."""

from __future__ import annotations

import sys
from pathlib import Path

from sensorwire.agent.clock import ClockState


def test_timesyncd_marker_decides_where_timesyncd_runs(tmp_path: Path) -> None:
    c = ClockState(str(tmp_path))
    assert c.synced() is False
    (tmp_path / "synchronized").touch()
    assert c.synced() is True
    assert c._adjtimex is None  # ctypes never needed


def test_without_timesyncd_the_kernel_is_asked(tmp_path: Path) -> None:
    c = ClockState(str(tmp_path / "absent"))
    assert isinstance(c.synced(), bool)
    assert "ctypes" in sys.modules
