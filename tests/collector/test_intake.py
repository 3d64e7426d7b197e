"""The collector's intake: the template path gives exactly what the full checks give.

For any message, :class:`Intake` must return the same frame as
``wire.Decoder`` followed by ``CheckedFrame.from_pb``, or raise the same kind
of ``WireError``; the template path may only make it cheaper.
"""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensorwire.collector import intake as intake_module
from sensorwire.collector.frames import CheckedFrame
from sensorwire.collector.intake import LEARN_ATTEMPTS, Intake
from sensorwire.proto import wire
from sensorwire.proto.encoder import DataEncoder
from sensorwire.proto.v1.telemetry_pb2 import Frame

LAYOUT = [("temperature", "C"), ("humidity", "%"), ("pressure", ""), ("co2", "ppm")]
TOPIC = wire.data_topic("gh", "pi-07", "env")


def encoder(layout: list[tuple[str, str]] = LAYOUT, boot_id: int = 2**64 - 3) -> DataEncoder:
    return DataEncoder(TOPIC, "gh", "pi-07", boot_id, "env", layout)


def full(msg: bytes) -> CheckedFrame:
    """What the full path makes of ``msg``."""
    return CheckedFrame.from_pb(wire.Decoder().decode(msg))


def outcome(decode: object, msg: bytes) -> object:
    try:
        return decode(msg)  # type: ignore[operator]
    except wire.WireError as exc:
        return ("WireError", exc.reason)


def same(a: object, b: object) -> bool:
    """Equal, counting NaN values as equal to NaN."""
    if isinstance(a, CheckedFrame) and isinstance(b, CheckedFrame):
        va, vb = list(a.values), list(b.values)
        a_nan = [isinstance(x, float) and math.isnan(x) for x in va]
        if a_nan != [isinstance(x, float) and math.isnan(x) for x in vb]:
            return False
        a.values = [0.0 if n else x for x, n in zip(va, a_nan, strict=True)]
        b.values = [0.0 if n else x for x, n in zip(vb, a_nan, strict=True)]
        return a == b
    return a == b


def test_repeated_frames_are_read_through_the_template_and_equal_the_full_path() -> None:
    intake, enc = Intake(), encoder()
    for seq in (1, 2, 127, 128, 300, 2**21, 2**62, 2**63 - 1):
        msg = enc.encode(seq, -5 if seq == 300 else 1_800_000_000_000_000_000 + seq % 1000,
                         [seq * 0.5, -1.0, math.inf, 1e-300])
        got = intake.decode(msg)
        assert same(got, full(msg)), seq
    assert intake.matched == 7  # all but the first
    for seq in (2**63, 2**64 - 1):  # past what a database stores: the template does not take it
        with pytest.raises(wire.WireError, match="bad_seq"):
            intake.decode(enc.encode(seq, 1, [1.0, 2.0, 3.0, 4.0]))
    assert intake.matched == 7


def test_frames_written_by_protobuf_match_too_unless_a_value_is_left_out() -> None:
    intake = Intake()
    f = Frame(site="gh", device_id="pi-07", boot_id=5, seq=1, time_unix_nano=10**18, sensor="env")
    for metric, unit in LAYOUT:
        f.samples.add(metric=metric, value=1.5, unit=unit)
    intake.decode(wire.encode(TOPIC, f))
    f.seq = 2
    f.samples[1].value = 2.5
    assert intake.decode(wire.encode(TOPIC, f)).values == (1.5, 2.5, 1.5, 1.5)
    assert intake.matched == 1
    f.seq = 3
    f.samples[1].value = 0.0  # protobuf leaves it out: no match, the full path reads it right
    assert intake.decode(wire.encode(TOPIC, f)).values == (1.5, 0.0, 1.5, 1.5)
    assert intake.matched == 1
    f.seq = 4
    f.samples[1].value = 3.0  # the template was kept
    assert intake.decode(wire.encode(TOPIC, f)).values == (1.5, 3.0, 1.5, 1.5)
    assert intake.matched == 2


def test_a_changed_name_behind_a_known_topic_is_checked_again() -> None:
    intake, enc = Intake(), encoder()
    intake.decode(enc.encode(1, 10**18, [1.0, 2.0, 3.0, 4.0]))
    bad = DataEncoder(TOPIC, "gh", "pi-07", 2**64 - 3, "env",
                      [("temperature", "C"), ("hum/dity", "%"), ("pressure", ""), ("co2", "ppm")])
    with pytest.raises(wire.WireError) as err:
        intake.decode(bad.encode(2, 10**18, [1.0, 2.0, 3.0, 4.0]))
    assert err.value.reason == "bad_name" and "hum/dity" in err.value.detail
    other = encoder(LAYOUT[:2])  # a new layout: decoded in full, then the new template
    assert intake.decode(other.encode(3, 10**18, [7.0, 8.0])).layout.metrics == ("temperature", "humidity")
    assert intake.decode(other.encode(4, 10**18, [7.0, 9.0])).values == (7.0, 9.0)
    assert intake.matched == 1


def test_truncated_and_extended_messages_are_not_taken_for_the_template() -> None:
    intake, enc = Intake(), encoder()
    intake.decode(enc.encode(1, 10**18, [1.0, 2.0, 3.0, 4.0]))
    msg = enc.encode(2, 10**18, [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(wire.WireError):
        intake.decode(msg[:-3])
    head_end = msg.index(b"\x20", len(TOPIC) + 1 + 20) + 1
    with pytest.raises(wire.WireError):
        intake.decode(msg[:head_end] + b"\xff")  # a seq varint that never ends
    # flags added at the end: still a valid frame, just not this template's
    flagged = enc.encode(3, 10**18, [1.0, 2.0, 3.0, 4.0], flags=wire.FLAG_UNSYNCED)
    assert intake.decode(flagged).flags == wire.FLAG_UNSYNCED
    assert intake.matched == 0


def test_changing_a_returned_frame_does_not_change_the_next_one() -> None:
    intake, enc = Intake(), encoder()
    intake.decode(enc.encode(1, 10**18, [1.0, 2.0, 3.0, 4.0]))
    first = intake.decode(enc.encode(2, 10**18, [1.0, 2.0, 3.0, 4.0]))
    first.flags |= wire.FLAG_TIME_REPLACED  # as the tracker does
    first.time_unix_nano = 5
    again = intake.decode(enc.encode(3, 10**18, [1.0, 2.0, 3.0, 4.0]))
    assert (again.flags, again.time_unix_nano) == (0, 10**18)
    assert intake.matched == 2


def test_templates_and_layouts_are_bounded_and_a_full_cache_is_not_churned() -> None:
    """Four templates at most.  A full cache starts again once, then not before REFILL_S:
    the topics past the bound take the full path instead of each one's frames evicting
    everything (at 200,000 topics and a bound of 65,536, that made every frame a miss)."""
    intake = Intake(cache_size=4)

    def two_frames(d: int) -> None:
        enc = DataEncoder(wire.data_topic("gh", f"pi-{d}", "env"), "gh", f"pi-{d}", 1, "env", LAYOUT)
        for seq in (1, 2):
            assert intake.decode(enc.encode(seq, 10**18, [1.0, 2.0, 3.0, float(d)])).values[3] == d

    for d in range(20):
        two_frames(d)
    assert len(intake._templates) <= 4 and len(intake.layouts._known) <= 4
    assert intake.matched == 8  # pi-0..3, then (started again once) pi-4..7; the rest: full path
    assert set(intake._templates) == {wire.data_topic("gh", f"pi-{d}", "env") for d in range(4, 8)}
    for d in range(4, 8):
        two_frames(d)  # the templates kept still serve
    assert intake.matched == 16
    intake._refill.period_s, intake._refill._next = 0.0, 0.0  # REFILL_S later
    two_frames(20)
    assert intake.matched == 17 and wire.data_topic("gh", "pi-20", "env") in intake._templates


def test_a_topic_whose_frames_never_fit_stops_being_tried() -> None:
    intake = Intake()
    f = Frame(site="gh", device_id="pi-07", boot_id=5, time_unix_nano=10**18, sensor="env")
    f.samples.add(metric="t", value=0.0)  # protobuf leaves the 0 out: never the encoder's bytes
    for seq in range(1, LEARN_ATTEMPTS + 5):
        f.seq = seq
        assert intake.decode(wire.encode(TOPIC, f)).seq == seq
    assert intake._failed[TOPIC] == LEARN_ATTEMPTS and TOPIC not in intake._templates


def test_a_duplicated_metric_keeps_its_values_and_marks_the_first() -> None:
    enc = encoder([("t", "C"), ("t", "C"), ("h", "")])
    intake = Intake()
    for seq in (1, 2):
        frame = intake.decode(enc.encode(seq, 10**18, [1.0, 2.0, 3.0]))
        assert frame.values == (1.0, 2.0, 3.0) and frame.layout.unique == (0, 2)


# -- equivalence under fuzzing ------------------------------------------------------------
FLOAT = st.floats(allow_nan=True, allow_infinity=True)
NAMES = st.sampled_from(["temperature", "t", "a.b", "x" * 64, "bad/name", "", "\x01"])
UNITS = st.sampled_from(["", "C", "%", "µS/cm", "\n"])


@st.composite
def variants(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A first message that sets a template, then messages close to it."""
    layout = draw(st.lists(st.tuples(NAMES, UNITS), min_size=0, max_size=6))
    enc = DataEncoder(TOPIC, "gh", "pi-07", draw(st.integers(0, 2**64 - 1)), "env", layout)
    flags = draw(st.sampled_from([0, 0, 1, 8, 2**32 - 1]))
    first = enc.encode(1, 10**18, [1.0] * len(layout), flags)
    out: list[bytes] = []
    for _ in range(draw(st.integers(1, 6))):
        seq = draw(st.one_of(st.integers(0, 300), st.integers(0, 2**64 - 1)))
        msg = bytearray(enc.encode(seq, draw(st.integers(-(2**63), 2**63 - 1)),
                                   draw(st.lists(FLOAT, min_size=len(layout), max_size=len(layout))),
                                   draw(st.sampled_from([flags, flags, 0, 1]))))
        for _ in range(draw(st.integers(0, 3))):
            at = draw(st.integers(0, max(0, len(msg) - 1)))
            op = draw(st.sampled_from(["flip", "cut", "insert"]))
            if op == "flip" and msg:
                msg[at] ^= 1 << draw(st.integers(0, 7))
            elif op == "cut":
                del msg[at:]
            else:
                msg[at:at] = draw(st.binary(min_size=1, max_size=9))
        out.append(bytes(msg))
    return first, out


def test_a_message_cut_off_inside_seq_is_rejected_not_a_crash() -> None:
    """Found by the property test below: a frame cut off right after a seq byte that says
    "more follows", one byte shorter than the template's frames, once reached struct.unpack
    with a position of -1 (a struct.error, which the receive loop does not catch)."""
    good = (b"gh/pi-07/env\x00\n\x02gh\x12\x05pi-07\x19\x00\x00\x00\x00\x00\x00\x00\x00 "
            b"\x01)\x00\x00d\xa7\xb3\xb6\xe0\r2\x03env:\x14\n\x01t\x11\x00\x00\x00\x00"
            b"\x00\x00\xf0?\x1a\x06\xc2\xb5S/cm")
    cut = b"gh/pi-07/env\x00\n\x02gh\x12\x05pi-07\x19\x00\x00\x00\x00\x00\x00\x00\x00 \x81"
    intake = Intake()
    intake.decode(good)
    with pytest.raises(wire.WireError):
        intake.decode(cut)


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(variants())
def test_the_template_path_never_disagrees_with_the_full_path(case: tuple[bytes, list[bytes]]) -> None:
    first, rest = case
    intake = Intake(max_samples=5)
    assert same(outcome(intake.decode, first), outcome(_full_limited, first))
    for msg in rest:
        assert same(outcome(intake.decode, msg), outcome(_full_limited, msg)), msg


def _full_limited(msg: bytes) -> CheckedFrame:
    return CheckedFrame.from_pb(wire.Decoder(max_samples=5).decode(msg))


def test_struct_layout_of_the_template_covers_the_whole_message() -> None:
    enc = encoder()
    head, fmt, consts = enc.template(wire.FLAG_UNSYNCED)
    msg = enc.encode(5, 7, [1.0, 2.0, 3.0, 4.0], wire.FLAG_UNSYNCED)
    assert msg.startswith(head) and msg[len(head)] == 5
    parts = struct.unpack(fmt, msg[len(head) + 1:])
    assert parts[0::2] == consts and parts[1::2] == (7, 1.0, 2.0, 3.0, 4.0)


def test_a_fleet_of_one_sensor_kind_costs_well_under_a_kilobyte_a_topic() -> None:
    """Devices running the same sensor share one Struct and one set of constants, and their
    names are interned: 2,000 topics keep under 800 bytes each (2.1 KB each before)."""
    import gc
    import tracemalloc

    n = 2_000
    msgs = [DataEncoder(wire.data_topic("gh", f"pi-{d:05d}", "env"), "gh", f"pi-{d:05d}", 1, "env",
                        LAYOUT).encode(1, 10**18, [1.0, 2.0, 3.0, 4.0]) for d in range(n)]
    intake = Intake(cache_size=n)
    gc.collect()
    tracemalloc.start()
    try:
        for msg in msgs:
            intake.decode(msg)
        gc.collect()
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(intake._templates) == n
    assert kept / n < 800, f"{kept / n:.0f} bytes a topic"
    assert len({id(t.struct) for t in intake._templates.values()}) == 1


def test_shared_shapes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood of made-up layouts cannot grow the table of shared shapes past SHAPES_MAX, and
    the templates made before it started again keep working."""
    monkeypatch.setattr(intake_module, "SHAPES_MAX", 8)
    intake = Intake(cache_size=100)
    for d in range(30):
        enc = DataEncoder(wire.data_topic("gh", f"pi-{d}", "env"), "gh", f"pi-{d}", 1, "env",
                          [(f"m{d}", "C")])
        intake.decode(enc.encode(1, 10**18, [1.0]))
        assert len(intake._shapes) <= 8
    assert len(intake._templates) == 30
    for d in range(30):
        enc = DataEncoder(wire.data_topic("gh", f"pi-{d}", "env"), "gh", f"pi-{d}", 1, "env",
                          [(f"m{d}", "C")])
        assert intake.decode(enc.encode(2, 10**18, [float(d)])).values == (float(d),)
    assert intake.matched == 30
