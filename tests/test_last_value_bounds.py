"""The last-value cache under abuse: what it keeps, and how much it replays.

A real :class:`~sensorwire.proxy.Proxy` with ``last_value_cache = true`` runs in a thread on
loopback ports; the test's sockets play agents (XPUB) and collectors (XSUB).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import zmq
from support import tcp, wait_until

from sensorwire import lastvalue, rolemetrics
from sensorwire.lifecycle import StopSignal
from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import Frame
from sensorwire.proxy import Proxy, ProxyConfig


def frame(sensor: str, seq: int = 1, flags: int = 0) -> bytes:
    f = Frame(site="gh", device_id="pi-1", boot_id=7, seq=seq, time_unix_nano=time.time_ns(),
              sensor=sensor, flags=flags)
    f.samples.add(metric="t", value=1.0, unit="C")
    return f"gh/pi-1/{sensor}".encode() + wire.DELIM + f.SerializeToString()


def cached(msg: bytes) -> bool:
    return bool(Frame.FromString(msg[msg.find(wire.DELIM) + 1:]).flags & wire.FLAG_CACHED)


class Running:
    def __init__(self, **config: object) -> None:
        self.proxy = Proxy(ProxyConfig(frontend=tcp(), backend=tcp(), last_value_cache=True,
                                       **config))  # type: ignore[arg-type]
        self.stop = StopSignal()
        up = threading.Event()
        self.thread = threading.Thread(target=self.proxy.run, args=(self.stop, up.set),
                                       daemon=True)
        self.thread.start()
        assert up.wait(10), "the proxy did not come up"
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.agent = self.socket(zmq.XPUB, self.proxy.config.frontend)

    def socket(self, kind: int, endpoint: str) -> zmq.Socket[bytes]:
        s = self.ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.setsockopt(zmq.SNDHWM, 0)
        s.connect(endpoint)
        return s

    def cache(self, frames: list[bytes]) -> None:
        """Publish ``frames`` through a subscriber to everything, so the proxy sees them all."""
        sub = self.socket(zmq.XSUB, self.proxy.config.backend)
        sub.send(b"\x01gh/pi-1/")  # not the prefix the tests subscribe to after (a duplicate)
        assert self.agent.poll(10_000)
        self.agent.recv()
        for f in frames:
            self.agent.send(f)
        for _ in frames:
            assert sub.poll(10_000), "a frame was not forwarded"
            sub.recv()
        sub.close()

    def subscribe(self, *prefixes: bytes) -> zmq.Socket[bytes]:
        """A collector subscribed to ``prefixes``, once the proxy has read them all."""
        before = self.proxy.subscriptions
        sub = self.socket(zmq.XSUB, self.proxy.config.backend)
        for p in prefixes:
            sub.send(b"\x01" + p)
        wait_until(lambda: self.proxy.subscriptions >= before + len(prefixes),
                   what="the subscriptions read by the proxy")
        return sub

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the proxy did not stop"
        self.stop.close()
        self.ctx.destroy(linger=0)


@pytest.fixture
def running() -> Iterator[Running]:
    r = Running()
    yield r
    r.close()


def until_live(sub: zmq.Socket[bytes], agent: zmq.Socket[bytes]) -> list[bytes]:
    """Everything ``sub`` receives before a live frame sent now (it follows all before it)."""
    live = frame("marker", seq=99)
    agent.send(live)
    got: list[bytes] = []
    while True:
        assert sub.poll(10_000), "the live frame did not arrive"
        msg = sub.recv()
        if msg == live:
            return got
        got.append(msg)


def test_a_duplicate_subscription_is_not_replayed_again(running: Running) -> None:
    running.cache([frame(f"s{i}") for i in range(10)])
    # with XPUB_VERBOSE each reaches the proxy: it used to send 2,000 frames to `sub`
    sub = running.subscribe(*[b"gh/"] * 200)
    got = until_live(sub, running.agent)
    assert len(got) == 10 and all(cached(m) for m in got)
    assert running.proxy.cache is not None
    assert running.proxy.cache.replays_skipped == 199


def test_replays_beyond_the_budget_are_skipped_and_counted(
        running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    running.cache([frame(f"s{i}") for i in range(10)])
    cache = running.proxy.cache
    assert cache is not None
    # distinct prefixes, each new: only the budget stops them (10 frames a second: one replay)
    monkeypatch.setattr(lastvalue, "REPLAY_FRAMES_PER_S", 10)
    cache._tokens = 10.0
    sub = running.subscribe(b"", b"g", b"gh", b"gh/", b"gh/p")
    got = until_live(sub, running.agent)
    assert (cache.replays, cache.replays_skipped) == (2, 4)  # cache()'s subscriber's, and b""
    assert len(got) == 10  # one replay, to the one subscriber


def test_only_frames_the_collectors_accept_are_cached() -> None:
    r = Running()
    try:
        # not a Frame; a topic its frame does not name; no topic at all
        junk = [b"gh/pi-1/env\x00junk", b"gh/pi-1/zz\x00" + frame("env")[12:], b"gh/pi-1/" * 30]
        r.cache([*junk, frame("env")])
        cache = r.proxy.cache
        assert cache is not None
        # the proxy forwards a frame before it caches it: the test may read the cache first
        wait_until(lambda: (len(cache), cache.refused) == (1, 3), timeout_s=5,
                   what="one frame cached and three refused")
        sub = r.subscribe(b"")
        got = until_live(sub, r.agent)
        assert len(got) == 1 and cached(got[0]) and got[0].startswith(b"gh/pi-1/env\x00")
    finally:
        r.close()


def test_the_cache_holds_at_most_last_value_bytes_evicting_the_oldest() -> None:
    size = len(frame("s00"))
    r = Running(last_value_bytes=10 * size)
    try:
        r.cache([frame(f"s{i:02}") for i in range(30)])
        cache = r.proxy.cache
        assert cache is not None
        assert (len(cache), cache.bytes, cache.evicted) == (10, 10 * size, 20)
        sub = r.subscribe(b"")
        got = until_live(sub, r.agent)
        assert sorted(m[:11] for m in got) == [f"gh/pi-1/s{i:02}".encode() for i in range(20, 30)]
    finally:
        r.close()


def test_the_cache_and_its_replays_are_exported_as_metrics(running: Running) -> None:
    running.cache([frame("s1"), frame("s2"), b"gh/pi-1/junk\x00junk"])
    running.subscribe(b"gh/", b"gh/")
    exported = {(f.name, labels): v for f in rolemetrics.proxy_families(running.proxy)
                for labels, v in f.samples}
    assert {k[0]: v for k, v in exported.items() if k[0].startswith("sensorwire_last_value")} == {
        "sensorwire_last_value_topics": 2,
        "sensorwire_last_value_bytes": len(frame("s1")) + len(frame("s2")),
        "sensorwire_last_value_evicted_total": 0,
        "sensorwire_last_value_refused_total": 1,
        "sensorwire_last_value_replays_total": 2,  # cache()'s subscriber's and the first gh/
        "sensorwire_last_value_replays_skipped_total": 1,
        "sensorwire_last_value_replayed_frames_total": 2,
    }
    # every reason from the start, at 0
    for reason in ("subscription_too_long", "unknown_kind", "too_many_subscriptions"):
        assert exported[("sensorwire_upstream_dropped_total", (reason,))] == 0
