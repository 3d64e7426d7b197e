"""``kind = "log"``: a line in the collector's log (always there as ``log``)."""

from __future__ import annotations

import logging

from sensorwire.collector.alerting.notification import Notification
from sensorwire.collector.alerting.notifiers import NotifierConfig

log = logging.getLogger("sensorwire.alert")

_LEVEL = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.ERROR}


class LogConfig(NotifierConfig, tag="log", kw_only=True):
    retries: int = 0


class LogNotifier:
    def __init__(self, config: LogConfig) -> None:
        self.name = config.name

    def open(self) -> None:
        pass

    def send(self, n: Notification) -> None:
        level = _LEVEL.get(n.severity, logging.WARNING) if n.state == "firing" else logging.INFO
        log.log(level, "alert %s %s [%s]: %s", n.rule, n.state, n.severity, n.summary)

    def close(self) -> None:
        pass
