"""The per-device frame budget: bursts up to its depth pass, a sustained flood is held to it."""

from __future__ import annotations

from sensorwire.collector.ratelimit import DeviceRateLimit


def msg(device: str, site: str = "gh") -> bytes:
    return f"{site}/{device}/env".encode() + b"\x00payload"


def test_a_burst_up_to_the_depth_passes_then_the_rest_is_dropped_and_counted() -> None:
    r = DeviceRateLimit(per_s=10, burst_s=2.0)  # 20 frames deep
    r.roll(100.0)
    admitted = sum(r.admit(msg("pi-1")) for _ in range(50))
    assert admitted == 20
    assert r.total == 30 and r.dropped[b"gh/pi-1"] == 30


def test_devices_have_budgets_of_their_own() -> None:
    r = DeviceRateLimit(per_s=10, burst_s=1.0)
    r.roll(0.0)
    for _ in range(100):
        r.admit(msg("flood"))
    assert all(r.admit(msg("calm")) for _ in range(10))
    assert all(r.admit(msg("pi-1", site="other")) for _ in range(10))  # site/device is the key


def test_the_budget_refills_with_time() -> None:
    r = DeviceRateLimit(per_s=10, burst_s=1.0)
    r.roll(0.0)
    assert sum(r.admit(msg("pi-1")) for _ in range(30)) == 10
    r.roll(0.5)  # half a second: 5 more
    assert sum(r.admit(msg("pi-1")) for _ in range(30)) == 5
    r.roll(60.0)  # never more than the depth
    assert sum(r.admit(msg("pi-1")) for _ in range(30)) == 10


def test_idle_devices_and_made_up_names_are_forgotten() -> None:
    r = DeviceRateLimit(per_s=10, burst_s=1.0)
    r.roll(0.0)
    for i in range(1000):
        r.admit(msg(f"made-up-{i}"))
    r.roll(5.0)  # their buckets are full again: nothing to remember
    assert r._buckets == {}


def test_garbage_without_a_topic_shares_one_budget() -> None:
    r = DeviceRateLimit(per_s=5, burst_s=1.0)
    r.roll(0.0)
    assert sum(r.admit(b"no topic at all %d" % i) for i in range(20)) == 5
    assert r.admit(msg("pi-1"))
