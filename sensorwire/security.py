"""``[security]``: CURVE encryption and authentication for every socket.

The configuration (the same keys in agent.toml, proxy.toml and collector.toml)::

    [security]
    mode = "curve"                     # or "none" (the default)
    secret_key = "/etc/sensorwire/keys/proxy.key_secret"    # this process's key pair
    server_key = "/etc/sensorwire/keys/proxy.key"           # the server's public key (connect)
    authorized_keys = "/etc/sensorwire/keys/authorized"     # clients' public keys (bind)
    authorized_collectors = "..."      # proxy only: the backend's own allow-list

The side that binds is the CURVE server and accepts the clients whose public
key files are in its allow-list folder; the side that connects is the
client and needs the server's public key.  :class:`Security` applies this
to sockets at run time: roles call :meth:`Security.bind` and
:meth:`Security.connect` instead of :mod:`sensorwire.zmqutil`'s.

Device identity: an agent's key file in the allow-list is named
``<device_id>.key``; every message a CURVE client sends carries its Z85
public key as ``User-Id``, and :class:`Identity` drops a message whose topic
names another device.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import zmq

from sensorwire import zmqutil
from sensorwire.configload import Config
from sensorwire.guard import Guard, Watched
from sensorwire.proto import wire

if TYPE_CHECKING:  # loaded in open() with mode = "curve" only: a plain agent never needs them
    from sensorwire.allowlist import AllowList
    from sensorwire.keys import KeyPair

log = logging.getLogger(__name__)

Mode = Literal["curve", "none"]

AGENTS = "agents"           # ZAP domain of sockets that agents connect to
COLLECTORS = "collectors"   # ZAP domain of sockets that collectors connect to
HANDSHAKE_MS = 5000         # a refused client is disconnected after this and tries again
TOPIC_HEAD = 200            # bytes of a message looked at for its topic (3 names of 64 + 2)
# An agent's answer to a ping is $ack/ + the pinger's nonce; sensorwire's pingers (the
# collector, tail) send os.urandom(8).hex(): 16 lowercase hex digits, and nothing else passes
ACK_NONCE_LEN = 16
ACK_NONCE_CHARS = frozenset(b"0123456789abcdef")


# -- configuration ---------------------------------------------------------------------------
class _Security(Config):
    mode: Mode = "none"
    secret_key: str = ""

    def __post_init__(self) -> None:
        if self.mode == "curve" and not self.secret_key:
            raise ValueError('secret_key: required with mode = "curve" (make a key pair with '
                             "sensorwire keygen NAME)")


class ClientSecurity(_Security):
    """``sensorwire tail``: connects only."""

    server_key: str = ""


class AgentSecurity(_Security):
    server_key: str = ""        # the proxy's (or a binding collector's) public key
    authorized_keys: str = ""   # when the agent binds: collectors allowed to connect


class CollectorSecurity(_Security):
    server_key: str = ""        # when it connects: the proxy's (or agent's) public key
    authorized_keys: str = ""   # when it binds: agents allowed to connect, <device_id>.key


class ProxySecurity(_Security):
    authorized_keys: str = ""        # agents (frontend); also collectors unless the next is set
    authorized_collectors: str = ""  # collectors (backend)


AnySecurity = ClientSecurity | AgentSecurity | CollectorSecurity | ProxySecurity


def check(sec: AnySecurity, binds: bool, connects: bool) -> None:
    """Role-level checks; raises ``ValueError("security.key: problem")``."""
    if sec.mode != "curve":
        return
    server_key = getattr(sec, "server_key", "")
    authorized = getattr(sec, "authorized_keys", "")
    if connects and not server_key:
        raise ValueError('security.server_key: required with mode = "curve" to connect: the '
                         "public key (.key) of the server it connects to")
    if binds and not authorized:
        raise ValueError('security.authorized_keys: required with mode = "curve" to bind: a '
                         "folder of the public .key files of the clients allowed to connect")
    if server_key and not connects:
        raise ValueError("security.server_key: not used: nothing is connected (a typo?)")
    if authorized and not binds:
        raise ValueError("security.authorized_keys: not used: nothing is bound (a typo?)")


# -- run time ------------------------------------------------------------------------------
class Refused(Exception):
    """A message the identity check drops; ``reason`` is a counter label."""

    def __init__(self, reason: str, detail: str, who: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.who = who  # the key's name (or Z85 key): log lines are rate-limited per key


class Identity:
    """Which key sent a message, and may it publish on the message's topic?

    ``trust_anonymous``: a message with no ``User-Id`` came in over a
    connection this process made to a server it authenticated (the
    collector's connection to its proxy); it is let through.
    """

    def __init__(self, allow: AllowList, trust_anonymous: bool = False) -> None:
        self.allow = allow
        self.trust_anonymous = trust_anonymous

    def check(self, msg: zmq.Frame) -> None:
        """Raise :class:`Refused` unless ``msg``'s topic names the sender's own device."""
        try:
            uid = msg.get("User-Id")
        except zmq.ZMQError:
            if self.trust_anonymous:
                return
            raise Refused("no_identity", "a message without a CURVE identity") from None
        client = self.allow.by_uid.get(str(uid))
        if client is None:
            raise Refused("revoked_key", f"a message from key {uid}, which is no longer in "
                          f"{self.allow.folder} (the connection stays open until it breaks)",
                          str(uid))
        head = bytes(msg.buffer[:TOPIC_HEAD])
        if head.startswith(wire.ACK):  # an agent's answer to a ping: it names no device
            nonce = head[len(wire.ACK):]
            if len(msg) == len(wire.ACK) + ACK_NONCE_LEN and ACK_NONCE_CHARS.issuperset(nonce):
                return
            raise Refused("bad_ack", f"the key of {client.name!r} sent {len(msg)} bytes starting "
                          f"{head[:24]!r}: a ping answer is {wire.ACK.decode()} and "
                          f"{ACK_NONCE_LEN} hex digits", client.name)
        slash = head.find(b"/")
        if slash < 0 or not head.startswith(client.segment, slash + 1):
            topic = head.split(b"\x00", 1)[0].decode("ascii", "replace")
            raise Refused("device_mismatch", f"the key of {client.name!r} sent a frame on topic "
                          f"{topic!r}: it may publish only as device {client.name!r}", client.name)


    def recv(self, sock: zmq.Socket[bytes], flags: int = 0) -> bytes:
        """``sock.recv`` that checks the sender first; raises :class:`Refused` (and skips the
        rest of a refused multi-part message)."""
        msg = sock.recv(flags, copy=False)
        try:
            self.check(msg)
        except Refused:
            zmqutil.skip_parts(sock)
            raise
        return msg.bytes


class Security:
    """The ``[security]`` of one process at run time.

    Constructing records settings; :meth:`open` loads the keys and starts
    the guard thread (in the thread that owns the sockets); :meth:`close`
    stops it, after the sockets are closed and before ``ctx.term()``.
    ``monitor`` asks for handshake and disconnection reports even with
    ``mode = "none"`` (the proxy and the collector count disconnections).
    """

    def __init__(self, config: AnySecurity | None, role: str, monitor: bool = False) -> None:
        self.config = config if config is not None else ClientSecurity()
        self.role = role
        self.monitor = monitor or self.curve
        self.keypair: KeyPair | None = None
        self.server_key: bytes | None = None
        self.lists: dict[str, AllowList] = {}
        self.guard: Guard | None = None
        self._watched: dict[int, Watched] = {}

    @property
    def curve(self) -> bool:
        return self.config.mode == "curve"

    def open(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        cfg = self.config
        if self.curve:
            from sensorwire.keys import load_public, load_secret

            if not zmq.has("curve"):
                raise zmqutil.EndpointError('[security] mode = "curve": this libzmq has no CURVE '
                                            "support (install pyzmq's wheel, built with libsodium)")
            self.keypair = load_secret(cfg.secret_key, role=self.role)
            server_key = getattr(cfg, "server_key", "")
            if server_key:
                self.server_key = load_public(server_key)
            self.lists = self._allow_lists()
            log.info("[security] CURVE on: this %s is %s (public key %s)", self.role,
                     self.keypair.name, self.keypair.public.decode("ascii"))
        if self.monitor:
            self.guard = Guard(ctx, self.lists, curve=self.curve)
            self.guard.start()

    def _allow_lists(self) -> dict[str, AllowList]:
        from sensorwire.allowlist import AllowList

        cfg = self.config
        made: dict[Path, AllowList] = {}

        def allow(folder: str, setting: str) -> AllowList:
            # one list per folder, but watched by the name given: a symlink to the folder may
            # be switched to another one (a new deployment) and must be followed
            given = Path(folder).expanduser().absolute()
            p = given.resolve()
            if p not in made:
                made[p] = AllowList(given, setting)
                made[p].load()
            return made[p]

        out: dict[str, AllowList] = {}
        authorized = getattr(cfg, "authorized_keys", "")
        if isinstance(cfg, ProxySecurity):
            out[AGENTS] = allow(cfg.authorized_keys, "authorized_keys")
            out[COLLECTORS] = (allow(cfg.authorized_collectors, "authorized_collectors")
                               if cfg.authorized_collectors else out[AGENTS])
        elif isinstance(cfg, AgentSecurity) and authorized:
            out[COLLECTORS] = allow(authorized, "authorized_keys")
        elif authorized:
            out[AGENTS] = allow(authorized, "authorized_keys")
        return out

    def bind(self, sock: zmq.Socket[bytes], endpoint: str, name: str, domain: str = AGENTS) -> None:
        """Bind ``sock``; with CURVE as a server that accepts ``domain``'s allow-list."""
        self._watch(sock, name)
        if self.curve:
            assert self.keypair is not None
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self.keypair.secret)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keypair.public)
            sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode("ascii"))
            sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no ZAP handler: refuse, never accept all
            sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
        else:
            self._warn_if_open(endpoint, name)
        zmqutil.bind(sock, endpoint)

    def connect(self, sock: zmq.Socket[bytes], endpoint: str, name: str) -> None:
        """Connect ``sock``; with CURVE as a client of the server with ``server_key``."""
        w = self._watch(sock, name)
        if w is not None:
            w.connected.add(endpoint)
        if self.curve:
            assert self.keypair is not None and self.server_key is not None
            sock.setsockopt(zmq.CURVE_SERVER, 0)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self.keypair.secret)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keypair.public)
            sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)
        else:
            self._warn_if_open(endpoint, name)
        zmqutil.connect(sock, endpoint)

    def identity(self, domain: str = AGENTS, trust_anonymous: bool = False) -> Identity | None:
        """The per-message identity check for sockets bound for ``domain``; None without CURVE."""
        allow = self.lists.get(domain)
        return Identity(allow, trust_anonymous) if allow is not None else None

    def reload(self) -> None:
        """Re-read the allow-lists now (they are also re-read within a second of a change)."""
        if self.guard is not None:
            self.guard.reload()

    def counts(self) -> dict[str, int]:
        return dict(self.guard.counts) if self.guard is not None else {}

    def summary(self) -> str:
        """``refused_keys 3, frontend.handshake_failed 1``: for the roles' summary lines."""
        c = self.counts()
        return ", ".join(f"{k} {v}" for k, v in sorted(c.items())
                         if v and not k.endswith(".accepted"))

    def close(self) -> None:
        if self.guard is not None:
            self.guard.close()
            self.guard = None

    def _watch(self, sock: zmq.Socket[bytes], name: str) -> Watched | None:
        if self.guard is None:
            return None
        w = self._watched.get(id(sock))
        if w is None:
            w = self._watched[id(sock)] = self.guard.watch(sock, name)  # one monitor per socket
        return w

    def _warn_if_open(self, endpoint: str, name: str) -> None:
        if not zmqutil.is_local(endpoint):
            log.warning('[security] mode = "none" and %s %s is not loopback or ipc: anyone who '
                        "can reach it can read and inject telemetry (see docs/security.md to "
                        'turn on mode = "curve")', name, endpoint)
