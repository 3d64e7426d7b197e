"""Binding and connecting ZeroMQ sockets with errors a person can act on; multi-part leftovers."""

from __future__ import annotations

import logging

import zmq

log = logging.getLogger(__name__)


class EndpointError(Exception):
    """An endpoint could not be bound or connected; the message names it."""


def bind(sock: zmq.Socket[bytes], endpoint: str) -> None:
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        hint = ""
        if exc.errno == zmq.EADDRINUSE:
            hint = " (another process is using it: stop it or choose another port)"
        elif exc.errno in (zmq.EPROTONOSUPPORT, zmq.EINVAL):
            hint = " (write it like tcp://127.0.0.1:5556, tcp://*:5556 or ipc:///run/x.sock)"
        raise EndpointError(f"cannot bind {endpoint}: {exc.strerror}{hint}") from None


def connect(sock: zmq.Socket[bytes], endpoint: str) -> None:
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        raise EndpointError(
            f"cannot connect to {endpoint}: {exc.strerror} "
            "(write it like tcp://host:5556 or ipc:///run/x.sock)"
        ) from None


def is_local(endpoint: str) -> bool:
    """True for loopback TCP, ipc:// and inproc:// endpoints."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if endpoint.startswith("tcp://"):
        host = endpoint[6:].rsplit(":", 1)[0].strip("[]")
        return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
    return False


def skip_parts(sock: zmq.Socket[bytes]) -> int:
    """Receive and drop the rest of a multi-part message; returns its number of parts in all."""
    parts = 1
    while sock.rcvmore:
        sock.recv()
        parts += 1
    return parts
