"""One XPUB socket per proxy: subscriptions, answers and repairs are kept per socket.

Real XSUB sockets stand in for two proxies, bound on loopback; the publisher
connects to both, as an agent with two ``[publish] connect`` endpoints does.
"""

from __future__ import annotations

import time

import zmq
from support import tcp, wait_until

from sensorwire.agent.config import PublishConfig
from sensorwire.agent.publisher import Publisher
from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import Frame, RepairRequest, SeqRange

READINGS = [("t", 21.5, "C")]


def proxy(ctx: zmq.Context[zmq.Socket[bytes]]) -> tuple[str, zmq.Socket[bytes]]:
    ep = tcp()
    sock = ctx.socket(zmq.XSUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(ep)
    return ep, sock


def pump(p: Publisher) -> Publisher:
    """What the agent's loop does when one of its sockets is readable."""
    zmq.select(p.socks, [], [], 0.05)
    p.handle_incoming()
    return p


def seqs(sock: zmq.Socket[bytes]) -> list[int]:
    """The seq of every data frame that arrives within 0.3 s of the last one."""
    out = []
    while sock.poll(300):
        msg = sock.recv()
        if wire.DELIM in msg:
            out.append(Frame.FromString(msg[msg.index(wire.DELIM) + 1:]).seq)
    return out


def test_each_proxy_has_its_socket_and_its_subscriptions(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    (ep_a, a), (ep_b, b) = proxy(ctx), proxy(ctx)
    p = Publisher("gh", "pi-07", PublishConfig(connect=[ep_a, ep_b]))
    p.open(ctx)
    try:
        assert len(p.socks) == 2 and p.sock is p.socks[0]

        def both_subscribed() -> bool:
            a.send(b"\x01")  # again until it arrives: one sent before the connection is up is lost
            b.send(b"\x01")
            pump(p)
            return all(p._subs)
        wait_until(both_subscribed, what="both subscriptions")
        topic, msg = p.build_data("env", READINGS, time.time_ns())
        p.publish(topic, msg)
        assert seqs(a) == [1] and seqs(b) == [1]

        # a ping is answered on the connection it came on only
        b.send(b"\x03nonce")
        wait_until(lambda: pump(p) and b.poll(0), what="the answer")
        assert b.recv() == wire.ACK + b"nonce" and not a.poll(200)

        # a repair is answered through the proxy that asked for it
        req = RepairRequest(device_id="pi-07", ranges=[SeqRange(boot_id=p.boot_id, first=1, last=1)])
        a.send(wire.REPAIR + req.SerializeToString())
        wait_until(lambda: pump(p).counters["repaired"], what="the repair")
        assert seqs(a) == [1] and seqs(b) == []

        # one proxy's subscriber gone: the other's subscription still holds
        def unsubscribed() -> bool:
            a.send(b"\x00")  # XSUB counts the subscriptions sent above: one unsubscribe each
            pump(p)
            return not p._subs[0]
        wait_until(unsubscribed, what="the unsubscription")
        assert p.subscriptions == {b""} and p.listened(topic)
        p.publish(*p.build_data("env", READINGS, time.time_ns()))
        assert seqs(b) == [2] and seqs(a) == []
        assert p.counters["frames_sent"] == 2 and p.counters["spooled"] == 0
    finally:
        p.close()
        a.close()
        b.close()
