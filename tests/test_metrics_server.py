"""The /metrics server's bounds: connections at once, time and size of a request.

A scrape gets what prometheus_client's own server gave; idle, slow and huge
requests cost a bounded number of threads, are closed, and are counted.
"""

from __future__ import annotations

import gzip
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import free_port, tcp, wait_until, write

from sensorwire.metrics import Family, Histogram, MetricsServer, _Adapter
from sensorwire.metricsserver import MAX_CONNECTIONS, MAX_REQUEST_BYTES, REQUEST_TIMEOUT_S

H = Histogram([0.1, 1.0])
H.observe(0.5)


def families() -> Iterable[Family]:
    yield Family("sensorwire_things_total", "counter", "Things, by reason.", ("reason",)
                 ).add(3, "a").add(4, 'quo"te\\')
    yield Family("sensorwire_level", "gauge", "A level.").add(1.5)
    yield Family("sensorwire_wait_seconds", "histogram", "A wait.").add(H)


def get(port: int, path: str = "/metrics", method: str = "GET",
        **headers: str) -> tuple[int, str | None, str | None, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.headers["Content-Encoding"], r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.headers["Content-Encoding"], exc.read()


def only_families(body: bytes) -> bytes:
    """``body`` without the process's own families and the server's refusal counts, which the
    old server did not have, and whose values change from one scrape to the next."""
    text = gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body
    return b"".join(line for line in text.splitlines(keepends=True)
                    if b"process_" not in line and b"sensorwire_metrics_refused" not in line)


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    with MetricsServer(f"127.0.0.1:{free_port()}", [families]) as s:
        assert s.start() and s.port
        yield s


def scrape_counts(port: int) -> dict[str, float] | None:
    """``sensorwire_metrics_refused_total`` by reason, in a scrape; None when refused."""
    status, _, _, body = get(port)
    if status != 200:
        return None
    return {s.labels["reason"]: s.value for fam in text_string_to_metric_families(body.decode())
            for s in fam.samples if s.name == "sensorwire_metrics_refused_total"}


def refused(port: int) -> dict[str, float]:
    counts = scrape_counts(port)
    assert counts is not None, "the scrape was refused"
    return counts


def test_a_scrape_gets_what_prometheus_clients_server_gave(server: MetricsServer) -> None:
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Adapter([families]))
    old, thread = start_http_server(free_port(), addr="127.0.0.1", registry=registry)
    try:
        assert server.port is not None
        for path, method, headers in [
            ("/metrics", "GET", {}),
            ("/metrics", "GET", {"Accept": "application/openmetrics-text; version=1.0.0"}),
            ("/metrics", "GET", {"Accept": "text/plain;version=1.0.0;escaping=allow-utf-8"}),
            ("/metrics", "GET", {"Accept-Encoding": "gzip"}),
            ("/metrics?name[]=sensorwire_level", "GET", {}),
            ("/anything", "GET", {}),
            ("/favicon.ico", "GET", {}),
            ("/metrics", "POST", {}),
            ("/metrics", "OPTIONS", {}),
        ]:
            new_answer = get(server.port, path, method, **headers)
            old_answer = get(old.server_address[1], path, method, **headers)
            assert new_answer[:3] == old_answer[:3], (path, method, headers)
            assert only_families(new_answer[3]) == only_families(old_answer[3]), (path, headers)
        assert b"sensorwire_level 1.5\n" in get(server.port)[3]
    finally:
        old.shutdown()
        old.server_close()
        thread.join(5)


@pytest.mark.slow
def test_a_request_sent_a_byte_at_a_time_is_closed_after_the_timeout(server: MetricsServer) -> None:
    assert server.port is not None
    with socket.create_connection(("127.0.0.1", server.port), timeout=1) as s:
        started = time.monotonic()
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        answer = b""
        while time.monotonic() - started < REQUEST_TIMEOUT_S + 3:
            try:
                s.sendall(b"X")   # a header that never ends, a byte at a time
                chunk = s.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
        closed_after = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.0 408 Request Timeout\r\n"), answer
    assert REQUEST_TIMEOUT_S - 0.5 < closed_after < REQUEST_TIMEOUT_S + 2
    assert refused(server.port)["timeout"] == 1


def test_a_request_over_the_size_cap_is_refused(server: MetricsServer) -> None:
    assert server.port is not None
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        head = b"GET /metrics HTTP/1.1\r\nCookie: "
        # one byte over, all of which the server reads: its close is then no reset
        s.sendall(head + b"c" * (MAX_REQUEST_BYTES + 1 - len(head)))
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.0 431 Request Header Fields Too Large\r\n"), answer
    # a request just under it is served
    status, _, _, body = get(server.port, **{"Cookie": "c" * (MAX_REQUEST_BYTES - 500)})
    assert status == 200 and b"sensorwire_level 1.5" in body
    assert refused(server.port) == {"busy": 0, "timeout": 0, "too_large": 1}


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@pytest.mark.slow
def test_200_idle_connections_to_a_proxy_cost_it_a_bounded_number_of_threads(
        tmp_path: Path, procs: Any) -> None:
    port = free_port()
    proxy = procs("proxy", "proxy", "-c", str(write(
        tmp_path / "proxy.toml", f'frontend = "{tcp()}"\nbackend = "{tcp()}"\n'
        f'[metrics]\nlisten = "127.0.0.1:{port}"\n')))
    pid = proxy.popen.pid
    assert get(port)[0] == 200
    before = threads(pid)
    with ExitStack() as idle:
        for _ in range(200):
            s = idle.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # the proxy accepts them all: MAX_CONNECTIONS wait for a request, the others get a 503
        most = before
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:   # sampled while the idle ones are held
            most = max(most, threads(pid))
        assert most <= before + MAX_CONNECTIONS, f"{before} threads, then {most}"
        assert "too many at once" in proxy.log()
        # once the idle ones time out, a scrape is answered; within the deadline
        started = time.monotonic()
        wait_until(lambda: scrape_counts(port) is not None, timeout_s=REQUEST_TIMEOUT_S + 5,
                   interval_s=0.2, what="a scrape answered")
        assert time.monotonic() - started < REQUEST_TIMEOUT_S + 5
        # each idle one was either refused at once or timed out (more than MAX_CONNECTIONS when
        # some still waited to be accepted when the first timed out); scrapes made too early: busy
        def all_counted() -> dict[str, float] | None:
            counts = scrape_counts(port)
            return counts if counts is not None and counts["timeout"] >= MAX_CONNECTIONS else None

        counts = wait_until(all_counted, timeout_s=REQUEST_TIMEOUT_S, what="every idle one counted")
    assert counts["busy"] + counts["timeout"] >= 200, counts
    assert counts["too_large"] == 0
    assert proxy.log().count("metrics: closed a connection") == 2  # busy, timeout: once a minute
    wait_until(lambda: threads(pid) <= before, timeout_s=5, what="the connections' threads to end")
    assert proxy.terminate() == 0
