"""``kind = "email"``: one mail per notification through SMTP (the standard library).

``starttls = true`` upgrades the connection; ``tls = true`` speaks SMTP over
TLS from the start.  Without ``port`` that is 587 with ``starttls``, 465 with
``tls`` and 25 otherwise (the usual ports for each).  ``username`` and
``password`` log in when given, and are refused without ``starttls`` or ``tls``
unless the host is loopback (the password would cross the network in clear).
The subject is a template (default ``[{state}] {rule}: {summary}``); the body
is the summary and the JSON object.

5xx answers and a refused login are permanent; 4xx answers, timeouts and
connection errors are retryable.
"""

from __future__ import annotations

import ipaddress
import smtplib
import ssl
from email.message import EmailMessage
from typing import Annotated

import msgspec

from sensorwire.collector.alerting import notification
from sensorwire.collector.alerting.notification import Notification
from sensorwire.collector.alerting.notifiers import NotifierConfig, NotifyError


def _loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_address(key: str, address: str) -> None:
    """A line break in an address would add header lines (or recipients) to every mail."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in address):
        raise ValueError(f"{key} {address!r} has a control character (a line break?)")


class EmailConfig(NotifierConfig, tag="email", kw_only=True):
    host: str
    port: Annotated[int, msgspec.Meta(gt=0, lt=65536)] | None = None  # see smtp_port
    starttls: bool = False
    tls: bool = False
    username: str | None = None
    password: str | None = None
    sender: str = msgspec.field(name="from")
    to: list[str]
    subject: str = "[{state}] {rule}: {summary}"
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0

    @property
    def smtp_port(self) -> int:
        """``port``, or the usual one for how the connection is secured."""
        if self.port is not None:
            return self.port
        return 465 if self.tls else 587 if self.starttls else 25

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.to:
            raise ValueError("to: give at least one address")
        for i, address in enumerate(self.to):
            _check_address(f"to: [{i}]:", address)
        _check_address("from:", self.sender)
        if (self.username is None) != (self.password is None):
            raise ValueError("password: give both username and password, or neither")
        if self.starttls and self.tls:
            raise ValueError("tls: choose starttls (upgrade, port 587) or tls (port 465), not both")
        if self.username is not None and not (self.starttls or self.tls) \
                and not _loopback(self.host):
            raise ValueError(f"username: logging in to {self.host} without TLS would send the "
                             "password in clear: set starttls = true (port 587) or tls = true "
                             "(port 465); only a loopback host may be used without")
        try:
            notification.check_template(self.subject)
        except ValueError as exc:
            raise ValueError(f"subject: {exc}") from None


class EmailNotifier:
    def __init__(self, config: EmailConfig) -> None:
        self.name = config.name
        self.config = config

    def open(self) -> None:
        pass

    def message(self, n: Notification) -> EmailMessage:
        c = self.config
        msg = EmailMessage()
        msg["From"] = c.sender
        msg["To"] = ", ".join(c.to)
        msg["Subject"] = notification.render(c.subject, n).replace("\n", " ")
        msg.set_content(f"{n.summary}\n\n{n.to_json()}\n")
        return msg

    def send(self, n: Notification) -> None:
        c = self.config
        port = c.smtp_port
        where = f"{c.host}:{port}"
        try:
            smtp: smtplib.SMTP
            if c.tls:
                smtp = smtplib.SMTP_SSL(c.host, port, timeout=c.timeout_s,
                                        context=ssl.create_default_context())
            else:
                smtp = smtplib.SMTP(c.host, port, timeout=c.timeout_s)
            with smtp:
                if c.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if c.username is not None and c.password is not None:
                    smtp.login(c.username, c.password)
                smtp.send_message(self.message(n))
        except smtplib.SMTPAuthenticationError as exc:
            raise NotifyError(f"{where}: login refused: {exc.smtp_code}", retryable=False) from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise NotifyError(f"{where}: recipients refused: {sorted(exc.recipients)}",
                              retryable=False) from None
        except smtplib.SMTPResponseException as exc:
            raise NotifyError(f"{where}: {exc.smtp_code} {exc.smtp_error!r}",
                              retryable=400 <= exc.smtp_code < 500) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise NotifyError(f"{where}: {exc}", retryable=False) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise NotifyError(f"{where}: {exc}", retryable=True) from None

    def close(self) -> None:
        pass
