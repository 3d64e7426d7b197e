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
  need to know (a failed handshake and its likely cause), rate-limited, and
  counts it;
- looks at each allow-list folder every second, and at once after
  :meth:`reload`, and re-reads the ones that changed.

The counters are only incremented by this thread; other threads may read them.
"""

from __future__ import annotations

import collections
import logging
import struct
import threading
import time
from typing import TYPE_CHECKING

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
          | zmq.EVENT_DISCONNECTED)

_PROTOCOL: dict[int, str] = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "security mechanism mismatch",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "cryptographic error",
    zmq.PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE: "key exchange failed",
}


class Watched(msgspec.Struct):
    """One monitored socket; ``connected`` holds the endpoints it connects to (it is the
    client there) - on any other endpoint it is the server."""

    name: str        # e.g. "frontend", "subscribe"
    monitor: zmq.Socket[bytes]
    connected: set[str] = msgspec.field(default_factory=set)


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
        try:
            while not self._stop.is_set():
                # with no allow-list to watch, sleep until a monitor event or close()
                timeout = int(max(0.0, next_watch - time.monotonic()) * 1000) if self.lists else None
                events = dict(poller.poll(timeout))
                if self._waker.fd in events:
                    self._waker.drain()
                    self._adopt(poller, watched)
                if zap is not None and zap in events:
                    self._answer(zap)
                for sock, w in list(watched.items()):
                    if sock in events and not self._events(w):
                        poller.unregister(sock)
                        sock.close(linger=0)
                        del watched[sock]
                now = time.monotonic()
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
    def _events(self, w: Watched) -> bool:
        """Handle what is waiting on one monitor socket; False once it has stopped."""
        while True:
            try:
                parts = w.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return True
            if len(parts) != 2 or len(parts[0]) != 6:
                continue  # not libzmq 4's event format
            # (zmq.utils.monitor would do this, but it imports asyncio: 8 MiB more for an agent)
            event, value = struct.unpack("=HI", parts[0])
            endpoint = parts[1].decode("utf-8", "replace")
            if event == zmq.EVENT_MONITOR_STOPPED:
                return False
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
            why = ("the client closed the connection during the handshake: security mechanism "
                   'mismatch? It has [security] mode = "curve" and this side "none"')
        elif server:
            why = ("the client closed the connection during the handshake: one without CURVE "
                   '(mode = "none"), or whose server_key is not this server\'s public key?')
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
