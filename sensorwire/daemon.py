"""Running a role as a daemon: signals, systemd, the metrics endpoint, SIGHUP.

:func:`run` is what ``sensorwire agent|proxy|collector`` do after loading
their configuration: install SIGTERM/SIGINT/SIGHUP handling, give the role a
:class:`~sensorwire.service.Service` for its loop, start the ``/metrics``
endpoint once the role's sockets are up (and before ``READY=1``), and close
it all on the way out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from sensorwire.lifecycle import StopSignal
from sensorwire.metrics import Family, MetricsConfig, MetricsServer
from sensorwire.service import Service


class Role(Protocol):
    def run(self, stop: StopSignal, ready: Callable[[], None] | None = None,
            service: Service | None = None) -> None: ...

    def status(self) -> str: ...


def run(name: str, role: Role, metrics: MetricsConfig,
        describe: Callable[[], Iterable[Family]],
        reload: Callable[[], None] | None) -> None:
    """Run ``role`` until SIGTERM/SIGINT; ``reload`` re-reads its file on SIGHUP.

    ``describe`` is called only when ``/metrics`` is scraped (off by default on
    an agent), so it should import what it needs itself.
    """
    with StopSignal().install(with_hup=True) as stop:
        svc = Service.for_systemd(stop, status=role.status, reload=reload)

        def service() -> Iterable[Family]:
            from sensorwire.rolemetrics import service_families  # only a scrape needs it

            return service_families(name, svc)

        listen, explicit = metrics.endpoint(name)
        with MetricsServer(listen, [describe, service], explicit) as server:
            def ready() -> None:
                server.start()
                svc.ready()

            role.run(stop, ready=ready, service=svc)
