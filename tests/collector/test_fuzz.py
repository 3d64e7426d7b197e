"""Fuzzing the collector's decoding path: random and mutated messages never escape as exceptions.

Hypothesis builds frames (valid ones, and ones with hostile values: huge
seqs, NaN, odd names, heartbeats with made-up ranges), then mutates their
bytes.  ``Decoder.decode`` may only raise ``WireError``; the collector's
``drain`` (size check, rate limit, decode, loss accounting) and the tracker's
``tick`` (presence, repair requests) must take whatever comes.
Bounded: a fixed number of examples each, and pytest's timeout.
"""

from __future__ import annotations

import operator
import string
import time
from collections.abc import Iterator

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensorwire.collector.config import (
    CollectorConfig,
    LimitsConfig,
    StorageConfig,
    SubscribeConfig,
)
from sensorwire.collector.runtime import Collector
from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import Frame

pytestmark = pytest.mark.slow  # several seconds each

U64 = st.integers(0, 2**64 - 1)
ALNUM = string.ascii_letters + string.digits
# [A-Za-z0-9][A-Za-z0-9._-]{0,12}, drawn without st.from_regex, which filters every draw
# and took half of these tests' time
NAME = st.builds(operator.add, st.sampled_from(ALNUM), st.text(ALNUM + "._-", max_size=12))
NAME_OR_JUNK = st.one_of(NAME, NAME, st.text(max_size=70), st.sampled_from(["", "$hb", "a/b"]))
FLOAT = st.floats(allow_nan=True, allow_infinity=True)
FUZZ = settings(max_examples=1500, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


DEVICE = st.one_of(st.sampled_from(["pi-1", "pi-2", "pi-3"]), NAME)  # state builds up per device
BOOT = st.one_of(st.sampled_from([1, 2]), U64)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """A message that is a frame: mostly valid (to reach loss accounting), else close to it."""
    valid = draw(st.integers(0, 9)) < 7
    name = NAME if valid else NAME_OR_JUNK
    heartbeat = draw(st.integers(0, 4)) == 0
    f = Frame(site="gh" if valid else draw(name), device_id=draw(DEVICE if valid else name),
              boot_id=draw(BOOT), time_unix_nano=draw(st.integers(-(2**63), 2**63 - 1)))
    if heartbeat:
        hb = f.heartbeat
        hb.interval_s = draw(FLOAT)
        hb.uptime_s = draw(FLOAT)
        hb.last_seq = draw(U64)
        hb.stopping = draw(st.booleans())
        hb.agent_version = draw(st.text(max_size=20))
        for k, v in draw(st.dictionaries(st.text(max_size=10), U64, max_size=5)).items():
            hb.counters[k] = v
        for boot_id, first, last in draw(st.lists(st.tuples(U64, U64, U64), max_size=5)):
            hb.unavailable.add(boot_id=boot_id, first=first, last=last)
        if draw(st.booleans()):
            hb.unavailable.add(boot_id=f.boot_id, first=1, last=draw(U64))
        topic = f"{f.site}/{f.device_id}/$hb"
    else:
        f.seq = draw(st.one_of(st.integers(1, 50), st.integers(1, 2**20), U64))
        f.sensor = draw(name)
        units = st.sampled_from(["", "C", "%"]) if valid else st.text(max_size=8)
        for metric, value, unit in draw(st.lists(st.tuples(name, FLOAT, units), max_size=9)):
            f.samples.add(metric=metric, value=value, unit=unit)
        topic = f"{f.site}/{f.device_id}/{f.sensor}"
    if not valid and draw(st.booleans()):
        topic = draw(st.text(max_size=40))
    return topic.encode("utf-8", "surrogatepass") + wire.DELIM + f.SerializeToString()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    msg = bytearray(draw(frames()))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "zero"]))
        at = draw(st.integers(0, max(0, len(msg) - 1)))
        if op == "flip" and msg:
            msg[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del msg[at:]
        elif op == "insert":
            msg[at:at] = draw(st.binary(max_size=16))
        elif op == "repeat":
            msg[at:at] = msg[at:at + draw(st.integers(1, 64))] * draw(st.integers(1, 20))
        else:
            msg[at:at + 4] = b"\x00\x00\x00\x00"
    return bytes(msg)


MESSAGES = st.one_of(st.binary(max_size=300), frames(), mutated(), mutated())


@FUZZ
@given(MESSAGES)
def test_decode_raises_only_wire_errors(msg: bytes) -> None:
    try:
        wire.Decoder(max_samples=8).decode(msg)
    except wire.WireError:
        pass


class Fed:
    """A collector with no sinks and an inproc pipe into ``drain``."""

    def __init__(self) -> None:
        cfg = CollectorConfig(subscribe=SubscribeConfig(connect=["tcp://127.0.0.1:1"]),
                              storage=StorageConfig(kind="none"),
                              limits=LimitsConfig(max_message_bytes=2048, max_samples_per_frame=8,
                                                  max_frames_per_s_per_device=50))
        self.collector = Collector(cfg, sinks=[])
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.tx = self.ctx.socket(zmq.PAIR)
        self.rx = self.ctx.socket(zmq.PAIR)
        for s in (self.tx, self.rx):
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 0)
            s.setsockopt(zmq.RCVHWM, 0)
        self.rx.bind("inproc://fuzz")
        self.tx.connect("inproc://fuzz")
        self.later = 0.0  # tick as if time passed: presence timeouts, repair requests

    def feed(self, batch: list[bytes | list[bytes]]) -> int:
        for m in batch:
            if isinstance(m, list):
                self.tx.send_multipart(m)
            else:
                self.tx.send(m)
        n = 0
        while self.rx.poll(0):
            n += self.collector.drain(self.rx)
        self.later += 5.0
        self.collector.tracker.tick(time.monotonic() + self.later, time.time_ns())
        return n

    def close(self) -> None:
        self.tx.close()
        self.rx.close()
        self.ctx.term()


@pytest.fixture(scope="module")
def fed() -> Iterator[Fed]:
    f = Fed()
    yield f
    f.close()


@settings(FUZZ, max_examples=400)
@given(st.lists(st.one_of(MESSAGES, st.lists(MESSAGES, min_size=2, max_size=3)), max_size=20))
def test_drain_takes_anything(fed: Fed, batch: list[bytes | list[bytes]]) -> None:
    # a multi-part message counts once when its first part is not a frame, else part by part
    parts = sum(len(m) if isinstance(m, list) else 1 for m in batch)
    assert len(batch) <= fed.feed(batch) <= parts
