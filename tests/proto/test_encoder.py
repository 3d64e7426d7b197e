"""The hand-written encoders write the same frames protobuf does."""

from __future__ import annotations

import operator
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensorwire.proto import wire
from sensorwire.proto.encoder import DataEncoder, HeartbeatEncoder, SeqSpan
from sensorwire.proto.v1.telemetry_pb2 import Frame

# [a-z][a-z0-9._:-]{0,20} and [A-Za-z%/0-9]{1,6}, drawn without st.from_regex, which filters
# every draw and took most of these tests' time
metric = st.builds(operator.add, st.sampled_from(string.ascii_lowercase),
                   st.text(string.ascii_lowercase + string.digits + "._:-", max_size=20))
unit = st.one_of(st.just(""), st.text(string.ascii_letters + string.digits + "%/", min_size=1, max_size=6))
value = st.floats(allow_nan=False) | st.integers(-2**40, 2**40).map(float)


@settings(max_examples=300, deadline=None)
@given(layout=st.lists(st.tuples(metric, unit), min_size=1, max_size=12, unique_by=lambda t: t[0]),
       data=st.data(), seq=st.integers(1, wire.MAX_SEQ), time_ns=st.integers(-2**63, 2**63 - 1),
       boot_id=st.integers(1, 2**64 - 1), flags=st.integers(0, 2**32 - 1))
def test_decodes_to_the_frame_protobuf_would_build(layout: list[tuple[str, str]], data: st.DataObject,
                                                  seq: int, time_ns: int, boot_id: int, flags: int) -> None:
    values = data.draw(st.lists(value, min_size=len(layout), max_size=len(layout)))
    topic = wire.data_topic("gh", "pi-07", "env")
    enc = DataEncoder(topic, "gh", "pi-07", boot_id, "env", layout)
    msg = enc.encode(seq, time_ns, values, flags)
    ref = Frame(site="gh", device_id="pi-07", boot_id=boot_id, seq=seq, time_unix_nano=time_ns,
                sensor="env", flags=flags)
    for (m, u), v in zip(layout, values, strict=True):
        ref.samples.add(metric=m, value=v, unit=u)
    assert msg.startswith(topic + wire.DELIM)
    got = Frame.FromString(msg[len(topic) + 1:])
    assert got == ref
    if time_ns and all(v != 0.0 for v in values):  # protobuf leaves out zeros; we write them
        assert msg == topic + wire.DELIM + ref.SerializeToString()
    assert wire.Decoder().decode(msg) == ref


def test_the_agent_s_publisher_uses_it_and_notices_a_new_layout() -> None:
    from sensorwire.agent.config import PublishConfig
    from sensorwire.agent.publisher import Publisher

    p = Publisher("gh", "pi-07", PublishConfig(connect=["tcp://127.0.0.1:1"]))
    _, a = p.build_data("env", [("t", 21.5, "C"), ("h", 40.0, "%")], 10)
    _, b = p.build_data("env", [("t", 22.5, "C"), ("h", 41.0, "%")], 20)
    _, c = p.build_data("env", [("t", 23.5, "K"), ("p", 1.0, "")], 30)
    frames = [Frame.FromString(m[m.index(0) + 1:]) for m in (a, b, c)]
    assert [f.seq for f in frames] == [1, 2, 3]
    assert [(s.metric, s.value, s.unit) for s in frames[1].samples] == [("t", 22.5, "C"), ("h", 41.0, "%")]
    assert [(s.metric, s.value, s.unit) for s in frames[2].samples] == [("t", 23.5, "K"), ("p", 1.0, "")]


def test_seq_and_flags_decode_across_every_varint_length() -> None:
    enc = DataEncoder(wire.data_topic("gh", "pi-07", "env"), "gh", "pi-07", 7, "env", [("t", "C")])
    edges = [n for k in range(1, 10) for n in (2 ** (7 * k) - 1, 2 ** (7 * k))] + [0, 1, 2**63 - 1]
    for n in edges:
        msg = enc.encode(max(n, 1), 5, [1.0], n % 2**32)
        f = Frame.FromString(msg[msg.index(0) + 1:])
        assert (f.seq, f.flags) == (max(n, 1), n % 2**32)
        assert msg.endswith(Frame(flags=n % 2**32).SerializeToString())


# -- heartbeats -------------------------------------------------------------------
u64 = st.integers(0, 2**64 - 1)
double = st.floats()  # NaN, infinities and -0.0 included
text = st.text(max_size=30)  # unicode and "" included; no surrogates: protobuf rejects them too
span = st.tuples(u64, u64, u64)


def _reference_heartbeat(site: str, device_id: str, boot_id: int, time_ns: int, version: str,
                         uptime_s: float, interval_s: float, last_seq: int, stopping: bool,
                         counters: list[tuple[str, int]], clock_synced: bool,
                         unavailable: list[tuple[int, int, int]]) -> Frame:
    f = Frame(site=site, device_id=device_id, boot_id=boot_id, time_unix_nano=time_ns)
    hb = f.heartbeat
    hb.SetInParent()
    hb.agent_version = version
    hb.uptime_s = uptime_s
    hb.interval_s = interval_s
    hb.last_seq = last_seq
    hb.stopping = stopping
    for k, v in counters:
        hb.counters[k] = v
    hb.clock_synced = clock_synced
    for b, first, last in unavailable:
        hb.unavailable.add(boot_id=b, first=first, last=last)
    return f


def _same(a: Frame, b: Frame) -> bool:
    """Equal, NaN included (a NaN field makes == false on both sides)."""
    return bool(a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True))


@settings(max_examples=400, deadline=None)
@given(site=text, device_id=text, boot_id=u64, time_ns=st.integers(-2**63, 2**63 - 1), version=text,
       uptime_s=double, interval_s=double, last_seq=u64, stopping=st.booleans(),
       counters=st.lists(st.tuples(text, u64), max_size=40), clock_synced=st.booleans(),
       unavailable=st.lists(span, max_size=20))
def test_a_heartbeat_is_the_frame_protobuf_would_build(
        site: str, device_id: str, boot_id: int, time_ns: int, version: str, uptime_s: float,
        interval_s: float, last_seq: int, stopping: bool, counters: list[tuple[str, int]],
        clock_synced: bool, unavailable: list[tuple[int, int, int]]) -> None:
    topic = b"gh/pi-07/$hb"
    enc = HeartbeatEncoder(topic, site, device_id, boot_id, version)
    msg = enc.encode(time_ns, uptime_s, interval_s, last_seq, stopping, counters, clock_synced,
                     unavailable)
    ref = _reference_heartbeat(site, device_id, boot_id, time_ns, version, uptime_s, interval_s,
                               last_seq, stopping, counters, clock_synced, unavailable)
    assert msg.startswith(topic + wire.DELIM)
    got = Frame.FromString(msg[len(topic) + 1:])
    assert got.HasField("heartbeat")
    assert _same(got, ref)
    if len(counters) <= 1:  # protobuf keeps a map in no order, each name once: bytes only then
        assert msg == topic + wire.DELIM + ref.SerializeToString()


def test_a_heartbeat_of_defaults_still_has_its_heartbeat_field() -> None:
    msg = HeartbeatEncoder(b"t", "", "", 0, "").encode(0, 0.0, 0.0, 0, False, (), False)
    assert msg == b"t" + wire.DELIM + b"\x42\x00"
    assert Frame.FromString(msg[2:]).HasField("heartbeat")


def test_the_agent_s_heartbeats_decode_and_pass_the_collector_s_checks() -> None:
    from sensorwire.agent.config import PublishConfig
    from sensorwire.agent.publisher import Publisher

    p = Publisher("gh", "pi-07", PublishConfig(connect=["tcp://127.0.0.1:1"]))
    p.build_data("env", [("t", 21.5, "C")], 10)
    msg = p.build_heartbeat(5.0, stopping=True, extra=[("sensor_errors", 3), ("frames_sent", 7)],
                            unavailable=[SeqSpan(p.boot_id, 4, 9)])
    f = wire.Decoder().decode(msg)
    hb = f.heartbeat
    assert (f.seq, f.site, f.device_id, f.boot_id) == (0, "gh", "pi-07", p.boot_id)
    assert (hb.interval_s, hb.last_seq, hb.stopping, hb.clock_synced) == (5.0, 1, True, True)
    assert hb.counters["sensor_errors"] == 3
    assert hb.counters["frames_sent"] == 7  # the last value given for a name wins, as in a map
    assert hb.counters["ring_frames"] == 0
    assert [(r.boot_id, r.first, r.last) for r in hb.unavailable] == [(p.boot_id, 4, 9)]


@pytest.mark.parametrize("bad", [dict(last_seq=-1), dict(last_seq=2**64),
                                 dict(counters=[("x", -1)]), dict(unavailable=[(2**64, 1, 1)]),
                                 dict(time_ns=2**63)])
def test_a_heartbeat_field_out_of_range_is_a_value_error(bad: dict[str, Any]) -> None:
    args: dict[str, Any] = dict(time_ns=1, uptime_s=1.0, interval_s=5.0, last_seq=1, stopping=False,
                                counters=[], clock_synced=True, unavailable=[])
    args.update(bad)
    with pytest.raises(ValueError):
        HeartbeatEncoder(b"t", "gh", "pi-07", 1, "1.0").encode(**args)
