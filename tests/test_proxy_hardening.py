"""The proxy under abuse from a peer: a real ``sensorwire proxy`` process, real sockets.

What each test does to the proxy is what an audit did to it; what it checks is that the proxy
goes on forwarding to the good subscribers, stays within bounds and still stops on SIGTERM.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import zmq
from securestack import KeyRing, security_block
from support import Proc, free_port, run_cli, tcp, wait_until, write

from sensorwire import keys, libzmqproxy
from sensorwire.collector.tracking import MAX_RANGES_PER_REQUEST
from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import RepairRequest

pytestmark = pytest.mark.slow

# would keep the libzmq proxy thread busy for about a minute, no STATISTICS answered (the old
# code gave up after 5 s): each (un)subscription of a long prefix walks libzmq's tries byte by
# byte (the sender's too, so the flood is sent for as long as the test needs, see Flood)
FLOOD_PAIRS = 2000
FLOOD_PREFIX = b"x" * 60_000


class Ends:
    """A started proxy and its two endpoints."""

    def __init__(self, proc: Proc, front: str, back: str) -> None:
        self.proc, self.front, self.back = proc, front, back


def start_proxy(procs: Callable[..., Proc], tmp_path: Path, extra: str = "") -> Ends:
    front, back = tcp(), tcp()
    cfg = write(tmp_path / "proxy.toml", f'frontend = "{front}"\nbackend = "{back}"\n'
                f'summary_s = 1.0\n{extra}\n[metrics]\nlisten = ""\n')
    return Ends(procs("proxy", "proxy", "-c", str(cfg)), front, back)


class Pair:
    """An agent (XPUB on the frontend) and a collector (XSUB on the backend, ``gh/``)."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], ends: Ends) -> None:
        self.agent = ctx.socket(zmq.XPUB)
        self.agent.setsockopt(zmq.LINGER, 0)
        self.agent.connect(ends.front)
        self.sub = ctx.socket(zmq.XSUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.connect(ends.back)
        self.sub.send(b"\x01gh/")
        assert self.agent.poll(10_000), "the subscription did not reach the agent"
        self.agent.recv()
        self.seq = 0

    def delivers(self) -> bool:
        """Send one frame; True if it reaches the subscriber within a second."""
        self.seq += 1
        sent = b"gh/pi-1/env\x00" + self.seq.to_bytes(4, "big")
        self.agent.send(sent)
        while self.sub.poll(1000):
            if self.sub.recv() == sent:
                return True
        return False


class Flood:
    """Subscribe and unsubscribe one long prefix, up to FLOOD_PAIRS times, as fast as it goes,
    from a thread that owns the socket, until :meth:`stop`: the proxy thread stays busy for
    as long as the test needs, not for the minute all the pairs would take."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], back: str) -> None:
        self.pairs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ctx, back), daemon=True)
        self._thread.start()

    def _run(self, ctx: zmq.Context[zmq.Socket[bytes]], back: str) -> None:
        atk = ctx.socket(zmq.XSUB)
        try:
            atk.setsockopt(zmq.LINGER, 0)
            atk.setsockopt(zmq.SNDHWM, 0)
            atk.connect(back)
            while self.pairs < FLOOD_PAIRS and not self._stop.is_set():
                atk.send(b"\x01" + FLOOD_PREFIX)
                atk.send(b"\x00" + FLOOD_PREFIX)
                self.pairs += 1
        finally:
            atk.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the flood did not stop"


SLOW_STATS = "has not answered STATISTICS"


def summaries_after(log: str, line: str) -> int:
    """How many of the proxy's periodic summaries it logged after ``line``."""
    return log.count("forwarded in all", log.index(line)) if line in log else 0


def test_a_busy_proxy_thread_is_waited_for_and_sigterm_still_ends_the_process(
        procs: Callable[..., Proc], tmp_path: Path,
        ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """Late counters are a WARNING, not the end of forwarding; a proxy thread that does not
    stop on TERMINATE makes the process exit (1) with an ERROR rather than close the sockets
    under it and wait for ever in zmq_ctx_term."""
    # the flood needs prefixes above the default bound on upstream messages (see below)
    ends = start_proxy(procs, tmp_path, "[limits]\nmax_upstream_bytes = 65536")
    pair = Pair(ctx, ends)
    assert pair.delivers()
    flood = Flood(ctx, ends.back)  # goes on until the proxy has exited
    try:
        wait_until(lambda: SLOW_STATS in ends.proc.log(), timeout_s=60,
                   what="the WARNING that libzmq's counters are late")
        # and the proxy goes on: its summaries follow (code that gave up on late counters
        # stopped there, and took JOIN_S to exit)
        wait_until(lambda: summaries_after(ends.proc.log(), SLOW_STATS) >= 2, timeout_s=10,
                   what="the proxy's summaries after the WARNING")
        assert ends.proc.popen.poll() is None, ends.proc.log()
        assert flood.pairs < FLOOD_PAIRS, "the flood ended before the proxy was stopped"
        ends.proc.popen.send_signal(signal.SIGTERM)
        rc = ends.proc.popen.wait(15)
    finally:
        flood.stop()
    log = ends.proc.log()
    assert rc == 0 or (rc == 1 and "exiting without closing its sockets" in log), log
    assert "Traceback" not in log


# -- bounds on what collectors send upstream ---------------------------------------------------
PATHS = {"libzmq": "", "python": "last_value_cache = true"}


def largest_repair_request() -> bytes:
    """The longest message a collector sends upstream: every number at its widest."""
    req = RepairRequest(device_id="d" * 64)
    for _ in range(MAX_RANGES_PER_REQUEST):
        req.ranges.add(boot_id=2**64 - 1, first=2**64 - 1, last=2**64 - 1)
    return wire.REPAIR + req.SerializeToString()


def agent_hears(agent: zmq.Socket[bytes], msg: bytes) -> bool:
    while agent.poll(1000):
        if agent.recv() == msg:
            return True
    return False


@pytest.mark.parametrize("path", sorted(PATHS))
def test_a_subscription_longer_than_any_upstream_message_disconnects_its_sender(
        procs: Callable[..., Proc], tmp_path: Path, ctx: zmq.Context[zmq.Socket[bytes]],
        path: str) -> None:
    ends = start_proxy(procs, tmp_path, PATHS[path])
    pair = Pair(ctx, ends)
    rss = psutil.Process(ends.proc.popen.pid).memory_info().rss
    atk = ctx.socket(zmq.XSUB)
    atk.setsockopt(zmq.LINGER, 0)
    atk.setsockopt(zmq.SNDHWM, 0)
    atk.connect(ends.back)
    for i in range(200):  # took a proxy to 1.65 GB, and every agent to 300 MB
        atk.send(b"\x01" + i.to_bytes(4, "big") * 15_000)
    wait_until(lambda: "backend.disconnects" in ends.proc.log(), timeout_s=20,
               what="the flooding peer disconnected")
    assert pair.delivers()
    repair = largest_repair_request()
    pair.sub.send(repair)  # the longest legitimate message still passes
    assert agent_hears(pair.agent, repair)
    grown = psutil.Process(ends.proc.popen.pid).memory_info().rss - rss
    assert grown < 16 * 2**20, f"the proxy grew by {grown / 2**20:.0f} MiB"
    atk.close()


def test_in_python_a_subscription_longer_than_a_topic_is_dropped_and_counted(
        procs: Callable[..., Proc], tmp_path: Path,
        ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    ends = start_proxy(procs, tmp_path, PATHS["python"])
    pair = Pair(ctx, ends)
    pair.sub.send(b"\x01" + b"y" * (wire.MAX_TOPIC_BYTES + 1))
    pair.sub.send(b"\x07junk")
    pair.sub.send(b"\x01gh/pi-2/")  # a good one after: the bad ones went nowhere
    assert pair.agent.poll(10_000) and pair.agent.recv() == b"\x01gh/pi-2/"
    wait_until(lambda: "subscription_too_long 1, unknown_kind 1" in ends.proc.log(),
               timeout_s=10, what="the drops in the summary")
    assert pair.delivers()


def test_the_ping_answer_subscriptions_tracked_are_bounded(
        ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """The libzmq path's own peer keeps only subscriptions a ping answer can match, and at most
    MAX_LIVE of them."""
    front = ctx.socket(zmq.XSUB)
    front.setsockopt(zmq.LINGER, 0)
    front.setsockopt(zmq.SNDHWM, 0)
    inproc = libzmqproxy.endpoint()
    front.bind(inproc)
    upstream = libzmqproxy.Upstream(ctx, inproc)
    upstream.open()
    try:
        front.send(b"\x01" + b"z" * 60_000)  # not an answer's prefix: not kept
        for i in range(libzmqproxy.MAX_LIVE + 5):
            front.send(b"\x01" + wire.ACK + str(i).encode())
        total = libzmqproxy.MAX_LIVE + 6

        def all_read() -> bool:
            upstream.answer()
            return upstream.subscriptions == total

        wait_until(all_read, timeout_s=10, what="every subscription read")
        assert upstream.untracked == 5
    finally:
        upstream.close()
        front.close()


# -- what an authorized agent may send ----------------------------------------------------------
def curve_client(ctx: zmq.Context[zmq.Socket[bytes]], kind: int, ring: KeyRing, name: str,
                 endpoint: str) -> zmq.Socket[bytes]:
    pair = keys.load_secret(ring.secret(name))
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    s.curve_secretkey, s.curve_publickey = pair.secret, pair.public
    s.curve_serverkey = keys.load_public(ring.public("proxy"))
    s.connect(endpoint)
    return s


def test_an_agent_may_send_only_exact_ping_answers_besides_its_own_frames(
        procs: Callable[..., Proc], tmp_path: Path,
        ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    ring = KeyRing(tmp_path)
    ring.make("proxy", "collector-1", "pi-1")
    ring.allow(ring.collectors, "collector-1")
    ring.allow(ring.agents, "pi-1")
    ends = start_proxy(procs, tmp_path, security_block(
        secret_key=ring.secret("proxy"), authorized_keys=ring.agents,
        authorized_collectors=ring.collectors))
    sub = curve_client(ctx, zmq.XSUB, ring, "collector-1", ends.back)
    sub.send(b"\x01")
    agent = curve_client(ctx, zmq.XPUB, ring, "pi-1", ends.front)
    assert agent.poll(10_000), "pi-1 was not accepted"
    agent.recv()
    good = wire.ACK + b"0123456789abcdef"
    # each once forwarded to every collector, uncounted: data in a ping answer's clothes
    for bad in (wire.ACK + b"zzz\x00junk", wire.ACK + b"0123456789abcdef" + b"x" * 1000,
                wire.ACK + b"0123456789ABCDEF"):
        agent.send(bad)
    agent.send(good)
    assert sub.poll(10_000) and sub.recv() == good  # in order: the bad ones went nowhere
    wait_until(lambda: "bad_ack 3" in ends.proc.log(), timeout_s=10,
               what="the three bad answers counted")


# -- the addresses it binds -------------------------------------------------------------------
@pytest.mark.parametrize(("front", "back"), [("tcp://127.0.0.1:{p}", "tcp://127.0.0.1:{p}"),
                                             ("tcp://*:{p}", "tcp://127.0.0.1:{p}"),
                                             ("ipc:///tmp/sw-x.sock", "ipc:///tmp/sw-x.sock")])
def test_one_address_for_both_sockets_is_a_config_error(tmp_path: Path, front: str,
                                                        back: str) -> None:
    port = free_port()
    cfg = write(tmp_path / "proxy.toml", f'frontend = "{front.format(p=port)}"\n'
                f'backend = "{back.format(p=port)}"\n')
    r = run_cli("check-config", str(cfg))
    assert r.returncode == 2 and "the frontend's address too" in r.stderr, r.stderr


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="sw-"))  # a Unix socket path has at most 107 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_an_ipc_path_another_proxy_serves_is_not_taken_over(
        procs: Callable[..., Proc], tmp_path: Path, ctx: zmq.Context[zmq.Socket[bytes]],
        short_dir: Path) -> None:
    front, back = f"ipc://{short_dir}/front.sock", tcp()
    ends = Ends(procs("proxy", "proxy", "--frontend", front, "--backend", back), front, back)
    r = run_cli("proxy", "--frontend", ends.front, "--backend", tcp(), timeout=30)
    assert r.returncode == 1 and "address already in use" in r.stderr, r.stderr
    assert Pair(ctx, ends).delivers()  # the first proxy still has its agents


def test_a_stale_ipc_file_is_bound_again(procs: Callable[..., Proc], short_dir: Path,
                                         ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    path = short_dir / "front.sock"
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(path))  # the file of a process that is gone: nobody listens
    left.close()
    front, back = f"ipc://{path}", tcp()
    ends = Ends(procs("proxy", "proxy", "--frontend", front, "--backend", back), front, back)
    assert Pair(ctx, ends).delivers()


# -- configuration and command line -----------------------------------------------------------
@pytest.mark.parametrize(("line", "says"), [
    ("[limits]\nmax_message_bytes = 18446744073709551616", "<= 9223372036854775807"),
    ('frontend = ""', "is not a tcp:// or ipc:// endpoint"),
    ('frontend = "udp://127.0.0.1:5556"', "is not a tcp:// or ipc:// endpoint"),
    ('frontend = "inproc://agents"', "is not a tcp:// or ipc:// endpoint"),
])
def test_a_value_libzmq_cannot_use_is_a_config_error(tmp_path: Path, line: str,
                                                      says: str) -> None:
    front = "" if line.startswith("frontend") else f'frontend = "{tcp()}"\n'
    cfg = write(tmp_path / "proxy.toml", f'{front}backend = "{tcp()}"\n{line}\n')
    r = run_cli("check-config", str(cfg))
    assert r.returncode == 2 and says in r.stderr, r.stderr


def test_a_port_libzmq_chooses_is_logged(procs: Callable[..., Proc], tmp_path: Path,
                                        ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    proc = procs("proxy", "proxy", "--frontend", "tcp://127.0.0.1:*",
                 "--backend", "tcp://127.0.0.1:*")
    up = wait_until(lambda: re.search(r"agents -> (tcp://127\.0\.0\.1:\d+), collectors <- "
                                      r"(tcp://127\.0\.0\.1:\d+)", proc.log()),
                    what="the ports in the log")
    assert Pair(ctx, Ends(proc, up[1], up[2])).delivers()


def test_tail_refuses_an_endpoint_libzmq_would_wait_on_for_ever() -> None:
    r = run_cli("tail", "--connect", "tcp://127.0.0.1:99999", timeout=30)
    assert r.returncode == 2 and "port '99999'" in r.stderr, r.stderr
