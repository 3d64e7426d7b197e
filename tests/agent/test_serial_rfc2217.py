"""``rfc2217://`` ports: a real RFC 2217 server on loopback, and one that never answers.

The server is pyserial's own (``serial.rfc2217.PortManager``) over a ``loop://``
port, on a real TCP socket.  A server that accepts and never answers holds an
open for pyserial's negotiation timeout (3 s, ``?timeout=`` in the URL), and the
agent's stop for at most its wait for reader threads; nothing is left behind.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import serial
import serial.rfc2217
from support import Proc, tcp, wait_until, write

from sensorwire.agent.runtime import READERS_JOIN_S
from sensorwire.agent.sensors.serial import SerialPortError, SerialSensor

# pyserial's rfc2217 module still names its reader thread the old way
pytestmark = pytest.mark.filterwarnings("ignore:set(Daemon|Name)\\(\\) is deprecated:DeprecationWarning")


class Rfc2217Server:
    """pyserial's RFC 2217 server over ``loop://``, answering one client; it sends ``lines``
    (escaped) every 50 ms while the client is connected."""

    def __init__(self, lines: bytes) -> None:
        self.lines = lines
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, serial.serial_for_url("loop://", timeout=0) as port:

            class Out:
                def write(self, data: bytes) -> None:
                    conn.sendall(data)

            manager = serial.rfc2217.PortManager(cast(Any, port), cast(Any, Out()))
            conn.settimeout(0.05)
            while not self._stop.is_set():
                try:
                    data = conn.recv(1024)
                except TimeoutError:
                    data = None
                except OSError:
                    return
                if data == b"":
                    return
                if data:
                    conn.sendall(b"".join(manager.filter(data)))
                conn.sendall(b"".join(manager.escape(self.lines)))

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(5)


@pytest.fixture
def silent_server() -> Iterator[socket.socket]:
    """A TCP server on 127.0.0.1 that accepts (the kernel's backlog) and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        yield s


def descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_an_rfc2217_port_opens_and_reads_lines(make_sensor: Callable[..., SerialSensor]) -> None:
    server = Rfc2217Server(b"1.5\n")
    try:
        sensor = make_sensor(port=f"rfc2217://127.0.0.1:{server.port}", format="csv", fields=["t"])
        sensor.open()
        got = wait_until(lambda: sensor.read_next(0.2), timeout_s=10, what="a reading")
        assert list(got) == [("t", 1.5, "")]
    finally:
        server.close()


def test_a_server_that_never_answers_fails_the_open_after_the_urls_timeout_leaving_nothing(
        make_sensor: Callable[..., SerialSensor], silent_server: socket.socket) -> None:
    port = silent_server.getsockname()[1]
    threads, fds = threading.active_count(), descriptors()
    sensor = make_sensor(port=f"rfc2217://127.0.0.1:{port}?timeout=0.5", format="csv", fields=["t"])
    started = time.monotonic()
    with pytest.raises(SerialPortError, match="Remote does not seem to support RFC2217"):
        sensor.open()
    took = time.monotonic() - started
    assert 0.5 <= took < 1.5  # the negotiation's 0.5 s, and pyserial's 0.3 s pause on close
    # its connection is in the backlog: the server answers it now, and nobody is there
    conn, _ = silent_server.accept()
    with conn:
        conn.settimeout(5)
        conn.sendall(b"\xff\xfb\x00")   # IAC WILL BINARY: too late
        sent = b""
        while chunk := conn.recv(100):  # what the client sent, then the end: pyserial closed it
            sent += chunk
    assert sent.startswith(b"\xff")  # its telnet options
    assert threading.active_count() == threads and descriptors() == fds


def agent_toml(port: int) -> str:
    return f"""\
site = "gh"
device_id = "pi-1"
[publish]
bind = ["{tcp()}"]
[[sensors]]
name = "dev"
kind = "serial"
port = "rfc2217://127.0.0.1:{port}"
format = "csv"
fields = ["t"]
"""


@pytest.mark.slow
def test_an_agent_opening_a_silent_rfc2217_port_stops_within_its_wait_for_readers(
        tmp_path: Path, procs: Any, silent_server: socket.socket) -> None:
    agent: Proc = procs("agent", "agent", "-c",
                        str(write(tmp_path / "agent.toml", agent_toml(silent_server.getsockname()[1]))))
    silent_server.settimeout(10)
    conn, _ = silent_server.accept()   # the sensor's thread is in pyserial's open: 3.3 s
    with conn:
        wait_until(lambda: conn.recv(100, socket.MSG_PEEK), what="the client's telnet options")
        started = time.monotonic()
        agent.popen.send_signal(signal.SIGTERM)
        assert agent.popen.wait(10) == 0
        took = time.monotonic() - started
    assert took < READERS_JOIN_S + 1.0, agent.log()
    assert "agent stopping" in agent.log()


@pytest.mark.slow
def test_a_port_that_opens_after_a_reload_gave_up_on_its_reader_is_closed(
        tmp_path: Path, procs: Any) -> None:
    """A reload removes a sensor whose thread is inside an rfc2217:// open that outlasts the
    reload's wait for it (READERS_JOIN_S): when the server answers after all, the port that
    opens in that thread is closed, not left open until the agent stops."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted, answer, closed = threading.Event(), threading.Event(), threading.Event()

    def serve() -> None:  # accepts, answers only once told to, then watches for the close
        conn, _ = listener.accept()
        accepted.set()
        with conn, serial.serial_for_url("loop://", timeout=0) as port:

            class Out:
                def write(self, data: bytes) -> None:
                    conn.sendall(data)

            answer.wait(30)
            manager = serial.rfc2217.PortManager(cast(Any, port), cast(Any, Out()))
            conn.settimeout(0.05)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    data = conn.recv(1024)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if data == b"":
                    closed.set()
                    return
                conn.sendall(b"".join(manager.filter(data)))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    port = listener.getsockname()[1]
    cfg = tmp_path / "agent.toml"
    # the URL's negotiation timeout (10 s) outlasts the reload's wait for the reader
    write(cfg, agent_toml(port).replace(f':{port}"', f':{port}?timeout=10"'))
    agent: Proc = procs("agent", "agent", "-c", str(cfg))
    assert accepted.wait(10), agent.log()
    write(cfg, agent_toml(port).split("[[sensors]]")[0] + """[[sensors]]
name = "sim"
kind = "simulated"
metrics = [{ name = "t", signal = "constant", value = 1.0 }]
""")
    agent.popen.send_signal(signal.SIGHUP)
    wait_until(lambda: "left to finish" in agent.log(), timeout_s=10, what="the reload giving up")
    answer.set()
    try:
        assert closed.wait(15), "the port that opened after the reload stayed open"
    finally:
        listener.close()
