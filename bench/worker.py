"""The publisher and subscriber processes, and the parent's handle on them.

Each run of a transport starts one subscriber and one publisher process
(``spawn``: fresh interpreters, nothing inherited).  The parent drives them
with short commands over a pipe; every command has a timeout, and a child
whose pipe closes (the parent died or gave up) stops by itself.

Commands to a publisher: ``next_seq``, ``warmup``, ``send``, ``quit``.
Commands to a subscriber: ``seen``, ``quiesce``, ``arm``, ``collect``, ``quit``.
Each is answered by ``("ok", value)`` or ``("error", traceback)``.
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from dataclasses import asdict
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

from bench import procs
from bench.pacing import Pace
from bench.procs import BenchError
from bench.recorder import Recorder, Trial
from bench.transports.base import Env


class Worker:
    """The parent's handle on one child process; a context manager that always stops it."""

    def __init__(self, role: str, transport: str, env: Env) -> None:
        assert role in ("pub", "sub")
        self.role = role
        self.transport = transport
        self.env = env
        self._conn: Connection | None = None
        self._proc: Any = None

    def start(self, timeout_s: float = 30.0) -> None:
        parent, child = procs.SPAWN.Pipe()
        target = _publisher_main if self.role == "pub" else _subscriber_main
        self._proc = procs.SPAWN.Process(target=target, args=(child, self.transport, self.env),
                                         name=f"bench-{self.transport}-{self.role}", daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        self.reply(timeout_s, "start")

    def call(self, *cmd: Any, timeout_s: float = 30.0) -> Any:
        """Send a command and return its answer."""
        self.send(*cmd)
        return self.reply(timeout_s, cmd[0])

    def send(self, *cmd: Any) -> None:
        """Send a command without waiting; :meth:`reply` collects the answer."""
        assert self._conn is not None
        try:
            self._conn.send(cmd)
        except OSError:
            raise BenchError(f"{self._who()} is gone (exit code {self._proc.exitcode})") from None

    def reply(self, timeout_s: float, what: str) -> Any:
        assert self._conn is not None
        if not self._conn.poll(timeout_s):
            raise BenchError(f"{self._who()}: no answer to {what!r} within {timeout_s:.0f} s")
        try:
            status, value = self._conn.recv()
        except EOFError:
            raise BenchError(f"{self._who()} exited during {what!r} "
                             f"(exit code {self._proc.exitcode})") from None
        if status != "ok":
            raise BenchError(f"{self._who()} failed during {what!r}:\n{value}")
        return value

    def _who(self) -> str:
        return f"{self.transport} {'publisher' if self.role == 'pub' else 'subscriber'}"

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.send(("quit",))
            # give it a moment to close its client cleanly
            with contextlib.suppress(OSError, EOFError):
                if self._conn.poll(5.0):
                    self._conn.recv()
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            procs.stop_process(self._proc)
            self._proc = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class _ParentGone(Exception):
    """The parent closed its end of the pipe (it finished, failed or was interrupted)."""


def _answer(conn: Connection, status: str, value: Any) -> None:
    try:
        conn.send((status, value))
    except OSError:
        raise _ParentGone from None


# -- the publisher process -----------------------------------------------------
def _publisher_main(conn: Connection, transport_name: str, env: Env) -> None:
    procs.ignore_sigint()
    try:
        _publisher_serve(conn, transport_name, env)
    except _ParentGone:
        pass  # nobody is left to tell; the client has been closed


def _publisher_serve(conn: Connection, transport_name: str, env: Env) -> None:
    try:
        from bench.transports import get

        sender = get(transport_name).sender(env)
        sender.open()
    except BaseException:
        _answer(conn, "error", traceback.format_exc())
        return
    try:
        _answer(conn, "ok", None)
        while True:
            try:
                cmd, *args = conn.recv()
            except EOFError:
                return
            try:
                if cmd == "quit":
                    _answer(conn, "ok", None)
                    return
                result = _publisher_command(conn, sender, cmd, args)
            except EOFError:
                return
            except BaseException:
                _answer(conn, "error", traceback.format_exc())
            else:
                _answer(conn, "ok", result)
    finally:
        sender.close()


def _publisher_command(conn: Connection, sender: Any, cmd: str, args: list[Any]) -> Any:
    if cmd == "next_seq":
        return sender.next_seq
    if cmd == "warmup":
        # send slowly until the parent says stop (the subscriber saw a frame)
        (limit_s,) = args
        stats = sender.run(Pace(duration_s=limit_s, rate=500.0), should_stop=conn.poll)
        sender.flush(2.0)
        if conn.recv() != ("stop",):  # the parent always ends a warm-up with a stop
            raise BenchError("warm-up ended without a stop")
        return stats.attempted
    if cmd == "send":
        pace, flush_s = args
        cpu0 = procs.cpu_seconds()
        stats = sender.run(pace)
        sender.flush(flush_s)
        out = asdict(stats)
        out["cpu_s"] = procs.cpu_seconds() - cpu0
        return out
    raise ValueError(f"unknown command {cmd!r}")


# -- the subscriber process ----------------------------------------------------
def _subscriber_main(conn: Connection, transport_name: str, env: Env) -> None:
    procs.ignore_sigint()
    rec = Recorder()
    stop = threading.Event()
    ready = threading.Event()
    done = threading.Event()
    failure: list[str] = []
    receiver: Any = None

    def control() -> None:
        try:
            _subscriber_control(conn, rec, receiver, stop, ready, done, failure)
        except (_ParentGone, EOFError):
            stop.set()

    try:
        from bench.transports import get

        receiver = get(transport_name).receiver(env)
    except BaseException:
        with contextlib.suppress(_ParentGone):
            _answer(conn, "error", traceback.format_exc())
        return
    ctl = threading.Thread(target=control, name="bench-control", daemon=True)
    ctl.start()
    try:
        receiver.run(rec, stop, ready.set)
    except BaseException:
        failure.append(traceback.format_exc())
    finally:
        done.set()
    ctl.join(60.0)  # the parent sends a command soon and learns of the failure


def _subscriber_control(conn: Connection, rec: Recorder, receiver: Any, stop: threading.Event,
                        ready: threading.Event, done: threading.Event, failure: list[str]) -> None:
    deadline = time.monotonic() + 30.0
    while not ready.wait(0.05):
        if done.is_set() or time.monotonic() > deadline:
            stop.set()
            _answer(conn, "error", failure[0] if failure else "the receiver never became ready")
            return
    _answer(conn, "ok", None)
    trial = rec.trial
    cpu0 = 0.0
    while True:
        try:
            cmd, *args = conn.recv()
        except EOFError:
            stop.set()
            return
        if cmd == "quit":
            stop.set()
            done.wait(10.0)
            _answer(conn, "ok", None)
            return
        result: Any = None
        try:
            if done.is_set():
                why = failure[0] if failure else "(no error)"
                raise BenchError(f"the receiver stopped:\n{why}")
            if cmd == "seen":
                result = rec.seen
            elif cmd == "quiesce":
                idle_s, limit_s = args
                result = _quiesce(rec, idle_s, limit_s)
            elif cmd == "arm":
                floor, capacity = args
                trial = rec.arm(floor, capacity)
                cpu0 = procs.cpu_seconds()
            elif cmd == "collect":
                expected, limit_s, idle_s, latency = args
                _collect(trial, done, expected, limit_s, idle_s)
                cpu_s = procs.cpu_seconds() - cpu0
                p50, p99 = trial.percentiles(0.50, 0.99) if latency else (float("nan"),) * 2
                result = {"received": trial.count, "dups": trial.dups, "last_ns": trial.last_ns,
                          "cpu_s": cpu_s, "p50_us": p50, "p99_us": p99,
                          "details": receiver.details()}
            else:
                raise ValueError(f"unknown command {cmd!r}")
        except Exception:
            _answer(conn, "error", traceback.format_exc())
            continue
        _answer(conn, "ok", result)


def _quiesce(rec: Recorder, idle_s: float, limit_s: float) -> bool:
    """Wait until no frame at all arrived for ``idle_s`` (an earlier trial's backlog is gone)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if time.time_ns() - rec.last_seen_ns > idle_s * 1e9:
            return True
        time.sleep(0.02)
    return False


def _collect(trial: Trial, done: threading.Event, expected: int, limit_s: float,
             idle_s: float) -> None:
    """Wait for all ``expected`` frames, or until none came for ``idle_s``, or ``limit_s``."""
    start_ns = time.time_ns()
    deadline = time.monotonic() + limit_s
    while trial.count < expected and time.monotonic() < deadline and not done.is_set():
        last = max(trial.last_ns, start_ns)
        if time.time_ns() - last > idle_s * 1e9:
            return
        time.sleep(0.005)
