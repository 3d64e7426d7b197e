"""``sensorwire tail``: print every frame as one JSON line, like mosquitto_sub.

It subscribes with an XSUB socket and pings upstream, so it can say on stderr
when its subscriptions are live; with a proxy's last-value cache on, the
current value of every matching topic arrives at once (``"cached": true``).
When even the newest heartbeat it reads is older than ``max_lag_s`` (its
reader is slower than the stream: a pipe into a slow program), it says so on
stderr (:mod:`sensorwire.lag`), and at the end how many times it happened.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TextIO

import zmq

from sensorwire import render
from sensorwire.lag import LagWatch
from sensorwire.lifecycle import StopSignal
from sensorwire.proto import wire
from sensorwire.security import ClientSecurity, Security

log = logging.getLogger(__name__)

LAG_CHECK_S = 0.5
NO_ANSWER_S = 5.0  # no answer to the ping this long after start: said once on stderr
NOTHING_S = 15.0   # subscribed, and no frame this long after: said once on stderr


def run(endpoints: list[str], prefixes: list[str], stop: StopSignal, out: TextIO = sys.stdout,
        count: int | None = None, security: ClientSecurity | None = None,
        max_lag_s: float = 10.0) -> int:
    filters: list[bytes] = []
    for p in prefixes or [""]:
        filters += [f for f in wire.subscriptions(p) if f not in filters]
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sub = ctx.socket(zmq.XSUB)
    sub.setsockopt(zmq.LINGER, 0)
    decoder = wire.Decoder()
    printed = 0
    nonce = os.urandom(8).hex().encode()
    live = False
    sec = Security(security, "tail", monitor=True)  # says why a handshake fails, plain or not
    lag = LagWatch(max_lag_s, "tail", "--max-lag-s")
    next_check = time.monotonic() + LAG_CHECK_S
    try:
        sec.open(ctx)
        for ep in endpoints:
            sec.connect(sub, ep, "tail")
        for f in filters:
            sub.send(b"\x01" + f)
        sub.send(b"\x01" + wire.ACK + nonce)
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(stop.fd, zmq.POLLIN)
        next_ping = 0.0
        silent_from: float | None = time.monotonic()  # None once the silence was told
        live_at: float | None = None  # None once "nothing received" was told, or not live yet
        while not stop.is_set():
            if not live and time.monotonic() >= next_ping:
                sub.send(wire.PING + nonce)
                next_ping = time.monotonic() + 1.0
            if not live and silent_from is not None and time.monotonic() - silent_from >= NO_ANSWER_S:
                silent_from = None
                log.warning("no answer from %s within %g s: is a proxy running there, and is that "
                            "its backend (tail connects where collectors do, not to the frontend)? "
                            "Still trying; `subscribed` says when it answers", ", ".join(endpoints),
                            NO_ANSWER_S)
            if live_at is not None and not printed and time.monotonic() - live_at >= NOTHING_S:
                live_at = None
                log.warning("nothing received in %g s: no agent publishes under %s, or none is "
                            "connected to the proxy's frontend (tail with no prefix shows "
                            "everything)", NOTHING_S, ", ".join(p or "everything" for p in prefixes or [""]))
            watching = not live or (live_at is not None and not printed)
            events = dict(poller.poll(1000 if watching else None))
            if sub not in events:
                continue
            while True:
                try:
                    msg = sub.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if sub.rcvmore:
                    while sub.rcvmore:
                        sub.recv()
                    log.warning("skipped a multi-part message (not sensorwire)")
                    continue
                try:
                    frame = decoder.decode(msg)
                except wire.WireError as exc:
                    if msg == wire.ACK + nonce:
                        if not live:
                            live = True
                            live_at = time.monotonic()
                            log.info("subscribed: %s", ", ".join(p or "everything" for p in prefixes or [""]))
                    elif not msg.startswith(wire.ACK):
                        log.warning("skipped a bad message: %s", exc)
                    continue
                topic = msg[: msg.index(wire.DELIM)].decode("ascii")
                out.write(render.json_line(render.frame_dict(frame, topic)) + "\n")
                out.flush()
                printed += 1
                if frame.HasField("heartbeat") and not frame.flags & wire.FLAG_CACHED:
                    # a heartbeat is never replayed, and a proxy's cached copy is left out
                    lag.saw(frame.time_unix_nano, frame.heartbeat.clock_synced)
                if count is not None and printed >= count:
                    return 0
                if time.monotonic() >= next_check:  # here: a tail that is behind never runs dry
                    lag.check(time.time_ns(), time.monotonic())
                    next_check = time.monotonic() + LAG_CHECK_S
    except BrokenPipeError:
        return 0
    finally:
        if lag.fell_behind:
            log.warning("tail fell behind %d times (--max-lag-s %g)", lag.fell_behind, max_lag_s)
        sub.close()
        sec.close()
        ctx.term()
    return 0
