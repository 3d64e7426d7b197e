"""The proxy's last-value cache: the last message of every topic, bounded.

When a subscription arrives, the cached messages of the topics it matches are
sent again at once, marked with ``FLAG_CACHED`` so collectors neither store
nor count them twice (the ZeroMQ guide's last-value-cache pattern).
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf.message import DecodeError

from sensorwire.proto import wire


class LastValueCache:
    def __init__(self, max_topics: int) -> None:
        self.max_topics = max_topics
        self._last: dict[bytes, bytes] = {}
        self.sent = 0

    def __len__(self) -> int:
        return len(self._last)

    def put(self, msg: bytes) -> None:
        end = msg.find(wire.DELIM, 0, wire.MAX_TOPIC_BYTES + 1)
        if end <= 0:
            return
        topic = msg[:end]
        last = self._last
        last.pop(topic, None)  # re-inserted at the end: the oldest topic is evicted first
        last[topic] = msg
        if len(last) > self.max_topics:
            del last[next(iter(last))]

    def matching(self, prefix: bytes) -> Iterator[bytes]:
        """The cached messages a new subscription to ``prefix`` should get, marked."""
        for topic, msg in list(self._last.items()):
            if (topic + wire.DELIM).startswith(prefix):
                try:
                    marked = wire.mark_cached(msg)
                except DecodeError:
                    continue  # not a frame: the collectors rejected it already
                self.sent += 1
                yield marked
