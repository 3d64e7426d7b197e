"""Plain pyzmq PUB -> SUB, the way a careful pyzmq user writes it.

Three rows: two-part messages (topic part, payload part), one-part messages
(``topic 0x00 payload``, sensorwire's framing, without its code), and
one-part messages through an XSUB/XPUB proxy process running libzmq's own
``zmq.proxy_steerable``.  A fourth, not in the default run
(``--only zmq-hosted-proxy``), hosts that proxy in the subscriber's own
process, its SUB on ``inproc://``: what the proxy hop costs when it is not a
process of its own (``hosted_proxy``, which the ``sensorwire-hosted-proxy`` row
uses too).  Defaults everywhere (HWM 1000 each way), TCP on
127.0.0.1, the subscriber blocks in ``poll`` and then drains with
``NOBLOCK`` in batches.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection

import zmq

from bench import procs, workload
from bench.transports.base import Env, Handler, Receiver, SyncSender, Transport

TOPIC = workload.TOPIC.encode()
DRAIN = 1000  # messages per wake-up at most


class _Pub(SyncSender):
    def __init__(self, endpoint: str, bind: bool, two_part: bool) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.bind = bind
        self.two_part = two_part
        self.ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self.sock: zmq.Socket[bytes] | None = None

    def open(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        if self.bind:
            self.sock.bind(self.endpoint)
        else:
            self.sock.connect(self.endpoint)

    def send(self, n: int) -> int:
        assert self.sock is not None
        send, build = self.sock.send, self.builder.build
        if self.two_part:
            for _ in range(n):
                payload = build()
                send(TOPIC, zmq.SNDMORE)
                send(payload)
        else:
            head = TOPIC + b"\x00"
            for _ in range(n):
                send(head + build())
        return n  # a PUB socket drops silently at its high-water mark

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        if self.ctx is not None:
            self.ctx.term()


def receive(sub: zmq.Socket[bytes], handle: Handler, stop: threading.Event,
            two_part: bool) -> None:
    """Until ``stop``: wait in ``poll``, then drain with ``NOBLOCK`` (at most DRAIN per wake-up),
    handing each frame on as soon as it is decoded."""
    decode, recv = workload.decode, sub.recv
    while not stop.is_set():
        if not sub.poll(100):
            continue
        for _ in range(DRAIN):
            try:
                msg = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if two_part:
                handle(decode(recv()))
            else:
                handle(decode(msg[msg.index(b"\x00") + 1:]))


class _Sub:
    def __init__(self, endpoint: str, two_part: bool) -> None:
        self.endpoint = endpoint
        self.two_part = two_part

    def run(self, handle: Handler, stop: threading.Event, ready: Callable[[], None]) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        try:
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, TOPIC if self.two_part else TOPIC + b"\x00")
            sub.connect(self.endpoint)
            ready()
            receive(sub, handle, stop, self.two_part)
        finally:
            sub.close()
            ctx.term()

    def details(self) -> dict[str, object]:
        return {}


def _zmq_versions() -> str:
    return f"pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}"


class ZmqTwoPart(Transport):
    name = "zmq-2part"
    label = "plain pyzmq PUB→SUB, two-part messages"
    practice = ("PUB binds, SUB connects over tcp://127.0.0.1; topic part + payload part; "
                "default HWMs; the SUB polls, then drains with NOBLOCK in batches")

    def __init__(self, two_part: bool = True) -> None:
        self.two_part = two_part

    def versions(self) -> str:
        return _zmq_versions()

    @contextlib.contextmanager
    def services(self) -> Iterator[Env]:
        yield {"endpoint": f"tcp://{procs.LOOPBACK}:{procs.free_port()}"}

    def sender(self, env: Env) -> _Pub:
        return _Pub(env["endpoint"], bind=True, two_part=self.two_part)

    def receiver(self, env: Env) -> Receiver:
        return _Sub(env["endpoint"], two_part=self.two_part)


class ZmqOnePart(ZmqTwoPart):
    name = "zmq-1part"
    label = "plain pyzmq PUB→SUB, one-part messages"
    practice = ("as two-part, but one part: topic 0x00 payload (sensorwire's framing), "
                "the SUB filter is the topic plus 0x00")

    def __init__(self) -> None:
        super().__init__(two_part=False)


class ZmqProxy(ZmqTwoPart):
    name = "zmq-proxy"
    label = "plain pyzmq one-part through an XSUB/XPUB proxy"
    practice = ("one-part messages; PUB and SUB both connect to a separate proxy process "
                "running libzmq's zmq.proxy_steerable (XSUB frontend, XPUB backend)")

    def __init__(self) -> None:
        super().__init__(two_part=False)

    @contextlib.contextmanager
    def services(self) -> Iterator[Env]:
        front = f"tcp://{procs.LOOPBACK}:{procs.free_port()}"
        back = f"tcp://{procs.LOOPBACK}:{procs.free_port()}"
        with procs.helper(run_proxy, front, back) as pid:
            yield {"frontend": front, "backend": back, "proxy_pid": str(pid)}

    def sender(self, env: Env) -> _Pub:
        return _Pub(env["frontend"], bind=False, two_part=False)

    def receiver(self, env: Env) -> _Sub:
        return _Sub(env["backend"], two_part=False)


@contextlib.contextmanager
def hosted_proxy(frontend: str, backend: str,
                 hwm: int | None = None) -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    """libzmq's proxy in a thread of this process: XSUB bound on ``frontend``, XPUB bound on
    ``backend`` (an ``inproc://`` endpoint); yields the context to connect to ``backend`` in.
    ``hwm``: the proxy's queue per peer each way (None: libzmq's default, 1000)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    front, back = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
    ctl_in, ctl_out = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    for s in (front, back, ctl_in, ctl_out):
        s.setsockopt(zmq.LINGER, 0)
    if hwm is not None:
        front.setsockopt(zmq.RCVHWM, hwm)
        back.setsockopt(zmq.SNDHWM, hwm)
    ctl_in.bind("inproc://control")
    ctl_out.connect("inproc://control")
    front.bind(frontend)
    back.bind(backend)
    thread = threading.Thread(target=zmq.proxy_steerable, args=(front, back, None, ctl_in),
                              daemon=True)
    thread.start()
    try:
        yield ctx
    finally:
        ctl_out.send(b"TERMINATE")
        thread.join(5.0)
        for s in (front, back, ctl_in, ctl_out):
            s.close()
        ctx.term()  # waits for the sockets made in ctx by the caller to be closed


class _HostedProxySub:
    """A SUB on ``inproc://`` behind libzmq's proxy, all in the subscriber's process."""

    def __init__(self, frontend: str) -> None:
        self.frontend = frontend

    def run(self, handle: Handler, stop: threading.Event, ready: Callable[[], None]) -> None:
        with hosted_proxy(self.frontend, "inproc://backend") as ctx:
            sub = ctx.socket(zmq.SUB)
            try:
                sub.setsockopt(zmq.LINGER, 0)
                sub.setsockopt(zmq.SUBSCRIBE, TOPIC + b"\x00")
                sub.connect("inproc://backend")
                ready()
                receive(sub, handle, stop, two_part=False)
            finally:
                sub.close()

    def details(self) -> dict[str, object]:
        return {}


class ZmqHostedProxy(ZmqOnePart):
    name = "zmq-hosted-proxy"
    label = "plain pyzmq one-part, the proxy inside the subscriber's process"
    practice = ("one-part messages; the PUB connects to the subscriber's process, which runs "
                "libzmq's zmq.proxy_steerable in a thread (XSUB frontend on tcp, XPUB backend "
                "on inproc) and reads a SUB on inproc")

    def sender(self, env: Env) -> _Pub:
        return _Pub(env["endpoint"], bind=False, two_part=False)

    def receiver(self, env: Env) -> Receiver:
        return _HostedProxySub(env["endpoint"])


def run_proxy(conn: Connection, frontend: str, backend: str) -> None:
    """The proxy process: libzmq's proxy in a thread, stopped over its control socket."""
    procs.ignore_sigint()
    with hosted_proxy(frontend, backend):
        conn.send("ready")
        with contextlib.suppress(EOFError):
            conn.recv()
