"""Framing, topics and the checks every received message goes through."""

from __future__ import annotations

from typing import Any

import pytest

from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import Frame


def data_frame(site: str = "gh", device: str = "pi-07", sensor: str = "env", seq: int = 1,
               n: int = 2) -> Frame:
    f = Frame(site=site, device_id=device, boot_id=2**64 - 5, seq=seq, time_unix_nano=1, sensor=sensor)
    for i in range(n):
        f.samples.add(metric=f"m{i}", value=float(i), unit="C")
    return f


def msg(frame: Frame, topic: bytes | None = None) -> bytes:
    if topic is None:
        topic = wire.data_topic(frame.site, frame.device_id, frame.sensor)
    return wire.encode(topic, frame)


def heartbeat(site: str = "gh", device: str = "pi-07") -> Frame:
    f = Frame(site=site, device_id=device, boot_id=9, seq=0, time_unix_nano=1)
    f.heartbeat.interval_s = 5.0
    return f


def test_a_good_frame_round_trips() -> None:
    f = data_frame()
    got = wire.Decoder().decode(msg(f))
    assert got == f


def test_a_heartbeat_round_trips_on_its_reserved_topic() -> None:
    hb = heartbeat()
    got = wire.Decoder().decode(wire.encode(wire.heartbeat_topic("gh", "pi-07"), hb))
    assert got.HasField("heartbeat") and got.seq == 0


@pytest.mark.parametrize(
    "message, reason",
    [
        (b"\xff\xfe garbage without a delimiter", "no_delimiter"),
        (b"gh/pi-07/env\x00\xff\xff\xff\xff", "decode"),
        (msg(data_frame())[:-3], "decode"),  # truncated protobuf
        (msg(data_frame(device="pi-08"), b"gh/pi-07/env"), "topic_mismatch"),
        (msg(data_frame(sensor="env2"), b"gh/pi-07/env"), "topic_mismatch"),
        (msg(data_frame(sensor="bad name")), "bad_name"),
        (wire.encode(b"gh/pi-07/env", heartbeat()), "topic_mismatch"),
        (msg(data_frame(n=3000)), "too_many_samples"),
        (b"gh/\xe9/env\x00" + data_frame().SerializeToString(), "bad_topic"),
        (msg(data_frame(seq=2**63)), "bad_seq"),  # no database stores it (it cost a whole batch)
        (msg(data_frame(seq=2**64 - 1)), "bad_seq"),
    ],
)
def test_bad_messages_are_rejected_with_a_reason(message: bytes, reason: str) -> None:
    with pytest.raises(wire.WireError) as err:
        wire.Decoder(max_samples=1024).decode(message)
    assert err.value.reason == reason


def test_a_data_frame_cannot_pose_as_a_heartbeat_after_the_topic_is_cached() -> None:
    d = wire.Decoder()
    d.decode(wire.encode(wire.heartbeat_topic("gh", "pi-07"), heartbeat()))
    fake = data_frame(sensor="$hb")
    with pytest.raises(wire.WireError):
        d.decode(wire.encode(b"gh/pi-07/$hb", fake))


def test_a_bad_metric_name_is_rejected() -> None:
    f = data_frame()
    f.samples.add(metric="bad metric", value=1.0)
    with pytest.raises(wire.WireError) as err:
        wire.Decoder().decode(msg(f))
    assert err.value.reason == "bad_name"


@pytest.mark.parametrize(
    "prefix, expected",
    [
        ("", [b""]),
        ("greenhouse", [b"greenhouse/"]),
        ("greenhouse/", [b"greenhouse/"]),
        ("greenhouse/pi-07", [b"greenhouse/pi-07/"]),
        ("greenhouse/pi-07/bme280", [b"greenhouse/pi-07/bme280\x00", b"greenhouse/pi-07/$hb\x00"]),
    ],
)
def test_subscriptions_are_segment_safe(prefix: str, expected: list[bytes]) -> None:
    assert wire.subscriptions(prefix) == expected


def test_a_sensor_filter_does_not_deliver_a_longer_sensor_name() -> None:
    [f, _] = wire.subscriptions("greenhouse/pi-07/bme280")
    assert msg(data_frame("greenhouse", "pi-07", "bme280")).startswith(f)
    assert not msg(data_frame("greenhouse", "pi-07", "bme2801")).startswith(f)


def test_site_and_device_filters_also_deliver_heartbeats() -> None:
    hb = wire.encode(wire.heartbeat_topic("greenhouse", "pi-07"), heartbeat("greenhouse"))
    for prefix in ("greenhouse/", "greenhouse/pi-07", "greenhouse/pi-07/bme280"):
        assert any(hb.startswith(f) for f in wire.subscriptions(prefix)), prefix
    assert not any(hb.startswith(f) for f in wire.subscriptions("greenhouse2"))


@pytest.mark.parametrize("prefix", ["a/b/c/d", "gh/bad name", "gh/$hb/x", "/x"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError):
        wire.subscriptions(prefix)


@pytest.mark.parametrize("spoil, detail", [
    (lambda hb: setattr(hb, "agent_version", "x" * 100), "agent_version is 100 characters"),
    (lambda hb: setattr(hb, "agent_version", "1.0\x1b[2J"), "agent_version must not hold control"),
    (lambda hb: [hb.counters.__setitem__(f"c{i}", i) for i in range(1025)], "1025 counters"),
    (lambda hb: hb.counters.__setitem__("bad name", 1), "counter 'bad name' may hold only"),
    (lambda hb: [hb.unavailable.add(boot_id=1, first=i, last=i) for i in range(1025)],
     "1025 unavailable ranges"),
    (lambda hb: setattr(hb, "last_seq", 2**64 - 1), "a seq above"),
    (lambda hb: hb.unavailable.add(boot_id=1, first=1, last=2**63), "a seq above"),
    (lambda hb: setattr(hb, "interval_s", float("inf")), "interval_s inf is not between"),
    (lambda hb: setattr(hb, "interval_s", float("nan")), "interval_s nan is not between"),
    (lambda hb: setattr(hb, "interval_s", -1.0), "interval_s -1.0 is not between"),
])
def test_a_heartbeat_with_hostile_strings_or_lists_is_rejected(spoil: Any, detail: str) -> None:
    hb = heartbeat()
    spoil(hb.heartbeat)
    with pytest.raises(wire.WireError) as err:
        wire.Decoder().decode(wire.encode(wire.heartbeat_topic("gh", "pi-07"), hb))
    assert err.value.reason == "bad_heartbeat" and detail in err.value.detail
