"""A spool on a file system that refuses writes: a real, small tmpfs filled to the brim.

An SD card that fills up (logs, another program) must not stop an agent: a refused write
costs the frames of that write, counted and logged, and the spool goes on, writing again
once there is room.  Mounting needs root; elsewhere these tests skip and say so.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import Proc, small_tmpfs, tcp, wait_until, write

from sensorwire.agent.spool import Record, Spool
from sensorwire.collector.backlog import Backlog
from sensorwire.collector.frames import CheckedFrame
from sensorwire.proto.v1.telemetry_pb2 import Frame

SIZE = 256 * 1024


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of SIZE bytes mounted at a folder of this test's own."""
    with small_tmpfs(tmp_path / "fs", SIZE) as where:
        yield where


def fill(fs: Path, leave: int = 0) -> Path:
    """Take all but about ``leave`` bytes of ``fs`` with one file; returns it."""
    filler = fs / "filler"
    with open(filler, "wb") as f:
        try:
            f.write(b"\0" * SIZE)
            f.flush()
        except OSError:
            pass
    if leave:
        with open(filler, "r+b") as f:
            f.truncate(max(0, filler.stat().st_size - leave))
    return filler


def msg(i: int) -> bytes:
    return f"gh/pi-1/env\x00{i:08d}".encode() + b"x" * 480


def test_a_full_disk_costs_the_refused_frames_counted_and_the_spool_goes_on(small_fs: Path) -> None:
    refused: list[Record] = []
    s = Spool(small_fs / "spool", max_bytes=1 << 20, fsync="never", segment_bytes=16 * 1024)
    s.open()
    s.on_write_failed = refused.extend
    filler = fill(small_fs, leave=20 * 1024)
    kept = 0
    for i in range(1, 301):  # 150 KB: far more than the 20 KB left
        if s.append(7, i, msg(i)):
            kept += 1
        s.flush()  # never raises: a refused write is counted
    assert s.write_failed > 0 and s.dropped == s.write_failed
    assert [r.seq for r in refused] == sorted(r.seq for r in refused)
    assert len(refused) == s.write_failed
    assert s.pending == 300 - s.write_failed
    filler.unlink()  # room again: frames are kept again
    for i in range(301, 351):
        assert s.append(7, i, msg(i))
    s.flush()
    assert s.write_failed == len(refused)
    pending = s.pending
    s.close()
    lost = {r.seq for r in refused}
    with Spool(small_fs / "spool", max_bytes=1 << 20) as again:  # what is on the disk is whole
        assert again.pending == pending
        got = []
        while (rec := again.next()) is not None:
            assert rec.message == msg(rec.seq)
            got.append(rec.seq)
        assert again.corrupt == 0
    assert got == [i for i in range(1, 351) if i not in lost]


def test_a_new_segment_the_disk_refuses_is_counted_not_raised(small_fs: Path) -> None:
    s = Spool(small_fs / "spool", max_bytes=1 << 20, fsync="never", segment_bytes=4096)
    s.open()
    fill(small_fs)
    results = [s.append(7, i, msg(i)) for i in range(1, 40)]
    s.flush()
    assert not all(results)
    assert s.dropped == s.write_failed > 0
    assert s.pending + s.write_failed == 39
    s.close()


def test_an_agent_spooling_onto_a_full_disk_keeps_running_and_says_so(
        small_fs: Path, tmp_path: Path, procs: Callable[..., Proc]) -> None:
    cfg = write(tmp_path / "agent.toml", f"""
device_id = "pi-full"
site = "gh"
[publish]
connect = ["{tcp()}"]
heartbeat_s = 0.5
[spool]
dir = "{small_fs / 'spool'}"
fsync = "always"
[[sensors]]
name = "env"
kind = "simulated"
interval_s = 0.01
metrics = [{{ name = "t", signal = "constant", value = 1.0 }}]
""")
    fill(small_fs, leave=8 * 1024)
    agent = procs("agent", "agent", "-c", str(cfg))
    wait_until(lambda: "the file system refused a write (No space left on device)" in agent.log(),
               timeout_s=20, what="the agent's warning about the full disk")
    assert agent.popen.poll() is None, agent.log()
    assert agent.terminate() == 0, agent.log()
    summary = agent.log().splitlines()[-1]
    found = re.search(r"(\d+) dropped$", summary)
    assert found is not None and int(found.group(1)) > 0, summary


def test_the_collectors_backlog_counts_what_a_full_disk_refused_per_device(small_fs: Path) -> None:
    def item(device: str, seq: int) -> tuple[CheckedFrame, int]:
        f = Frame(site="gh", device_id=device, boot_id=5, seq=seq, time_unix_nano=10**18, sensor="env")
        f.samples.add(metric="t", value=float(seq))
        return CheckedFrame.from_pb(f), 10**18

    b = Backlog(buffer_max=1, spool_dir=small_fs / "pgspool", spool_max_bytes=1 << 20)
    b.open()
    fill(small_fs)
    b.park([item("pi-1", s) for s in range(1, 200)] + [item("pi-2", s) for s in range(1, 200)])
    b.close()
    assert b.dropped > 0
    assert sum(b.dropped_by_device.values()) == b.dropped
    assert set(b.dropped_by_device) <= {"pi-1", "pi-2"}
