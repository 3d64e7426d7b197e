"""Building and parsing sensorwire messages: the one place that knows the framing.

A message is one ZeroMQ part::

    <topic, ASCII> 0x00 <Frame, protobuf>

Data topics are ``<site>/<device>/<sensor>``; a device's heartbeats go to
``<site>/<device>/$hb``.  Names never contain ``/``, ``$`` or 0x00, so a
heartbeat topic cannot collide with a sensor, and a prefix filter on a site
(``greenhouse/``) or a device (``greenhouse/pi-07/``) also delivers the
device's heartbeats.

protobuf is imported by the functions and classes that parse or build a
``Frame`` (``encode``, ``mark_cached``, ``Decoder``), not by this module: an
agent uses the names and constants here, and encodes without protobuf.
"""

from __future__ import annotations

import time
from sys import intern
from typing import TYPE_CHECKING, Any

from sensorwire import names

if TYPE_CHECKING:
    from sensorwire.proto.v1.telemetry_pb2 import Frame

DELIM = b"\x00"
HEARTBEAT = "$hb"
REPAIR = b"\x02"  # first byte of a repair request travelling upstream (0x00/0x01 are (un)subscribe)
PING = b"\x03"    # upstream: "are my subscriptions live?" + a nonce of at most 64 bytes
ACK = b"$ack/"    # downstream answer: ACK + nonce (no 0x00: never a frame)
FLAG_UNSYNCED = 1       # Frame.flags: the agent's clock was not known to be synchronised
FLAG_SKEWED = 2         # set in storage: the device's clock was more than max_skew_s off
FLAG_TIME_REPLACED = 4  # set in storage: a time before 2020 replaced by the receive time
FLAG_CACHED = 8         # sent again from a proxy's last-value cache
ALERT = "alert"
MAX_TOPIC_BYTES = 3 * names.MAX_NAME_LEN + 2
MAX_HEARTBEAT_COUNTERS = 1024   # an agent sends about 20, plus one per failing sensor
MAX_HEARTBEAT_RANGES = 1024     # "unavailable" ranges in one heartbeat
# seq, last_seq and ranges fit a signed 64-bit integer (SQLite's and PostgreSQL's): an agent
# numbering one frame a nanosecond would need 292 years to get there
MAX_SEQ = (1 << 63) - 1
MAX_HEARTBEAT_INTERVAL_S = 86_400.0

__all__ = [
    "DELIM",
    "HEARTBEAT",
    "REPAIR",
    "PING",
    "ACK",
    "mark_cached",
    "Decoder",
    "ALERT",
    "Frame",
    "WireError",
    "alert_topic",
    "data_topic",
    "encode",
    "heartbeat_topic",
    "subscriptions",
]


class WireError(Exception):
    """A message that is not a valid sensorwire frame.

    ``reason`` is a short, stable word used as a counter label
    (``no_delimiter``, ``bad_topic``, ``decode``, ``topic_mismatch``,
    ``bad_name``, ``too_many_samples``, ``bad_heartbeat``, ``oversized``, ``multipart``).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def data_topic(site: str, device: str, sensor: str) -> bytes:
    return f"{site}/{device}/{sensor}".encode("ascii")


def heartbeat_topic(site: str, device: str) -> bytes:
    return f"{site}/{device}/{HEARTBEAT}".encode("ascii")


def alert_topic(site: str, device: str, rule: str) -> bytes:
    """``alert/<site>/<device>/<rule>``: where alerts are republished (four segments,
    so never mistaken for a data topic)."""
    return f"{ALERT}/{site}/{device}/{rule}".encode("ascii")


def __getattr__(name: str) -> Any:
    """``wire.Frame``: the generated class, imported on first use."""
    if name == "Frame":
        from sensorwire.proto.v1.telemetry_pb2 import Frame

        return Frame
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def encode(topic: bytes, frame: Frame) -> bytes:
    """The one-part message for ``frame`` on ``topic``."""
    return topic + DELIM + frame.SerializeToString()


def mark_cached(msg: bytes) -> bytes:
    """The same message with FLAG_CACHED set in its frame."""
    from sensorwire.proto.v1.telemetry_pb2 import Frame

    end = msg.find(DELIM)
    frame = Frame.FromString(msg[end + 1 :])
    frame.flags |= FLAG_CACHED
    return msg[: end + 1] + frame.SerializeToString()


def subscriptions(prefix: str) -> list[bytes]:
    """The ZeroMQ subscription filters for a segment-safe topic prefix.

    ``""`` is everything; ``greenhouse`` and ``greenhouse/`` are one site;
    ``greenhouse/pi-07`` one device (heartbeats included);
    ``greenhouse/pi-07/bme280`` exactly one sensor (plus that device's
    heartbeats), never ``bme2801``.  Raises ValueError for a bad prefix.
    """
    text = prefix.strip()
    if text == "":
        return [b""]
    parts = text.rstrip("/").split("/")
    if len(parts) > 3:
        raise ValueError(f"prefix {prefix!r}: a topic has at most 3 segments (site/device/sensor)")
    for part in parts:
        problem = names.segment_problem(part)
        if problem:
            raise ValueError(f"prefix {prefix!r}: segment {part!r} {problem}")
    if len(parts) < 3:
        return [("/".join(parts) + "/").encode("ascii")]
    site, device, _sensor = parts
    return [text.rstrip("/").encode("ascii") + DELIM, heartbeat_topic(site, device) + DELIM]


REFILL_S = 600.0  # a full cache of topics starts again at most this often (Refill)


class Refill:
    """The rule of a bounded cache keyed by topic: when it is full it starts again (is
    cleared) at most every ``period_s``; in between, a new topic is not cached and takes the
    slow path.  Clearing at every new topic once there were more topics than the bound
    made every frame a miss: a collector at 200,000 topics took 37 µs a frame, not 2.7."""

    __slots__ = ("_next", "period_s")

    def __init__(self, period_s: float = REFILL_S) -> None:
        self.period_s = period_s
        self._next = 0.0

    def room(self, cache: dict[Any, Any], size: int) -> bool:
        """May ``cache`` take one more entry (it is cleared first when it is full and its
        time to start again has come)?"""
        if len(cache) < size:
            return True
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.period_s
        cache.clear()
        return True


class Decoder:
    """Splits, decodes and checks messages; keeps a bounded cache of good names.

    ``decode`` returns the frame or raises :class:`WireError`.  A frame is
    accepted only when its topic is exactly the one its own ``site``,
    ``device_id`` and ``sensor`` give, its names are valid and it has at most
    ``max_samples`` samples.
    """

    def __init__(self, max_samples: int = 1024, cache_size: int = 65536) -> None:
        from google.protobuf.message import DecodeError

        from sensorwire.proto.v1.telemetry_pb2 import Frame

        self._parse = Frame.FromString
        self._decode_error = DecodeError
        self.max_samples = max_samples
        self._cache_size = cache_size
        self._refill = Refill()
        # topic -> (is a heartbeat topic, site, device, sensor) of the frames seen valid on it
        self._good_topics: dict[bytes, tuple[bool, str, str, str]] = {}
        self._good_metrics: set[str] = set()
        self._good_units: set[str] = set()

    def decode(self, msg: bytes) -> Frame:
        idx = msg.find(DELIM, 0, MAX_TOPIC_BYTES + 1)
        if idx < 0:
            raise WireError("no_delimiter", f"no 0x00 after the topic in {len(msg)} bytes")
        topic = msg[:idx]
        try:
            frame = self._parse(msg[idx + 1 :])
        except self._decode_error as exc:
            raise WireError("decode", f"topic {_show(topic)}: payload is not a Frame ({exc})") from None
        if frame.seq > MAX_SEQ:
            raise WireError("bad_seq", f"topic {_show(topic)}: seq {frame.seq} is above "
                            f"{MAX_SEQ} (2^63 - 1, the largest a database stores)")
        known = self._good_topics.get(topic)
        if (known is None or known[0] != (frame.seq == 0) or known[1] != frame.site
                or known[2] != frame.device_id or known[3] != frame.sensor):
            self._check_topic(topic, frame)
        samples = frame.samples
        if len(samples) > self.max_samples:
            raise WireError(
                "too_many_samples",
                f"topic {_show(topic)}: {len(samples)} samples, the limit is {self.max_samples}",
            )
        metrics, units = self._good_metrics, self._good_units
        for s in samples:
            if s.metric not in metrics or s.unit not in units:
                self._check_sample(topic, s.metric, s.unit)
        if not frame.seq:
            self._check_heartbeat(topic, frame)
        return frame

    @staticmethod
    def _check_heartbeat(topic: bytes, frame: Frame) -> None:
        """Bounds on a heartbeat's strings and lists (heartbeats are rare: no cache)."""
        hb = frame.heartbeat
        problem = names.unit_problem(hb.agent_version)  # short, no control characters
        if problem:
            raise WireError("bad_heartbeat", f"topic {_show(topic)}: agent_version {problem}")
        if len(hb.counters) > MAX_HEARTBEAT_COUNTERS:
            raise WireError("bad_heartbeat", f"topic {_show(topic)}: {len(hb.counters)} counters, "
                            f"the limit is {MAX_HEARTBEAT_COUNTERS}")
        if len(hb.unavailable) > MAX_HEARTBEAT_RANGES:
            raise WireError("bad_heartbeat", f"topic {_show(topic)}: {len(hb.unavailable)} "
                            f"unavailable ranges, the limit is {MAX_HEARTBEAT_RANGES}")
        if hb.last_seq > MAX_SEQ or any(r.last > MAX_SEQ for r in hb.unavailable):
            raise WireError("bad_heartbeat", f"topic {_show(topic)}: a seq above {MAX_SEQ} (2^63 "
                            "- 1, the largest a database stores)")
        if not 0.0 <= hb.interval_s <= MAX_HEARTBEAT_INTERVAL_S:  # NaN fails this too
            raise WireError("bad_heartbeat", f"topic {_show(topic)}: interval_s {hb.interval_s} "
                            f"is not between 0 and {MAX_HEARTBEAT_INTERVAL_S:g} s")
        for key in hb.counters:
            problem = names.metric_problem(key)
            if problem:
                raise WireError("bad_heartbeat",
                                f"topic {_show(topic)}: counter {key[:80]!r} {problem}")

    def _check_topic(self, topic: bytes, frame: Frame) -> None:
        try:
            text = topic.decode("ascii")
        except UnicodeDecodeError:
            raise WireError("bad_topic", f"topic {_show(topic)} is not ASCII") from None
        if frame.seq == 0:
            if not frame.HasField("heartbeat"):
                raise WireError("decode", f"topic {text!r}: frame with seq 0 is not a heartbeat")
            expected = f"{frame.site}/{frame.device_id}/{HEARTBEAT}"
        else:
            if frame.HasField("heartbeat"):
                raise WireError("decode", f"topic {text!r}: heartbeat with a seq")
            expected = f"{frame.site}/{frame.device_id}/{frame.sensor}"
        if text != expected:
            raise WireError("topic_mismatch", self._mismatch(topic, frame))
        for what, value in (("site", frame.site), ("device", frame.device_id)):
            problem = names.segment_problem(value)
            if problem:
                raise WireError("bad_name", f"topic {text!r}: {what} {value!r} {problem}")
        if frame.seq:
            problem = names.segment_problem(frame.sensor)
            if problem:
                raise WireError("bad_name", f"topic {text!r}: sensor {frame.sensor!r} {problem}")
        if self._refill.room(self._good_topics, self._cache_size):
            # interned: the topics of one device and site share their strings (and the collector's
            # templates share them too), about 100 bytes a topic less
            self._good_topics[topic] = (frame.seq == 0, intern(frame.site), intern(frame.device_id),
                                        intern(frame.sensor))

    def _check_sample(self, topic: bytes, metric: str, unit: str) -> None:
        problem = names.metric_problem(metric)
        if problem:
            raise WireError("bad_name", f"topic {_show(topic)}: metric {metric[:80]!r} {problem}")
        problem = names.unit_problem(unit)
        if problem:
            raise WireError("bad_name", f"topic {_show(topic)}: unit {unit[:40]!r} {problem}")
        if len(self._good_metrics) >= self._cache_size:
            self._good_metrics.clear()
        if len(self._good_units) >= self._cache_size:
            self._good_units.clear()
        self._good_metrics.add(metric)
        self._good_units.add(unit)

    @staticmethod
    def _mismatch(topic: bytes, frame: Frame) -> str:
        return (
            f"topic {_show(topic)} does not match the frame's own "
            f"site {frame.site[:64]!r}, device {frame.device_id[:64]!r}, "
            f"sensor {frame.sensor[:64]!r}"
        )


def _show(topic: bytes) -> str:
    return repr(topic[:MAX_TOPIC_BYTES].decode("ascii", "replace"))
