"""``kind = "webhook"``: one HTTP POST per notification.

The body is the notification's JSON object, or ``template`` filled in (see
:mod:`sensorwire.collector.alerting.notification`), so Slack
(``template = '{"text": "{summary}"}'``), Matrix, ntfy (``content_type =
"text/plain"``) or a pager's incoming webhook accept it as it is.  When
``content_type`` is JSON, values are escaped for use inside JSON strings.
``headers`` (e.g. ``Authorization``) may use the same placeholders; a value
outside ISO-8859-1 (an emoji in a title) is sent RFC 2047-encoded.

Status 2xx is success; 408, 429 and 5xx, timeouts and connection errors are
retryable (after the wait a ``Retry-After`` header asks for, capped by the
courier); other statuses are permanent.  ``timeout_s`` bounds the whole
attempt (connecting, sending, and every byte of the answer), so an endpoint
that answers one byte at a time still fails in time.  Redirects are not followed (a POST
would become a GET without its body, and the ``Authorization`` header would go
to another host): a 3xx is a permanent failure naming the new location.

A webhook URL is often a secret (a Slack URL, ``?token=``, ``user:pass@``), so
it is never logged or shown whole: :func:`redact` keeps scheme, host and port.
"""

from __future__ import annotations

import email.header
import email.utils
import http.client
import io
import re
import socket
import time
import urllib.error
import urllib.request
from typing import Annotated, Any, Literal
from urllib.parse import urljoin, urlsplit

import msgspec

from sensorwire.collector.alerting import notification
from sensorwire.collector.alerting.notification import Notification
from sensorwire.collector.alerting.notifiers import NotifierConfig, NotifyError


def redact(url: str) -> str:
    """``url`` as ``scheme://host:port/…``: no user, password, path or query (often secret)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an invalid URL)"
    if not parts.scheme:
        return "(a URL without a scheme)"
    host = parts.netloc.rpartition("@")[2]  # as written, without user and password
    rest = "/…" if (parts.path not in ("", "/") or parts.query or parts.fragment
                    or "@" in parts.netloc) else parts.path
    return f"{parts.scheme}://{host}{rest}"


class WebhookConfig(NotifierConfig, tag="webhook", kw_only=True):
    url: str
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    method: Literal["POST", "PUT"] = "POST"
    content_type: str = "application/json"
    headers: dict[str, str] = {}
    template: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_url(self.url)
        if self.template is not None:
            try:
                notification.check_template(self.template)
            except ValueError as exc:
                raise ValueError(f"template: {exc}") from None
        for key, value in self.headers.items():
            _check_header(key, value)
        if _CONTROL.search(self.content_type) or not self.content_type.isascii():
            raise ValueError("content_type: has a control character or a non-ASCII character")


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_url(url: str) -> None:
    if _CONTROL.search(url) or " " in url or not url.isascii():
        raise ValueError(f"url: {redact(url)} has a space, a control character (a line break?) "
                         "or a non-ASCII character; percent-encode it (%20, %C3%A9), and "
                         "write a non-ASCII host name in its xn-- form")
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - parsed only to be checked
    except ValueError:
        raise ValueError(f"url: {redact(url)}: the port is not a number from 0 to 65535") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url: {redact(url)} is not an http:// or https:// URL")


def _check_header(key: str, value: str) -> None:
    if not _TOKEN.fullmatch(key):
        raise ValueError(f"headers: {key!r} is not a header name (letters, digits and "
                         "!#$%&'*+-.^_`|~ only)")
    if _CONTROL.search(value.replace("\t", " ")):
        raise ValueError(f"headers: {key}: the value has a control character (a line break?)")
    try:
        notification.check_template(value)
    except ValueError as exc:
        raise ValueError(f"headers: {key}: {exc}") from None


def header_value(text: str) -> str:
    """``text`` fit for a header: control characters (from a field's value) become spaces,
    and text outside ISO-8859-1 (an emoji) is encoded as RFC 2047 UTF-8, as ntfy reads it."""
    text = _CONTROL.sub(" ", text)
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return email.header.Header(text, "utf-8").encode(maxlinelen=10_000)
    return text


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) as seconds from now, never negative;
    None when absent or unreadable.  The courier caps it at its longest backoff."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: the 3xx reaches the caller as an HTTPError."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _DeadlineReader(io.RawIOBase):
    """A socket's reads, each bounded by the time left before ``deadline`` (monotonic)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the attempt's deadline passed")
        self._sock.settimeout(left)
        return self._raw.readinto(buffer) or 0

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSocket:
    """What an HTTPResponse is given instead of its socket: reads that share one deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))


def _deadline_response(deadline: float) -> type[http.client.HTTPResponse]:
    class Response(http.client.HTTPResponse):
        def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(_DeadlineSocket(sock, deadline), *args, **kwargs)  # type: ignore[arg-type]

    return Response


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the attempt's deadline passed")
    return left


class _HTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, *, deadline: float, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self._deadline = deadline
        self.response_class = _deadline_response(deadline)

    def connect(self) -> None:
        self.timeout = _remaining(self._deadline)  # connecting and sending share the deadline
        super().connect()


class _HTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, *, deadline: float, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self._deadline = deadline
        self.response_class = _deadline_response(deadline)

    def connect(self) -> None:
        self.timeout = _remaining(self._deadline)
        super().connect()


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: float) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPConnection, req, deadline=self._deadline)  # type: ignore[arg-type]


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: float) -> None:
        super().__init__()
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPSConnection, req,  # type: ignore[arg-type]
                            deadline=self._deadline)


def _opener(deadline: float) -> urllib.request.OpenerDirector:
    """An opener that follows no redirect and ends every read at ``deadline``."""
    return urllib.request.build_opener(_NoRedirect, _HTTPHandler(deadline), _HTTPSHandler(deadline))


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
        headers = {k: header_value(notification.render(v, n)) for k, v in c.headers.items()}
        headers.setdefault("Content-Type", c.content_type)
        headers.setdefault("User-Agent", "sensorwire-alerting")
        req = urllib.request.Request(c.url, data=self.body(n), headers=headers, method=c.method)
        try:
            deadline = time.monotonic() + c.timeout_s  # the whole attempt, not each read
            with _opener(deadline).open(req, timeout=c.timeout_s) as resp:
                resp.read(65536)
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                location = exc.headers.get("Location") if exc.headers else None
                where = redact(urljoin(c.url, location)) if location else "nowhere (no Location)"
                raise NotifyError(f"{self._where}: HTTP {exc.code} {exc.reason}: redirected to "
                                  f"{where}, not followed; set url to the new location",
                                  retryable=False) from None
            retryable = exc.code in (408, 429) or exc.code >= 500
            wait = retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            raise NotifyError(f"{self._where}: HTTP {exc.code} {exc.reason}"
                              + (f" (Retry-After: {wait:g} s)" if wait is not None else ""),
                              retryable, retry_after_s=wait) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise NotifyError(f"{self._where}: no connection within {c.timeout_s:g} s",
                                  retryable=True) from None
            raise NotifyError(f"{self._where}: {exc.reason}", retryable=True) from None
        except TimeoutError:
            raise NotifyError(f"{self._where}: no answer within {c.timeout_s:g} s",
                              retryable=True) from None
        except http.client.HTTPException as exc:  # not HTTP: BadStatusLine, a bad header...
            raise NotifyError(f"{self._where}: not an HTTP answer: {type(exc).__name__}: "
                              f"{str(exc)[:200]!r}", retryable=True) from None
        except OSError as exc:  # connection reset while reading, etc.
            raise NotifyError(f"{self._where}: {exc}", retryable=True) from None

    def close(self) -> None:
        pass
