"""What bounds the subscriptions an agent's socket holds: their size and their number.

libzmq keeps every subscription a socket's peers hold (15 to 85 bytes of memory per
subscribed byte); the agent disconnects a peer that sends a message longer than
UPSTREAM_MAX_BYTES, and drops every connection of a socket whose peers hold more than
its budget, which frees them, then attaches it again.  Real sockets on loopback.
"""

from __future__ import annotations

import os
import time

import pytest
import zmq
from support import tcp, wait_until

from sensorwire.agent import publisher as publisher_mod
from sensorwire.agent.config import PublishConfig
from sensorwire.agent.publisher import Publisher
from sensorwire.proto import wire

READINGS = [("t", 21.5, "C")]


def pump(p: Publisher) -> Publisher:
    zmq.select(p.socks, [], [], 0.05)
    p.handle_incoming()
    p.replay()  # also attaches again a socket whose reset wait is over
    return p


def subscriber(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.XSUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def test_a_message_longer_than_the_limit_disconnects_its_sender(
        ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    ep = tcp()
    p = Publisher("gh", "pi-07", PublishConfig(bind=[ep]))
    p.open(ctx)
    big = subscriber(ctx, ep)
    try:
        def subscribed() -> bool:
            big.send(b"\x01gh/")
            pump(p)
            return b"gh/" in p.subscriptions
        wait_until(subscribed, what="the first subscription")
        big.send(b"\x01" + b"x" * publisher_mod.UPSTREAM_MAX_BYTES)
        # the sender is disconnected: its subscriptions go with it, the long one never came
        wait_until(lambda: not pump(p).subscriptions, what="the sender's subscriptions to go")
        assert all(len(s) < 100 for s in p._subs[0])
    finally:
        p.close()
        big.close()


def test_past_the_budget_the_socket_drops_its_peers_and_attaches_again(
        ctx: zmq.Context[zmq.Socket[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publisher_mod, "RESET_MIN_S", 0.5)
    ep = tcp()
    p = Publisher("gh", "pi-07", PublishConfig(bind=[ep]))
    p.open(ctx)
    flood = subscriber(ctx, ep)
    legit = ctx.socket(zmq.SUB)
    legit.setsockopt(zmq.LINGER, 0)
    legit.connect(ep)
    legit.subscribe(b"gh/pi-07/")
    try:
        wait_until(lambda: b"gh/pi-07/" in pump(p).subscriptions, what="the collector's subscription")
        n = publisher_mod.MAX_SUBSCRIPTION_BYTES // 1024 + 10
        for i in range(n):
            flood.send(b"\x01%08d" % i + os.urandom(1016))
        most = 0

        def reset() -> int:
            nonlocal most
            pump(p)
            most = max(most, len(p.subscriptions))
            return p.counters["subscription_resets"]
        wait_until(reset, what="the reset")
        assert p.counters["subscriptions_refused"] >= 1
        assert most <= publisher_mod.MAX_SUBSCRIPTION_BYTES // 1024 + publisher_mod.UPSTREAM_HWM + 2
        # every connection dropped: libzmq reports each subscription gone, so does the agent
        wait_until(lambda: not pump(p).subscriptions, what="the subscriptions to go")
        assert p._sub_bytes == [0]
        topic, msg = p.build_data("env", READINGS, time.time_ns())
        assert not p.listened(topic)
        # bound again after the wait: the collector subscribes again by itself (libzmq)
        flood.close()
        def again() -> bool:
            legit.poll(0)  # a SUB subscribes again when it is used after the reconnection
            return b"gh/pi-07/" in pump(p).subscriptions
        wait_until(again, what="the collector to subscribe again")
        p.publish(*p.build_data("env", READINGS, time.time_ns()))
        assert legit.poll(2000), "the collector gets frames again"
        assert legit.recv().startswith(b"gh/pi-07/env" + wire.DELIM)
        assert p.counters["subscription_resets"] == 1
    finally:
        p.close()
        flood.close()
        legit.close()


def test_a_proxy_connection_is_dropped_and_made_again(
        ctx: zmq.Context[zmq.Socket[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The socket of a ``connect`` endpoint disconnects; the proxy's XSUB, once connected
    again, sends the subscriptions it holds (here: the legitimate one only)."""
    monkeypatch.setattr(publisher_mod, "RESET_MIN_S", 0.5)
    monkeypatch.setattr(publisher_mod, "MAX_SUBSCRIPTIONS", 50)
    ep = tcp()
    proxy = ctx.socket(zmq.XSUB)
    proxy.setsockopt(zmq.LINGER, 0)
    proxy.bind(ep)
    p = Publisher("gh", "pi-07", PublishConfig(connect=[ep]))
    p.open(ctx)
    try:
        def subscribed() -> bool:
            proxy.send(b"\x01gh/")
            return b"gh/" in pump(p).subscriptions
        wait_until(subscribed, what="the subscription")
        for i in range(60):
            proxy.send(b"\x01gh/x%d" % i)
        wait_until(lambda: pump(p).counters["subscription_resets"], what="the reset")
        wait_until(lambda: not pump(p).subscriptions, what="the subscriptions to go")
        for i in range(60):
            proxy.send(b"\x00gh/x%d" % i)  # the flood ends: the proxy forgets it
        proxy.poll(0)  # the XSUB takes the new connection when it is used

        def back() -> bool:
            proxy.poll(0)
            return pump(p).subscriptions == {b"gh/"}
        wait_until(back, what="the proxy's subscription again, alone")
        assert p.counters["subscription_resets"] == 1
    finally:
        p.close()
        proxy.close()


def test_listened_costs_the_topic_not_the_subscriptions(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """With thousands of subscriptions, "is anybody listening?" looks up each start of the
    topic rather than trying every subscription."""
    p = Publisher("gh", "pi-07", PublishConfig(bind=[tcp()]))
    p._holders.update({b"gh/other-%05d/" % i: 1 for i in range(10_000)})
    topic = wire.data_topic("gh", "pi-07", "env")
    t0 = time.perf_counter()
    for _ in range(200):
        p._listened.clear()
        assert not p.listened(topic)
    per_call = (time.perf_counter() - t0) / 200
    assert per_call < 200e-6, f"{per_call * 1e6:.0f} µs a look"
    p._holders[b"gh/pi-07/"] = 1
    p._listened.clear()
    assert p.listened(topic)


def test_with_two_proxies_only_the_flooded_ones_connection_is_dropped(
        ctx: zmq.Context[zmq.Socket[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publisher_mod, "RESET_MIN_S", 30.0)  # stays dropped for the test
    monkeypatch.setattr(publisher_mod, "MAX_SUBSCRIPTIONS", 50)
    eps = [tcp(), tcp()]
    proxies = []
    for ep in eps:
        s = ctx.socket(zmq.XSUB)
        s.setsockopt(zmq.LINGER, 0)
        s.bind(ep)
        proxies.append(s)
    a, b = proxies
    p = Publisher("gh", "pi-07", PublishConfig(connect=eps))
    p.open(ctx)
    try:
        def subscribed() -> bool:
            a.send(b"\x01gh/")
            b.send(b"\x01gh/")
            pump(p)
            return all(b"gh/" in subs for subs in p._subs)
        wait_until(subscribed, what="both subscriptions")
        for i in range(60):
            a.send(b"\x01gh/x%d" % i)
        wait_until(lambda: pump(p).counters["subscription_resets"], what="the reset")
        wait_until(lambda: not pump(p)._subs[0], what="proxy a's subscriptions to go")
        assert p._subs[1] == {b"gh/"} and p.subscriptions == {b"gh/"}
        p.publish(*p.build_data("env", READINGS, time.time_ns()))
        assert b.poll(2000) and b.recv().startswith(b"gh/pi-07/env" + wire.DELIM)
        assert p.counters["frames_sent"] == 1 and p.counters["subscription_resets"] == 1
        assert not a.poll(200)
    finally:
        p.close()
        a.close()
        b.close()
