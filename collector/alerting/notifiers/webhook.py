"""``kind = "webhook"``: one HTTP POST per notification.

The body is the notification's JSON object, or ``template`` filled in (see
:mod:`sensorwire.collector.alerting.notification`), so Slack
(``template = '{"text": "{summary}"}'``), Matrix, ntfy (``content_type =
"text/plain"``) or a pager's incoming webhook accept it as it is.  When
``content_type`` is JSON, values are escaped for use inside JSON strings.
``headers`` (e.g. ``Authorization``) may use the same placeholders.

Status 2xx is success; 408, 429 and 5xx, timeouts and connection errors are
retryable; other statuses are permanent.  Redirects are not followed (a POST
would become a GET without its body, and the ``Authorization`` header would go
to another host): a 3xx is a permanent failure naming the new location.

A webhook URL is often a secret (a Slack URL, ``?token=``, ``user:pass@``), so
it is never logged or shown whole: :func:`redact` keeps scheme, host and port.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, urljoin, urlsplit

import msgspec

from sensorwire.collector.alerting import notification
from sensorwire.collector.alerting.notification import Notification
from sensorwire.collector.alerting.notifiers import NotifierConfig, NotifyError


def redact(url: str) -> str:
    """``url`` as ``scheme://host:port/…``: no user, password, path or query (often secret)."""
    try:
        parts = urlsplit(url)
        host = _host_port(parts)
    except ValueError:
        return "(an invalid URL)"
    rest = "/…" if (parts.path not in ("", "/") or parts.query or parts.fragment
                    or parts.username is not None) else parts.path
    return f"{parts.scheme}://{host}{rest}" if parts.scheme else "(a URL without a scheme)"


def _host_port(parts: SplitResult) -> str:
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port is not None else host


class WebhookConfig(NotifierConfig, tag="webhook", kw_only=True):
    url: str
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    method: Literal["POST", "PUT"] = "POST"
    content_type: str = "application/json"
    headers: dict[str, str] = {}
    template: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url: {redact(self.url)} is not an http:// or https:// URL")
        if self.template is not None:
            try:
                notification.check_template(self.template)
            except ValueError as exc:
                raise ValueError(f"template: {exc}") from None
        for key, value in self.headers.items():
            try:
                notification.check_template(value)
            except ValueError as exc:
                raise ValueError(f"headers: {key}: {exc}") from None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: the 3xx reaches the caller as an HTTPError."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class WebhookNotifier:
    def __init__(self, config: WebhookConfig) -> None:
        self.name = config.name
        self.config = config
        self._json = "json" in config.content_type.lower()
        self._where = redact(config.url)

    def open(self) -> None:
        pass

    def body(self, n: Notification) -> bytes:
        c = self.config
        text = n.to_json() if c.template is None else notification.render(c.template, n, self._json)
        return text.encode("utf-8")

    def send(self, n: Notification) -> None:
        c = self.config
        headers = {k: notification.render(v, n) for k, v in c.headers.items()}
        headers.setdefault("Content-Type", c.content_type)
        headers.setdefault("User-Agent", "sensorwire-alerting")
        req = urllib.request.Request(c.url, data=self.body(n), headers=headers, method=c.method)
        try:
            with _OPENER.open(req, timeout=c.timeout_s) as resp:
                resp.read(65536)
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                location = exc.headers.get("Location") if exc.headers else None
                where = redact(urljoin(c.url, location)) if location else "nowhere (no Location)"
                raise NotifyError(f"{self._where}: HTTP {exc.code} {exc.reason}: redirected to "
                                  f"{where}, not followed; set url to the new location",
                                  retryable=False) from None
            retryable = exc.code in (408, 429) or exc.code >= 500
            raise NotifyError(f"{self._where}: HTTP {exc.code} {exc.reason}", retryable) from None
        except urllib.error.URLError as exc:
            raise NotifyError(f"{self._where}: {exc.reason}", retryable=True) from None
        except TimeoutError:
            raise NotifyError(f"{self._where}: no answer within {c.timeout_s:g} s",
                              retryable=True) from None
        except OSError as exc:  # connection reset while reading, etc.
            raise NotifyError(f"{self._where}: {exc}", retryable=True) from None

    def close(self) -> None:
        pass
