"""Helper processes and loopback ports, always cleaned up.

Everything here binds or connects to 127.0.0.1 only.  Each helper is a
context manager: leaving it (normally, on an error or on Ctrl-C) stops the
process, first politely, then with SIGKILL.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"

SPAWN = multiprocessing.get_context("spawn")


class BenchError(Exception):
    """A run could not be completed; the message says which part and why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Poll until something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((LOOPBACK, port), timeout=0.5).close()
            return
        except OSError:
            pass
        if not alive():
            raise BenchError(f"the process that should listen on port {port} exited")
        if time.monotonic() > deadline:
            raise BenchError(f"nothing listened on {LOOPBACK}:{port} within {timeout_s:.0f} s")
        time.sleep(0.02)


def ignore_sigint() -> None:
    """For child processes: Ctrl-C is the parent's to handle; it stops the children."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stop_process(proc: multiprocessing.process.BaseProcess, timeout_s: float = 3.0) -> None:
    if proc.is_alive():
        proc.join(timeout_s)
    if proc.is_alive():
        proc.terminate()
        proc.join(2.0)
    if proc.is_alive():
        proc.kill()
        proc.join(2.0)


@contextlib.contextmanager
def helper(target: Callable[..., None], *args: Any,
           ready_timeout_s: float = 15.0) -> Iterator[int]:
    """Run ``target(conn, *args)`` in a spawned process; yields its pid.

    ``target`` sends one message on ``conn`` when it is ready and returns when
    ``conn`` gives it anything (or reaches EOF).
    """
    parent, child = SPAWN.Pipe()
    proc = SPAWN.Process(target=target, args=(child, *args), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(ready_timeout_s):
            raise BenchError(f"helper {target.__name__} was not ready "
                             f"within {ready_timeout_s:.0f} s")
        try:
            parent.recv()
        except EOFError:
            raise BenchError(f"helper {target.__name__} exited before it was ready") from None
        assert proc.pid is not None
        yield proc.pid
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        parent.close()
        stop_process(proc)


@contextlib.contextmanager
def command(argv: list[str], ports: list[int], ready_timeout_s: float = 15.0) -> Iterator[int]:
    """Run ``python argv...`` with its output in a log file; ready when ``ports`` listen.

    Yields its pid.  On exit: SIGTERM, then SIGKILL after 5 s.
    """
    logdir = Path(tempfile.mkdtemp(prefix="bench-"))
    log_path = logdir / "output.log"
    with open(log_path, "wb") as logf:
        popen = subprocess.Popen([sys.executable, *argv], stdout=logf, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL,
                                 env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        try:
            for port in ports:
                wait_port(port, ready_timeout_s, alive=lambda: popen.poll() is None)
        except BenchError as exc:
            raise BenchError(f"{' '.join(argv)}: {exc}; its output:\n{tail(log_path)}") from None
        yield popen.pid
    finally:
        terminate(popen, 5.0)
        with contextlib.suppress(OSError):
            log_path.unlink()
            logdir.rmdir()


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads (client and libzmq I/O threads too).

    ``time.process_time()`` reads CLOCK_PROCESS_CPUTIME_ID, which counts in
    nanoseconds; ``psutil.Process().cpu_times()`` counts the same thing in
    clock ticks (10 ms on Linux), too coarse for a 2,500-frame trial.
    """
    return time.process_time()


def other_cpu_seconds(pid: int) -> float | None:
    """CPU time of another process, all its threads, in ns resolution; None once it is gone.

    Read from ``/proc/PID/task/*/schedstat`` (the first field: ns on a CPU), because
    ``/proc/PID/stat`` counts in 10 ms ticks.  A thread that has exited no longer
    counts; the helpers measured here (a proxy) keep theirs for the whole run.
    """
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                total += int((task / "schedstat").read_text().split()[0])
    except OSError:
        return None
    return total / 1e9


def terminate(popen: subprocess.Popen[Any], timeout_s: float) -> bool:
    """SIGTERM ``popen`` if it still runs, and SIGKILL it after ``timeout_s``; True when it
    stopped by itself (or had already), False when it had to be killed."""
    if popen.poll() is not None:
        return True
    popen.send_signal(signal.SIGTERM)
    try:
        popen.wait(timeout_s)
        return True
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait()
        return False
