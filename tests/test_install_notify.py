"""The notify sockets a role meets under systemd, with a real role process: an abstract one
(``@name``, as systemd gives a service in a container or with ``NotifyAccess=``), and ones
that cannot be sent to (missing, a path longer than a unix socket address holds), which
must never stop the role."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import free_port, write


def proxy_argv(tmp_path: Path) -> list[str]:
    cfg = write(tmp_path / "proxy.toml", f'frontend = "tcp://127.0.0.1:{free_port()}"\n'
                f'backend = "tcp://127.0.0.1:{free_port()}"\n[metrics]\nlisten = ""\n')
    return [sys.executable, "-m", "sensorwire", "proxy", "-c", str(cfg)]


def start(tmp_path: Path, notify_socket: str) -> tuple[subprocess.Popen[bytes], Path]:
    env = dict(os.environ, NOTIFY_SOCKET=notify_socket, WATCHDOG_USEC="200000")
    env.pop("JOURNAL_STREAM", None)
    log = tmp_path / "proxy.log"
    with open(log, "wb") as f:
        return subprocess.Popen(proxy_argv(tmp_path), stdout=f, stderr=subprocess.STDOUT,
                                env=env), log


def test_an_abstract_notify_socket_gets_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    name = f"sensorwire-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        p, log = start(tmp_path, "@" + name)
        try:
            seen: list[str] = []
            while not (any(m.startswith("READY=1") for m in seen)
                       and seen.count("WATCHDOG=1") >= 2):
                seen.append(sock.recv(4096).decode())
            p.send_signal(signal.SIGTERM)
            while not seen[-1].startswith("STOPPING=1"):
                seen.append(sock.recv(4096).decode())
            assert p.wait(10) == 0, log.read_text()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.parametrize("where", ["missing", "too long"])
def test_a_notify_socket_it_cannot_send_to_never_stops_a_role(where: str, tmp_path: Path) -> None:
    path = (str(tmp_path / "no-such-socket") if where == "missing"
            else "/tmp/" + "x" * 200 + "/notify")
    p, log = start(tmp_path, path)
    try:
        time.sleep(1.0)  # several watchdog pings and a first status, all unsendable
        assert p.poll() is None, log.read_text()
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0, log.read_text()
        assert "Traceback" not in log.read_text(), log.read_text()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
