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

Finding what a prefix matches costs O(log n + matches), not a pass over the n cached
topics, which kept the proxy's forwarding loop busy for 25-40 ms per new subscription at
100,000 topics (1-5 µs now: ``python -m bench.lastvalue``): the topics are also kept in
byte order (:class:`SortedKeys`), where the ones starting with a prefix are neighbours.
Matching is on bytes, as ZeroMQ's is: any byte prefix, not only whole segments.  A replay
sends its frames in topic order.
"""

from __future__ import annotations

import time
from bisect import bisect_left, insort
from collections import OrderedDict
from collections.abc import Iterator
from itertools import islice

from google.protobuf.message import DecodeError

from sensorwire.proto import wire

DUPLICATE_S = 1.0               # the same prefix is replayed at most once in this time
REPLAY_FRAMES_PER_S = 100_000   # replayed frames a second, on average, at most
MAX_RECENT = 10_000             # prefixes remembered for DUPLICATE_S
CHUNK = 256                     # SortedKeys: keys a chunk holds, between CHUNK // 2 and 2 * CHUNK


class SortedKeys:
    """A set of byte strings in byte order: add and remove in O(log n + CHUNK), and the
    keys starting with a prefix in O(log n + matches).

    The keys are held in sorted chunks of at most ``2 * CHUNK`` (split in two beyond
    that; a chunk left with fewer than ``CHUNK // 2`` is merged with a neighbour), with
    the largest key of each chunk in ``_maxes``, so no change moves more than a chunk
    and ``_maxes`` (the layout of ``sortedcontainers.SortedList``, which is not a
    dependency).  Chunks are non-empty and, read in order, one sorted list of distinct
    keys; the keys starting with a prefix are consecutive in it, from the first key
    ``>= prefix``.
    """

    def __init__(self) -> None:
        self._chunk = CHUNK
        self._chunks: list[list[bytes]] = []
        self._maxes: list[bytes] = []   # _maxes[i] == _chunks[i][-1]
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            yield from chunk

    def add(self, key: bytes) -> None:
        """Add ``key``, which must not be in the set."""
        chunks, maxes = self._chunks, self._maxes
        self._len += 1
        if not chunks:
            chunks.append([key])
            maxes.append(key)
            return
        i = bisect_left(maxes, key)  # the first chunk whose keys reach key's place
        if i == len(maxes):          # above every key: the last chunk's new largest
            i -= 1
            chunks[i].append(key)
            maxes[i] = key
        else:
            insort(chunks[i], key)
        if len(chunks[i]) > 2 * self._chunk:
            self._split(i)

    def remove(self, key: bytes) -> None:
        """Remove ``key``, which must be in the set."""
        chunks, maxes = self._chunks, self._maxes
        i = bisect_left(maxes, key)
        chunk = chunks[i]
        j = bisect_left(chunk, key)
        assert chunk[j] == key, "SortedKeys.remove: not in the set"
        del chunk[j]
        self._len -= 1
        if not chunk:
            del chunks[i], maxes[i]
            return
        if j == len(chunk):
            maxes[i] = chunk[-1]
        if len(chunk) < self._chunk // 2 and len(chunks) > 1:
            i = max(i, 1)  # merge chunks i - 1 and i
            chunks[i - 1] += chunks[i]
            del chunks[i], maxes[i - 1]
            if len(chunks[i - 1]) > 2 * self._chunk:
                self._split(i - 1)

    def _split(self, i: int) -> None:
        chunk = self._chunks[i]
        half = len(chunk) // 2
        self._chunks.insert(i + 1, chunk[half:])
        del chunk[half:]
        self._maxes.insert(i, chunk[-1])

    def starting_with(self, prefix: bytes) -> list[bytes]:
        """The keys that start with ``prefix``, in byte order."""
        chunks = self._chunks
        i = bisect_left(self._maxes, prefix)  # chunks before i hold only keys < prefix
        found: list[bytes] = []
        start = bisect_left(chunks[i], prefix) if i < len(chunks) else 0
        for chunk in islice(chunks, i, None):
            for key in islice(chunk, start, None):
                if not key.startswith(prefix):
                    return found
                found.append(key)
            start = 0
        return found


class LastValueCache:
    def __init__(self, max_topics: int, max_bytes: int = 64 * 2**20,
                 max_samples: int = 1024) -> None:
        self.max_topics = max_topics
        self.max_bytes = max_bytes
        # its cache of names checked holds every cached topic's: at 100,000 topics the default
        # (65,536) was cleared over and over, about 2.7 µs a frame more
        self._decoder = wire.Decoder(max_samples, cache_size=max(65_536, max_topics))
        # topic + DELIM -> message, oldest written first: an OrderedDict, as a dict's first
        # item is found by skipping the slots of those removed before it (31 µs at 100,000
        # topics when each new topic evicts one; popitem(last=False) is O(1))
        self._last: OrderedDict[bytes, bytes] = OrderedDict()
        self._sorted = SortedKeys()           # the same keys, in byte order
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
        self._keep(msg)

    def _keep(self, msg: bytes) -> None:
        """Cache ``msg``, a frame the decoder accepted, evicting the oldest as needed."""
        # the key ends with the delimiter, as a subscription to exactly one topic does
        key = msg[:msg.find(wire.DELIM) + 1]
        last = self._last
        old = last.get(key)
        last[key] = msg
        if old is None:
            self._sorted.add(key)
        else:
            self.bytes -= len(old)
            last.move_to_end(key)  # the topic written longest ago is evicted first
        self.bytes += len(msg)
        while len(last) > self.max_topics or self.bytes > self.max_bytes:
            oldest, evicted = last.popitem(last=False)
            self.bytes -= len(evicted)
            self._sorted.remove(oldest)
            self.evicted += 1

    def matching(self, prefix: bytes) -> list[bytes]:
        """The cached messages a subscription to ``prefix`` receives, unmarked, in topic
        order: those whose topic followed by 0x00 starts with ``prefix``."""
        last = self._last
        return [last[key] for key in self._sorted.starting_with(prefix)]

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
        for msg in self.matching(prefix):
            try:
                marked = wire.mark_cached(msg)
            except DecodeError:
                continue
            self.sent += 1
            self._tokens -= 1
            yield marked
