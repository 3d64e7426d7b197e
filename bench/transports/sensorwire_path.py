"""The sensorwire row: the product's own code, agent -> proxy -> collector.

Kept in a file of its own because it calls the product's APIs, which change;
everything else in ``bench/`` only knows the wire format.  What runs, as of
this writing:

* publisher process: ``sensorwire.agent.publisher.Publisher`` (XPUB with
  ``XPUB_NODROP``, its ``build_data`` + ``publish``, the same 8
  readings as every peer), connected to the proxy's frontend, its incoming
  messages handled whenever the socket is readable, as the agent's loop
  does.  A refused send (``zmq.Again`` at the high-water mark) is counted by
  the Publisher and reported here as not accepted.  No agent loop runs, so
  no heartbeats are sent;
* a ``sensorwire proxy --frontend EP --backend EP`` process (the real CLI);
* subscriber process: the whole ``sensorwire.collector.runtime.Collector.run``
  loop (its SUB socket options, filters, poller, ``drain`` with the real
  ``Intake`` (``wire.Decoder``'s checks, then a per-topic template) and its
  counters), with no storage: the one sink runner is
  replaced by a tap that hands each decoded batch to the bench as
  ``drain`` offers it, so latency is measured when the collector has the
  decoded frames, as for every peer, not after SQLite.

A second row, ``sensorwire-hosted-proxy`` (not in the default run), is the
same agent and collector with libzmq's proxy in a thread of the collector's
process instead of a ``sensorwire proxy`` process: the collector's XSUB
connects to it over ``inproc://``, in the context it is given.  The product
has no such mode; the row measures what one would give.

Hooks to revisit when the product changes: ``Publisher(site, device,
PublishConfig)``, ``.open(ctx)``, ``.build_data``, ``.publish`` (refusals
counted in ``.counters["dropped_hwm"]``, or ``"spooled"``), ``.handle_incoming``, ``.seq``,
``.counters``, ``.sock``; ``Collector(config, sinks=[])``, ``.runners``
(the list ``drain`` offers batches to; ``offer`` returns what it could not
take), ``.run(stop, ready, context=)``; ``CollectorConfig``/``SubscribeConfig``/
``StorageConfig(kind="none")``; ``SinkRunner``; ``StopSignal().set()``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import zmq

from bench import procs, workload
from bench.transports.base import Env, Handler, SyncSender, Transport


class _Agent(SyncSender):
    """The agent's publishing code; the FrameBuilder of the base class is not used."""

    def __init__(self, frontend: str) -> None:
        super().__init__()
        from sensorwire.agent.config import PublishConfig
        from sensorwire.agent.publisher import Publisher

        config = PublishConfig(connect=[frontend])
        self.publisher = Publisher(workload.SITE, workload.DEVICE, config)
        self.ctx: zmq.Context[zmq.Socket[bytes]] | None = None

    @property
    def next_seq(self) -> int:
        return int(self.publisher.seq) + 1

    def open(self) -> None:
        self.ctx = zmq.Context()
        self.publisher.open(self.ctx)

    def send(self, n: int) -> int:
        pub = self.publisher
        build, publish, counters = pub.build_data, pub.publish, pub.counters
        sensor, readings = workload.SENSOR, workload.READINGS
        refused = counters["dropped_hwm"] + counters.get("spooled", 0)
        for _ in range(n):
            topic, msg = build(sensor, readings, time.time_ns())
            publish(topic, msg)
        ok = n - (counters["dropped_hwm"] + counters.get("spooled", 0) - refused)
        # as the agent's loop does when its socket is readable
        sock = pub.sock
        if sock is not None and sock.poll(0, zmq.POLLIN):
            pub.handle_incoming()
        return int(ok)

    def run(self, pace: Any, should_stop: Callable[[], bool] | None = None) -> Any:
        self.publisher.handle_incoming()
        return super().run(pace, should_stop)

    def close(self) -> None:
        self.publisher.close()
        if self.ctx is not None:
            self.ctx.term()


def _tap(handle: Handler) -> Any:
    """A SinkRunner that passes each offered batch to ``handle`` at once, in the drain thread."""
    from sensorwire.collector.sinks import Item, SinkRunner

    class NullSink:
        name = "bench-tap"

        def open(self) -> None:
            pass

        def write(self, batch: Sequence[Item]) -> None:
            pass

        def close(self) -> None:
            pass

    class Tap(SinkRunner):
        def offer(self, batch: list[Item], samples: int | None = None) -> list[Item]:
            for frame, _received_ns in batch:
                handle(frame)
            self.written += len(batch)
            return []  # the frames it could not take: none

    return Tap(NullSink())


class _Collector:
    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.collector: Any = None

    def run(self, handle: Handler, stop: threading.Event, ready: Callable[[], None],
            context: zmq.Context[zmq.Socket[bytes]] | None = None) -> None:
        from sensorwire.collector.config import CollectorConfig, LimitsConfig, StorageConfig, SubscribeConfig
        from sensorwire.collector.runtime import Collector
        from sensorwire.lifecycle import StopSignal

        # one device at tens of thousands of frames/s: the per-device flood limit is off here
        config = CollectorConfig(subscribe=SubscribeConfig(connect=[self.backend]),
                                 storage=StorageConfig(kind="none"),
                                 limits=LimitsConfig(max_frames_per_s_per_device=0))
        self.collector = Collector(config, sinks=[])
        self.collector.runners = [_tap(handle)]
        sw_stop = StopSignal()  # not installed: no signal handlers, set() from the bridge below

        def bridge() -> None:
            stop.wait()
            sw_stop.set()

        threading.Thread(target=bridge, name="bench-stop-bridge", daemon=True).start()
        try:
            self.collector.run(sw_stop, ready=ready, context=context)
        finally:
            sw_stop.set()
            sw_stop.close()

    def details(self) -> dict[str, object]:
        c = self.collector
        if c is None:
            return {}
        return {"collector_received": getattr(c, "received", None),
                "collector_accepted": getattr(c, "accepted", None),
                "collector_rejected": dict(getattr(c, "rejected", {}))}


class SensorwirePath(Transport):
    name = "sensorwire"
    label = "sensorwire (agent → proxy → collector)"
    practice = ("the product's code: agent Publisher.build_data + publish (XPUB, "
                "XPUB_NODROP, SNDHWM 10000) → `sensorwire proxy` process → the whole "
                "Collector.run loop (its socket, poller, drain with NOBLOCK, the collector's Intake "
                "(wire.Decoder's checks, then a per-topic template) and "
                "counters), frames tapped where drain hands batches to the sinks (no storage)")

    def versions(self) -> str:
        import sensorwire

        return f"sensorwire {sensorwire.__version__}"

    @contextlib.contextmanager
    def services(self) -> Iterator[Env]:
        p_front, p_back = procs.free_port(), procs.free_port()
        front = f"tcp://{procs.LOOPBACK}:{p_front}"
        back = f"tcp://{procs.LOOPBACK}:{p_back}"
        argv = ["-m", "sensorwire", "proxy", "--frontend", front, "--backend", back]
        with procs.command(argv, [p_front, p_back]) as pid:
            yield {"frontend": front, "backend": back, "proxy_pid": str(pid)}

    def sender(self, env: Env) -> _Agent:
        return _Agent(env["frontend"])

    def receiver(self, env: Env) -> _Collector:
        return _Collector(env["backend"])




PROXY_HWM = 100_000  # `sensorwire proxy`'s default ([proxy] hwm)


class _HostedProxyCollector(_Collector):
    """The collector with libzmq's proxy in a thread of its own process, on ``inproc://``."""

    def __init__(self, frontend: str) -> None:
        super().__init__("inproc://backend")
        self.frontend = frontend

    def run(self, handle: Handler, stop: threading.Event, ready: Callable[[], None],
            context: zmq.Context[zmq.Socket[bytes]] | None = None) -> None:
        from bench.transports.zmq_plain import hosted_proxy

        with hosted_proxy(self.frontend, self.backend, hwm=PROXY_HWM) as ctx:
            super().run(handle, stop, ready, context=ctx)


class SensorwireHostedProxy(SensorwirePath):
    """What a proxy inside the collector's process would give (not a product feature)."""

    name = "sensorwire-hosted-proxy"
    label = "sensorwire, the proxy inside the collector's process"
    practice = ("as the sensorwire row, but the agent's Publisher connects to the collector's "
                "process, which runs libzmq's zmq.proxy_steerable in a thread (XSUB frontend on "
                "tcp, XPUB backend on inproc, HWMs as `sensorwire proxy`'s) and the whole "
                "Collector.run loop on an XSUB connected to it over inproc")

    @contextlib.contextmanager
    def services(self) -> Iterator[Env]:
        yield {"frontend": f"tcp://{procs.LOOPBACK}:{procs.free_port()}"}

    def receiver(self, env: Env) -> _HostedProxyCollector:
        return _HostedProxyCollector(env["frontend"])
