"""A TCP relay on loopback that records every byte passing through it.

``TcpRelay(upstream_port)`` listens on a free port; each connection made to
it is joined to a new connection to ``127.0.0.1:upstream_port``, and what
flows either way is appended to :attr:`recorded`.  Used to look at what a
ZeroMQ link really puts on the wire.
"""

from __future__ import annotations

import selectors
import socket
import threading


class TcpRelay:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen()
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._recorded = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tcp-relay", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def recorded(self) -> bytes:
        with self._lock:
            return bytes(self._recorded)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, None)
        peers: dict[socket.socket, socket.socket] = {}
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.1):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._listener:
                        self._accept(sel, peers)
                        continue
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    other = peers.get(sock)
                    if not data or other is None:
                        self._drop(sel, peers, sock)
                        continue
                    with self._lock:
                        self._recorded += data
                    try:
                        other.sendall(data)
                    except OSError:
                        self._drop(sel, peers, sock)
        finally:
            for s in list(peers):
                s.close()
            sel.close()

    def _accept(self, sel: selectors.BaseSelector,
                peers: dict[socket.socket, socket.socket]) -> None:
        try:
            down, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            up = socket.create_connection(self.upstream, timeout=2)
        except OSError:
            down.close()
            return
        for s in (down, up):
            s.setblocking(True)
            sel.register(s, selectors.EVENT_READ, None)
        peers[down], peers[up] = up, down

    @staticmethod
    def _drop(sel: selectors.BaseSelector, peers: dict[socket.socket, socket.socket],
              sock: socket.socket) -> None:
        other = peers.pop(sock, None)
        for s in (sock, other):
            if s is None:
                continue
            peers.pop(s, None)
            try:
                sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
