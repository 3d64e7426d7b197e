"""Helpers for the alerting tests: rules from dicts, frames from values, a webhook
receiver on loopback, an in-process collector with rules."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import zmq
from support import tcp, wait_until

from sensorwire.collector import config as collector_config
from sensorwire.collector.alerting.engine import Engine
from sensorwire.collector.alerting.notification import Notification
from sensorwire.collector.alerting.rules import AlertRule
from sensorwire.collector.alerting.sink import AlertSink
from sensorwire.collector.frames import CheckedFrame
from sensorwire.collector.runtime import Collector
from sensorwire.lifecycle import StopSignal
from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import Frame

NS = 1_000_000_000
T0 = 1_800_000_000 * NS  # a round start time


def rule(**kw: Any) -> AlertRule:
    kw.setdefault("name", "r")
    return msgspec.convert(kw, AlertRule)


def frame(values: dict[str, float], t_s: float, site: str = "greenhouse", device: str = "pi-07",
          sensor: str = "env", seq: int = 1) -> Frame:
    f = Frame(site=site, device_id=device, boot_id=1, seq=seq, sensor=sensor,
              time_unix_nano=T0 + int(t_s * NS))
    for metric, value in values.items():
        f.samples.add(metric=metric, value=value)
    return f


def checked(values: dict[str, float], t_s: float, **kw: Any) -> CheckedFrame:
    """``frame(...)`` as the collector hands it to its sinks."""
    return CheckedFrame.from_pb(frame(values, t_s, **kw))


def at(t_s: float) -> int:
    return T0 + int(round(t_s * NS))


def feed(engine: Engine, series: list[tuple[float, float]], metric: str = "temperature",
         **where: Any) -> list[Notification]:
    """Feed ``(t_s, value)`` readings, received at their own time."""
    out: list[Notification] = []
    for i, (t, v) in enumerate(series):
        out += engine.observe(checked({metric: v}, t, seq=i + 1, **where), at(t))
    return out


def brief(notes: list[Notification]) -> list[tuple[str, float]]:
    """``(state, seconds after T0)`` of each notification."""
    return [(n.state, (n.time_ns - T0) / NS) for n in notes]


# -- a real HTTP server on loopback for webhooks -----------------------------------


class Hook:
    """A webhook receiver: answers each POST with the next scripted status.

    ``script`` is consumed in order ("500", "200", "hang"); when it is empty,
    every request gets ``then``.  ``hang`` holds the request open until
    :meth:`close`; a 3xx answer says ``Location: {location}``.  Every request
    (POST or GET) is recorded as (status, headers, body).
    """

    def __init__(self, script: list[str] | None = None, then: str = "200") -> None:
        self.script = list(script or [])
        self.then = then
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.location = ""
        self.retry_after = ""  # sent with every answer that is not 2xx, when set
        self.times: list[float] = []  # time.monotonic() of each request
        self.release = threading.Event()
        self._lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with hook._lock:
                    answer = hook.script.pop(0) if hook.script else hook.then
                    hook.requests.append((answer, dict(self.headers), body))
                    hook.times.append(time.monotonic())
                if answer == "hang":
                    hook.release.wait(60)
                    return
                self.send_response(int(answer))
                if answer.startswith("3"):
                    self.send_header("Location", hook.location)
                if hook.retry_after and not answer.startswith("2"):
                    self.send_header("Retry-After", hook.retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST  # noqa: N815 - a followed redirect arrives as a GET

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def delivered(self) -> list[dict[str, Any]]:
        """The JSON bodies of the requests answered 2xx."""
        with self._lock:
            return [json.loads(b) for status, _, b in self.requests if status.startswith("2")]

    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class Drip:
    """An HTTP endpoint that answers one byte every ``every_s``: in its status line and
    headers (``where = "headers"``) or, after complete headers, in its body.  ``answer``
    is what it sends (by default a 200 with 1000 bytes of body)."""

    def __init__(self, where: str = "headers", every_s: float = 0.3,
                 answer: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000
                 ) -> None:
        self.where = where
        self.answer = answer
        self.every_s = every_s
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/alerts"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:  # closed before anyone came
            return
        with conn:
            conn.recv(65536)
            answer = self.answer
            if self.where == "body":
                head, answer = answer[:answer.index(b"\r\n\r\n") + 4], answer[answer.index(b"\r\n\r\n") + 4:]
                conn.sendall(head)
            for i in range(len(answer)):
                if self.stop.wait(self.every_s):
                    return
                try:
                    conn.sendall(answer[i:i + 1])
                except OSError:
                    return
            self.stop.wait()  # closing now, with the request's body unread, would reset it

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(5)


# -- an in-process collector with alert rules, fed by a real PUB socket -----------




class Live:
    """A collector in a thread with ``alerts`` (TOML text) and storage in ``tmp/t.db``.

    Frames are sent with :meth:`send`; ``self.seq`` numbers them.  Several
    Live collectors on the same folder share the database (a restart).
    """

    def __init__(self, tmp_path: Path, alerts: str, name: str = "collector") -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 0)
        ep = tcp()
        self.pub.bind(ep)
        self.db = tmp_path / "t.db"
        path = tmp_path / f"{name}.toml"
        self.alerts_text = alerts
        self.config_text = (f'[subscribe]\nconnect = ["{ep}"]\n[storage]\npath = "{self.db}"\n'
                            f"flush_interval_s = 0.05\n{alerts}")
        path.write_text(self.config_text)
        self.config = collector_config.load(path)
        self.collector = Collector(self.config)
        self.stop = StopSignal()
        ready = threading.Event()
        self.thread = threading.Thread(target=self.collector.run, args=(self.stop, ready.set))
        self.thread.start()
        assert ready.wait(10)
        self.seq = 0
        probe = frame({"probe": 0.0}, 0, site="zz", device="probe", sensor="probe")
        # a boot of its own, numbered on: a restarted collector resumes the seqs it stored,
        # and would drop a repeated (boot_id, seq) as a duplicate
        probe.boot_id = int.from_bytes(os.urandom(8), "little") or 1
        wait_until(lambda: self._probe(probe), what="the collector's subscription")

    @property
    def alerting(self) -> AlertSink:
        return next(s for s in self.collector.sinks if isinstance(s, AlertSink))

    def _probe(self, probe: Frame) -> bool:
        probe.seq += 1
        self.pub.send(wire.encode(wire.data_topic(probe.site, probe.device_id, probe.sensor), probe))
        return self.collector.accepted > 0

    def send(self, values: dict[str, float], site: str = "greenhouse", device: str = "pi-07",
             sensor: str = "env") -> None:
        self.seq += 1
        f = frame(values, 0, site=site, device=device, sensor=sensor, seq=self.seq)
        f.boot_id = id(self) & 0xFFFFFFFF
        f.time_unix_nano = time.time_ns()
        self.pub.send(wire.encode(wire.data_topic(site, device, sensor), f))

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            conn.close()

    def stored(self, device: str = "pi-07") -> int:
        return int(self.rows("SELECT count(*) FROM frames f JOIN devices d ON d.id = f.device_key "
                             "WHERE d.device = ?", device)[0][0])

    def history(self) -> list[tuple[str, str]]:
        return [(r, s) for r, s in self.rows("SELECT rule, state FROM alert_history ORDER BY id")]

    def close(self) -> None:
        if self.thread.is_alive():
            self.stop.set()
            self.thread.join(15)
        self.stop.close()
        self.pub.close()
        self.ctx.term()
