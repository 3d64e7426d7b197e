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


IPC_PATH_MAX = 107  # bytes in a Unix socket address, less the final NUL


def endpoint_problem(endpoint: str, connect: bool = False) -> str | None:
    """What is wrong with a tcp:// or ipc:// endpoint that libzmq would take anyway or refuse
    only when it is used (a port past 65535 wraps around to another port), or None.
    ``connect``: the endpoint is connected to, so ``*`` is no host."""
    if "://" not in endpoint:
        return (f"{endpoint!r} names no transport: write it like tcp://127.0.0.1:5556 or "
                "ipc:///run/sensorwire/proxy.sock")
    if endpoint.startswith("tcp://"):
        address = endpoint[6:].rsplit(";", 1)[-1]  # "source;destination" connects
        host, sep, port = address.rpartition(":")
        if not sep or not host:
            return f"{endpoint!r} needs a host and a port, like tcp://127.0.0.1:5556 or tcp://*:5556"
        if connect and host == "*":
            return (f"{endpoint!r}: * binds every address, it names no host to connect to: "
                    f"write the proxy's host, like tcp://127.0.0.1:{port}")
        if port != "*" and not (port.isdigit() and 1 <= int(port) <= 65535):
            return f"{endpoint!r}: port {port!r} is not a number from 1 to 65535 (or * to bind any)"
    elif endpoint.startswith("ipc://"):
        path = endpoint[6:]
        if not path:
            return f"{endpoint!r} needs a path, like ipc:///run/sensorwire/proxy.sock"
        if len(path.encode()) > IPC_PATH_MAX:
            return (f"{endpoint[:40]!r}...: the path is {len(path.encode())} bytes, a Unix socket "
                    f"allows {IPC_PATH_MAX}: use a shorter one")
    return None


def check_endpoints(key: str, endpoints: list[str]) -> None:
    """ValueError for the first bad endpoint, as config checks raise it ("key: [i] what")."""
    for i, ep in enumerate(endpoints):
        problem = endpoint_problem(ep, connect=key == "connect")
        if problem:
            raise ValueError(f"{key}: [{i}] {problem}")


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
