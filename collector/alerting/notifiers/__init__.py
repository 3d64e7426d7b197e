"""The notifier interface, the ``[[notifiers]]`` tables, and the registry of kinds.

A notifier kind is a module defining its config struct (a tagged
:class:`NotifierConfig`) and a class: ``kind = "webhook"`` ->
``notifiers/webhook.py`` -> ``WebhookNotifier``.

A notifier is told, in one thread of its own (see
:mod:`sensorwire.collector.alerting.delivery`): ``open()``, ``send(n)`` any
number of times, then ``close()``.  ``send`` delivers once or raises
:class:`NotifyError`, whose ``retryable`` says whether trying again may help;
it never sleeps, retries or starts threads: the host does that.
"""

from __future__ import annotations

from typing import Annotated, Protocol

import msgspec

from sensorwire.collector.alerting.notification import Notification
from sensorwire.configload import Config, check_name


class NotifyError(Exception):
    """A delivery failed; ``retryable`` says whether trying again may help, and
    ``retry_after_s`` (when known) how long the endpoint asked to wait first."""

    def __init__(self, message: str, retryable: bool, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s  # the endpoint asked to wait this long (Retry-After)


class Notifier(Protocol):
    name: str

    def open(self) -> None: ...

    def send(self, n: Notification) -> None: ...

    def close(self) -> None: ...


class NotifierConfig(Config, tag_field="kind", kw_only=True):
    """Keys every notifier has."""

    name: str
    retries: Annotated[int, msgspec.Meta(ge=0)] = 3     # attempts after the first
    backoff_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0  # first wait; doubles, capped at 60 s
    queue_max: Annotated[int, msgspec.Meta(gt=0)] = 1000  # waiting notifications before drops

    def __post_init__(self) -> None:
        check_name(self.name, "name")


# The kinds, imported here so the config union is complete.
from sensorwire.collector.alerting.notifiers.email import EmailConfig  # noqa: E402
from sensorwire.collector.alerting.notifiers.exec import ExecConfig  # noqa: E402
from sensorwire.collector.alerting.notifiers.log import LogConfig  # noqa: E402
from sensorwire.collector.alerting.notifiers.publish import PublishConfig  # noqa: E402
from sensorwire.collector.alerting.notifiers.webhook import WebhookConfig  # noqa: E402

AnyNotifierConfig = LogConfig | WebhookConfig | ExecConfig | PublishConfig | EmailConfig

BUILTIN_LOG = LogConfig(name="log")


def build(config: AnyNotifierConfig) -> Notifier:
    """The notifier a config describes (nothing is opened yet)."""
    if isinstance(config, LogConfig):
        from sensorwire.collector.alerting.notifiers.log import LogNotifier

        return LogNotifier(config)
    if isinstance(config, WebhookConfig):
        from sensorwire.collector.alerting.notifiers.webhook import WebhookNotifier

        return WebhookNotifier(config)
    if isinstance(config, ExecConfig):
        from sensorwire.collector.alerting.notifiers.exec import ExecNotifier

        return ExecNotifier(config)
    if isinstance(config, PublishConfig):
        from sensorwire.collector.alerting.notifiers.publish import PublishNotifier

        return PublishNotifier(config)
    from sensorwire.collector.alerting.notifiers.email import EmailNotifier

    return EmailNotifier(config)
