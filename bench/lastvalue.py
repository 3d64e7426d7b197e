"""The proxy's last-value cache: what caching a frame costs, and finding a prefix's frames.

    python -m bench.lastvalue [--repeat N]

One process (sockets, inproc, in the third table only): ``LastValueCache`` fed frames as
agents encode them (``sensorwire.proto.encoder.DataEncoder``, the 8 readings of
``bench/workload.py``, 217-219 bytes) on ``<site>/<device>/<sensor>`` topics: 10
sites, 10 sensors a device, as many devices as make 1,000, 10,000 or 100,000 topics.

Three tables, each figure the best of ``--repeat`` rounds (default 3):

1. **Caching a frame**, ns per frame, in the proxy's forwarding loop for every frame
   when the cache is on: ``put`` (the collectors' decoder checks the frame, then it
   is stored), the store alone (``_keep``: the same without the check), the check
   alone (``wire.Decoder.decode``), and the store of the cache before the topic
   index (a dict only; kept here as ``DictStore``), on two kinds of traffic: every
   topic written again in turn (a fleet's steady state), and a new topic each frame
   into a full cache (one topic evicted each: devices churning, or a flood of
   made-up ones).
2. **Finding a new prefix**, µs per subscription: ``LastValueCache.matching`` (the
   topic index) against the linear scan every new subscription used to make
   (``linear_matching``, kept here), for a device prefix (``site/device/``: 10
   topics), one topic (``site/device/sensor`` + 0x00: 1) and a prefix matching
   nothing; and the index with each match marked as a replay marks it
   (``wire.mark_cached``, the same before and after), the replay's cost but
   for sending.
3. **The proxy's Python forwarding step**, ns per frame: ``FrontendFilter.pump``
   (what the proxy runs for each batch when the cache or CURVE is on) moving
   frames from an inproc PULL to an inproc PUSH, with the cache off and on (full,
   every frame on a cached topic): what the cache adds to the path of every frame.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable, Sequence
from itertools import cycle, islice

import zmq

from bench.workload import BOOT_ID, READINGS
from sensorwire.lastvalue import LastValueCache
from sensorwire.proto import wire
from sensorwire.proto.encoder import DataEncoder
from sensorwire.proxy import BATCH
from sensorwire.proxyfilter import FrontendFilter

SITES = 10
SENSORS = 10
SIZES = (1_000, 10_000, 100_000)
TIME_NS = 1_800_000_000_000_000_000


def frames(topics: int, first_device: int = 0) -> list[bytes]:
    """One frame on each of ``topics`` topics, devices numbered from ``first_device``."""
    layout = [(metric, unit) for metric, _, unit in READINGS]
    values = [value for _, value, _ in READINGS]
    out = []
    devices = topics // (SITES * SENSORS)
    for d in range(first_device, first_device + devices):
        for s in range(SITES):
            site, device = f"site-{s:02}", f"pi-{d:06}"
            for k in range(SENSORS):
                sensor = f"sensor-{k}"
                enc = DataEncoder(wire.data_topic(site, device, sensor), site, device, BOOT_ID,
                                  sensor, layout)
                out.append(enc.encode(d + 1, TIME_NS, values))
    return out


class DictStore:
    """How the cache stored a frame before the topic index: a dict in write order."""

    def __init__(self, max_topics: int, max_bytes: int = 64 * 2**20) -> None:
        self.max_topics, self.max_bytes = max_topics, max_bytes
        self.last: dict[bytes, bytes] = {}
        self.bytes = 0

    def keep(self, msg: bytes) -> None:
        topic = msg[:msg.find(wire.DELIM)]
        last = self.last
        old = last.pop(topic, None)
        if old is not None:
            self.bytes -= len(old)
        last[topic] = msg
        self.bytes += len(msg)
        while len(last) > self.max_topics or self.bytes > self.max_bytes:
            self.bytes -= len(last.pop(next(iter(last))))


def linear_matching(last: dict[bytes, bytes], prefix: bytes) -> list[bytes]:
    """What a new subscription cost before the topic index: a pass over every topic."""
    return [msg for topic, msg in list(last.items()) if (topic + wire.DELIM).startswith(prefix)]


def replayed(cache: LastValueCache, prefix: bytes) -> list[bytes]:
    """What a replay sends, without its duplicate and budget checks (a bench asks again)."""
    return [wire.mark_cached(m) for m in cache.matching(prefix)]


def per_frame_ns(feeder: Callable[[], Callable[[bytes], object]], steady: Sequence[bytes],
                 msgs: Sequence[bytes], repeat: int) -> float:
    """Best of ``repeat`` rounds, ns per message of ``msgs``: each round a new ``feeder()``,
    first given every message of ``steady`` (not timed: full, its name caches warm, as in a
    running proxy), then timed over ``msgs``."""
    best = float("inf")
    for _ in range(repeat):
        feed = feeder()
        for m in steady:
            feed(m)
        t0 = time.perf_counter_ns()
        for m in msgs:
            feed(m)
        best = min(best, (time.perf_counter_ns() - t0) / len(msgs))
    return best


def per_call_ns(find: Callable[[bytes], object], prefixes: Sequence[bytes], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for p in prefixes:
            find(p)
        best = min(best, (time.perf_counter_ns() - t0) / len(prefixes))
    return best


def caching(size: int, steady: list[bytes], fresh: list[bytes], repeat: int) -> list[str]:
    """One row per traffic kind: ns per frame of put, the store, the check, the old store."""
    cache = LastValueCache(size, 2**40)
    for m in (*steady, *fresh):
        cache.put(m)
    assert (len(cache), cache.refused, cache.evicted) == (size, 0, size), "the frames are not valid"
    feeders: list[Callable[[], Callable[[bytes], object]]] = [
        lambda: LastValueCache(size, 2**40).put,
        lambda: LastValueCache(size, 2**40)._keep,
        lambda: wire.Decoder().decode,
        lambda: DictStore(size, 2**40).keep,
    ]
    rows = []
    for kind, msgs in (("each topic written again", steady), ("a new topic each frame", fresh)):
        figures = [per_frame_ns(f, steady, msgs, repeat) for f in feeders]
        rows.append(f"| {size:,} | {kind} | " + " | ".join(f"{ns:,.0f}" for ns in figures) + " |")
    return rows


def matching(size: int, steady: list[bytes], repeat: int) -> list[str]:
    cache = LastValueCache(size, 2**40)
    for m in steady:
        cache._keep(m)
    last = {m[:m.find(wire.DELIM)]: m for m in steady}
    topics = list(last)
    step = max(1, len(topics) // 50)
    sample = topics[::step][:50]  # 50 topics spread over the cache
    kinds: list[tuple[str, Sequence[bytes], int]] = [
        ("device (`site/device/`)", [t[:t.rindex(b"/") + 1] for t in sample], SENSORS),
        ("one topic (`site/device/sensor` 0x00)", [t + wire.DELIM for t in sample], 1),
        ("nothing (`site/nobody/`)", [t[:t.index(b"/") + 1] + b"nobody/" for t in sample], 0),
    ]
    rows = []
    for kind, prefixes, hits in kinds:
        for p in prefixes:
            got = cache.matching(p)
            assert len(got) == hits and sorted(got) == sorted(linear_matching(last, p)), p
        # 5 prefixes for the scan: ~25-40 ms each at 100,000 topics
        old = per_call_ns(functools.partial(linear_matching, last), prefixes[:5], repeat)
        new = per_call_ns(cache.matching, prefixes, repeat)
        marked = per_call_ns(functools.partial(replayed, cache), prefixes, repeat)
        rows.append(f"| {size:,} | {kind} | {hits} | {old / 1000:,.1f} | {new / 1000:,.2f} | "
                    f"{old / new:,.0f}x | {marked / 1000:,.2f} |")
    return rows


def forwarding(steady: list[bytes], frames_per_round: int, repeat: int) -> list[str]:
    """ns per frame of the proxy's Python forwarding step (``FrontendFilter.pump``, batches
    of ``proxy.BATCH``) over inproc sockets, without the cache and with it, the cache full
    with ``steady``'s topics and every frame on one of them."""
    msgs = list(islice(cycle(steady), frames_per_round))
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    socks: list[zmq.Socket[bytes]] = []

    def socket(kind: int, endpoint: str, bind: bool) -> zmq.Socket[bytes]:
        s = ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.bind(endpoint) if bind else s.connect(endpoint)
        socks.append(s)
        return s

    try:
        agent = socket(zmq.PUSH, "inproc://agents", True)
        front = socket(zmq.PULL, "inproc://agents", False)
        back = socket(zmq.PUSH, "inproc://collectors", True)
        collector = socket(zmq.PULL, "inproc://collectors", False)
        rows = []
        for label, cache in (("off", None), ("on", LastValueCache(len(steady), 2**40))):
            if cache is not None:
                for m in steady:
                    cache.put(m)
            pump = FrontendFilter(1024, None, cache=cache).pump
            best = float("inf")
            for _ in range(repeat):
                for m in msgs:
                    agent.send(m)
                moved = 0
                t0 = time.perf_counter_ns()
                while moved < len(msgs):
                    if front.poll(1000):
                        moved += pump(front, back, BATCH)[0]
                    else:
                        raise RuntimeError("frames did not arrive")
                best = min(best, (time.perf_counter_ns() - t0) / len(msgs))
                for _ in msgs:
                    collector.recv()
            rows.append(f"| {len(steady):,} | {label} | {best:,.0f} |")
        return rows
    finally:
        for s in socks:
            s.close()
        ctx.term()


def main(repeat: int, sizes: Sequence[int] = SIZES) -> None:
    t0 = time.monotonic()
    cache_rows: list[str] = []
    match_rows: list[str] = []
    forward_rows: list[str] = []
    for size in sizes:
        print(f"{size:,} topics: building frames", file=sys.stderr)
        steady = frames(size)
        fresh = frames(size, first_device=size // (SITES * SENSORS))
        print(f"{size:,} topics: caching", file=sys.stderr)
        cache_rows += caching(size, steady, fresh, repeat)
        print(f"{size:,} topics: matching", file=sys.stderr)
        match_rows += matching(size, steady, repeat)
        print(f"{size:,} topics: forwarding", file=sys.stderr)
        forward_rows += forwarding(steady, min(size, 20_000), repeat)
    print(f"Last-value cache, {len(steady[0])}-byte frames of 8 readings, best of {repeat} "
          f"({time.monotonic() - t0:.0f} s)\n")
    print("Caching a frame, ns per frame\n")
    print("| topics cached | traffic | put (check + store) | store alone | check alone | "
          "store before the index |")
    print("|---:|---|---:|---:|---:|---:|")
    print("\n".join(cache_rows))
    print("\nFinding a new subscription's topics, µs per prefix\n")
    print("| topics cached | prefix | matches | linear scan (before) | topic index (now) | "
          "speed-up | now, with marking the frames |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    print("\n".join(match_rows))
    print("\nThe proxy's Python forwarding step (FrontendFilter.pump, inproc), ns per frame\n")
    print("| topics cached | last-value cache | ns per frame |")
    print("|---:|---|---:|")
    print("\n".join(forward_rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best is shown")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)),
                        help="topics cached, comma-separated (multiples of 100)")
    args = parser.parse_args()
    main(args.repeat, [int(s) for s in args.sizes.split(",")])
