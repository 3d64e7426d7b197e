"""What the proxy checks in each message from agents before forwarding it.

- one part only (sensorwire never sends more);
- with CURVE, the topic's device is the one the sender's key is registered
  for (:class:`sensorwire.security.Identity`), and the key is still in the
  allow-list;
- at most ``max_samples`` samples.  Counting them needs a decode, but a
  sample takes at least 2 bytes on the wire, so only messages longer than
  ``2 * (max_samples + 1)`` bytes can have too many: the usual small frame
  is never decoded here.

Used only when the proxy forwards in Python (the last-value cache or CURVE
identities on); otherwise libzmq forwards and the collector does the
multi-part and sample-count checks (:mod:`sensorwire.libzmqproxy`).

Message size is bounded by libzmq (``ZMQ_MAXMSGSIZE`` on the frontend); a
bigger message disconnects the agent that sent it.  Drops are counted by
reason and logged, rate-limited, with the key's name.
"""

from __future__ import annotations

import collections
import logging

import zmq
from google.protobuf.message import DecodeError

from sensorwire import zmqutil
from sensorwire.lastvalue import LastValueCache
from sensorwire.logs import RateLimited
from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import Frame
from sensorwire.security import Identity, Refused

log = logging.getLogger(__name__)
_limited = RateLimited(log, period_s=10.0)

MIN_SAMPLE_BYTES = 2  # field tag + length of an empty Sample


class FrontendFilter:
    def __init__(self, max_samples: int, identity: Identity | None,
                 cache: LastValueCache | None = None) -> None:
        self.max_samples = max_samples
        self.identity = identity
        self.cache = cache
        self.dropped: collections.Counter[str] = collections.Counter()
        self._decode_above = MIN_SAMPLE_BYTES * (max_samples + 1)

    def pump(self, src: zmq.Socket[bytes], dst: zmq.Socket[bytes], batch: int) -> tuple[int, int]:
        """Move up to ``batch`` messages; returns (messages forwarded, bytes forwarded)."""
        if self.identity is None:
            return self._pump_plain(src, dst, batch)
        return self._pump_identified(src, dst, batch, self.identity)

    def _pump_plain(self, src: zmq.Socket[bytes], dst: zmq.Socket[bytes],
                    batch: int) -> tuple[int, int]:
        n = nbytes = 0
        recv, send = src.recv, dst.send
        above = self._decode_above
        cache = self.cache
        for _ in range(batch):
            try:
                frame = recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            if frame.more:  # read at recv: about 2.5 µs less than a getsockopt (src.rcvmore)
                self._multipart(src)
                continue
            msg = frame.bytes
            if len(msg) > above and self._too_many_samples(msg):
                continue
            send(msg)
            n += 1
            nbytes += len(msg)
            if cache is not None:
                cache.put(msg)
        return n, nbytes

    def _pump_identified(self, src: zmq.Socket[bytes], dst: zmq.Socket[bytes], batch: int,
                         identity: Identity) -> tuple[int, int]:
        n = nbytes = 0
        recv, send, check = src.recv, dst.send, identity.check
        above = self._decode_above
        cache = self.cache
        for _ in range(batch):
            try:
                msg = recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            if msg.more:
                self._multipart(src)
                continue
            try:
                check(msg)
            except Refused as exc:
                self._drop(exc.reason, exc.detail, exc.who)
                continue
            size = len(msg)
            if size > above and self._too_many_samples(msg.bytes):
                continue
            send(msg, copy=False)
            n += 1
            nbytes += size
            if cache is not None:
                cache.put(msg.bytes)
        return n, nbytes

    def _multipart(self, src: zmq.Socket[bytes]) -> None:
        parts = zmqutil.skip_parts(src)
        self._drop("multipart", f"a message of {parts} parts (sensorwire sends one part)")

    def _too_many_samples(self, msg: bytes) -> bool:
        idx = msg.find(wire.DELIM, 0, wire.MAX_TOPIC_BYTES + 1)
        if idx < 0:
            return False  # not a frame at all: the collector judges and counts it
        try:
            n = len(Frame.FromString(msg[idx + 1:]).samples)
        except DecodeError:
            return False
        if n <= self.max_samples:
            return False
        topic = msg[:idx].decode("ascii", "replace")
        self._drop("too_many_samples", f"topic {topic!r}: {n} samples, the limit is "
                   f"{self.max_samples} ([limits] max_samples_per_frame)")
        return True

    def _drop(self, reason: str, detail: str, who: str = "") -> None:
        self.dropped[reason] += 1
        _limited.warning(f"{reason}:{who}", "proxy: dropped a message (%s): %s; %d dropped for "
                         "this reason so far", reason, detail, self.dropped[reason])
