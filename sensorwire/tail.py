"""``sensorwire tail``: print every frame as one JSON line, like mosquitto_sub."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import zmq

from sensorwire import render
from sensorwire.lifecycle import StopSignal
from sensorwire.proto import wire
from sensorwire.security import ClientSecurity, Security

log = logging.getLogger(__name__)


def run(endpoints: list[str], prefixes: list[str], stop: StopSignal, out: TextIO = sys.stdout,
        count: int | None = None, security: ClientSecurity | None = None) -> int:
    filters: list[bytes] = []
    for p in prefixes or [""]:
        filters += [f for f in wire.subscriptions(p) if f not in filters]
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    decoder = wire.Decoder()
    printed = 0
    sec = Security(security, "tail")
    try:
        sec.open(ctx)
        for f in filters:
            sub.setsockopt(zmq.SUBSCRIBE, f)
        for ep in endpoints:
            sec.connect(sub, ep, "tail")
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(stop.fd, zmq.POLLIN)
        while not stop.is_set():
            events = dict(poller.poll())
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
                    log.warning("skipped a bad message: %s", exc)
                    continue
                topic = msg[: msg.index(wire.DELIM)].decode("ascii")
                out.write(render.json_line(render.frame_dict(frame, topic)) + "\n")
                out.flush()
                printed += 1
                if count is not None and printed >= count:
                    return 0
    except BrokenPipeError:
        return 0
    finally:
        sub.close()
        sec.close()
        ctx.term()
    return 0
