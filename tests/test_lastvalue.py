"""The last-value cache's topic index gives exactly what a pass over every topic gives.

``LastValueCache.matching`` finds the topics a subscription prefix matches in byte order
(:class:`~sensorwire.lastvalue.SortedKeys`) instead of testing every cached topic.  Here
it is checked, with hypothesis, against the linear scan it replaced, under the cache's
bounds (topics and bytes evicted, topics written again), for arbitrary byte prefixes: any
prefix, not only whole segments, and prefixes that end with or run past the 0x00 after
the topic.  ``CHUNK`` is made tiny so that a few dozen keys split and merge chunks.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensorwire import lastvalue
from sensorwire.lastvalue import LastValueCache, SortedKeys
from sensorwire.proto import wire
from sensorwire.proto.encoder import DataEncoder, HeartbeatEncoder
from sensorwire.proto.v1.telemetry_pb2 import Frame

SITES = ("a", "ab", "b")
DEVICES = ("x", "x-1", "y")
SENSORS = ("s", "s1", "t")
LAYOUTS = ([("t", "C")], [("t", "C"), ("rh", "%")], [("t", "C"), ("rh", "%"), ("pressure", "Pa")])


def _pool() -> list[bytes]:
    """Valid messages on 30 topics (27 data topics and 3 heartbeat topics), 3 sizes each."""
    out = []
    for site in SITES:
        for device in DEVICES:
            for sensor in SENSORS:
                topic = wire.data_topic(site, device, sensor)
                for layout in LAYOUTS:
                    enc = DataEncoder(topic, site, device, 7, sensor, layout)
                    out.append(enc.encode(1, 1_700_000_000_000_000_000, [1.5] * len(layout)))
        for device in DEVICES[:1]:
            hb = HeartbeatEncoder(wire.heartbeat_topic(site, device), site, device, 7, "1.0")
            for n in range(3):
                out.append(hb.encode(1_700_000_000_000_000_000, 1.0, 10.0, 5, False,
                                     [(f"c{i}", i) for i in range(n)], True))
    return out


POOL = _pool()
TOPICS = sorted({m[:m.index(0)] for m in POOL})
EVERY_PREFIX = sorted({(t + wire.DELIM)[:n] for t in TOPICS for n in range(len(t) + 2)})
# prefixes a subscription may carry: any byte prefix of a topic, the topic with its 0x00
# and past it, and bytes sorting around every topic's (0x00, 0xff, '$', '/')
PREFIXES = st.one_of(
    st.sampled_from(TOPICS).flatmap(
        lambda t: st.integers(0, len(t) + 1).map(lambda n: (t + wire.DELIM)[:n])),
    st.sampled_from(TOPICS).map(lambda t: t + wire.DELIM + b"\x0a"),
    st.binary(max_size=4),
    st.lists(st.sampled_from(b"ab/x-1st$\x00\xff"), max_size=8).map(bytes),
)


class LinearScan:
    """The cache as it was before the index: a dict in write order, scanned per prefix."""

    def __init__(self, max_topics: int, max_bytes: int) -> None:
        self.max_topics, self.max_bytes = max_topics, max_bytes
        self.last: dict[bytes, bytes] = {}
        self.bytes = self.evicted = 0

    def put(self, msg: bytes) -> None:
        if len(msg) > self.max_bytes:
            return
        topic = msg[:msg.find(wire.DELIM)]
        old = self.last.pop(topic, None)
        if old is not None:
            self.bytes -= len(old)
        self.last[topic] = msg
        self.bytes += len(msg)
        while len(self.last) > self.max_topics or self.bytes > self.max_bytes:
            self.bytes -= len(self.last.pop(next(iter(self.last))))
            self.evicted += 1

    def matching(self, prefix: bytes) -> list[bytes]:
        return [msg for topic, msg in self.last.items() if (topic + wire.DELIM).startswith(prefix)]


@pytest.fixture(autouse=True)
def tiny_chunks() -> Iterator[None]:
    with mock.patch.object(lastvalue, "CHUNK", 4):  # chunks of 2 to 8 keys
        yield


# short keys of few bytes share prefixes often; 0x00 and 0xff are the ends of the order
KEYS = st.lists(st.sampled_from(b"\x00ab\xff"), max_size=4).map(bytes)


def same_set(keys: SortedKeys, model: set[bytes], prefixes: list[bytes]) -> None:
    assert list(keys) == sorted(model)
    assert len(keys) == len(model)
    for p in prefixes:
        assert keys.starting_with(p) == sorted(k for k in model if k.startswith(p))
    # the layout that bounds what a change costs: chunks of 1 to 2 * CHUNK keys, at least
    # CHUNK // 2 unless alone, each with its largest key in _maxes
    chunks = keys._chunks
    assert all(1 <= len(c) <= 8 for c in chunks)
    assert len(chunks) <= 1 or all(len(c) >= 2 for c in chunks)
    assert keys._maxes == [c[-1] for c in chunks]


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from([True, True, False]), KEYS), min_size=20, max_size=150),
       prefixes=st.lists(KEYS, min_size=1, max_size=6))
def test_sorted_keys_hold_a_set_in_byte_order(ops: list[tuple[bool, bytes]],
                                              prefixes: list[bytes]) -> None:
    keys = SortedKeys()
    model: set[bytes] = set()
    for add, key in ops:
        if add and key not in model:
            keys.add(key)
            model.add(key)
        elif not add and key in model:
            keys.remove(key)
            model.discard(key)
        same_set(keys, model, prefixes)


@pytest.mark.parametrize("seed", range(5))
def test_sorted_keys_filled_then_emptied_in_any_order(seed: int) -> None:
    rng = random.Random(seed)
    every = [bytes(k) for n in range(4) for k in itertools.product(b"ab/\xff", repeat=n)]
    prefixes = every[:21]  # b"" and every prefix of one or two bytes
    keys = SortedKeys()
    model: set[bytes] = set()
    for key in rng.sample(every, len(every)):
        keys.add(key)
        model.add(key)
        same_set(keys, model, prefixes)
    for key in rng.sample(every, len(every)):
        keys.remove(key)
        model.discard(key)
        same_set(keys, model, prefixes)


def test_a_chunk_merged_past_its_bound_is_split() -> None:
    keys = SortedKeys()
    model = {bytes([n]) for n in range(12)}
    for n in range(12):  # chunks of 4 and 8 (split in two at the 9th key)
        keys.add(bytes([n]))
    for n in range(3):   # the first chunk falls to 1 key: merged with the second, 9 keys
        keys.remove(bytes([n]))
        model.discard(bytes([n]))
    assert [len(c) for c in keys._chunks] == [4, 5]
    same_set(keys, model, [b"", b"\x03", b"\x05"])


@settings(max_examples=300, deadline=None)
@given(writes=st.lists(st.sampled_from(POOL), min_size=10, max_size=120), max_topics=st.integers(1, 40),
       max_frames=st.integers(1, 40), prefixes=st.lists(PREFIXES, min_size=1, max_size=8),
       every=st.integers(1, 20))
def test_a_prefix_matches_what_a_pass_over_every_topic_matches(
        writes: list[bytes], max_topics: int, max_frames: int, prefixes: list[bytes],
        every: int) -> None:
    max_bytes = max_frames * len(POOL[0])  # a budget of 1 to 40 of the smallest frames
    cache = LastValueCache(max_topics, max_bytes)
    ref = LinearScan(max_topics, max_bytes)
    for n, msg in enumerate(writes, 1):
        cache.put(msg)
        ref.put(msg)
        if n % every == 0 or n == len(writes):
            assert (len(cache), cache.bytes, cache.evicted) == (len(ref.last), ref.bytes, ref.evicted)
            # the same messages; in topic order rather than in the order written
            for p in prefixes if n < len(writes) else [*prefixes, *EVERY_PREFIX]:
                assert cache.matching(p) == sorted(ref.matching(p))


def test_byte_prefixes_match_across_segments_and_the_delimiter_ends_a_topic() -> None:
    cache = LastValueCache(100)
    for msg in POOL:
        cache.put(msg)

    def topics(prefix: bytes) -> list[bytes]:
        return [m[:m.index(0)] for m in cache.matching(prefix)]

    assert topics(b"a/x-1/s\x00") == [b"a/x-1/s"]  # one topic, not a/x-1/s1
    assert topics(b"a/x-1/s") == [b"a/x-1/s", b"a/x-1/s1"]
    assert topics(b"a/x") == [b"a/x-1/s", b"a/x-1/s1", b"a/x-1/t",
                              b"a/x/$hb", b"a/x/s", b"a/x/s1", b"a/x/t"]
    assert len(topics(b"a")) == 2 * 10  # sites a and ab: 9 sensors and a heartbeat each
    assert len(topics(b"")) == len(TOPICS) == 30
    assert topics(b"a/x-1/s\x00\x0a") == topics(b"c") == topics(b"\xff") == []


def test_a_replay_sends_the_matching_frames_marked() -> None:
    cache = LastValueCache(100)
    for msg in POOL:
        cache.put(msg)
    got = list(cache.replay(b"b/y/"))
    assert [m[:m.index(0)] for m in got] == [b"b/y/s", b"b/y/s1", b"b/y/t"]
    assert all(Frame.FromString(m[m.index(0) + 1:]).flags & wire.FLAG_CACHED for m in got)
    assert (cache.replays, cache.sent) == (1, 3)
    assert list(cache.replay(b"b/y/")) == []  # a duplicate, within DUPLICATE_S
    assert cache.replays_skipped == 1
