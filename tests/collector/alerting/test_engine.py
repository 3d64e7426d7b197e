"""The alert state machines, driven with explicit times: no clocks, no sleeps."""

from __future__ import annotations

import random

import pytest
from alerting_support import NS, T0, at, brief, checked, feed, frame, rule

from sensorwire.collector.alerting.engine import ActiveAlert, Engine
from sensorwire.collector.events import Presence
from sensorwire.collector.frames import CheckedFrame


def step(segments: list[tuple[float, float, float]]) -> list[tuple[float, float]]:
    """A step signal sampled every second: ``(from_s, to_s, value)`` segments."""
    return [(float(t), v) for a, b, v in segments for t in range(int(a), int(b))]


HOT = dict(match="greenhouse/*/env", metric="temperature", above=35.0, clear=33.0, for_s=30.0,
           severity="critical")


def test_a_step_crossing_and_recrossing_gives_exactly_the_expected_notifications() -> None:
    e = Engine([rule(name="greenhouse-hot", **HOT)])
    signal = step([
        (0, 10, 30.0),     # ok
        (10, 60, 36.0),    # above from 10 s: pending, fires at 40 s (for_s = 30)
        (60, 80, 34.0),    # inside the band (33, 35]: still firing, nothing sent
        (80, 100, 32.0),   # past clear: resolved at 80 s
        (100, 120, 36.0),  # above for 20 s only ...
        (120, 130, 30.0),  # ... so it never fires
        (130, 200, 36.0),  # above from 130 s: fires at 160 s
    ])
    notes = feed(e, signal)
    assert brief(notes) == [("firing", 40.0), ("resolved", 80.0), ("firing", 160.0)]
    fired, resolved = notes[0], notes[1]
    assert fired.to_dict() == {
        "rule": "greenhouse-hot", "severity": "critical", "state": "firing", "site": "greenhouse",
        "device": "pi-07", "sensor": "env", "metric": "temperature", "value": 36.0,
        "threshold": 35.0, "started": "2027-01-15T08:00:40.000000Z", "resolved": None,
        "summary": "greenhouse/pi-07/env temperature is 36, above 35 (greenhouse-hot, critical)",
    }
    assert resolved.started_ns == fired.started_ns and resolved.value == 32.0
    assert resolved.to_dict()["resolved"] == "2027-01-15T08:01:20.000000Z"


def test_flapping_inside_the_hysteresis_band_sends_nothing_more() -> None:
    e = Engine([rule(**HOT | {"for_s": 0.0})])
    notes = feed(e, [(0, 36.0)])
    assert brief(notes) == [("firing", 0.0)]
    flapping = [(float(t), [34.9, 33.1, 35.0, 33.5][t % 4]) for t in range(1, 500)]
    assert feed(e, flapping) == []
    assert brief(feed(e, [(500, 33.0)])) == [("resolved", 500.0)]


def test_flapping_across_the_threshold_and_clear_never_outlasts_for_s() -> None:
    e = Engine([rule(**HOT)])  # each 10 s past 35, then 10 s past clear (33)
    flapping = [(float(t), 36.0 if (t // 10) % 2 == 0 else 32.0) for t in range(1000)]
    assert feed(e, flapping) == []


def test_readings_in_the_band_keep_a_pending_alert_pending() -> None:
    e = Engine([rule(name="hot", metric="temperature", above=35.0, clear=33.0, for_s=3.0)])
    # alternating over and just under the threshold: never back past clear
    notes = feed(e, [(float(t), 36.0 if t % 2 == 0 else 34.9) for t in range(6)])
    assert brief(notes) == [("firing", 3.0)]  # for_s counted from the first 36.0, at 0 s
    # without a band (clear = the threshold), a reading under it still ends pending
    no_band = Engine([rule(name="hot", metric="temperature", above=35.0, for_s=3.0)])
    assert feed(no_band, [(float(t), 36.0 if t % 2 == 0 else 34.9) for t in range(6)]) == []
    # past clear, pending ends and starts again later
    back = Engine([rule(name="hot", metric="temperature", above=35.0, clear=33.0, for_s=3.0)])
    notes = feed(back, [(0.0, 36.0), (2.0, 32.0), (3.0, 36.0), (5.0, 36.0), (6.0, 36.0)])
    assert brief(notes) == [("firing", 6.0)]


def test_below_and_outside_with_their_own_bands() -> None:
    e = Engine([rule(name="cold", metric="temperature", below=2.0, clear=4.0),
                rule(name="band", metric="temperature", outside=[0.0, 10.0], clear=[1.0, 9.0])])
    notes = feed(e, [(0, 5.0), (1, 1.0), (2, 3.0), (3, -1.0), (4, 0.5), (5, 4.5), (6, 12.0), (7, 9.5),
                     (8, 8.0)])
    got = [(n.rule, n.state, (n.time_ns - T0) / NS, n.threshold) for n in notes]
    assert got == [
        ("cold", "firing", 1.0, 2.0),
        ("band", "firing", 3.0, 0.0),
        ("cold", "resolved", 5.0, 2.0),
        ("band", "resolved", 5.0, 0.0),  # 4.5 is inside [1, 9]
        ("band", "firing", 6.0, 10.0),
        ("band", "resolved", 8.0, 10.0),  # 9.5 was still outside the clear band
    ]


def test_only_matching_topics_and_metrics_count() -> None:
    e = Engine([rule(**HOT | {"for_s": 0.0})])
    out = e.observe(checked({"temperature": 40.0}, 0, site="cold-store"), at(0))
    out += e.observe(checked({"temperature": 40.0}, 0, sensor="env2"), at(0))
    out += e.observe(checked({"humidity": 40.0}, 0), at(0))
    assert out == []
    assert brief(e.observe(checked({"temperature": 40.0}, 1, device="pi-08"), at(1))) == [("firing", 1.0)]


def test_stale_fires_at_the_exact_deadline_and_resolves_when_data_returns() -> None:
    e = Engine([rule(name="sensor-stale", match="**", stale_s=10.0)])
    assert feed(e, [(float(t), 20.0) for t in range(6)]) == []
    assert e.tick(at(14.9)) == []
    notes = e.tick(at(60))  # however late the tick, the alert started at 5 + 10 s
    assert brief(notes) == [("firing", 15.0)]
    n = notes[0]
    assert (n.metric, n.sensor, n.threshold, n.value) == (None, "env", 10.0, 10.0)
    assert e.tick(at(100)) == []
    back = feed(e, [(120, 20.0)])
    assert brief(back) == [("resolved", 120.0)]
    assert back[0].started_ns == at(15)


def test_stale_with_a_metric_ignores_other_metrics_of_the_sensor() -> None:
    e = Engine([rule(name="s", metric="temperature", stale_s=10.0)])
    feed(e, [(0, 20.0)])
    out = feed(e, [(float(t), 1.0) for t in range(1, 30)], metric="humidity")
    assert brief(out) == [("firing", 10.0)]


def test_seeded_series_go_stale_without_a_first_sample() -> None:
    e = Engine([rule(name="s", stale_s=10.0)])
    e.seed("greenhouse", "pi-07", "env", ["temperature"], at(0))
    assert brief(e.tick(at(11))) == [("firing", 10.0)]


def test_device_offline_fires_and_resolves_on_presence() -> None:
    e = Engine([rule(name="pi-offline", match="greenhouse/**", device_offline=True, for_s=5.0)])
    def ev(state: str, t: float, prev: str | None, seen: float) -> Presence:
        return Presence("greenhouse", "pi-07", state, prev, at(t), at(seen))  # type: ignore[arg-type]
    assert e.presence(ev("online", 0, None, 0)) == []
    assert e.presence(ev("offline", 30, "online", 15)) == []
    notes = e.tick(at(40))
    assert brief(notes) == [("firing", 35.0)]
    n = notes[0]
    assert (n.sensor, n.metric, n.threshold, n.value) == (None, None, None, 20.0)
    assert n.summary.startswith("greenhouse/pi-07 is offline (silent for 20 s)")
    back = e.presence(ev("online", 90, "offline", 15))
    assert brief(back) == [("resolved", 90.0)]
    # other sites do not match; a short outage (shorter than for_s) sends nothing
    other = Presence("cold-store", "pi-01", "offline", "online", at(100), at(90))
    assert e.presence(other) == [] and e.tick(at(200)) == []
    assert e.presence(ev("offline", 300, "online", 290)) == []
    assert e.presence(ev("online", 302, "offline", 290)) == [] and e.tick(at(400)) == []


def test_a_clean_stop_is_not_an_outage() -> None:
    e = Engine([rule(name="off", device_offline=True)])
    assert e.presence(Presence("gh", "pi-1", "stopped", "online", at(10), at(9))) == []
    fired = e.presence(Presence("gh", "pi-1", "offline", "online", at(20), at(10)))
    assert brief(fired) == [("firing", 20.0)]
    assert brief(e.presence(Presence("gh", "pi-1", "stopped", "offline", at(30), at(10)))) == \
        [("resolved", 30.0)]


def test_rate_of_change_fires_on_a_fast_rise_not_a_slow_one() -> None:
    fast_rise = rule(name="fast-rise", metric="temperature", rate_above=0.5, window_s=60.0)
    slow = feed(Engine([fast_rise]), [(float(t), -20.0 + 0.1 * t) for t in range(0, 600, 2)])
    assert slow == []
    e = Engine([fast_rise])
    flat = [(float(t), -20.0) for t in range(0, 120, 2)]
    rise = [(float(t), -20.0 + 1.0 * (t - 120)) for t in range(120, 200, 2)]
    notes = feed(e, flat + rise)
    assert [n.state for n in notes] == ["firing"]
    assert 120 < (notes[0].time_ns - T0) / NS <= 180
    assert notes[0].value is not None and notes[0].value > 0.5
    after = feed(e, [(float(t), 60.0) for t in range(200, 400, 2)])
    assert [n.state for n in after] == ["resolved"]


def test_rate_memory_is_bounded() -> None:
    e = Engine([rule(name="r", metric="temperature", rate_below=-1.0, window_s=3600.0)])
    feed(e, [(t / 10, 0.0) for t in range(20_000)])
    [inst] = e._instances.values()
    assert inst.window is not None and len(inst.window) <= 256


def test_repeat_s_renotifies_while_firing() -> None:
    e = Engine([rule(**HOT | {"for_s": 0.0, "repeat_s": 60.0})])
    notes = feed(e, [(0, 36.0)]) + e.tick(at(185))
    assert brief(notes) == [("firing", 0.0), ("firing", 60.0), ("firing", 120.0), ("firing", 180.0)]
    assert {n.started_ns for n in notes} == {at(0)}


def test_a_restored_firing_alert_is_not_fired_again() -> None:
    e = Engine([rule(name="greenhouse-hot", **HOT)])
    gone = e.restore([ActiveAlert("greenhouse-hot", "greenhouse", "pi-07", "env", "temperature",
                                  at(0), at(0), 36.0),
                      ActiveAlert("removed-rule", "greenhouse", "pi-07", "env", "x", at(0), at(0), 1.0)])
    assert [a.rule for a in gone] == ["removed-rule"]
    assert feed(e, [(float(t), 36.0) for t in range(100, 200)]) == []
    notes = feed(e, [(200, 30.0)])
    assert brief(notes) == [("resolved", 200.0)] and notes[0].started_ns == at(0)


def test_transitions_do_not_depend_on_when_ticks_happen() -> None:
    rules = [rule(name="hot", **{k: v for k, v in HOT.items() if k != "severity"}),
             rule(name="stale", stale_s=7.0, for_s=3.0)]
    rng = random.Random(5)
    readings = []
    t = 0.0
    for _ in range(400):
        t += rng.choice([0.5, 1.0, 1.0, 2.0, 15.0])
        readings.append((t, rng.choice([30.0, 34.0, 36.0, 36.0, 36.0])))
    quiet = Engine(rules)
    expected = feed(quiet, readings) + quiet.tick(at(t + 100))
    busy = Engine(rules)
    got = []
    for i, (rt, v) in enumerate(readings):
        got += busy.tick(at(rt - rng.random()))
        got += busy.observe(checked({"temperature": v}, rt, seq=i + 1), at(rt))
    got += busy.tick(at(t + 100))
    assert [n.to_dict() for n in got] == [n.to_dict() for n in expected]
    assert len(expected) > 4


def test_the_worked_example_of_docs_alerting_md() -> None:
    e = Engine([rule(name="greenhouse-hot", **HOT)])
    values = [34.0, 35.5, 32.8, 36.0, 36.4, 36.9, 34.2, 35.8, 33.6, 32.9]
    notes = feed(e, [(i * 20.0, v) for i, v in enumerate(values)])
    assert brief(notes) == [("firing", 90.0), ("resolved", 180.0)]
    assert [n.value for n in notes] == [36.4, 32.9]
    assert notes[1].summary == ("greenhouse/pi-07/env temperature is 32.9, back past clear 33 "
                                "after 1m30s (greenhouse-hot, critical)")


# -- max_instances: memory is bounded whatever is sent --------------------------------


def test_made_up_devices_cannot_grow_a_stale_rule_past_max_instances() -> None:
    e = Engine([rule(name="stale", match="**", stale_s=10.0, max_instances=100)])
    for i in range(5000):  # a flood of made-up device ids, one frame each
        e.observe(checked({"v": 1.0}, 0, device=f"fake-{i}"), at(i * 0.001))
    assert e.instances() == 100
    assert (e.evicted["stale"], e.refused["stale"]) == (4900, 0)
    # the 100 kept (the newest) go stale and fire: at most max_instances alerts
    fired = e.tick(at(100))
    assert len(fired) == 100 and {n.device for n in fired} == {f"fake-{i}" for i in range(4900, 5000)}
    # now every instance fires: none may go, so a new series is not watched, and counted
    assert e.observe(checked({"v": 1.0}, 0, device="late"), at(101)) == []
    assert (e.instances(), e.refused["stale"], e.refused_total) == (100, 1, 1)
    assert e.last_limited["stale"] == ("refused", ("stale", "greenhouse", "late", "env", ""))
    # a firing alert was kept, so it still resolves when its device sends again
    back = e.observe(checked({"v": 1.0}, 0, device="fake-4999"), at(102))
    assert brief(back) == [("resolved", 102.0)]


def test_the_ok_instance_idle_longest_is_forgotten_first() -> None:
    e = Engine([rule(name="rise", metric="v", rate_above=1.0, window_s=10.0, max_instances=3)])
    for t, device in enumerate(("a", "b", "c", "a")):  # b is now the one idle longest
        e.observe(checked({"v": 1.0}, t, device=device), at(t))
    e.observe(checked({"v": 1.0}, 4, device="d"), at(4))
    assert e.last_limited["rise"] == ("evicted", ("rise", "greenhouse", "b", "env", "v"))
    e.observe(checked({"v": 1.0}, 5, device="e"), at(5))  # then c
    assert e.last_limited["rise"] == ("evicted", ("rise", "greenhouse", "c", "env", "v"))
    assert (e.instances(), e.evicted["rise"], e.refused["rise"]) == (3, 2, 0)


def test_pending_and_firing_instances_are_never_forgotten() -> None:
    e = Engine([rule(name="hot", metric="temperature", above=35.0, for_s=60.0, max_instances=2)])
    feed(e, [(0, 40.0)], device="pending")             # pending until 60 s
    e.restore([ActiveAlert("hot", "greenhouse", "firing", "env", "temperature", at(0), at(0), 40.0)])
    assert feed(e, [(1, 40.0)], device="third") == []  # no room: not watched
    assert (e.instances(), e.refused["hot"], e.evicted["hot"]) == (2, 1, 0)
    assert brief(e.tick(at(60))) == [("firing", 60.0)]  # the pending one still fires ...
    assert brief(feed(e, [(61, 30.0)], device="firing")) == [("resolved", 61.0)]  # ... and resolves
    # an ok threshold instance is not kept at all: the room is there for the next series
    assert brief(feed(e, [(62, 40.0)], device="third")) == []
    assert e.instances() == 2 and e.refused["hot"] == 1


def test_offline_alerts_of_devices_never_seen_again_are_bounded() -> None:
    e = Engine([rule(name="offline", device_offline=True, max_instances=10)])
    fired = 0
    for i in range(50):
        fired += len(e.presence(Presence("gh", f"fake-{i}", "offline", "online", at(i), at(0))))
    assert (fired, e.instances(), e.refused["offline"]) == (10, 10, 40)


def test_the_heap_of_deadlines_stays_bounded_while_instances_are_forgotten() -> None:
    e = Engine([rule(name="stale", match="**", stale_s=3600.0, max_instances=10)])
    for i in range(20_000):
        e.observe(checked({"v": 1.0}, 0, device=f"fake-{i}"), at(i * 0.001))
    assert e.instances() == 10 and e.evicted["stale"] == 19_990
    assert len(e._heap) <= 2 * e.instances() + 1025  # not one entry per series ever seen
    assert len(e.tick(at(3700))) == 10


def test_more_topics_than_the_rule_cache_holds_still_hit_it_often(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A fleet with more topics than the cache of matching rules, coming round in a fixed
    order, keeps many of its hits (a cache emptied when full would miss on every frame)."""
    from sensorwire.collector.alerting import engine as engine_mod

    monkeypatch.setattr(engine_mod, "_CACHE_MAX", 64)
    monkeypatch.setattr(engine_mod, "_CACHE_EVICT", 8)
    made = 0

    class Counted(engine_mod._TopicRules):
        def __init__(self) -> None:
            nonlocal made
            made += 1
            super().__init__()

    monkeypatch.setattr(engine_mod, "_TopicRules", Counted)
    e = Engine([rule(name="hot", match="greenhouse/*/env", metric="temperature", above=35.0)])
    devices = [f"pi-{i}" for i in range(80)]
    for t in range(20):
        for d in devices:
            e.observe(checked({"temperature": 20.0}, float(t), device=d, seq=t + 1), at(t))
    assert len(e._topics) <= 64
    looked_up = 20 * len(devices)
    # about half hit here (the choice of what to forget is seeded: the same every run);
    # emptying the cache when full missed all 1,600
    assert made <= looked_up * 0.6, f"{made} misses in {looked_up} look-ups"


def test_one_frame_from_the_future_does_not_stop_a_rate_rule() -> None:
    e = Engine([rule(name="rise", metric="v", rate_above=1.0, window_s=60.0)])
    feed(e, [(0.0, 0.0), (10.0, 0.0)], metric="v")
    # a device clock a day ahead for one frame (received at 12 s, stamped a day later)
    assert e.observe(checked({"v": 0.0}, 86_400.0, seq=3), at(12)) == []
    rise = feed(e, [(float(t), 2.0 * (t - 20)) for t in range(20, 80, 2)], metric="v")
    assert [n.state for n in rise] == ["firing"]
    assert e.window_resets == 1 and e.last_window_reset is not None
    assert e.last_window_reset[1] == 86_400 - 20


def test_a_metric_named_twice_in_a_frame_counts_with_its_first_value_as_stored() -> None:
    e = Engine([rule(name="hot", metric="temperature", above=35.0)])
    f = frame({}, 0)
    f.samples.add(metric="temperature", value=20.0)
    f.samples.add(metric="temperature", value=40.0)  # storage keeps 20.0 (layout.unique)
    twice = CheckedFrame.from_pb(f)
    assert twice.layout.unique == (0,)
    assert e.observe(twice, at(0)) == []
    f.samples[0].value = 40.0
    f.samples[1].value = 20.0
    assert [n.value for n in e.observe(CheckedFrame.from_pb(f), at(1))] == [40.0]
