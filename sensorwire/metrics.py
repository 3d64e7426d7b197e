"""Prometheus metrics: the ``[metrics]`` table and the ``/metrics`` endpoint.

Roles count in plain attributes and dicts, as they always have; nothing on a
hot path touches ``prometheus_client``.  At scrape time a collector calls the
role's family functions (:mod:`sensorwire.rolemetrics`), which read those
counters and describe them as :class:`Family` objects; :class:`MetricsServer`
turns them into Prometheus families.  ``prometheus_client`` is imported only
when an endpoint is started, so an agent with metrics off (its default) does
not carry it.

Defaults: the collector listens on ``127.0.0.1:9108``, the proxy on
``127.0.0.1:9109``, the agent nowhere (``listen = "127.0.0.1:9110"`` is the
suggested port).  ``listen = ""`` turns an endpoint off.  When the port of a
*default* endpoint is taken (a second collector on the same host) the role
logs a warning and runs without metrics; a port set in the file that cannot
be bound stops the start, like any other endpoint.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any, Literal

import msgspec

from sensorwire.configload import Config
from sensorwire.zmqutil import EndpointError

log = logging.getLogger(__name__)

DEFAULT_LISTEN = {"agent": "", "proxy": "127.0.0.1:9109", "collector": "127.0.0.1:9108"}


def listen_problem(listen: str) -> str | None:
    """Why ``listen`` is not ``host:port`` (None when it is, or when it is "")."""
    if listen == "":
        return None
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return f"{listen!r} is not host:port, e.g. \"127.0.0.1:9108\" or \"[::1]:9108\""
    if not host:
        return f"{listen!r} has no host: write \"0.0.0.0:{port}\" for every interface"
    return None


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class MetricsConfig(Config):
    """``[metrics]``: ``listen = "127.0.0.1:9108"``; absent means the role's default."""

    listen: str | None = None

    def __post_init__(self) -> None:
        if self.listen is not None:
            problem = listen_problem(self.listen)
            if problem:
                raise ValueError(f"listen: {problem}")

    def endpoint(self, role: str) -> tuple[str, bool]:
        """``(listen, explicit)``: where to serve ("" for nowhere); did the file say so?"""
        if self.listen is not None:
            return self.listen, True
        return DEFAULT_LISTEN[role], False


class CollectorMetricsConfig(MetricsConfig):
    """The collector's ``[metrics]``: also the latest value of every sensor metric, if asked."""

    export_values: bool = False
    # series of sensorwire_sensor_value at most; new ones past it are counted, not exported
    values_max: Annotated[int, msgspec.Meta(gt=0)] = 10_000


# -- what roles describe ----------------------------------------------------------------------
Kind = Literal["counter", "gauge", "histogram"]


class Family(msgspec.Struct):
    """One metric family, described by a role at scrape time.

    ``name`` is the full Prometheus name (counters end in ``_total``); each
    sample is ``(label values, value)``, the value a number, or a
    :class:`Histogram` for ``kind = "histogram"``.
    """

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    samples: list[tuple[tuple[str, ...], Any]] = msgspec.field(default_factory=list)

    def add(self, value: Any, *label_values: str) -> Family:
        self.samples.append((tuple(label_values), value))
        return self


class Histogram:
    """A histogram cheap enough for a hot path: a bisect and two additions.

    Written by one thread; read at scrape time by another (a reading can be
    one observation behind in the sum, never inconsistent in its buckets).
    """

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """``[(le, count of observations <= le)]``, ending with ``+Inf``."""
        counts = list(self.counts)
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else _float(bound), float(total)))
        return out


def _float(v: float) -> str:
    return repr(float(v))


# -- the endpoint ---------------------------------------------------------------------------
Describe = Callable[[], Iterable[Family]]


class MetricsServer:
    """Serves ``/metrics`` from a thread of its own; ``close()`` stops it.

    What a scrape gets is prometheus_client's own answer (its WSGI app: the
    text or OpenMetrics format by ``Accept``, gzip by ``Accept-Encoding``,
    ``name[]`` to pick families); the server around it is bounded
    (:mod:`sensorwire.metricsserver`).
    """

    def __init__(self, listen: str, describe: Sequence[Describe], explicit: bool = True) -> None:
        self.listen = listen
        self.describe = list(describe)
        self.explicit = explicit
        self._httpd: Any = None
        self.port: int | None = None

    def start(self) -> bool:
        """Start serving; False when off or (for a default address) when the port is taken."""
        if not self.listen:
            return False
        from prometheus_client import CollectorRegistry
        from prometheus_client.process_collector import ProcessCollector

        from sensorwire.metricsserver import REFUSED_REASONS, BoundedServer, refused_families

        refused = dict.fromkeys(REFUSED_REASONS, 0)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Adapter([*self.describe, lambda: refused_families(refused)]))
        ProcessCollector(registry=registry)
        host, port = split_listen(self.listen)
        try:
            httpd = BoundedServer(host, port, refused)
        except OSError as exc:
            message = f"cannot serve metrics on {self.listen}: {exc.strerror or exc}"
            if self.explicit:
                raise EndpointError(message + " ([metrics] listen)") from None
            log.warning("%s; running without metrics (set [metrics] listen to another "
                        "address, or \"\" to turn them off)", message)
            return False
        from prometheus_client import make_wsgi_app

        httpd.set_app(make_wsgi_app(registry))
        threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
        self._httpd = httpd
        self.port = int(httpd.server_address[1])
        log.info("metrics at http://%s/metrics", self.listen)
        return True

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd.close_connections()
            self._httpd = None

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Adapter:
    """A prometheus_client collector that asks the roles at scrape time."""

    def __init__(self, describe: Sequence[Describe]) -> None:
        self._describe = describe

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        for fn in self._describe:
            try:
                families = list(fn())
            except Exception:  # noqa: BLE001 - one broken family must not break the scrape
                log.exception("metrics: describing %s failed", getattr(fn, "__name__", fn))
                continue
            for f in families:
                if f.kind == "counter":
                    m: Any = CounterMetricFamily(f.name, f.help, labels=f.labels)
                    for labels, value in f.samples:
                        m.add_metric(labels, value)
                elif f.kind == "gauge":
                    m = GaugeMetricFamily(f.name, f.help, labels=f.labels)
                    for labels, value in f.samples:
                        m.add_metric(labels, value)
                else:
                    m = HistogramMetricFamily(f.name, f.help, labels=f.labels)
                    for labels, h in f.samples:
                        m.add_metric(labels, h.cumulative(), h.sum)
                yield m
