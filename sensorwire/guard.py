"""The guard thread: ZAP handler, socket monitors and allow-list watch.

One per process, beside the thread that owns the role's sockets, sharing
its ``zmq.Context`` (ZAP and monitors work over ``inproc://``).  It

- answers libzmq's ZAP requests (RFC 27) for the CURVE server sockets: a
  client key in the allow-list of the socket's domain is accepted, with its
  Z85 public key as the user id that every message it sends then carries
  (``User-Id``); any other key is refused with status 300, "try again
  later", so that a device refused now connects by itself once its key is
  added (libzmq would never retry after a 400);
- reads the monitor sockets of the role's sockets and logs what operators
  need to know (a failed handshake and its likely cause; a listener that
  cannot accept connections, most often for want of file descriptors),
  rate-limited, and counts it;
- looks at each allow-list folder every second, and at once after
  :meth:`reload`, and re-reads the ones that changed.

The counters are only incremented by this thread; other threads may read them.

A failed ``accept()`` (``ZMQ_EVENT_ACCEPT_FAILED``): libzmq's TCP listener
(``tcp_listener.cpp``, 4.3) does not take the connection off the kernel's
queue when ``accept()`` fails with EMFILE, so the listening socket stays
readable and libzmq's I/O thread tries again at once, for as long as the
descriptors stay exhausted: a whole core, and one event per try (over 100,000
a second on a 2-core x86 host).  libzmq writes monitor events with a blocking
send from that I/O thread: a monitor nobody reads stops all of the context's
network I/O once its queue is full.  So the guard reads at most
:data:`MONITOR_BATCH` events from a monitor per wake-up and, when more are
waiting, leaves that monitor alone for :data:`FLOODED_PAUSE_S`: the I/O thread
then waits on the full queue instead of spinning (5 % of a core instead of a
whole one, measured with a real proxy), and the connections already open are
served in bursts, with their messages a tenth of a second late (up to two),
until descriptors are free again.  Nothing in libzmq's options bounds the
retries (``ZMQ_RECONNECT_IVL`` applies to connecting sockets, ``ZMQ_BACKLOG``
only sizes the kernel's queue, ``ZMQ_TCP_ACCEPT_FILTER`` is applied after a
successful ``accept()``).
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import resource
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Literal

import msgspec
import zmq

from sensorwire.logs import RateLimited
from sensorwire.waker import Waker

if TYPE_CHECKING:  # keys and allow-lists are loaded only with CURVE (the callers pass them)
    from sensorwire.allowlist import AllowList

log = logging.getLogger(__name__)
_limited = RateLimited(log, period_s=30.0)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
WATCH_S = 1.0      # allow-list folders are looked at this often
INFO_EVERY_S = 60.0

EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
          | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
          | zmq.EVENT_DISCONNECTED | zmq.EVENT_ACCEPT_FAILED)
# EVENT_BIND_FAILED is not watched: zmq_bind() fails at once with the same errno, and the
# role stops with it (sensorwire.zmqutil.bind)

MONITOR_BATCH = 1000     # events read from one monitor per wake-up
FLOODED_PAUSE_S = 0.1    # a monitor flooded by failed accepts is not read for this long
ACCEPT_WARN_S = 30.0     # a listener that cannot accept is logged this often
ACCEPT_QUIET_S = 5.0     # no failed accept for this long: it accepts again (logged)
# accept() errors that last (libzmq retries in a loop); others are one connection's (counted)
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

_PROTOCOL: dict[int, str] = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "security mechanism mismatch",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "cryptographic error",
    zmq.PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE: "key exchange failed",
}


class AcceptFailures(msgspec.Struct):
    """A listener whose ``accept()`` fails: counted per event, logged once in a while."""

    errno: int = 0
    unlogged: int = 0                # failed accepts not yet in a warning
    last: float = 0.0                # time.monotonic() of the last
    logged: float = -ACCEPT_WARN_S   # of the last warning


class Watched(msgspec.Struct):
    """One monitored socket; ``connected`` holds the endpoints it connects to (it is the
    client there) - on any other endpoint it is the server."""

    name: str        # e.g. "frontend", "subscribe"
    monitor: zmq.Socket[bytes]
    connected: set[str] = msgspec.field(default_factory=set)
    failing: dict[str, AcceptFailures] = msgspec.field(default_factory=dict)  # by endpoint


class Guard:
    """Runs the security thread; construct, :meth:`start`, :meth:`watch` sockets, :meth:`close`."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], lists: dict[str, AllowList],
                 curve: bool = True) -> None:
        self.ctx = ctx
        self.lists = lists                       # ZAP domain -> allow-list
        self.curve = curve                       # connections are CURVE (for the wording)
        self.counts: collections.Counter[str] = collections.Counter()
        self._pending: list[Watched] = []
        self._lock = threading.Lock()
        self._waker = Waker()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._last_info: dict[str, float] = {}

    # -- called by the role's thread --------------------------------------------------
    def start(self) -> None:
        """Start the thread; returns once the ZAP handler is bound (before any CURVE bind)."""
        self._thread = threading.Thread(target=self._run, name="sensorwire-guard", daemon=True)
        self._thread.start()
        self._ready.wait(10.0)
        if self._error is not None:
            raise self._error

    def watch(self, sock: zmq.Socket[bytes], name: str) -> Watched:
        """Report the handshakes and disconnections of ``sock`` (call before bind/connect)."""
        w = Watched(name, sock.get_monitor_socket(EVENTS))
        with self._lock:  # hands the monitor socket to the guard thread (a full memory barrier)
            self._pending.append(w)
        self._waker.wake()
        return w

    def reload(self) -> None:
        """Re-read every allow-list now (e.g. on SIGHUP); safe from any thread."""
        self._reload.set()
        self._waker.wake()

    def close(self) -> None:
        """Stop the thread and close its sockets; before ``ctx.term()``. Idempotent."""
        self._stop.set()
        self._waker.wake()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        with self._lock:
            for w in self._pending:
                w.monitor.close(linger=0)
            self._pending.clear()
        self._waker.close()

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        zap: zmq.Socket[bytes] | None = None
        watched: dict[zmq.Socket[bytes], Watched] = {}
        poller = zmq.Poller()
        poller.register(self._waker.fd, zmq.POLLIN)
        try:
            if self.lists:
                zap = self.ctx.socket(zmq.REP)
                zap.setsockopt(zmq.LINGER, 0)
                try:
                    zap.bind(ZAP_ENDPOINT)
                except zmq.ZMQError as exc:
                    raise RuntimeError(f"cannot start the ZAP handler: {exc}") from None
                poller.register(zap, zmq.POLLIN)
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            self._error = exc
            if zap is not None:
                zap.close(linger=0)
            self._ready.set()
            return
        self._ready.set()
        next_watch = time.monotonic() + WATCH_S
        paused: dict[zmq.Socket[bytes], float] = {}  # flooded monitors -> when to read again
        try:
            while not self._stop.is_set():
                # with no allow-list to watch, sleep until a monitor event or close(), or
                # until a paused monitor is read again or a failing listener may be quiet
                due = [*paused.values(), *self._quiet_due(watched.values())]
                if self.lists:
                    due.append(next_watch)
                timeout = (int(max(0.0, min(due) - time.monotonic()) * 1000) + 1) if due else None
                events = dict(poller.poll(timeout))
                if self._waker.fd in events:
                    self._waker.drain()
                    self._adopt(poller, watched)
                if zap is not None and zap in events:
                    self._answer(zap)
                now = time.monotonic()
                for sock, until in list(paused.items()):
                    if now >= until:
                        del paused[sock]
                        poller.register(sock, zmq.POLLIN)
                for sock, w in list(watched.items()):
                    if sock not in events:
                        continue
                    state = self._events(w)
                    if state == "stopped":
                        poller.unregister(sock)
                        sock.close(linger=0)
                        del watched[sock]
                    elif state == "more":
                        poller.unregister(sock)
                        paused[sock] = now + FLOODED_PAUSE_S
                self._accept_summaries(watched.values(), now)
                if now >= next_watch or self._reload.is_set():
                    self._reload.clear()
                    for allow in set(self.lists.values()):
                        allow.refresh()
                    next_watch = now + WATCH_S
        except Exception:  # noqa: BLE001 - keep the role running; CURVE servers then refuse
            log.exception("the security thread failed; new CURVE connections are refused")
        finally:
            for sock in watched:
                sock.close(linger=0)
            if zap is not None:
                zap.close(linger=0)

    def _adopt(self, poller: zmq.Poller, watched: dict[zmq.Socket[bytes], Watched]) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for w in pending:
            watched[w.monitor] = w
            poller.register(w.monitor, zmq.POLLIN)

    # -- ZAP ------------------------------------------------------------------------------------
    def _answer(self, zap: zmq.Socket[bytes]) -> None:
        while True:
            try:
                req = zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            zap.send_multipart(self._decide(req))

    def _decide(self, req: list[bytes]) -> list[bytes]:
        if len(req) < 6:
            return [b"1.0", req[1] if len(req) > 1 else b"", b"500", b"malformed request", b"", b""]
        _version, request_id, domain, address, _identity, mechanism = req[:6]
        credentials = req[6:]
        where = domain.decode("ascii", "replace")
        peer = address.decode("ascii", "replace")
        allow = self.lists.get(where)
        if allow is None or mechanism != b"CURVE" or len(credentials) != 1:
            self.counts[f"{where}.refused_mechanism"] += 1
            _limited.warning(f"mech:{where}:{peer}", "[security] refused a connection from %s to "
                             "the %s socket: it uses %s, CURVE is required", peer, where,
                             mechanism.decode("ascii", "replace"))
            return [b"1.0", request_id, b"400", b"CURVE required", b"", b""]
        from sensorwire import keys  # a ZAP request comes only with CURVE

        key = credentials[0]
        z85 = keys.raw_to_z85(key)
        name = allow.name_of(key)
        if name is None:
            self.counts[f"{where}.refused_keys"] += 1
            _limited.warning(
                f"key:{where}:{z85}", "[security] refused a connection from %s to the %s socket: "
                "unknown public key %s (not in %s; to allow it, put its .key file there, named "
                "<device_id>.key for a device); %d refused connections so far", peer, where, z85,
                allow.folder, self.counts[f"{where}.refused_keys"])
            return [b"1.0", request_id, b"300", b"unknown key", b"", b""]
        self.counts[f"{where}.accepted"] += 1
        self._info(f"ok:{z85}", "[security] accepted %s (key %s) from %s on the %s socket",
                   name, z85, peer, where)
        return [b"1.0", request_id, b"200", b"OK", z85.encode("ascii"), b""]

    # -- monitors -------------------------------------------------------------------------------
    def _events(self, w: Watched) -> Literal["read", "more", "stopped"]:
        """Handle up to :data:`MONITOR_BATCH` events waiting on one monitor socket: "read"
        when none is left or the events are of another kind (a reconnect storm is read at full
        speed, the batch only lets the thread answer ZAP between batches), "more" when more
        are left and most of the batch was a listener out of descriptors, "stopped" once the
        monitor has stopped."""
        exhausted = 0
        for _ in range(MONITOR_BATCH):
            try:
                parts = w.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return "read"
            if len(parts) != 2 or len(parts[0]) != 6:
                continue  # not libzmq 4's event format
            # (zmq.utils.monitor would do this, but it imports asyncio: 8 MiB more for an agent)
            event, value = struct.unpack("=HI", parts[0])
            endpoint = parts[1].decode("utf-8", "replace")
            if event == zmq.EVENT_ACCEPT_FAILED:  # maybe 100,000 a second: count, log later
                self.counts[f"{w.name}.accept_failed"] += 1
                if value not in EXHAUSTED:  # a client gone before accept() (ECONNABORTED), ...
                    log.debug("%s: accept() on %s failed: %s", w.name, endpoint,
                              os.strerror(value))
                    continue
                exhausted += 1
                failing = w.failing.setdefault(endpoint, AcceptFailures())
                failing.errno, failing.last = value, time.monotonic()
                failing.unlogged += 1
                continue
            if event == zmq.EVENT_MONITOR_STOPPED:
                return "stopped"
            server = endpoint not in w.connected
            if event == zmq.EVENT_DISCONNECTED:
                self.counts[f"{w.name}.disconnects"] += 1
                log.debug("%s: a connection on %s closed", w.name, endpoint)
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                if not server and self.curve:
                    self._info(f"hs:{w.name}:{endpoint}", "[security] %s: secure connection to %s",
                               w.name, endpoint)
            else:
                self.counts[f"{w.name}.handshake_failed"] += 1
                if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH and server:
                    continue  # the ZAP answer has been logged with the key
                self._handshake_failed(w, server, endpoint, event, value)
        return "more" if exhausted > MONITOR_BATCH // 2 else "read"

    def _accept_summaries(self, watched: Iterable[Watched], now: float) -> None:
        """Warn about listeners that cannot accept, at most every :data:`ACCEPT_WARN_S`; say
        when one has had no failure for :data:`ACCEPT_QUIET_S`."""
        for w in watched:
            for endpoint, f in list(w.failing.items()):
                if f.unlogged and now - f.logged >= ACCEPT_WARN_S:
                    self._accept_warning(w, endpoint, f, now)
                elif now - f.last >= ACCEPT_QUIET_S:
                    del w.failing[endpoint]
                    log.info("%s: no failed accept on %s for %.0f s: new connections are accepted "
                             "again (%d failed accepts in all)", w.name, endpoint, ACCEPT_QUIET_S,
                             self.counts[f"{w.name}.accept_failed"])

    @staticmethod
    def _quiet_due(watched: Iterable[Watched]) -> Iterator[float]:
        """When :meth:`_accept_summaries` has something to do next."""
        for w in watched:
            for f in w.failing.values():
                yield f.last + ACCEPT_QUIET_S
                if f.unlogged:
                    yield f.logged + ACCEPT_WARN_S

    def _accept_warning(self, w: Watched, endpoint: str, f: AcceptFailures, now: float) -> None:
        code = errno.errorcode.get(f.errno, str(f.errno))
        if f.errno == errno.EMFILE:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            why = (f"too many open files ({code}): raise LimitNOFILE= in the service's unit "
                   "(systemctl edit), or ulimit -n where it is started by hand; the limit is "
                   f"{_limit(soft)} now (hard {_limit(hard)})")
        elif f.errno == errno.ENFILE:
            why = (f"the system's table of open files is full ({code}): see sysctl fs.file-nr "
                   "and fs.file-max")
        else:
            why = f"the kernel is short of memory ({code})"
        first = f.logged < 0
        log.warning("%s: cannot accept connections on %s: %s; new peers cannot connect, and "
                    "libzmq tries again at once, in a loop, until this clears; %d failed accepts "
                    "%s, %d in all", w.name, endpoint, why, f.unlogged,
                    "so far" if first else f"in the last {now - f.logged:.0f} s",
                    self.counts[f"{w.name}.accept_failed"])
        f.unlogged, f.logged = 0, now

    def _handshake_failed(self, w: Watched, server: bool, endpoint: str, event: int,
                          value: int) -> None:
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            why = (f"the server refused this key (ZAP status {value}): its public key must be in "
                   "the server's allow-list")
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            what = _PROTOCOL.get(value, f"protocol error 0x{value:x}")
            if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                why = (f"{what}: one side has [security] mode = \"curve\" and the other "
                       "\"none\"")
            elif server:
                why = f"{what}: a client whose server_key is not this server's public key?"
            else:
                why = f"{what}: is server_key the public key of the server at {endpoint}?"
        elif server and not self.curve:
            why = ("the client closed the connection during the handshake: a client with "
                   '[security] mode = "curve" (this side has "none"), or not a ZeroMQ peer at all '
                   "(a port scan, a TCP health check)?")
        elif server:
            why = ("the client closed the connection during the handshake: one without CURVE "
                   '(mode = "none"), one whose server_key is not this server\'s public key, or '
                   "not a ZeroMQ peer at all (a port scan, a TCP health check)?")
        elif not self.curve:
            # which side notices a mismatch first is a race: say the same as the mismatch does
            why = ('the server closed the connection during the handshake: security mechanism '
                   'mismatch? It has [security] mode = "curve" and this side "none"')
        else:
            why = ("the server closed the connection during the handshake: is server_key its "
                   "public key, and is this key in its allow-list?")
        _limited.warning(f"hs:{w.name}:{endpoint}:{event}",
                         "[security] %s: handshake on %s failed: %s; %d failed so far", w.name,
                         endpoint, why, self.counts[f"{w.name}.handshake_failed"])

    def _info(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_info.get(key, -INFO_EVERY_S) >= INFO_EVERY_S:
            if len(self._last_info) > 10_000:
                self._last_info.clear()
            self._last_info[key] = now
            log.info(msg, *args)


def _limit(n: int) -> str:
    return "unlimited" if n == resource.RLIM_INFINITY else str(n)
