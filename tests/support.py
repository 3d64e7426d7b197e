"""Test helpers: free ports, real sensorwire processes, polls with deadlines.

Every process a test starts is stopped at the end of the test; every wait is
a poll with a deadline, never a bare sleep used as synchronisation.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import zmq

from sensorwire.demo import free_port as free_port  # re-exported: the tests import it from here
from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import Frame, RepairRequest, SeqRange
from sensorwire.sdnotify import NotifyListener

if TYPE_CHECKING:
    from sensorwire.agent.publisher import Publisher
    from sensorwire.collector.config import CollectorConfig
    from sensorwire.collector.sinks import Item, Sink

T = TypeVar("T")

LIBFAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))), None)
needs_faketime = pytest.mark.skipif(
    LIBFAKETIME is None and not os.environ.get("SENSORWIRE_REQUIRE_ALL"),
    reason="needs libfaketime (Debian package faketime; `make test` installs it when run as root)",
)


def simulated_agent_toml(device: str, front: str, tmp: Path, interval_s: float = 0.1,
                         heartbeat_s: float = 0.3, publish: str = "", spool: str = "") -> str:
    """An agent of one simulated sensor (a constant ``t``), spooling under ``tmp``; extra
    lines for ``[publish]`` and ``[spool]`` in ``publish`` and ``spool``."""
    return f"""\
site = "gh"
device_id = "{device}"
[publish]
connect = ["{front}"]
heartbeat_s = {heartbeat_s}
{publish}
[[sensors]]
name = "env"
kind = "simulated"
interval_s = {interval_s}
metrics = [{{ name = "t", signal = "constant", value = 1.0 }}]
[spool]
{spool}
dir = "{tmp / ('spool-' + device)}"
"""


def status_by_device(db: Path) -> dict[str, Any]:
    """``sensorwire status --format json``, by device."""
    r = run_cli("status", "--db", str(db), "--format", "json")
    assert r.returncode == 0, r.stderr
    return {o["device"]: o for o in map(json.loads, r.stdout.splitlines())}



def tcp() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


def wait_until(check: Callable[[], T | None], timeout_s: float = 10.0, interval_s: float = 0.05,
               what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


class Proc:
    """A real ``sensorwire`` process with its log in a file."""

    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None,
                 ready: bool = True, timeout_s: float = 15.0) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        # unix socket paths are limited to 108 bytes: keep it short, outside tmp_path
        self._notify_dir = tempfile.mkdtemp(prefix="sw-")
        notify_path = os.path.join(self._notify_dir, "notify")
        listener = NotifyListener(notify_path) if ready else None
        full_env = dict(os.environ, PYTHONUNBUFFERED="1")
        full_env.pop("JOURNAL_STREAM", None)
        if listener is not None:
            full_env["NOTIFY_SOCKET"] = notify_path
        full_env.update(env or {})
        with open(self.log_path, "wb") as logf:
            self.popen = subprocess.Popen([sys.executable, "-m", "sensorwire", *argv],
                                          stdout=logf, stderr=subprocess.STDOUT, env=full_env)
        self.listener = listener
        if listener is not None:
            ok = listener.wait_for("READY=1", timeout_s, alive=lambda: self.popen.poll() is None)
            if not ok:
                self.kill()
                raise AssertionError(f"{name} did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout_s: float = 5.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired as exc:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"{self.name} did not stop within {timeout_s} s:\n{self.log()}") from exc

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()

    def close(self) -> None:
        self.kill()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            shutil.rmtree(self._notify_dir, ignore_errors=True)




def run_cli(*argv: str, timeout: float = 60.0, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run ``sensorwire ARGV`` to completion and capture its output."""
    return subprocess.run([sys.executable, "-m", "sensorwire", *argv], capture_output=True,
                          text=True, timeout=timeout, **kw)


def frames_stored(db: Path) -> int:
    """Frames in a collector's SQLite file; 0 before the collector has created its tables."""
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM frames").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


@contextlib.contextmanager
def small_tmpfs(where: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted at ``where`` (made here), for a real full disk; skips
    the test, saying why, where mounting is not allowed (it needs root)."""
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


class FedCollector:
    """A collector running in a thread of the test, fed by a real PUB socket it connects to.

    ``config(endpoint)`` makes its config from the PUB's endpoint, ``sinks(config)`` its sinks
    (default none); ``sndhwm=0`` makes the PUB keep every message rather than drop at its
    high-water mark."""

    def __init__(self, config: Callable[[str], CollectorConfig],
                 sinks: Callable[[CollectorConfig], list[Sink]] | None = None,
                 sndhwm: int | None = None) -> None:
        import threading

        import zmq

        from sensorwire.collector.runtime import Collector
        from sensorwire.lifecycle import StopSignal

        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        if sndhwm is not None:
            self.pub.setsockopt(zmq.SNDHWM, sndhwm)
        ep = tcp()
        self.pub.bind(ep)
        cfg = config(ep)
        self.collector = Collector(cfg, sinks=sinks(cfg) if sinks else [])
        self.stop = StopSignal()
        ready = threading.Event()
        self.thread = threading.Thread(target=self.collector.run, args=(self.stop, ready.set))
        self.thread.start()
        assert ready.wait(10), "the collector did not start"

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.stop.close()
        self.pub.close()
        self.ctx.term()


class Nowhere:
    """A sink that takes every batch and keeps nothing (for tests of what feeds sinks)."""

    name = "nowhere"

    def open(self) -> None:
        pass

    def write(self, batch: Sequence[Item]) -> None:
        pass

    def close(self) -> None:
        pass


class Upstream:
    """The proxy's side of an agent's connection, for tests of a publisher in the test's own
    process: an XSUB it connects to, that subscribes, asks for repairs and reads what comes."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.endpoint = tcp()
        self.sock = ctx.socket(zmq.XSUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(self.endpoint)

    def subscribe_and_wait(self, p: Publisher) -> None:
        assert p.sock is not None

        def subscribed() -> bool:
            # sent again until it arrives: one sent before the connection is up is lost
            self.sock.send(b"\x01")  # everything
            p.sock.poll(50)  # type: ignore[union-attr]
            p.handle_incoming()
            return bool(p.subscriptions)

        wait_until(subscribed, what="the publisher to see the subscription")

    def ask_repair(self, p: Publisher, boot_id: int, first: int, last: int) -> None:
        req = RepairRequest(device_id=p.device_id, ranges=[SeqRange(boot_id=boot_id, first=first, last=last)])
        self.sock.send(wire.REPAIR + req.SerializeToString())
        def arrived() -> bool:
            assert p.sock is not None
            if not p.sock.poll(50):
                return False
            p.handle_incoming()
            return True
        wait_until(arrived, what="the repair request to arrive")

    def seqs(self, expect: int) -> list[int]:
        """The ``seq`` of the next ``expect`` data frames, then checks that none follows."""
        out: list[int] = []
        for _ in range(expect):
            assert self.sock.poll(5000), f"only {len(out)} of {expect} frames arrived"
            msg = self.sock.recv()
            out.append(Frame.FromString(msg[msg.index(wire.DELIM) + 1:]).seq)
        assert not self.sock.poll(200), "more frames than expected"
        return out
