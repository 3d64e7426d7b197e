"""The fast encoder writes the same frames protobuf does."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sensorwire.proto import wire
from sensorwire.proto.encoder import DataEncoder
from sensorwire.proto.v1.telemetry_pb2 import Frame

metric = st.from_regex(r"[a-z][a-z0-9._:-]{0,20}", fullmatch=True)
unit = st.one_of(st.just(""), st.from_regex(r"[A-Za-z%/0-9]{1,6}", fullmatch=True))
value = st.floats(allow_nan=False) | st.integers(-2**40, 2**40).map(float)


@settings(max_examples=300, deadline=None)
@given(layout=st.lists(st.tuples(metric, unit), min_size=1, max_size=12, unique_by=lambda t: t[0]),
       data=st.data(), seq=st.integers(1, 2**63), time_ns=st.integers(-2**63, 2**63 - 1),
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
