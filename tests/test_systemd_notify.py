"""Each role, run as systemd would: READY=1 once its sockets are up, WATCHDOG=1 from its
loop at half of WATCHDOG_USEC, STATUS= lines, and STOPPING=1 then exit 0 on SIGTERM; and
a notify socket that nobody reads never blocks the sender."""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import Proc, free_port, write

from sensorwire import sdnotify
from sensorwire.sdnotify import NotifyListener

WATCHDOG_USEC = 400_000  # pings every 0.2 s


def pump(listener: NotifyListener, seconds: float) -> list[str]:
    """Collect what arrives for ``seconds``; return every message so far."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        listener.wait_for("\0never", min(left, 0.1))
    return listener.messages


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def agent_file(tmp_path: Path, bind_port: int, metrics_port: int) -> Path:
    return write(tmp_path / "agent.toml", f"""\
site = "gh"
device_id = "pi-1"
[publish]
bind = ["tcp://127.0.0.1:{bind_port}"]
heartbeat_s = 0.5
[metrics]
listen = "127.0.0.1:{metrics_port}"
[[sensors]]
name = "env"
kind = "simulated"
interval_s = 0.1
metrics = [{{ name = "t", signal = "constant", value = 1.0 }}]
""")


def start_role(role: str, tmp_path: Path,
               procs: Callable[..., Proc]) -> tuple[Proc, Callable[[], None], int]:
    """Start ``role``; return it, a check that its sockets and sinks are up, its metrics port."""
    mport = free_port()
    env = {"WATCHDOG_USEC": str(WATCHDOG_USEC)}
    if role == "agent":
        bport = free_port()
        p = procs(role, "agent", "-c", str(agent_file(tmp_path, bport, mport)), env=env)
        return p, lambda: None if port_open(bport) else pytest.fail("agent port not bound"), mport
    if role == "proxy":
        front, back = free_port(), free_port()
        cfg = write(tmp_path / "proxy.toml", f'frontend = "tcp://127.0.0.1:{front}"\n'
                    f'backend = "tcp://127.0.0.1:{back}"\n'
                    f'[metrics]\nlisten = "127.0.0.1:{mport}"\n')
        p = procs(role, "proxy", "-c", str(cfg), env=env)

        def up() -> None:
            assert port_open(front) and port_open(back)
        return p, up, mport
    db = tmp_path / "telemetry.db"
    cfg = write(tmp_path / "collector.toml", f'[subscribe]\nconnect = ["tcp://127.0.0.1:{free_port()}"]\n'
                f'[storage]\npath = "{db}"\n[metrics]\nlisten = "127.0.0.1:{mport}"\n')
    p = procs(role, "collector", "-c", str(cfg), env=env)
    return p, lambda: None if db.exists() else pytest.fail("the database is not open"), mport


@pytest.mark.slow
@pytest.mark.parametrize("role", ["agent", "proxy", "collector"])
def test_ready_watchdog_status_and_stopping(role: str, tmp_path: Path, procs: Any) -> None:
    p, up, mport = start_role(role, tmp_path, procs)  # returns once READY=1 has arrived
    up()                                            # sockets bound, sinks open: before READY=1
    assert "sensorwire_build_info" in scrape(mport)  # and the metrics endpoint too
    listener = p.listener
    assert listener is not None  # procs() waits for READY=1 unless told ready=False
    ready = next(m for m in listener.messages if "READY=1" in m)
    assert ready.startswith("READY=1\nSTATUS=")
    assert {"agent": "publishing", "proxy": "forwarding", "collector": "receiving"}[role] in ready
    n0 = sum(m == "WATCHDOG=1" for m in listener.messages)
    msgs = pump(listener, 1.0)
    pings = sum(m == "WATCHDOG=1" for m in msgs) - n0
    assert 3 <= pings <= 7, msgs  # every 0.2 s: not fewer, and no busy loop either
    p.popen.send_signal(signal.SIGTERM)
    assert listener.wait_for("STOPPING=1", 5), listener.messages
    assert p.terminate() == 0, p.log()


@pytest.mark.slow
def test_no_watchdog_pings_without_watchdog_usec(tmp_path: Path, procs: Any) -> None:
    front, back = free_port(), free_port()
    p = procs("proxy", "proxy", "--frontend", f"tcp://127.0.0.1:{front}",
              "--backend", f"tcp://127.0.0.1:{back}")
    msgs = pump(p.listener, 0.5)
    assert not any("WATCHDOG=1" in m for m in msgs)
    assert p.terminate() == 0


def test_a_notify_socket_nobody_reads_never_blocks_the_sender(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    folder = tempfile.mkdtemp(prefix="sw-")  # a unix socket path holds at most 108 bytes
    path = f"{folder}/notify"
    unread = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        unread.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        before = sdnotify.unsent()
        results: list[bool] = []
        caplog.set_level(logging.DEBUG, logger="sensorwire.sdnotify")
        sender = threading.Thread(
            target=lambda: results.extend(sdnotify.notify(f"STATUS={i}") for i in range(100)),
            daemon=True)
        sender.start()
        sender.join(10)  # a blocking send waits here until the socket is closed below
        assert not sender.is_alive(), "notify() blocked on a full notify socket"
        sent = results.count(True)
        assert len(results) == 100 and 0 < sent < 100, results
        assert sdnotify.unsent() - before == 100 - sent
        assert sum("could not notify" in r.getMessage() for r in caplog.records
                   if r.levelno == logging.DEBUG) == 100 - sent
        unread.setblocking(False)
        queued = []
        while True:
            try:
                queued.append(unread.recv(4096).decode())
            except BlockingIOError:
                break
        assert queued == [f"STATUS={i}" for i in range(sent)]  # True means it was queued
    finally:
        unread.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_a_change_of_state_waits_a_little_for_a_full_socket(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """READY=1 to a socket full of STATUS= lines: sent once the receiver reads again (systemd
    waits for it), and given up after STATE_RETRY_S when nobody does."""
    folder = tempfile.mkdtemp(prefix="sw-")
    path = f"{folder}/notify"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        receiver.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        while sdnotify.notify("STATUS=filling"):
            pass  # until the socket is full
        drained: list[str] = []
        reading = threading.Event()

        def read_later() -> None:
            reading.wait(10)
            receiver.settimeout(5)
            while not any("READY=1" in m for m in drained):
                drained.append(receiver.recv(4096).decode())

        reader = threading.Thread(target=read_later, daemon=True)
        reader.start()
        threading.Timer(0.2, reading.set).start()  # the receiver reads again 0.2 s from now
        assert sdnotify.notify("READY=1")  # tried again until there was room
        reader.join(10)
        assert drained[-1] == "READY=1"
        monkeypatch.setattr(sdnotify, "STATE_RETRY_S", 0.1)
        while sdnotify.notify("STATUS=filling"):
            pass
        assert not sdnotify.notify("STOPPING=1")  # nobody reads: given up, not blocked
    finally:
        receiver.close()
        shutil.rmtree(folder, ignore_errors=True)
