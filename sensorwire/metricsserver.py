"""The HTTP server of ``/metrics``: a thread per connection, a bounded number of them.

prometheus_client's own server starts a thread for every connection, for as
long as the connection stays open: idle or slow connections (a slowloris, a
misconfigured scraper) cost a thread each, without bound.  This one serves
the same WSGI app (so a scrape gets the same answer, byte for byte) with:

- at most ``MAX_CONNECTIONS`` connections at once; one more is answered
  ``503`` and closed at once, without a thread;
- ``REQUEST_TIMEOUT_S`` from the accept to the end of the request's headers,
  whatever arrives meanwhile (a byte a second does not keep it open): then
  ``408`` and closed;
- at most ``MAX_REQUEST_BYTES`` of request line and headers: then ``431``;
- ``RESPONSE_TIMEOUT_S`` for each write of the answer, to a client that does
  not read it.

Each refusal is counted by reason (``sensorwire_metrics_refused_total``) and
logged as a WARNING at most once a minute per reason.  Imported only when an
endpoint starts.
"""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from sensorwire.logs import RateLimited
from sensorwire.metrics import Family

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 8         # at once; a scrape takes milliseconds, Prometheus makes one at a time
REQUEST_TIMEOUT_S = 5.0     # to send the whole request, from the accept
RESPONSE_TIMEOUT_S = 10.0   # for each write of the answer (a client that does not read)
MAX_REQUEST_BYTES = 16384   # the request line and headers; Prometheus sends about 300
REFUSED_REASONS = ("busy", "timeout", "too_large")
_REFUSALS = {
    "busy": b"503 Service Unavailable", "timeout": b"408 Request Timeout",
    "too_large": b"431 Request Header Fields Too Large",
}
_refused_log = RateLimited(log, period_s=60.0)


def refused_families(refused: dict[str, int]) -> Iterable[Family]:
    f = Family("sensorwire_metrics_refused_total", "counter",
               f"Connections to /metrics closed without an answer: busy (already {MAX_CONNECTIONS} "
               f"at once), timeout (no whole request within {REQUEST_TIMEOUT_S:g} s), too_large "
               f"(a request over {MAX_REQUEST_BYTES} bytes).", ("reason",))
    for reason in REFUSED_REASONS:
        f.add(refused[reason], reason)
    yield f


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BoundedServer(WSGIServer):
    """A WSGI server with a thread per connection, at most ``MAX_CONNECTIONS`` of them."""

    request_queue_size = 64

    def __init__(self, host: str, port: int, refused: dict[str, int]) -> None:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        self.address_family = family
        self.refused = refused
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._open: set[socket.socket] = set()
        super().__init__((str(sockaddr[0]), port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refuse(request, "busy", client_address)
            self.close_request(request)
            return
        with self._lock:
            self._open.add(request)
        try:
            threading.Thread(target=self._serve, args=(request, client_address),
                             name="metrics-connection", daemon=True).start()
        except BaseException:
            self._done(request)
            raise

    def _serve(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - a client gone mid-answer: nothing to tell anyone
            log.debug("metrics: a connection from %s failed", client_address, exc_info=True)
        finally:
            self.shutdown_request(request)
            self._done(request)

    def _done(self, request: socket.socket) -> None:
        with self._lock:
            self._open.discard(request)
        self._slots.release()

    def refuse(self, conn: socket.socket, reason: str, client_address: Any) -> None:
        """Count, log (at most once a minute) and answer ``conn`` in one try, never waiting."""
        with self._lock:
            self.refused[reason] += 1
            _refused_log.warning(
                reason, "metrics: closed a connection from %s: %s (at most %d at once, each "
                "sending its request within %g s, of at most %d bytes; "
                "sensorwire_metrics_refused_total counts them)", client_address[0],
                {"busy": "too many at once", "timeout": "no whole request in time",
                 "too_large": "the request is too large"}[reason],
                MAX_CONNECTIONS, REQUEST_TIMEOUT_S, MAX_REQUEST_BYTES)
        status = _REFUSALS[reason]
        body = b"# " + status + b"\n"
        try:
            conn.setblocking(False)
            conn.send(b"HTTP/1.0 " + status + b"\r\nContent-Type: text/plain; charset=utf-8\r\n"
                      b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close"
                      b"\r\n\r\n" + body)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # gone, or not reading: it is closed either way

    def close_connections(self) -> None:
        """End the connections still served (their threads then end too)."""
        with self._lock:
            conns = list(self._open)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics: a connection from %s failed", client_address, exc_info=True)


class _Handler(WSGIRequestHandler):
    """prometheus_client's handler, once the whole request is in, within its deadline."""

    server: BoundedServer

    def handle(self) -> None:
        try:
            head = self._read_request(time.monotonic() + REQUEST_TIMEOUT_S)
        except _Refused as exc:
            self.server.refuse(self.connection, exc.reason, self.client_address)
            return
        if head is None:
            return
        self.connection.settimeout(RESPONSE_TIMEOUT_S)
        sock_file, self.rfile = self.rfile, io.BytesIO(head)
        sock_file.close()
        super().handle()

    def _read_request(self, deadline: float) -> bytes | None:
        """The bytes up to the end of the headers (and any after them); None when the client
        closed first."""
        conn = self.connection
        buf = bytearray()
        while b"\r\n\r\n" not in buf and b"\n\n" not in buf:
            if len(buf) > MAX_REQUEST_BYTES:
                raise _Refused("too_large")
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Refused("timeout")
            conn.settimeout(left)
            try:
                chunk = conn.recv(MAX_REQUEST_BYTES + 1 - len(buf))
            except TimeoutError:
                raise _Refused("timeout") from None
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        """Log nothing: one line per scrape is noise."""
