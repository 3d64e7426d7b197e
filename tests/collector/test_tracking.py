"""The tracker's table of devices is bounded by ``max_devices``: which device makes room for a
new one, what is handed on before it goes, and what a frame from it means afterwards."""

from __future__ import annotations

import pytest

from sensorwire.collector import tracking
from sensorwire.collector.events import Counts, Event, Lost, Presence
from sensorwire.collector.frames import EMPTY, CheckedFrame
from sensorwire.collector.tracking import (
    JOIN_GRACE_S,
    MAX_GAP_RANGES,
    MAX_RANGES_PER_REQUEST,
    PRESENCE_LOG_BURST,
    PRESENCE_LOG_WINDOW_S,
    DeviceTableFull,
    ResumeBoot,
    Tracker,
)
from sensorwire.logs import RateLimited
from sensorwire.proto.v1.telemetry_pb2 import Heartbeat, RepairRequest

NS = 1_000_000_000
OFFLINE_S = 10.0


class Fixture:
    """A tracker with every event it emits and every repair request it sends; time is given."""

    def __init__(self, max_devices: int) -> None:
        self.events: list[Event] = []
        self.requests: list[bytes] = []
        self.tracker = Tracker([b""], emit=self.events.append, send_request=self.requests.append,
                               offline_after_s=OFFLINE_S, max_devices=max_devices)
        self.now = self.tracker.started + JOIN_GRACE_S + 1  # past the start-up grace

    def frame(self, device: str, seq: int, boot_id: int = 1) -> bool:
        f = CheckedFrame("gh", device, boot_id, seq, 1_700_000_000 * NS + seq, "env", 0,
                         EMPTY, ())
        return self.tracker.on_frame(f, self.now, int(self.now * NS))

    def heartbeat(self, device: str, last_seq: int, boot_id: int = 1,
                  stopping: bool = False, unavailable: tuple[tuple[int, int], ...] = ()) -> bool:
        hb = Heartbeat(interval_s=1.0, last_seq=last_seq, clock_synced=True, stopping=stopping)
        for first, last in unavailable:
            hb.unavailable.add(boot_id=boot_id, first=first, last=last)
        f = CheckedFrame("gh", device, boot_id, 0, int(self.now * NS), "", 0, EMPTY, (), hb)
        return self.tracker.on_frame(f, self.now, int(self.now * NS))

    def wait(self, seconds: float) -> None:
        self.now += seconds
        self.tracker.tick(self.now, int(self.now * NS))

    def state(self, device: str) -> str | None:
        dev = self.tracker.devices.get(device)
        return None if dev is None else dev.state

    def gaps(self, device: str) -> list[tuple[int, int]]:
        dev = self.tracker.devices[device]
        return [r for b in dev.boots.values() for r in b.missing]


def test_a_new_device_evicts_the_one_silent_longest_among_those_not_online() -> None:
    f = Fixture(max_devices=3)
    f.frame("a", 1)
    f.wait(1)
    f.frame("b", 1)
    f.frame("c", 1)
    f.wait(OFFLINE_S + 0.5)  # a and b silent long enough: offline; then c speaks
    f.frame("c", 2)
    assert (f.state("a"), f.state("b"), f.state("c")) == ("offline", "offline", "online")
    assert f.frame("d", 1)
    assert set(f.tracker.devices) == {"b", "c", "d"}  # a was silent longest
    assert f.tracker.evicted == 1
    assert f.frame("e", 1)
    assert set(f.tracker.devices) == {"c", "d", "e"}


def test_a_stopped_device_is_evicted_before_an_online_one() -> None:
    f = Fixture(max_devices=2)
    f.frame("a", 1)
    f.frame("b", 1)
    f.wait(1)
    f.heartbeat("b", 1, stopping=True)  # a clean stop
    assert (f.state("a"), f.state("b")) == ("online", "stopped")
    assert f.frame("c", 1)
    assert set(f.tracker.devices) == {"a", "c"}  # a is online, silent longer, and stays


def test_when_every_device_is_online_a_new_one_is_refused_and_nothing_changes() -> None:
    f = Fixture(max_devices=2)
    f.frame("a", 1)
    f.frame("b", 1)
    with pytest.raises(DeviceTableFull, match=r"gh/c is new and all 2 devices followed are "
                                              r"online \(\[limits\] max_devices = 2\)"):
        f.frame("c", 1)
    assert set(f.tracker.devices) == {"a", "b"} and f.tracker.evicted == 0
    # a device that went offline and came back is online: its old place in line does not count
    f.wait(OFFLINE_S + 1)
    f.frame("a", 2)
    f.frame("b", 2)
    with pytest.raises(DeviceTableFull):
        f.frame("c", 1)
    assert set(f.tracker.devices) == {"a", "b"}


def test_eviction_hands_on_counts_not_handed_yet_and_keeps_the_totals() -> None:
    f = Fixture(max_devices=1)
    f.frame("a", 1)
    f.frame("a", 3)
    assert not f.frame("a", 1)  # a duplicate
    assert f.frame("a", 2)      # fills the gap: out of order
    f.tracker.flush_counts()
    assert not f.frame("a", 3)  # one more duplicate, not handed on yet
    f.wait(OFFLINE_S + 1)
    before = f.tracker.totals()
    f.events.clear()
    f.frame("b", 1)
    assert "a" not in f.tracker.devices
    assert f.events[0] == Counts("gh", "a", 1, 0)  # handed on before a was forgotten
    assert [e for e in f.events if isinstance(e, Counts)] == [Counts("gh", "a", 1, 0)]
    after = f.tracker.totals()
    for key in ("frames", "duplicates", "out_of_order", "restarts", "lost", "gaps"):
        assert after[key] >= before[key], key  # counters never go back
    assert (after["duplicates"], after["out_of_order"], after["evicted"]) == (2, 1, 1)
    assert after["frames"] == before["frames"] + 1


def test_an_evicted_device_back_on_the_same_boot_is_no_restart_and_has_no_false_gap() -> None:
    f = Fixture(max_devices=1)
    for seq in range(1, 6):
        f.frame("a", seq)
    f.wait(OFFLINE_S + 1)
    f.frame("b", 1)                      # a evicted
    f.wait(OFFLINE_S + 1)
    assert f.frame("a", 8)               # b evicted; a goes on from seq 5, where it was
    assert f.tracker.evicted_boots == {"b": (1, 1)}
    dev = f.tracker.devices["a"]
    assert dev.restarts == 0
    assert f.gaps("a") == [(6, 7)]       # sent after the last frame we had seen: a real gap
    assert f.frame("a", 3)               # from before the eviction: accepted, not a duplicate
    assert (dev.out_of_order, dev.duplicates) == (1, 0)
    assert f.tracker.totals()["restarts"] == 0


def test_an_evicted_device_back_with_a_new_boot_is_one_restart() -> None:
    f = Fixture(max_devices=1)
    f.frame("a", 1, boot_id=1)
    f.wait(OFFLINE_S + 1)
    f.frame("b", 1)
    f.wait(OFFLINE_S + 1)
    f.frame("a", 1, boot_id=2)
    assert f.tracker.devices["a"].restarts == 1
    assert f.gaps("a") == []


def test_a_new_device_is_followed_from_seq_1_until_a_remembered_boot_is_dropped() -> None:
    f = Fixture(max_devices=1)
    f.frame("a", 1)
    f.wait(OFFLINE_S + 1)
    f.frame("new-1", 5)                  # never seen, we were listening: 1-4 are a gap
    assert f.gaps("new-1") == [(1, 4)]
    f.wait(OFFLINE_S + 1)
    f.frame("b", 1)                      # new-1 evicted: a's boot is no longer remembered
    assert list(f.tracker.evicted_boots) == ["new-1"]
    f.wait(OFFLINE_S + 1)
    f.frame("a", 50)                     # a may have been here before: followed from 50
    assert f.gaps("a") == [] and f.tracker.devices["a"].restarts == 0
    f.frame("a", 52)
    assert f.gaps("a") == [(51, 51)]     # after its first frame, holes are gaps again


def test_resume_follows_the_devices_seen_last_and_remembers_the_others() -> None:
    f = Fixture(max_devices=2)
    f.tracker.resume([
        ResumeBoot("gh", name, 7, 10, [], last_ns * NS, "offline")
        for name, last_ns in (("old", 1), ("mid", 2), ("new", 3))
    ] + [ResumeBoot("gh", "old", 6, 99, [], 0, "offline")])
    assert set(f.tracker.devices) == {"mid", "new"}
    assert f.tracker.evicted_boots == {"old": (7, 10)}
    f.frame("old", 11, boot_id=7)        # evicts "mid", the resumed device seen longest ago
    assert set(f.tracker.devices) == {"new", "old"}
    assert f.gaps("old") == [] and f.tracker.devices["old"].restarts == 0


def test_a_lower_max_devices_evicts_devices_not_online_at_once() -> None:
    f = Fixture(max_devices=4)
    for name in ("a", "b", "c"):
        f.frame(name, 1)
    f.wait(OFFLINE_S + 1)
    f.frame("d", 1)
    f.tracker.set_max_devices(2)
    assert set(f.tracker.devices) == {"c", "d"}
    assert f.tracker.evicted == 2


def test_presence_went_to_the_sinks_before_a_device_is_evicted() -> None:
    f = Fixture(max_devices=1)
    f.frame("a", 1)
    f.wait(OFFLINE_S + 1)
    f.frame("b", 1)
    states = [(e.device, e.state) for e in f.events if isinstance(e, Presence)]
    assert states == [("a", "online"), ("a", "offline"), ("b", "online")]


def test_presence_lines_are_bounded_and_the_rest_counted(caplog: pytest.LogCaptureFixture) -> None:
    """A fleet coming up at once, or a flood of made-up device ids, must not write a log line
    per device: PRESENCE_LOG_BURST a window, then one line that counts the rest."""
    f = Fixture(max_devices=1000)
    n = PRESENCE_LOG_BURST + 70
    with caplog.at_level("INFO", logger="sensorwire.collector.tracking"):
        for i in range(n):
            f.frame(f"d{i}", 1)
        assert caplog.text.count(" is online ") == PRESENCE_LOG_BURST
        f.wait(OFFLINE_S + 1)  # every device offline: a new window, the online ones counted
        assert "70 more presence changes in 10 s not logged one by one (online 70)" in caplog.text
        assert caplog.text.count(" is offline ") == PRESENCE_LOG_BURST
        f.wait(PRESENCE_LOG_WINDOW_S)
        assert "70 more presence changes in 10 s not logged one by one (offline 70)" in caplog.text
    assert sum(isinstance(e, Presence) for e in f.events) == 2 * n  # every change handed on


def test_a_fleet_asking_for_its_frames_at_once_writes_one_line_and_counts_the_rest(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a proxy restart every device of a fleet has a gap: one repair request each, but
    not one log line each."""
    monkeypatch.setattr(tracking, "_repairs", RateLimited(tracking.log, period_s=10.0))
    f = Fixture(max_devices=1000)
    n = 300
    with caplog.at_level("INFO", logger="sensorwire.collector.tracking"):
        for i in range(n):
            f.frame(f"d{i}", 1)
            f.frame(f"d{i}", 3)
        f.wait(1.0)
        assert len(f.requests) == n  # every device asked
        assert caplog.text.count("asked for 1 missing frames") == 1
        tracking._repairs._last["asked"] -= 10.0  # 10 s later: the next line counts the rest
        f.wait(2.0)
        assert len(f.requests) == 2 * n
    assert f"(attempt 2) (and {n - 1} more like it in the last 10 s)" in caplog.text


def lost(f: Fixture) -> list[tuple[int, int]]:
    return [(e.first, e.last) for e in f.events if isinstance(e, Lost)]


def test_gone_counts_only_the_seqs_still_missing() -> None:
    # the agent answers every collector's requests at once: its "gone" may cover seqs this
    # collector received meanwhile (another collector asked, or they came by another proxy)
    f = Fixture(max_devices=10)
    f.frame("a", 1)
    f.frame("a", 11)  # 2..10 missing
    assert f.frame("a", 4) and f.frame("a", 5)  # out of order
    f.heartbeat("a", 11, unavailable=((1, 10),))
    dev = f.tracker.devices["a"]
    assert lost(f) == [(2, 3), (6, 10)]
    assert dev.lost == 7 == sum(e.count for e in f.events if isinstance(e, Lost))
    assert dev.gaps == 7 and f.gaps("a") == []
    assert not f.frame("a", 4)  # stored already: a duplicate, not a late frame
    assert not f.frame("a", 1)
    f.heartbeat("a", 11, unavailable=((1, 10),))  # the same answer again (through a second proxy)
    assert dev.lost == 7 and len(lost(f)) == 2


def test_gone_is_not_counted_again_for_what_storage_missed_at_start() -> None:
    # storage keeps how many frames were lost, not which: what it misses at start may have been
    # counted lost by the collector before this one; it is asked for again all the same
    f = Fixture(max_devices=10)
    f.tracker.resume([ResumeBoot("gh", "a", 1, 40, [(13, 37)], int(f.now * NS), "online")])
    f.wait(1)
    assert f.requests  # asked for again: the agent may still have them
    assert f.frame("a", 20)  # one of them came after all
    f.frame("a", 45)  # 41..44 missing now, in this collector's time
    f.heartbeat("a", 45, unavailable=((10, 44),))
    dev = f.tracker.devices["a"]
    assert lost(f) == [(41, 44)] and dev.lost == 4
    assert f.gaps("a") == [] and dev.gaps == 24 + 4  # 13..37 but 20 are still gaps
    assert f.frame("a", 30)  # a late one is still taken, as out of order
    assert dev.gaps == 27


def test_the_gaps_of_a_boot_are_kept_in_bounded_memory() -> None:
    # a device skipping every other seq (or a lossy link over months): a range per hole
    f = Fixture(max_devices=10)
    holes = 3 * MAX_GAP_RANGES
    for seq in range(1, 2 * holes + 2, 2):
        f.frame("a", seq)
    f.heartbeat("a", 2 * holes + 1, unavailable=((2, 2 * MAX_GAP_RANGES),))  # some said gone
    dev = f.tracker.devices["a"]
    b = dev.boots[1]
    assert len(b.missing) + len(b.lost) <= MAX_GAP_RANGES
    assert dev.gaps == holes  # every hole still counted
    assert 2 * holes in b.missing  # the newest are still asked for
    assert f.frame("a", 2)  # the oldest are no longer known: a late one is taken, out of order
    assert dev.out_of_order == 1
    f.wait(1)
    assert f.requests


def test_a_repair_request_holds_at_most_max_ranges_per_request_ranges_whatever_the_boots() -> None:
    f = Fixture(max_devices=10)
    for boot in (1, 2, 3):
        for seq in range(1, 2 * MAX_RANGES_PER_REQUEST + 2, 2):
            f.frame("a", seq, boot_id=boot)
    f.wait(1)
    req = RepairRequest.FromString(f.requests[-1][1:])
    assert len(req.ranges) == MAX_RANGES_PER_REQUEST
    assert {r.boot_id for r in req.ranges} == {1}


def presence(f: Fixture) -> list[str]:
    return [e.state for e in f.events if isinstance(e, Presence)]


def test_late_copies_after_a_clean_stop_leave_the_device_stopped() -> None:
    # two proxies: the stopping heartbeat through one, the last frames and a second copy of it
    # through the other, later
    f = Fixture(max_devices=10)
    f.frame("a", 1)
    f.heartbeat("a", 2, stopping=True)
    f.frame("a", 2)
    f.frame("a", 2)
    f.heartbeat("a", 2, stopping=True)
    assert presence(f) == ["online", "stopped"]
    f.frame("a", 1, boot_id=2)  # the agent starts again
    assert presence(f) == ["online", "stopped", "online"]


def test_frames_from_before_a_late_join_are_taken_once() -> None:
    # a collector joins a boot's stream at seq 5; the agent's spool replays 1..4 through two
    # proxies: the first copy of each is taken, the second is a duplicate
    f = Fixture(max_devices=10)
    f.now = f.tracker.started + 1  # within the start-up grace
    f.frame("a", 5)
    assert [f.frame("a", s) for s in (1, 1, 2, 3, 2, 4, 4)] == [
        True, False, True, True, False, True, False]
    dev = f.tracker.devices["a"]
    assert (dev.out_of_order, dev.duplicates, dev.gaps) == (4, 3, 0)
    f.wait(1)
    assert f.requests == []  # never asked for: not ours to miss
