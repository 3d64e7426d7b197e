"""The proxy's last-value cache: the last message of every topic, bounded.

When a subscription arrives, the cached messages of the topics it matches are
sent again at once, marked with ``FLAG_CACHED`` so collectors neither store
nor count them twice (the ZeroMQ guide's last-value-cache pattern).

What bounds it, since anyone who reaches the proxy may send messages and
subscriptions:

- only messages the collectors' own decoder accepts are cached (a junk topic
  or payload is forwarded, and the collectors reject it, but never kept);
- at most ``max_topics`` topics and ``max_bytes`` bytes of messages; the
  topic written longest ago is evicted first (counted in ``evicted``);
- a replay is sent to every subscriber whose subscription matches, so the
  same prefix subscribed again within ``DUPLICATE_S`` of its last replay is
  not replayed again (the backend's ``XPUB_VERBOSE`` passes every duplicate);
  and replays together send at most ``REPLAY_FRAMES_PER_S`` frames a second
  on average: a replay is sent whole, and when the budget is spent the next
  ones are skipped until it has refilled.  Skipped replays are counted
  (``replays_skipped``): the subscriber gets live frames only.  The price: a
  second subscriber to a prefix within ``DUPLICATE_S`` of the first gets the
  replay only if libzmq had registered it when the first replay was sent
  (the proxy cannot tell subscribers apart).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from google.protobuf.message import DecodeError

from sensorwire.proto import wire

DUPLICATE_S = 1.0               # the same prefix is replayed at most once in this time
REPLAY_FRAMES_PER_S = 100_000   # replayed frames a second, on average, at most
MAX_RECENT = 10_000             # prefixes remembered for DUPLICATE_S


class LastValueCache:
    def __init__(self, max_topics: int, max_bytes: int = 64 * 2**20,
                 max_samples: int = 1024) -> None:
        self.max_topics = max_topics
        self.max_bytes = max_bytes
        self._decoder = wire.Decoder(max_samples)
        self._last: dict[bytes, bytes] = {}
        self.bytes = 0              # of the messages held
        self.sent = 0               # frames sent by replays
        self.replays = 0            # subscriptions answered with a replay
        self.replays_skipped = 0    # subscriptions not answered: a duplicate, or over budget
        self.evicted = 0            # topics evicted to stay within max_topics or max_bytes
        self.refused = 0            # messages not cached: the wire decoder rejected them
        self._tokens = float(REPLAY_FRAMES_PER_S)
        self._refilled = time.monotonic()
        self._recent: dict[bytes, float] = {}  # prefix -> when last replayed

    def __len__(self) -> int:
        return len(self._last)

    def put(self, msg: bytes) -> None:
        try:
            self._decoder.decode(msg)
        except wire.WireError:
            self.refused += 1
            return
        if len(msg) > self.max_bytes:
            self.refused += 1
            return
        topic = msg[:msg.find(wire.DELIM)]
        last = self._last
        old = last.pop(topic, None)  # re-inserted at the end: the oldest topic is evicted first
        if old is not None:
            self.bytes -= len(old)
        last[topic] = msg
        self.bytes += len(msg)
        while len(last) > self.max_topics or self.bytes > self.max_bytes:
            self.bytes -= len(last.pop(next(iter(last))))
            self.evicted += 1

    def replay(self, prefix: bytes) -> Iterator[bytes]:
        """The cached messages a new subscription to ``prefix`` should get, marked; nothing
        for a duplicate or when the replay budget is spent (counted in ``replays_skipped``)."""
        now = time.monotonic()
        self._tokens = min(float(REPLAY_FRAMES_PER_S),
                           self._tokens + (now - self._refilled) * REPLAY_FRAMES_PER_S)
        self._refilled = now
        recent = self._recent
        last = recent.get(prefix)
        if (last is not None and now - last < DUPLICATE_S) or self._tokens < 1:
            self.replays_skipped += 1
            return
        if len(recent) >= MAX_RECENT:
            recent.clear()
        recent[prefix] = now
        self.replays += 1
        for topic, msg in list(self._last.items()):
            if (topic + wire.DELIM).startswith(prefix):
                try:
                    marked = wire.mark_cached(msg)
                except DecodeError:
                    continue
                self.sent += 1
                self._tokens -= 1
                yield marked
