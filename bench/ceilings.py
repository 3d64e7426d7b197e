"""Ceilings measured in the same run: what no transport row can beat on this machine.

* **build + encode**: frames/s one process builds and encodes (the
  publisher's share of every row; every frame is built once);
* **decode**: frames/s one process parses with ``Frame.FromString`` (the
  subscriber's share);
* **pyzmq one-part**: messages/s of the same size (topic 0x00 frame, already
  encoded) from a PUSH to a PULL in another process over tcp://127.0.0.1,
  with no protobuf work at all: the messaging layer's own limit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

import zmq

from bench import procs, workload
from bench.procs import BenchError


@dataclass(frozen=True)
class Ceilings:
    frame_bytes: int
    encode_per_s: float
    decode_per_s: float
    zmq_per_s: float


def measure(duration_s: float = 1.0) -> Ceilings:
    return Ceilings(
        frame_bytes=workload.frame_size(),
        encode_per_s=encode_rate(duration_s),
        decode_per_s=decode_rate(duration_s),
        zmq_per_s=zmq_rate(duration_s),
    )


def encode_rate(duration_s: float) -> float:
    builder = workload.FrameBuilder()
    build = builder.build
    n = 0
    start = time.perf_counter()
    end = start + duration_s
    while (now := time.perf_counter()) < end:
        for _ in range(1000):
            build()
        n += 1000
    return n / (now - start)


def decode_rate(duration_s: float) -> float:
    payload = workload.FrameBuilder().build()
    parse = workload.decode
    n = 0
    start = time.perf_counter()
    end = start + duration_s
    while (now := time.perf_counter()) < end:
        for _ in range(1000):
            parse(payload)
        n += 1000
    return n / (now - start)


def zmq_rate(duration_s: float) -> float:
    port = procs.free_port()
    endpoint = f"tcp://{procs.LOOPBACK}:{port}"
    parent, child = procs.SPAWN.Pipe()
    proc = procs.SPAWN.Process(target=_pull, args=(child, endpoint), daemon=True,
                               name="bench-ceiling-pull")
    proc.start()
    child.close()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    try:
        if not parent.poll(15.0):
            raise BenchError("the ceiling's PULL process did not start within 15 s")
        parent.recv()
        push.setsockopt(zmq.LINGER, 1000)
        push.setsockopt(zmq.SNDTIMEO, 5000)
        push.connect(endpoint)
        msg = workload.TOPIC.encode() + b"\x00" + workload.FrameBuilder().build()
        send = push.send
        send(b"start")
        end = time.perf_counter() + duration_s
        while time.perf_counter() < end:
            for _ in range(1000):
                send(msg)
        send(b"")  # the end marker
        if not parent.poll(duration_s + 15.0):
            raise BenchError("the ceiling's PULL process did not report")
        count, first_ns, last_ns = parent.recv()
        return float(count / ((last_ns - first_ns) / 1e9))
    except zmq.Again:
        raise BenchError("the ceiling's PULL process stopped taking messages") from None
    finally:
        push.close()
        ctx.term()
        parent.close()
        procs.stop_process(proc)


def _pull(conn: Connection, endpoint: str) -> None:
    """Count messages until the empty end marker; report (count, first, last) receive times."""
    procs.ignore_sigint()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    try:
        pull.setsockopt(zmq.LINGER, 0)
        pull.setsockopt(zmq.RCVTIMEO, 10_000)
        pull.bind(endpoint)
        conn.send("ready")
        recv = pull.recv
        recv()  # b"start"
        first_ns = time.time_ns()
        count = 0
        while recv():
            count += 1
        conn.send((count, first_ns, time.time_ns()))
    except zmq.Again:
        conn.send((0, 0, 1))
    finally:
        pull.close()
        ctx.term()
